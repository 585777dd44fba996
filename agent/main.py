"""``confide-agent``: the site daemon and its small local commands.

::

    confide-agent --config agent.toml               run the daemon (SIGTERM/SIGINT: clean stop, 0;
                                                    SIGHUP: reload policy.toml, if it names one,
                                                    and the [tls] certificate, keys, CA and CRL)
    confide-agent enroll --dir pki --name site-1    make keys + CSR for the operator to sign
    confide-agent status --config agent.toml        ask the running daemon (exit 1: not running)
    confide-agent budget --config agent.toml        per-dataset privacy budget lines
    confide-agent jobs --config agent.toml          jobs waiting for approval (manual mode)
    confide-agent approve JOB --config agent.toml   approve one job (its signed spec)
    confide-agent deny JOB --reason TEXT --config agent.toml
    confide-agent audit show|verify --config agent.toml   the site's audit trail (exit 1:
                                                    the chain was edited, removed or reordered)
    confide-agent check --config agent.toml         identity, datasets, runtime (exit 1: a problem)
    confide-agent doctor --config agent.toml        every check, with fixes (agent.local.doctor)
    confide-agent backup --to DIR --config agent.toml     copy the state files online
    confide-agent restore --from DIR [--force] --config agent.toml   put them back (stopped)

A configuration error prints one line ``confide-agent: config key 'X': ...`` and exits 2. So
does a daemon that cannot work: its certificate is not this site's, the training runtime is
not installed, or no exposed dataset passes the start-up check (``agent.local.selfcheck``).
A certificate that has expired is not such a problem: the daemon starts, says so in one line
(``certificate_expired``, with the date and the fix) and keeps trying to connect on its backoff
until SIGHUP brings a renewed certificate. One that ends within 14 days is warned about at
start and once a day (``certificate_expiring``; ``confide.pki.expiry``).
This module is the command line and the daemon's lifetime (signals, systemd notification);
the daemon's parts are put together in ``agent.assembly``, the commands that ask the running
daemon or read its files live in ``agent.local``. This is the only module of the agent that
configures structlog (STYLE rule 9).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import structlog

from agent.assembly import Agent, build_agent, reload_identity, reload_policy
from agent.config import AgentConfig, load_config
from agent.local.approvals_cli import approve_command, deny_command, jobs_command
from agent.local.audit import AUDIT_FILE
from agent.local.audit_cli import audit_command
from agent.local.backup import backup_command, restore_command
from agent.local.check import run_check
from agent.local.doctor import HANDSHAKE_TIMEOUT_S, doctor_command
from agent.local.selfcheck import DatasetBook, check_identity, runtime_problem
from agent.local.status_cli import budget_command, status_command
from agent.tasks.runner import TaskRunner
from confide import __version__, sdnotify
from confide.exits import run_command
from confide.logs import configure_kwargs
from confide.pki import enroll, load_identity
from confide.pki.certinfo import load_pem_certificate
from confide.pki.expiry import Certificate, ExpiryReminder

__all__ = ["main", "serve"]

_PROG = "confide-agent"
_STOP_JOIN_S = 60.0
_EXPIRY_EVERY_TURNS = 10  # the certificates' expiry is looked at every 10th turn (5 s)

log = structlog.get_logger("confide.agent")


def main(
    argv: Sequence[str] | None = None,
    *,
    extend_runner: Callable[[TaskRunner], None] | None = None,
) -> int:
    """Run ``confide-agent`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Args:
        extend_runner: called with the daemon's task runner once every handler is installed,
            before the session starts (a development harness's fault injection,
            ``confide_dev.faulty_agent``); ``confide-agent`` itself passes none.
    """
    return run_command(_PROG, lambda: _main(argv, extend_runner))


def _main(argv: Sequence[str] | None, extend_runner: Callable[[TaskRunner], None] | None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "enroll":
        return _enroll(args.dir, args.name)
    if args.config is None:
        print(f"{_PROG}: --config FILE is required", file=sys.stderr)
        return 2
    if args.command == "doctor":  # before load_config: a config error is one of its lines
        return doctor_command(args.config, timeout_s=args.timeout)
    cfg = load_config(args.config)
    if args.command == "status":
        return status_command(cfg.api_socket)
    if args.command == "budget":
        return budget_command(cfg.api_socket)
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
    if args.command == "backup":
        return backup_command(cfg, args.to)
    if args.command == "restore":
        return restore_command(cfg, args.source, force=args.force)
    return _run_daemon(cfg, extend_runner)  # no command or "run"


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
    d = sub.add_parser("doctor", help="check config, identity, aggregator, host; print fixes")
    d.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="agent.toml")
    d.add_argument("--timeout", type=float, default=HANDSHAKE_TIMEOUT_S, help="handshake, s")
    a = sub.add_parser("audit", help="show or verify the site's audit trail")
    a.add_argument("action", choices=("show", "verify"))
    a.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="agent.toml")
    b = sub.add_parser("backup", help="copy the state (ledger, audit, approvals) online")
    b.add_argument("--to", type=Path, required=True, help="a new or empty folder")
    b.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="agent.toml")
    r = sub.add_parser("restore", help="put a backup back into the (stopped) agent's state")
    r.add_argument("--from", dest="source", type=Path, required=True, help="the backup folder")
    r.add_argument("--force", action="store_true", help="move a non-empty state folder aside")
    r.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="agent.toml")
    return p


def _enroll(directory: Path, name: str) -> int:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    csr = enroll(directory, name)
    print(f"wrote keys and {csr}")
    print(f"next: send it to the operator: confide pki sign {csr} --role site")
    return 0


# ----- the daemon -----


def _run_daemon(cfg: AgentConfig, extend_runner: Callable[[TaskRunner], None] | None) -> int:
    """Check the site, configure logging, then build the daemon and serve it until a signal."""
    identity = load_identity(
        cert=cfg.tls.cert,
        key=cfg.tls.key,
        signing_key=cfg.tls.signing_key,
        ca=cfg.tls.ca,
        crl=cfg.tls.crl,
        allow_expired=True,  # said in the log, and the session waits for a renewed one
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
    agent = build_agent(cfg, identity=identity, book=book)
    if extend_runner is not None:
        extend_runner(agent.runner)
    return serve(agent)


def serve(agent: Agent) -> int:
    """Run ``agent`` until SIGTERM or SIGINT (or its session ends); returns exit code 0.

    SIGHUP reloads the policy file and the identity (``reload_identity``) on this loop, never
    in the handler. Certificates that end within 14 days are warned about at start and then
    once a day. systemd hears READY once the control API serves, a watchdog ping each turn,
    and STOPPING on the way out.
    """
    cfg = agent.config
    stop = threading.Event()
    hup = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        hup.set()  # the reload runs on the main loop, never in the handler

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    agent.start()
    site = agent.identity.info.name
    log.info(
        "agent_started",
        site=site,
        aggregator=cfg.aggregator_address,
        socket=str(cfg.api_socket),
        datasets=agent.book.usable(),
        device=agent.device,
    )
    notify = sdnotify.from_environ()
    notify.ready(f"site {site}: control socket {cfg.api_socket}")
    reminder = ExpiryReminder()
    _warn_expiry(agent, reminder)
    turns = 0
    try:
        while not stop.wait(0.5) and agent.running():
            notify.watchdog()
            turns += 1
            if hup.is_set():
                hup.clear()
                reload_policy(
                    agent.policy, audit=agent.audit, approvals=agent.approvals, now=time.time()
                )
                reload_identity(agent.identities, audit=agent.audit, now=time.time())
            if turns % _EXPIRY_EVERY_TURNS == 0:
                _warn_expiry(agent, reminder)
    finally:
        log.info("agent_stopping")
        notify.stopping()
        agent.stop(join_s=_STOP_JOIN_S)
        for s, h in previous.items():
            signal.signal(s, h)
    log.info("agent_stopped")
    return 0


def _warn_expiry(agent: Agent, reminder: ExpiryReminder) -> None:
    """Log each certificate in force (the site's, the CA's) that ends within 14 days or has
    ended: the first time, then once a day (``certificate_expiring``/``certificate_expired``)."""
    identity = agent.identity
    certs: dict[str, Certificate] = {
        "certificate": identity.info,
        "ca": load_pem_certificate(identity.ca_pem),
    }
    for notice in reminder.due(certs, now=datetime.now(UTC)):
        (log.error if notice.expired else log.warning)(notice.event, **notice.fields())


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
