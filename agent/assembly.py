"""The site daemon's parts, put together from ``agent.toml``: ``build_agent`` returns an ``Agent``.

One place shows what runs in ``confide-agent``: the ledger, audit trail and approvals store in
the state folder, the policy holder, the task runner (with SecAgg+ and its workers), the
session that dials the aggregator, the local control API, and the Prometheus endpoint when
``[metrics] listen`` asks for one (``agent.local.metrics``). ``agent.main`` checks the site
first (identity, runtime, datasets), builds the parts here, then serves them: ``Agent.start``,
``reload_policy`` and ``reload_identity`` on SIGHUP, ``Agent.stop`` on SIGTERM/SIGINT.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from agent.admission.approvals import APPROVALS_FILE, ApprovalMode, Approvals
from agent.admission.binding import JobBindings
from agent.admission.site_policy import DatasetPolicy, PolicyHolder, SitePolicy
from agent.config import AgentConfig
from agent.data.declared import declared_sizes
from agent.link.identity import IdentityHolder
from agent.link.session import Session
from agent.link.transport import GrpcTransport
from agent.local.api import AgentApi
from agent.local.audit import AUDIT_FILE, SiteAudit
from agent.local.check import problems
from agent.local.metrics import AgentMetrics
from agent.local.resources import ResourceProbe
from agent.local.selfcheck import DatasetBook, check_identity
from agent.privacy.ledger import Budget, Ledger
from agent.privacy.plan import PrivacyPlan
from agent.tasks.evaluation import Evaluations
from agent.tasks.runner import SiteContext, TaskRunner
from agent.tasks.secure import install as install_secure_aggregation
from agent.workers.bundles import SiteBundles
from agent.workers.pool import WorkerFactory, WorkerHandle, worker_factory
from agent.workers.sandbox import Isolation
from agent.workers.sandbox import probe as probe_sandbox
from confide.data.datasets import DatasetDescription
from confide.errors import ConfigError
from confide.metrics import MetricsServer, serve_metrics
from confide.pki import Identity, load_identity
from confide.v1 import agent_pb2, common_pb2

__all__ = ["Agent", "announced_device", "build_agent", "reload_identity", "reload_policy"]

log = structlog.get_logger("confide.agent")


@dataclass
class Agent:
    """The running parts of one site daemon, for ``agent.main`` to serve and stop.

    Args:
        config: the ``agent.toml`` it was built from.
        identities: the owner of the site's federation identity in force (SIGHUP reloads it).
        book: the start-up dataset check (re-checks a dataset whose file changed).
        device: the device announced to the aggregator (``auto`` resolved).
        policy: the owner of the site policy in force (SIGHUP reloads it).
        audit: the site's audit trail.
        approvals: the manual-approval store; None when approval can never be manual.
        ledger: the privacy ledger.
        runner: runs each task under the policy.
        session: the connection to the aggregator and its task stream.
        api: the local control API on the unix socket.
        metrics: the daemon's metrics (served by ``start`` when the config asks).
    """

    config: AgentConfig
    identities: IdentityHolder
    book: DatasetBook
    device: str
    policy: PolicyHolder
    audit: SiteAudit
    approvals: Approvals | None
    ledger: Ledger
    runner: TaskRunner
    session: Session
    api: AgentApi
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    metrics_server: MetricsServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def identity(self) -> Identity:
        """The site's identity in force."""
        return self.identities.current()

    def start(self) -> None:
        """Serve the metrics (when asked) and the local API, then run the session on its own
        thread.

        Raises:
            ConfigError: ``metrics.listen`` cannot be bound (nothing was started, and the
                control socket is removed).
        """
        try:
            self.metrics_server = serve_metrics(
                self.metrics.registry, self.config.metrics, state_dir=self.config.state_dir
            )
        except ConfigError:
            self.api.stop(grace=0)  # its socket was bound at build: remove it again
            raise
        if self.metrics_server is not None:
            log.info("metrics_listening", address=self.metrics_server.address)
        self.api.start()
        self._thread = threading.Thread(
            target=self.session.run, name="confide-session", daemon=True
        )
        self._thread.start()

    def running(self) -> bool:
        """Whether the session thread is still running."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, *, join_s: float) -> None:
        """Stop the metrics endpoint, the session (closing the ledger once it has ended), then
        the local API."""
        assert self._thread is not None, "stop() before start()"
        if self.metrics_server is not None:  # first: a scrape reads the ledger closed below
            self.metrics_server.stop()
        _stop_session(self.session.stop, self._thread, self.ledger.close, join_s=join_s)
        self.api.stop()


def build_agent(cfg: AgentConfig, *, identity: Identity, book: DatasetBook) -> Agent:
    """Open the state files and put the daemon's parts together; nothing runs yet.

    Args:
        cfg: the daemon's configuration.
        identity: the site's identity, loaded and checked against ``cfg`` (it may have
            expired: the session then waits for a reload with a renewed one).
        book: the start-up dataset check, with at least one usable dataset (or none exposed).

    Raises:
        ConfigError: the state folder cannot be created (``state.dir``).
    """
    usable = book.usable()  # registered (with their sizes) at every connect
    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError("state.dir", f"cannot create {cfg.state_dir}: {exc.strerror}") from exc
    probe = ResourceProbe()
    device = announced_device(cfg.device, probe.gpus)
    isolation = probe_sandbox()
    if isolation.sandboxed:
        log.info("sandbox_ready", detail=isolation.detail)
    elif cfg.sandbox.allow_unsandboxed:
        log.warning("sandbox_unavailable", detail=isolation.detail, workers="unsandboxed")
    else:
        log.error("sandbox_unavailable", detail=isolation.detail, workers="refused")
    ledger = Ledger.open(cfg.state_dir / "ledger.db")
    audit = SiteAudit(cfg.state_dir / AUDIT_FILE)
    holder = PolicyHolder(cfg.policy, path=cfg.policy_file)
    # With a reloadable policy file the approvals store is always open, so a reload may
    # switch to manual approval; the runner asks it only while the policy says manual.
    approvals = (
        Approvals(cfg.state_dir / APPROVALS_FILE, expires_s=cfg.approval_expires_s, audit=audit)
        if cfg.approval is ApprovalMode.MANUAL or cfg.policy_file is not None
        else None
    )
    identities = IdentityHolder(
        identity,
        load=lambda: load_identity(
            cert=cfg.tls.cert,
            key=cfg.tls.key,
            signing_key=cfg.tls.signing_key,
            ca=cfg.tls.ca,
            crl=cfg.tls.crl,
        ),
        check=lambda new: check_identity(new.info, federation=cfg.federation, site=cfg.site),
    )
    privacy = PrivacyPlan(ledger)
    metrics = AgentMetrics()
    runner = TaskRunner(
        SiteContext(
            federation=cfg.federation,
            site=identity.info.name,
            signing_key=identity.signing_key,
            ca_pem=identity.ca_pem,
            crl_pem=identity.crl_pem,
            trusted_signers=cfg.trusted_signers,
            datasets=cfg.datasets,
            device=cfg.device,
            task_timeout_s=cfg.task_timeout_s,
            check_dataset=book.require,
        ).with_policy(cfg.policy),
        privacy=privacy,
        job_bindings=JobBindings(cfg.state_dir / "ledger.db"),
        audit=audit,
        approvals=approvals,
        start_worker=_policy_workers(isolation, holder, stderr_dir=cfg.state_dir / "workers"),
        policy=holder,
        evaluations=Evaluations(cfg.state_dir / "ledger.db", privacy=privacy, audit=audit),
        bundles=SiteBundles(cfg.state_dir / "bundles"),
        trust=identities.trust,
        metrics=metrics,
    )
    install_secure_aggregation(runner)  # SecAgg+ stages 0-3 (agent/tasks/secure.py)
    started = time.time()
    session: Session | None = None

    def status() -> agent_pb2.AgentStatus:
        assert session is not None
        s = session.status()
        return agent_pb2.AgentStatus(
            site_id=s.site_id or identity.info.name,
            connected=s.connected,
            aggregator=cfg.aggregator_address,
            current_task=s.current_task,
            resources=probe.sample(),
            uptime_s=time.time() - started,
            datasets=sorted(set(holder.current().datasets) - book.unusable_names()),
            device=device,
            tasks_done=s.tasks_done,
            tasks_failed=s.tasks_failed,
            isolation=isolation.detail,
            unusable=problems(book),
        )

    def budgets() -> list[Budget]:
        now = holder.current()
        policies = {name: now.dataset_policies.get(name, DatasetPolicy()) for name in now.datasets}
        return ledger.budgets(policies)

    def budget() -> agent_pb2.BudgetReply:
        return agent_pb2.BudgetReply(
            datasets=[
                agent_pb2.DatasetBudget(
                    dataset=b.dataset,
                    max_epsilon=b.max_epsilon,
                    spent_epsilon=b.spent_epsilon,
                    remaining_epsilon=b.remaining_epsilon,
                    delta=b.delta,
                    spent_update_epsilon=b.update_epsilon,
                    rounds=b.rounds,
                )
                for b in budgets()
            ]
        )

    api = AgentApi(cfg.api_socket, status=status, budget=budget, approvals=approvals)

    def connect() -> GrpcTransport:
        # The identity in force when the connection opens: its certificate for the TLS
        # handshake, its key for every signature on this connection (a reload waits for
        # the next one). An expired certificate raises CertificateExpired: not dialled.
        current = identities.for_connection(now=datetime.now(UTC))
        runner.use_identity(current)
        return GrpcTransport.from_identity(
            current,
            address=cfg.aggregator_address,
            server_name=cfg.server_name,
            max_model_bytes=holder.current().max_model_bytes,
        )

    session = Session(
        runner=runner,
        connect=connect,
        # Announced at each (re)connection: a reload's datasets show from the next one.
        datasets=usable,
        device=device,
        resources=probe.sample,
        on_connection=api.set_connected,
        dataset_sizes=lambda: declared_sizes(
            d for n, d in holder.current().datasets.items() if n not in book.unusable_names()
        ),
        unusable=problems(book),
    )
    metrics.watch(
        connected=lambda: session is not None and session.status().connected,
        budgets=budgets,
        certificate=lambda: identities.current().cert_pem,  # after a SIGHUP reload: the new one
    )
    return Agent(
        config=cfg,
        identities=identities,
        book=book,
        device=device,
        policy=holder,
        audit=audit,
        approvals=approvals,
        ledger=ledger,
        runner=runner,
        session=session,
        api=api,
        metrics=metrics,
    )


def announced_device(device: str, gpus: Sequence[str]) -> str:
    """The device to announce for ``auto`` without importing torch (GPU seen: cuda:0)."""
    if device != "auto":
        return device
    return "cuda:0" if gpus else "cpu"


def reload_policy(
    holder: PolicyHolder, *, audit: SiteAudit, approvals: Approvals | None, now: float
) -> SitePolicy | None:
    """Reload the policy file (SIGHUP): put the new policy in force, or keep the old one.

    Logs and audits either way: ``policy_reloaded``, or ``policy_reload_refused`` naming the
    key at fault (the old policy stays in force). The aggregator connection is not touched;
    the next task runs under the new policy, a task in flight finishes under the old one.

    Returns:
        The policy now in force if the reload succeeded, else None.
    """
    if holder.path is None:
        # SIGHUP also reloads the identity; without a policy file there is no policy to reload.
        log.info("policy_reload_skipped", reason="agent.toml names no policy file")
        return None
    try:
        policy = holder.reload()
    except ConfigError as exc:
        log.error("policy_reload_refused", key=exc.key, error=exc.message, kept="old policy")
        audit.append(
            "policy_reload_refused",
            at=now,
            reason=exc.reason.value,
            rule=exc.key,
            detail=exc.message,
        )
        return None
    if approvals is not None:
        approvals.expires_s = policy.approval_expires_s
    log.info(
        "policy_reloaded",
        file=str(holder.path),
        datasets=sorted(policy.datasets),
        trusted_signers=list(policy.trusted_signers),
        approval=policy.approval.value,
    )
    audit.append("policy_reloaded", at=now, detail=f"from {holder.path}")
    return policy


def reload_identity(identities: IdentityHolder, *, audit: SiteAudit, now: float) -> Identity | None:
    """Reload the site's certificate, keys, CA and CRL (SIGHUP), or keep the ones in force.

    Logs and audits either way: ``identity_reloaded``, or ``identity_reload_refused`` naming
    the file or key at fault. The connection to the aggregator is not touched: the next
    connection presents (and signs with) the new identity, the next task verifies job
    signers against its CA and CRL.

    Returns:
        The identity now in force if the reload succeeded, else None.
    """
    try:
        new = identities.reload()
    except ConfigError as exc:
        log.error(
            "identity_reload_refused", key=exc.key, error=exc.problem, kept="the identity in force"
        )
        audit.append(
            "identity_reload_refused",
            at=now,
            reason=exc.reason.value,
            rule=exc.key,
            detail=exc.problem,
        )
        return None
    info = new.info
    log.info(
        "identity_reloaded",
        serial=f"{info.serial:x}",
        not_after=info.not_after.isoformat(),
        applies="certificate from the next connection, CA and CRL from the next task",
    )
    audit.append(
        "identity_reloaded",
        at=now,
        detail=f"certificate serial {info.serial:x}, valid until {info.not_after:%Y-%m-%d}",
    )
    return new


def _policy_workers(
    isolation: Isolation, holder: PolicyHolder, *, stderr_dir: Path
) -> WorkerFactory:
    """Start workers under the sandbox settings of the policy in force when each starts,
    each worker's stderr to its job's file under ``stderr_dir``."""

    def start(
        *,
        job: common_pb2.JobSpec,
        job_id: str,
        dataset: DatasetDescription,
        device: str,
        timeout: float,
        bundle: Path | None = None,
    ) -> WorkerHandle:
        sandbox = holder.current().sandbox
        factory = worker_factory(
            isolation,
            limits=sandbox.limits,
            gpus=sandbox.gpus,
            allow_unsandboxed=sandbox.allow_unsandboxed,
            stderr_dir=stderr_dir,
        )
        return factory(
            job=job, job_id=job_id, dataset=dataset, device=device, timeout=timeout, bundle=bundle
        )

    return start


def _stop_session(
    stop: Callable[[], None],
    thread: threading.Thread,
    close_ledger: Callable[[], None],
    *,
    join_s: float,
) -> None:
    """Stop the session, wait for its thread, and close the ledger only once that has ended.

    ``stop`` cancels the calls in flight, so the thread normally ends at once. If it is still
    running after ``join_s`` a task may still be writing the ledger, so the ledger is left
    open (event ``session_did_not_stop``) for process exit to end: SQLite in WAL mode with
    ``synchronous=FULL`` loses no committed write when the process exits.

    Args:
        stop: ``Session.stop``.
        thread: the thread running ``Session.run``.
        close_ledger: ``Ledger.close``.
        join_s: how long to wait for the thread, seconds.
    """
    stop()
    thread.join(timeout=join_s)
    if thread.is_alive():
        log.error("session_did_not_stop", waited_s=join_s, ledger="left open until exit")
        return
    close_ledger()
