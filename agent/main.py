"""``confide-agent``: the site daemon and its small local commands.

::

    confide-agent --config agent.toml               run the daemon (SIGTERM/SIGINT: clean stop, 0;
                                                    SIGHUP: reload policy.toml, if it names one)
    confide-agent enroll --dir pki --name site-1    make keys + CSR for the operator to sign
    confide-agent status --config agent.toml        ask the running daemon (exit 1: not running)
    confide-agent budget --config agent.toml        per-dataset privacy budget lines
    confide-agent jobs --config agent.toml          jobs waiting for approval (manual mode)
    confide-agent approve JOB --config agent.toml   approve one job (its signed spec)
    confide-agent deny JOB --reason TEXT --config agent.toml
    confide-agent audit show|verify --config agent.toml   the site's audit trail (exit 1:
                                                    the chain was edited, removed or reordered)
    confide-agent check --config agent.toml         identity, datasets, runtime (exit 1: a problem)

A configuration error prints one line ``confide-agent: config key 'X': ...`` and exits 2. So
does a daemon that cannot work: its certificate is not this site's, the training runtime is
not installed, or no exposed dataset passes the start-up check (``agent.local.selfcheck``).
This is the only module of the agent that configures structlog (STYLE rule 9).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message

from agent.admission.approvals import APPROVALS_FILE, ApprovalMode, Approvals
from agent.admission.binding import JobBindings
from agent.admission.site_policy import DatasetPolicy, PolicyHolder, SitePolicy
from agent.config import AgentConfig, load_config
from agent.data.datasets import DatasetConfig, declared_sizes
from agent.faults import install_kill_point, kill_point_from_env
from agent.link.session import Session
from agent.link.transport import GrpcTransport
from agent.local.api import AgentApi, connect_api
from agent.local.approvals_cli import approve_command, deny_command, jobs_command
from agent.local.audit import AUDIT_FILE, SiteAudit
from agent.local.audit_cli import audit_command
from agent.local.check import problems, run_check
from agent.local.resources import ResourceProbe
from agent.local.selfcheck import DatasetBook, check_identity, runtime_problem
from agent.privacy.ledger import Ledger
from agent.privacy.plan import PrivacyPlan
from agent.tasks.evaluation import Evaluations
from agent.tasks.runner import SiteContext, TaskRunner
from agent.tasks.secure import install as install_secure_aggregation
from agent.workers.pool import WorkerFactory, WorkerHandle, worker_factory
from agent.workers.sandbox import Isolation
from agent.workers.sandbox import probe as probe_sandbox
from confide import __version__, sdnotify
from confide.errors import ConfigError
from confide.logs import configure_kwargs
from confide.pki import enroll, load_identity
from confide.stdout import quiet_pipe
from confide.v1 import agent_pb2, agent_pb2_grpc, common_pb2

__all__ = ["main"]

_PROG = "confide-agent"
_API_TIMEOUT_S = 5.0
_STOP_JOIN_S = 60.0

log = structlog.get_logger("confide.agent")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``confide-agent`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return quiet_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "enroll":
            return _enroll(args.dir, args.name)
        if args.config is None:
            print(f"{_PROG}: --config FILE is required", file=sys.stderr)
            return 2
        cfg = load_config(args.config)
        if args.command == "status":
            return _status(cfg)
        if args.command == "budget":
            return _budget(cfg)
        if args.command == "jobs":
            return jobs_command(cfg.api_socket, include_decided=args.all)
        if args.command == "approve":
            return approve_command(cfg.api_socket, args.job)
        if args.command == "deny":
            return deny_command(cfg.api_socket, args.job, reason=args.reason)
        if args.command == "audit":
            return audit_command(cfg.state_dir / AUDIT_FILE, args.action)
        if args.command == "check":
            return run_check(cfg)
        return _run_daemon(cfg)  # no command or "run"
    except ConfigError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description="Confide site agent")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", type=Path, help="agent.toml")
    sub = p.add_subparsers(dest="command")
    e = sub.add_parser("enroll", help="make this site's keys and a CSR for the operator")
    e.add_argument("--dir", type=Path, required=True, help="folder for the keys and the CSR")
    e.add_argument("--name", required=True, help="the site's identity name, e.g. site-1")
    for name, text in (
        ("status", "show the running daemon's status"),
        ("budget", "show the privacy budget per dataset"),
        ("check", "check identity, datasets and training runtime without starting"),
        ("run", "run the daemon (the default)"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="agent.toml")
    j = sub.add_parser("jobs", help="list jobs waiting for a local operator's approval")
    j.add_argument("--all", action="store_true", help="also approved and denied jobs")
    j.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="agent.toml")
    ap = sub.add_parser("approve", help="approve a job waiting for approval")
    ap.add_argument("job", help="the job id `confide-agent jobs` shows")
    ap.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="agent.toml")
    dn = sub.add_parser("deny", help="deny a job waiting for approval")
    dn.add_argument("job", help="the job id `confide-agent jobs` shows")
    dn.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    dn.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="agent.toml")
    a = sub.add_parser("audit", help="show or verify the site's audit trail")
    a.add_argument("action", choices=("show", "verify"))
    a.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="agent.toml")
    return p


# ----- commands -----


def _enroll(directory: Path, name: str) -> int:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    csr = enroll(directory, name)
    print(f"wrote keys and {csr}")
    print(f"next: send it to the operator: confide pki sign {csr} --role site")
    return 0


def _ask_daemon(cfg: AgentConfig, method: str, request: Message) -> Any:
    """Call one AgentControl method over the unix socket; None (and a message) if unreachable."""
    try:
        with connect_api(cfg.api_socket) as channel:
            stub = agent_pb2_grpc.AgentControlStub(channel)
            return getattr(stub, method)(request, timeout=_API_TIMEOUT_S)
    except grpc.RpcError as exc:
        print(
            f"{_PROG}: the agent is not reachable at {cfg.api_socket} "
            f"({exc.code().name}); is the daemon running?",
            file=sys.stderr,
        )
        return None


def _status(cfg: AgentConfig) -> int:
    st = _ask_daemon(cfg, "Status", agent_pb2.StatusRequest())
    if st is None:
        return 1
    r = st.resources
    print(f"site:        {st.site_id or '(not registered yet)'}")
    print(f"aggregator:  {st.aggregator} ({'connected' if st.connected else 'disconnected'})")
    print(f"task:        {st.current_task or 'idle'}")
    print(f"datasets:    {', '.join(st.datasets) or '(none)'}")
    for p in st.unusable:
        print(f"unusable:    {p.dataset} ({p.reason}) {p.detail}")
    if st.runtime_problem:
        print(f"runtime:     {st.runtime_problem}")
    print(f"device:      {st.device}   gpus: {', '.join(r.gpus) or 'none'}")
    print(f"isolation:   {st.isolation}")
    print(f"tasks:       {st.tasks_done} done, {st.tasks_failed} failed or refused")
    print(
        f"resources:   cpu {r.cpu_percent:.1f}%  rss {r.rss_bytes / 2**20:.1f} MiB  "
        f"mem {r.memory_percent:.1f}%"
    )
    print(f"uptime:      {st.uptime_s:.0f} s")
    return 0


def _budget(cfg: AgentConfig) -> int:
    reply = _ask_daemon(cfg, "Budget", agent_pb2.BudgetRequest())
    if reply is None:
        return 1
    if not reply.datasets:
        print("no privacy budget recorded yet")
    for d in reply.datasets:
        print(
            f"{d.dataset}: spent {d.spent_epsilon:.4g} of {d.max_epsilon:.4g} "
            f"(remaining {d.remaining_epsilon:.4g}, delta {d.delta:.2g}), "
            f"update epsilon {d.spent_update_epsilon:.4g}, {d.rounds} rounds"
        )
    return 0


# ----- the daemon -----


def resolve_device(device: str, gpus: Sequence[str]) -> str:
    """The device to announce for ``auto`` without importing torch (GPU seen: cuda:0)."""
    if device != "auto":
        return device
    return "cuda:0" if gpus else "cpu"


def _run_daemon(cfg: AgentConfig) -> int:
    identity = load_identity(
        cert=cfg.tls.cert,
        key=cfg.tls.key,
        signing_key=cfg.tls.signing_key,
        ca=cfg.tls.ca,
        crl=cfg.tls.crl,
    )
    check_identity(identity.info, federation=cfg.federation, site=cfg.site)
    problem = runtime_problem()
    if problem is not None:
        print(f"{_PROG}: {problem}", file=sys.stderr)
        return 2
    # Configured once the files are known good: a bad file is the one-line error of main().
    structlog.configure(**configure_kwargs(json=cfg.log_json, level=cfg.log_level.value))
    book = DatasetBook.check(cfg.datasets)
    if not _datasets_usable(book, cfg):
        return 2
    usable = book.usable()  # registered (with their sizes) at every connect
    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError("state.dir", f"cannot create {cfg.state_dir}: {exc.strerror}") from exc
    probe = ResourceProbe()
    device = resolve_device(cfg.device, probe.gpus)
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
    privacy = PrivacyPlan(ledger)
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
        start_worker=_policy_workers(isolation, holder),
        policy=holder,
        evaluations=Evaluations(cfg.state_dir / "ledger.db", privacy=privacy, audit=audit),
    )
    install_secure_aggregation(runner)  # SecAgg+ stages 0-3 (agent/tasks/secure.py)
    kill_point = kill_point_from_env(os.environ)  # end-to-end tests only (agent/faults.py)
    if kill_point is not None:
        install_kill_point(runner, kill_point)
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

    def budget() -> agent_pb2.BudgetReply:
        now = holder.current()
        policies = {name: now.dataset_policies.get(name, DatasetPolicy()) for name in now.datasets}
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
                for b in ledger.budgets(policies)
            ]
        )

    api = AgentApi(cfg.api_socket, status=status, budget=budget, approvals=approvals)
    session = Session(
        runner=runner,
        connect=lambda: GrpcTransport.from_identity(
            identity,
            address=cfg.aggregator_address,
            server_name=cfg.server_name,
            max_model_bytes=holder.current().max_model_bytes,
        ),
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
    stop = threading.Event()
    hup = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        hup.set()  # the reload runs on the main loop, never in the handler

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    api.start()
    thread = threading.Thread(target=session.run, name="confide-session", daemon=True)
    thread.start()
    log.info(
        "agent_started",
        site=identity.info.name,
        aggregator=cfg.aggregator_address,
        socket=str(cfg.api_socket),
        datasets=book.usable(),
        device=device,
    )
    notify = sdnotify.from_environ()
    notify.ready(f"site {identity.info.name}: control socket {cfg.api_socket}")
    try:
        while not stop.wait(0.5) and thread.is_alive():
            notify.watchdog()
            if hup.is_set():
                hup.clear()
                reload_policy(holder, audit=audit, approvals=approvals, now=time.time())
    finally:
        log.info("agent_stopping")
        notify.stopping()
        _stop_session(session.stop, thread, ledger.close, join_s=_STOP_JOIN_S)
        api.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    log.info("agent_stopped")
    return 0


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
        log.warning("policy_reload_refused", reason="agent.toml names no policy file")
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


def _policy_workers(isolation: Isolation, holder: PolicyHolder) -> WorkerFactory:
    """Start workers under the sandbox settings of the policy in force when each starts."""

    def start(
        *,
        job: common_pb2.JobSpec,
        job_id: str,
        dataset: DatasetConfig,
        device: str,
        timeout: float,
    ) -> WorkerHandle:
        sandbox = holder.current().sandbox
        factory = worker_factory(
            isolation,
            limits=sandbox.limits,
            gpus=sandbox.gpus,
            allow_unsandboxed=sandbox.allow_unsandboxed,
        )
        return factory(job=job, job_id=job_id, dataset=dataset, device=device, timeout=timeout)

    return start


def _datasets_usable(book: DatasetBook, cfg: AgentConfig) -> bool:
    """Log each unusable dataset; False (and one line each on stderr) when none is usable."""
    bad = [h for h in book.all() if h.error is not None]
    for h in bad:
        assert h.error is not None
        log.error("dataset_unusable", dataset=h.name, reason=h.reason, error=h.error.message)
    if not cfg.datasets:
        log.warning("no_datasets", hint="add a [datasets.NAME] table to expose one")
        return True
    if len(bad) < len(cfg.datasets):
        return True
    for h in bad:
        assert h.error is not None
        print(f"{_PROG}: datasets.{h.name}: {h.error.message}", file=sys.stderr)
    print(f"{_PROG}: no exposed dataset is usable; fix it and run `{_PROG} check`", file=sys.stderr)
    return False


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
