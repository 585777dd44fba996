"""``confide-aggregator doctor --config aggregator.toml``: the operator's pre-flight checklist.

One line per check, ok / warn / FAIL, each failure with its fix (``confide.doctor``)::

    config          the file parses (a config error names the key; nothing else is checked)
    tls key         0600 (or stricter), owned by the daemon's user, matches the certificate
    signing key     the same for the Ed25519 signing key
    chain           the certificate is issued by tls.ca, fit for an aggregator, not revoked
    crl             tls.crl is readable, signed by the CA, not overdue (warn: crl = "none")
    names           role aggregator, the configured federation
    expiry          FAIL when the certificate or the CA expired, warn within 14 days
    listen          server.listen can be bound here, or is already served by an aggregator
                    with this identity (a real mutual-TLS handshake with it)
    disk            free space under state.dir (confide.doctor.host.DiskLimits)
    state FILE      aggregator.db: intact, schema no newer than this release's
    blobs           every stored model version's blob is on disk

Exit code: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 when the config
itself does not load (then it is the only line).
"""

from __future__ import annotations

import errno
import socket
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aggregator.config import AggregatorConfig, load_config
from aggregator.store.blobs import FileBlobStore
from aggregator.store.factory import BLOBS_DIR, DB_FILE
from aggregator.store.sqlite_schema import SCHEMA_VERSION
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
    split_address,
)
from confide.errors import EXIT_CONFIG, ConfideError, ConfigError
from confide.pki import Role

__all__ = ["HANDSHAKE_TIMEOUT_S", "STATE_FILE", "Limits", "doctor_command", "run_doctor"]

HANDSHAKE_TIMEOUT_S = 5.0
"""The longest the handshake with an aggregator already listening may take."""

STATE_FILE = StateFile(DB_FILE, "sites, jobs, rounds, model versions, audit", SCHEMA_VERSION)

_REISSUE = (
    "make a new key and CSR (confide-aggregator enroll --dir pki) and have the CA holder sign "
    "it (confide pki sign aggregator.csr --role aggregator --dns HOST)"
)


@dataclass(frozen=True)
class Limits:
    """The doctor's limits (parameters, so tests choose).

    Args:
        handshake_timeout_s: the longest the handshake with a running aggregator may take.
        disk: the free-space thresholds under the state folder.
    """

    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    disk: DiskLimits = field(default_factory=DiskLimits)


def doctor_command(config: Path, *, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> int:
    """Run every check on ``config``, print the checklist, return the exit code."""
    findings = run_doctor(
        config, now=datetime.now(UTC), limits=Limits(handshake_timeout_s=timeout_s)
    )
    for line in render(findings):
        print(line)
    if findings[0].check == "config" and findings[0].status is Status.FAIL:
        return EXIT_CONFIG
    return exit_code(findings)


def run_doctor(config: Path, *, now: datetime, limits: Limits) -> list[Finding]:
    """Every check's finding, in checklist order.

    Args:
        config: the ``aggregator.toml`` to check.
        now: the time certificates are judged at.
        limits: the handshake timeout and disk thresholds.
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
    findings = [
        Finding.ok("config", f"{config}: federation {cfg.federation!r}, listen {cfg.listen}")
    ]
    paths = IdentityPaths(
        ca=cfg.ca,
        cert=cfg.cert,
        key=cfg.key,
        signing_key=cfg.signing_key,
        crl=cfg.crl,
        section="tls",
        reissue=_REISSUE,
    )
    findings += key_findings(paths, owner_uid=daemon_uid(cfg.state_dir))
    findings.append(chain_finding(paths, now=now))
    if cfg.crl is None:
        findings.append(
            Finding.warn(
                "crl",
                'tls.crl = "none": revoked certificates are still accepted',
                "set tls.crl to the CA's crl.pem (confide pki init writes it)",
            )
        )
    else:
        findings.append(crl_finding(cfg.crl, cfg.ca, now=now, key="tls.crl"))
    findings.append(_names(cfg))
    findings.append(expiry_finding(paths, now=now))
    findings.append(_listen(cfg, timeout_s=limits.handshake_timeout_s))
    findings.append(disk_finding(cfg.state_dir, limits=limits.disk))
    findings.append(database_finding(cfg.state_dir, STATE_FILE))
    findings.append(_blobs(cfg.state_dir))
    return findings


def _names(cfg: AggregatorConfig) -> Finding:
    """Role aggregator, the configured federation."""
    try:
        info = read_cert_info(cfg.cert)
    except ConfideError as exc:
        return Finding.fail("names", f"cannot read the certificate: {exc}", _REISSUE)
    if info.role is not Role.AGGREGATOR:
        return Finding.fail(
            "names",
            f"tls.cert is the {info.role.value} certificate of {info.name!r}, not an aggregator's",
            _REISSUE,
        )
    if info.federation != cfg.federation:
        return Finding.fail(
            "names",
            f"federation is {cfg.federation!r} but the certificate is of federation "
            f"{info.federation!r}",
            "correct federation in the config if it is wrong; else install this federation's "
            "aggregator certificate",
        )
    return Finding.ok("names", f"aggregator {info.name!r} of federation {info.federation!r}")


def _listen(cfg: AggregatorConfig, *, timeout_s: float) -> Finding:
    """``server.listen`` can be bound, or an aggregator with this identity already serves it."""
    check = "listen"
    host, port = split_address(cfg.listen)  # the config checked its shape
    if port == 0:
        return Finding.ok(check, f"{cfg.listen}: a free port is chosen at start")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Finding.fail(
            check, f"{cfg.listen}: cannot resolve {host!r}: {exc.strerror}", "fix server.listen"
        )
    family, kind, proto, _, addr = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as exc:
        return _bind_failed(cfg, exc, host=host, port=port, timeout_s=timeout_s)
    return Finding.ok(check, f"{cfg.listen} can be bound")


def _bind_failed(
    cfg: AggregatorConfig, exc: OSError, *, host: str, port: int, timeout_s: float
) -> Finding:
    check = "listen"
    if exc.errno == errno.EADDRINUSE:
        dial = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        try:
            name = read_cert_info(cfg.cert).name
        except ConfideError:
            name = "aggregator"
        done = handshake(
            f"[{dial}]:{port}" if ":" in dial else f"{dial}:{port}",
            server_name=name,
            ca=cfg.ca,
            cert=cfg.cert,
            key=cfg.key,
            timeout_s=timeout_s,
        )
        if done.outcome is Outcome.OK:
            return Finding.ok(
                check, f"{cfg.listen} is served by an aggregator with this identity (running)"
            )
        return Finding.fail(
            check,
            f"{cfg.listen} is in use by another program ({done.outcome.value}: {done.detail})",
            f"find it with: ss -ltnp 'sport = :{port}'; stop it, or change server.listen",
        )
    if exc.errno == errno.EACCES:
        return Finding.fail(
            check,
            f"{cfg.listen}: permission denied",
            "ports below 1024 need CAP_NET_BIND_SERVICE (AmbientCapabilities= in the unit); "
            "or listen on a port from 1024 up",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return Finding.fail(
            check,
            f"{cfg.listen}: {host} is not an address of this machine",
            "set server.listen to one of this host's addresses, or 0.0.0.0",
        )
    return Finding.fail(check, f"{cfg.listen}: {exc.strerror or exc}", "fix server.listen")


def _blobs(state_dir: Path) -> Finding:
    """Every model version the store lists has its blob and header under ``blobs/``."""
    check = "blobs"
    db = state_dir / DB_FILE
    if not db.exists():
        return Finding.ok(check, "no model version stored yet")
    try:
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=10.0)
        try:
            rows = conn.execute("SELECT job, version_no, sha256 FROM model_versions").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Finding.fail(
            check, f"cannot list model versions: {exc}", f"see the state {DB_FILE} line"
        )
    root = state_dir / BLOBS_DIR
    store = FileBlobStore(root) if root.is_dir() else None  # the doctor creates nothing
    missing = [
        (str(job), int(no)) for job, no, sha in rows if store is None or not store.has(str(sha))
    ]
    if missing:
        job, no = missing[0]
        return Finding.fail(
            check,
            f"{len(missing)} of {len(rows)} model versions have no blob under {root} "
            f"(first: job {job!r} version {no})",
            f"restore {root} from the backup taken with {db} (README: Backups)",
        )
    return Finding.ok(check, f"{len(rows)} model versions, every blob present under {root}")
