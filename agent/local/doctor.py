"""``confide-agent doctor --config agent.toml``: every check a site's IT runs before calling.

One line per check, ok / warn / FAIL, and for each warning or failure the fix (the format is
``confide.doctor.checklist``)::

    config          the file parses (a config error names the key; nothing else is checked)
    tls key         0600 (or stricter), owned by the daemon's user, matches the certificate
    signing key     the same for the Ed25519 signing key
    chain           the certificate is issued by tls.ca, fit for a site, not revoked (tls.crl)
    crl             tls.crl (when set) is readable, signed by the CA, not overdue
    names           role site, the configured federation and site (agent.local.selfcheck)
    expiry          FAIL when the certificate or the CA expired, warn within 14 days
    aggregator      a real mutual-TLS handshake with aggregator.address as this site, bounded
                    by --timeout; unreachable, name mismatch, untrusted server and refused
                    are told apart (confide.doctor.handshake)
    dataset NAME    each exposed dataset loads and matches its [datasets.NAME] schema
    sandbox         bubblewrap builds the workers' sandbox here (agent.workers.sandbox.probe)
    runtime         the worker's runtime (torch, Opacus) imports, in a child process
    gpu             when worker.device or [sandbox] gpus asks for GPUs: the runtime sees them
    disk            free space under state.dir (confide.doctor.host.DiskLimits)
    state FILE      ledger.db, audit.db, approvals.db: intact, schema no newer than known

Exit code: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 when the config
itself does not load (then it is the only line). ``confide-agent check`` stays the quick,
offline start-up check (identity, datasets, runtime: what the daemon refuses to start
without); the doctor reuses its pieces and adds the network, the host and the state files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.admission.approvals import APPROVALS_FILE
from agent.config import AgentConfig, load_config
from agent.local.audit import AUDIT_FILE
from agent.local.selfcheck import (
    INSTALL_HINT,
    DatasetBook,
    check_identity,
    probe_runtime,
    runtime_problem,
)
from agent.workers.sandbox import Isolation
from agent.workers.sandbox import probe as probe_sandbox
from confide.doctor import (
    DiskLimits,
    Finding,
    IdentityPaths,
    Outcome,
    StateFile,
    Status,
    chain_finding,
    crl_finding,
    daemon_uid,
    database_finding,
    disk_finding,
    exit_code,
    expiry_finding,
    handshake,
    key_findings,
    read_cert_info,
    render,
)
from confide.errors import EXIT_CONFIG, ConfideError, ConfigError

__all__ = ["HANDSHAKE_TIMEOUT_S", "STATE_FILES", "Probes", "doctor_command", "run_doctor"]

HANDSHAKE_TIMEOUT_S = 5.0
"""The longest the aggregator handshake may take (``--timeout``)."""

STATE_FILES = (
    StateFile("ledger.db", "privacy ledger, job bindings, model lineage, evaluations", 0),
    StateFile(AUDIT_FILE, "the site's audit trail", 0),
    StateFile(APPROVALS_FILE, "manual approvals", 0),
)
"""The agent's SQLite files and the newest ``user_version`` this release writes: none of them
carries one yet (their tables are versioned by their columns), so a file with a version was
written by a newer release."""

_CUDA = re.compile(r"^cuda(?::(\d+))?$")
_REISSUE = (
    "make a new key and CSR (confide-agent enroll --dir pki --name SITE) and ask the "
    "operator to sign it (confide pki sign SITE.csr --role site)"
)


@dataclass(frozen=True)
class Probes:
    """What the doctor asks of the host, and its limits (parameters, so tests choose).

    Args:
        sandbox: builds a test sandbox and says what is in force.
        runtime: imports the worker runtime in a child and reports its versions and devices.
        handshake_timeout_s: the longest the aggregator handshake may take.
        disk: the free-space thresholds under the state folder.
    """

    sandbox: Callable[[], Isolation] = probe_sandbox
    runtime: Callable[[], Mapping[str, object]] = probe_runtime
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    disk: DiskLimits = field(default_factory=DiskLimits)


def doctor_command(config: Path, *, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> int:
    """Run every check on ``config``, print the checklist, return the exit code."""
    findings = run_doctor(
        config, now=datetime.now(UTC), probes=Probes(handshake_timeout_s=timeout_s)
    )
    for line in render(findings):
        print(line)
    if findings[0].check == "config" and findings[0].status is Status.FAIL:
        return EXIT_CONFIG
    return exit_code(findings)


def run_doctor(config: Path, *, now: datetime, probes: Probes) -> list[Finding]:
    """Every check's finding, in checklist order.

    Args:
        config: the ``agent.toml`` to check.
        now: the time certificates are judged at.
        probes: the host probes and limits.
    """
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        return [
            Finding.fail(
                "config",
                f"{config}: {exc}",
                f"edit {config} (docs/configuration.md lists every key)",
            )
        ]
    findings = [Finding.ok("config", f"{config}: federation {cfg.federation!r}")]
    paths = IdentityPaths(
        ca=cfg.tls.ca,
        cert=cfg.tls.cert,
        key=cfg.tls.key,
        signing_key=cfg.tls.signing_key,
        crl=cfg.tls.crl,
        section="tls",
        reissue=_REISSUE,
    )
    findings += key_findings(paths, owner_uid=daemon_uid(cfg.state_dir))
    findings.append(chain_finding(paths, now=now))
    if cfg.tls.crl is not None:
        findings.append(crl_finding(cfg.tls.crl, cfg.tls.ca, now=now, key="tls.crl"))
    findings.append(_names(cfg))
    findings.append(expiry_finding(paths, now=now))
    findings.append(_aggregator(cfg, timeout_s=probes.handshake_timeout_s))
    findings += _datasets(cfg)
    isolation = probes.sandbox()
    findings.append(_sandbox(cfg, isolation))
    runtime, report = _runtime(probes.runtime)
    findings.append(runtime)
    findings.append(_gpus(cfg, report, isolation))
    findings.append(disk_finding(cfg.state_dir, limits=probes.disk))
    findings += [database_finding(cfg.state_dir, f) for f in STATE_FILES]
    return findings


def _names(cfg: AgentConfig) -> Finding:
    """Role site, the configured federation and site name (the daemon's own start check)."""
    try:
        info = read_cert_info(cfg.tls.cert)
    except ConfideError as exc:
        return Finding.fail("names", f"cannot read the certificate: {exc}", _REISSUE)
    try:
        check_identity(info, federation=cfg.federation, site=cfg.site)
    except ConfigError as exc:
        return Finding.fail(
            "names",
            str(exc),
            f"correct {exc.key} in the config if it is wrong; else install this site's own "
            f"certificate ({_REISSUE})",
        )
    return Finding.ok(
        "names", f"site {info.name!r} of federation {info.federation!r} (role {info.role.value})"
    )


def _aggregator(cfg: AgentConfig, *, timeout_s: float) -> Finding:
    """One real mutual-TLS handshake with the aggregator, as this site."""
    check = "aggregator"
    done = handshake(
        cfg.aggregator_address,
        server_name=cfg.server_name,
        ca=cfg.tls.ca,
        cert=cfg.tls.cert,
        key=cfg.tls.key,
        timeout_s=timeout_s,
    )
    where = f"{cfg.aggregator_address} (as {cfg.server_name!r})"
    if done.outcome is Outcome.OK:
        return Finding.ok(check, f"{where}: {done.detail}, {done.seconds * 1000:.0f} ms")
    fixes = {
        Outcome.UNREACHABLE: (
            "check aggregator.address and DNS, that the aggregator runs, and that this host "
            "may connect out to that TCP port (firewall, proxy)"
        ),
        Outcome.NAME_MISMATCH: (
            "set aggregator.server_name to the name on the aggregator's certificate (the "
            "operator issued it with confide pki sign --role aggregator --dns NAME)"
        ),
        Outcome.UNTRUSTED_SERVER: (
            "tls.ca must be this federation's CA; if it is, something else answers at that "
            "address (a TLS-inspecting proxy must let this connection through untouched)"
        ),
        Outcome.REFUSED: (
            "the aggregator refuses this site's certificate: it must be signed by the "
            "federation's CA (see chain) and not revoked; ask the operator"
        ),
        Outcome.LOCAL: "fix the tls key and chain lines first",
    }
    return Finding.fail(check, f"{where}: {done.outcome.value}: {done.detail}", fixes[done.outcome])


def _datasets(cfg: AgentConfig) -> list[Finding]:
    """Each exposed dataset, loaded as the worker would (no value quoted)."""
    if not cfg.datasets:
        return [
            Finding.warn(
                "datasets",
                "no dataset is exposed: this site can take no job",
                "add a [datasets.NAME] table (docs/configuration.md)",
            )
        ]
    found: list[Finding] = []
    for h in DatasetBook.check(cfg.datasets).all():
        ds = cfg.datasets[h.name]
        check = f"dataset {h.name}"
        if h.usable:
            found.append(Finding.ok(check, f"{ds.path}: {h.records} records"))
        else:
            found.append(
                Finding.fail(
                    check,
                    f"{ds.path}: {h.detail} ({h.reason})",
                    f"make the file match [datasets.{h.name}] (features "
                    f"{', '.join(ds.features)}; label {ds.label}; numbers only), or correct "
                    "the table",
                )
            )
    return found


def _sandbox(cfg: AgentConfig, isolation: Isolation) -> Finding:
    """Whether the workers' bubblewrap sandbox can be built here."""
    if isolation.sandboxed:
        return Finding.ok("sandbox", isolation.detail)
    fix = (
        "apt-get install bubblewrap; allow unprivileged user namespaces "
        "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu "
        "kernel.apparmor_restrict_unprivileged_userns=0)"
    )
    if cfg.sandbox.allow_unsandboxed:
        return Finding.warn(
            "sandbox", f"{isolation.detail}; workers run UNSANDBOXED (allow_unsandboxed)", fix
        )
    return Finding.fail("sandbox", f"{isolation.detail}; every task is refused", fix)


def _runtime(
    probe: Callable[[], Mapping[str, object]],
) -> tuple[Finding, Mapping[str, object] | None]:
    """The worker runtime, imported in a child process as a worker would."""
    problem = runtime_problem()
    if problem is not None:
        return Finding.fail("runtime", problem, INSTALL_HINT), None
    try:
        report = probe()
    except ConfideError as exc:
        return Finding.fail("runtime", str(exc), f"reinstall it: {INSTALL_HINT}"), None
    return (
        Finding.ok("runtime", f"torch {report.get('torch')}, opacus {report.get('opacus')}"),
        report,
    )


def _gpus(cfg: AgentConfig, report: Mapping[str, object] | None, isolation: Isolation) -> Finding:
    """GPUs the config asks for (worker.device, [sandbox] gpus) are seen by the runtime."""
    check = "gpu"
    m = _CUDA.match(cfg.device)
    wanted = [int(m.group(1) or 0)] if m else []
    wanted += list(cfg.sandbox.gpus)
    seen = _devices(report)
    if not wanted:
        also = f"; the runtime sees {seen} CUDA device(s)" if seen else ""
        return Finding.ok(check, f"none asked (worker.device = {cfg.device!r}){also}")
    asked = f"worker.device = {cfg.device!r}, [sandbox] gpus = {list(cfg.sandbox.gpus)}"
    if report is None:
        return Finding.fail(
            check, f"{asked}, but the runtime does not start (see runtime)", INSTALL_HINT
        )
    if seen <= max(wanted):
        return Finding.fail(
            check,
            f"{asked}, but the worker runtime sees {seen} CUDA device(s)",
            "install the NVIDIA driver and a CUDA build of torch (nvidia-smi must list the "
            'GPU), or set worker.device = "cpu" and [sandbox] gpus = []',
        )
    if m and isolation.sandboxed and not cfg.sandbox.gpus:
        return Finding.fail(
            check,
            f"{asked}: the sandbox binds no GPU, so a sandboxed worker sees none",
            f"set [sandbox] gpus = [{wanted[0]}]",
        )
    return Finding.ok(check, f"{asked}; the worker runtime sees {seen} CUDA device(s)")


def _devices(report: Mapping[str, object] | None) -> int:
    """CUDA devices the runtime reported (``devices``; 1 for a bare ``cuda: True``)."""
    if report is None or not report.get("cuda"):
        return 0
    n = report.get("devices", 1)
    return n if isinstance(n, int) else 1
