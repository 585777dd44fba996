"""`confide-agent doctor`: each check fails once, with its line and exit code; then all green.

The identity is real (a CA made here), the aggregator is a real one serving mutual TLS on
127.0.0.1, and the files are real files broken the way a site breaks them.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.local.doctor import Probes, run_doctor
from agent.local.selfcheck import probe_runtime
from agent.main import main
from agent.privacy.ledger import Ledger
from agent.workers.sandbox import Isolation
from agent.workers.sandbox import probe as probe_sandbox
from aggregator.config import AggregatorConfig
from aggregator.server import build
from confide.doctor import DiskLimits, Finding, Status, exit_code
from confide.errors import InternalError, Reason
from confide.pki import Role, init_ca, issue, revoke

FED = "doctorfed"
CSV = "a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))
NOW = datetime.now(UTC)
CPU_RUNTIME = {"torch": "2.5.1+cpu", "opacus": "1.5.2", "cuda": False, "devices": 0}
"""What ``probe_runtime`` reports on a CPU host: importing torch in a child takes seconds,
so only the gpu test runs the real probe."""


@dataclass(frozen=True)
class World:
    ca_dir: Path  # the federation CA: aggregator, site-1, and certificates tests need
    foreign_dir: Path  # another CA of the same federation name: a site-1 it issued
    address: str  # the real aggregator, 127.0.0.1:PORT
    isolation: Isolation  # this host's sandbox, probed once
    runtime: Mapping[str, object]  # a CPU host's runtime report (the real probe: gpu test)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A CA, an aggregator serving on 127.0.0.1, and the host probes run once."""
    ca_dir = tmp_path_factory.mktemp("pki")
    init_ca(ca_dir, federation=FED, now=NOW - timedelta(days=60))
    issue(ca_dir, "aggregator", role=Role.AGGREGATOR, dns=["localhost"], ips=["127.0.0.1"])
    issue(ca_dir, "site-1", role=Role.SITE)
    issue(ca_dir, "revoked-site", role=Role.SITE)
    revoke(ca_dir, "revoked-site")
    issue(ca_dir, "old-site", role=Role.SITE, days=1, now=NOW - timedelta(days=30))
    issue(ca_dir, "soon-site", role=Role.SITE, days=20, now=NOW - timedelta(days=10))
    foreign = tmp_path_factory.mktemp("foreign")
    init_ca(foreign, federation=FED)
    issue(foreign, "site-1", role=Role.SITE)
    agg, port = build(
        AggregatorConfig(
            federation=FED,
            listen="127.0.0.1:0",
            state_dir=tmp_path_factory.mktemp("agg-state"),
            ca=ca_dir / "ca.crt",
            cert=ca_dir / "aggregator.crt",
            key=ca_dir / "aggregator.key",
            signing_key=ca_dir / "aggregator.sign.key",
            crl=ca_dir / "crl.pem",
        )
    )
    try:
        yield World(ca_dir, foreign, f"127.0.0.1:{port}", probe_sandbox(), CPU_RUNTIME)
    finally:
        agg.stop(grace=0)


def _site(tmp_path: Path, world: World, *, name: str = "site-1", ca_dir: Path | None = None):
    """Copy one identity's files into this test's folder (0600 keys), with the CA and CRL."""
    src = ca_dir or world.ca_dir
    pki = tmp_path / "pki"
    pki.mkdir()
    for f in (f"{name}.crt", f"{name}.key", f"{name}.sign.key", "ca.crt", "crl.pem"):
        shutil.copy2(src / f, pki / f)
    return pki


def _config(tmp_path: Path, world: World, *, name: str = "site-1", extra: str = "", **kw) -> Path:
    """Write agent.toml for ``name`` against the real aggregator; ``kw`` overrides keys."""
    pki = tmp_path / "pki" if (tmp_path / "pki").exists() else _site(tmp_path, world, name=name)
    (tmp_path / "data.csv").write_text(kw.pop("csv", CSV))
    values = {
        "address": world.address,
        "server_name": "aggregator",
        "device": "cpu",
        "ca": f"{pki}/ca.crt",
        "crl": f"{pki}/crl.pem",
    }
    values.update(kw)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
federation = "{FED}"
{extra}
[aggregator]
address = "{values["address"]}"
server_name = "{values["server_name"]}"
[tls]
ca = "{values["ca"]}"
cert = "{pki}/{name}.crt"
key = "{pki}/{name}.key"
signing_key = "{pki}/{name}.sign.key"
crl = "{values["crl"]}"
[state]
dir = "{tmp_path}/state"
[worker]
device = "{values["device"]}"
[datasets.tabular]
path = "{tmp_path}/data.csv"
features = ["a", "b"]
label = "y"
""")
    return cfg


def _doctor(cfg: Path, world: World, **probes) -> list[Finding]:
    probes.setdefault("sandbox", lambda: world.isolation)
    probes.setdefault("runtime", lambda: world.runtime)
    return run_doctor(cfg, now=NOW, probes=Probes(**probes))


def _only_failure(findings: list[Finding], check: str) -> Finding:
    """The one failed line, which must be ``check``'s; the doctor's exit code is 1."""
    failed = [f for f in findings if f.status is Status.FAIL]
    assert [f.check for f in failed] == [check], failed
    assert exit_code(findings) == 1
    assert failed[0].fix
    return failed[0]


def _line(findings: list[Finding], check: str) -> Finding:
    (found,) = [f for f in findings if f.check == check]
    return found


def test_all_green_on_a_well_installed_site(tmp_path, world):
    """A site installed as documented: every line ok, exit 0, and the handshake was real."""
    if not world.isolation.sandboxed:
        pytest.skip(f"this host cannot build the sandbox: {world.isolation.detail}")
    findings = _doctor(_config(tmp_path, world), world)
    assert [f for f in findings if f.status is not Status.OK] == []
    assert exit_code(findings) == 0
    checks = [f.check for f in findings]
    assert checks == [
        "config",
        "tls key",
        "signing key",
        "chain",
        "crl",
        "names",
        "expiry",
        "aggregator",
        "dataset tabular",
        "sandbox",
        "runtime",
        "gpu",
        "disk",
        "state ledger.db",
        "state audit.db",
        "state approvals.db",
    ]
    assert "TLSv1.3" in _line(findings, "aggregator").detail


def test_a_config_error_is_the_only_line_names_the_key_and_exits_2(tmp_path, world, capsys):
    """An unknown key: the config line fails naming it, nothing else runs, exit 2."""
    cfg = _config(tmp_path, world, extra="sever_address = 1")
    assert main(["doctor", "--config", str(cfg)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL  config") and "config key 'sever_address'" in out[0]
    assert out[1].strip().startswith("fix: edit")
    assert out[-1] == "doctor: 1 failure, 0 warnings (1 check)"


def test_a_key_readable_by_others_fails_with_chmod(tmp_path, world):
    """A TLS key of mode 0644 fails its line, and the fix is the chmod."""
    cfg = _config(tmp_path, world)
    key = tmp_path / "pki" / "site-1.key"
    os.chmod(key, 0o644)
    line = _only_failure(_doctor(cfg, world), "tls key")
    assert "mode 644" in line.detail and line.fix == f"chmod 600 {key}"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_key_owned_by_another_user_fails_with_chown(tmp_path, world):
    """A signing key not owned by the daemon's user (the state folder's owner) fails."""
    cfg = _config(tmp_path, world)
    (tmp_path / "state").mkdir()
    sign = tmp_path / "pki" / "site-1.sign.key"
    os.chown(sign, 4242, 4242)
    line = _only_failure(_doctor(cfg, world), "signing key")
    assert "not by the daemon's user" in line.detail and line.fix.startswith("chown root: ")


def test_a_key_for_another_certificate_fails(tmp_path, world):
    """A TLS key that is not the certificate's key fails, saying so."""
    cfg = _config(tmp_path, world)
    shutil.copy2(world.foreign_dir / "site-1.key", tmp_path / "pki" / "site-1.key")
    findings = _doctor(cfg, world)
    assert "does not match the certificate" in _line(findings, "tls key").detail
    assert _line(findings, "tls key").status is Status.FAIL and exit_code(findings) == 1


def test_a_certificate_from_another_ca_fails_the_chain(tmp_path, world):
    """A site certificate from another CA fails the chain line (and the aggregator refuses it)."""
    pki = _site(tmp_path, world, ca_dir=world.foreign_dir)
    shutil.copy2(world.ca_dir / "ca.crt", pki / "ca.crt")
    shutil.copy2(world.ca_dir / "crl.pem", pki / "crl.pem")
    findings = _doctor(_config(tmp_path, world), world)
    chain = _line(findings, "chain")
    assert chain.status is Status.FAIL and "does not verify against the CA" in chain.detail
    agg = _line(findings, "aggregator")
    assert agg.status is Status.FAIL and ": refused: " in agg.detail
    assert "refuses this site's certificate" in agg.fix
    assert exit_code(findings) == 1


def test_a_revoked_certificate_fails_the_chain(tmp_path, world):
    """A certificate the CRL lists fails the chain line, whose fix is a new certificate."""
    cfg = _config(tmp_path, world, name="revoked-site")
    line = _only_failure(_doctor(cfg, world), "chain")
    assert "is revoked" in line.detail and "cannot be reinstated" in line.fix


def test_an_unreadable_crl_fails(tmp_path, world):
    """A tls.crl that is not a CRL fails the crl line."""
    cfg = _config(tmp_path, world)
    (tmp_path / "pki" / "crl.pem").write_text("not a crl\n")
    line = _only_failure(_doctor(cfg, world), "crl")
    assert "is not a PEM revocation list" in line.detail


def test_a_certificate_of_another_site_fails_the_names(tmp_path, world):
    """`site` that is not the certificate's name fails the names line, naming the key."""
    cfg = _config(tmp_path, world, extra='site = "hospital-b"')
    line = _only_failure(_doctor(cfg, world), "names")
    assert "config key 'site'" in line.detail and "site-1" in line.detail


def test_an_expired_certificate_fails_the_expiry_only_as_expiry(tmp_path, world):
    """An expired certificate fails the expiry line; the chain line does not repeat it."""
    findings = _doctor(_config(tmp_path, world, name="old-site"), world)
    assert _line(findings, "chain").status is Status.OK
    expiry = _line(findings, "expiry")
    assert expiry.status is Status.FAIL and expiry.detail.startswith("certificate expired at")
    assert "confide-agent enroll" in expiry.fix and exit_code(findings) == 1


def test_a_certificate_ending_within_14_days_is_a_warning_and_exits_0(tmp_path, world):
    """Ten days left: the expiry line warns (renew), and warnings alone exit 0."""
    findings = _doctor(_config(tmp_path, world, name="soon-site"), world)
    expiry = _line(findings, "expiry")
    assert expiry.status is Status.WARN and "(9 days left)" in expiry.detail
    assert [f.check for f in findings if f.status is Status.FAIL] == []
    assert exit_code(findings) == 0


def test_an_unreachable_aggregator_fails(tmp_path, world):
    """Nothing listening at the address: the aggregator line says unreachable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connection refused
    line = _only_failure(
        _doctor(_config(tmp_path, world, address=f"127.0.0.1:{port}"), world), "aggregator"
    )
    assert ": unreachable: " in line.detail and "firewall" in line.fix


def test_a_silent_aggregator_fails_within_the_timeout(tmp_path, world):
    """A server that accepts TCP and never speaks TLS: the handshake gives up at --timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cfg = _config(tmp_path, world, address=f"127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        line = _only_failure(_doctor(cfg, world, handshake_timeout_s=0.3), "aggregator")
        elapsed = time.monotonic() - started
    assert "accepted TCP but TLS did not finish in 0.3 s" in line.detail
    assert elapsed < 5.0


def test_a_wrong_server_name_is_a_name_mismatch(tmp_path, world):
    """server_name not on the aggregator's certificate: the aggregator line says name mismatch."""
    cfg = _config(tmp_path, world, server_name="agg.example.org")
    line = _only_failure(_doctor(cfg, world), "aggregator")
    assert ": name_mismatch: " in line.detail and "server_name" in line.fix


def test_an_aggregator_of_another_ca_is_untrusted(tmp_path, world):
    """A site of another CA dialling this aggregator: the aggregator line says untrusted server."""
    pki = _site(tmp_path, world, ca_dir=world.foreign_dir)
    (pki / "crl.pem").unlink()
    shutil.copy2(world.foreign_dir / "crl.pem", pki / "crl.pem")
    line = _only_failure(_doctor(_config(tmp_path, world), world), "aggregator")
    assert ": untrusted_server: " in line.detail


def test_a_dataset_missing_a_column_fails(tmp_path, world):
    """A CSV without the declared feature column fails its dataset line, quoting no value."""
    cfg = _config(tmp_path, world, csv="a,y\n1,0\n2,1\n")
    line = _only_failure(_doctor(cfg, world), "dataset tabular")
    assert "column 'b' is missing" in line.detail and "schema_mismatch" in line.detail


def test_a_host_that_cannot_build_the_sandbox_fails(tmp_path, world):
    """bwrap failing to build the sandbox (user namespaces off) fails the sandbox line."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    cfg = _config(tmp_path, world)
    line = _only_failure(
        _doctor(cfg, world, sandbox=lambda: probe_sandbox(bwrap=str(fake))), "sandbox"
    )
    assert "uid map: Permission denied" in line.detail and "bubblewrap" in line.fix


def test_a_runtime_that_does_not_start_fails(tmp_path, world):
    """A worker runtime whose import fails in the child fails the runtime line."""

    def broken() -> Mapping[str, object]:
        raise InternalError(
            "the worker runtime does not start: ImportError: libtorch_cpu.so",
            reason=Reason.WORKER_FAILED,
        )

    line = _only_failure(_doctor(_config(tmp_path, world), world, runtime=broken), "runtime")
    assert "libtorch_cpu.so" in line.detail and "pip install" in line.fix


@pytest.mark.slow  # the real probe imports torch in a child process: seconds of CPU
def test_gpus_asked_for_but_not_seen_fail(tmp_path, world):
    """worker.device = cuda:999: the real runtime sees fewer devices, so the gpu line fails."""
    cfg = _config(tmp_path, world, device="cuda:999")
    line = _only_failure(_doctor(cfg, world, runtime=probe_runtime), "gpu")
    assert "CUDA device(s)" in line.detail and 'worker.device = "cpu"' in line.fix


def test_a_gpu_the_sandbox_does_not_bind_fails(tmp_path, world):
    """worker.device = cuda with a sandbox that binds no GPU: the worker would see none."""
    cfg = _config(tmp_path, world, device="cuda")
    sandboxed = Isolation(sandboxed=True, bwrap="/usr/bin/bwrap", detail="sandboxed")
    seen = {**world.runtime, "cuda": True, "devices": 1}
    line = _only_failure(
        _doctor(cfg, world, sandbox=lambda: sandboxed, runtime=lambda: seen), "gpu"
    )
    assert "binds no GPU" in line.detail and line.fix == "set [sandbox] gpus = [0]"


def test_too_little_free_disk_fails(tmp_path, world):
    """Free space under the state folder below the threshold fails the disk line."""
    cfg = _config(tmp_path, world)
    limits = DiskLimits(fail_bytes=2**62, warn_bytes=2**63)
    line = _only_failure(_doctor(cfg, world, disk=limits), "disk")
    assert "free under" in line.detail and "under 4294967296.0 GiB" in line.detail


def test_a_damaged_ledger_fails_its_integrity_check(tmp_path, world):
    """A ledger whose index no longer matches its rows fails its state line; fix: the backup."""
    cfg = _config(tmp_path, world)
    (tmp_path / "state").mkdir(mode=0o700)
    path = tmp_path / "state" / "ledger.db"
    Ledger.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE filler (a INTEGER, b INTEGER)")
        db.executemany("INSERT INTO filler VALUES (?, ?)", [(i, 2 * i) for i in range(50)])
        db.execute("CREATE INDEX filler_a ON filler (a)")
    with sqlite3.connect(path) as db:  # the index's pages stay, its definition changes
        db.execute("PRAGMA writable_schema=ON")
        db.execute(
            "UPDATE sqlite_master SET sql = 'CREATE INDEX filler_a ON filler (b)' "
            "WHERE name = 'filler_a'"
        )
    line = _only_failure(_doctor(cfg, world), "state ledger.db")
    assert "is damaged: row 2 missing from index filler_a" in line.detail
    assert "restore it from the last backup" in line.fix


def test_a_state_file_that_is_not_a_database_fails(tmp_path, world):
    """An approvals file overwritten with other bytes fails its state line."""
    cfg = _config(tmp_path, world)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "approvals.db").write_bytes(b"\x00garbage" * 1000)
    line = _only_failure(_doctor(cfg, world), "state approvals.db")
    assert "is not a readable SQLite database: file is not a database" in line.detail


def test_a_state_file_from_a_newer_release_fails(tmp_path, world):
    """An audit file whose schema version this release does not know fails its state line."""
    cfg = _config(tmp_path, world)
    (tmp_path / "state").mkdir(mode=0o700)
    with sqlite3.connect(tmp_path / "state" / "audit.db") as db:
        db.execute("PRAGMA user_version=7")
    line = _only_failure(_doctor(cfg, world), "state audit.db")
    assert "schema 7, newer than this release's 0" in line.detail


def test_the_checks_run_in_one_pass_and_report_every_failure(tmp_path, world):
    """Two broken things at once: both lines fail in the same run, each with its fix."""
    cfg = _config(tmp_path, world, server_name="wrong", csv="a,y\n1,0\n")
    os.chmod(tmp_path / "pki" / "site-1.sign.key", 0o640)
    findings = _doctor(cfg, world)
    failed = {f.check for f in findings if f.status is Status.FAIL}
    assert failed == {"signing key", "aggregator", "dataset tabular"}
    assert all(f.fix for f in findings if f.status is Status.FAIL)
