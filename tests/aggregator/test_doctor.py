"""`confide-aggregator doctor`: each check fails once, with its line and exit code; all green.

Real certificates from a CA made here, real state files written by the real store, and a real
aggregator listening on 127.0.0.1 for the check that finds the address already served.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.config import AggregatorConfig
from aggregator.doctor import Limits, run_doctor
from aggregator.main import main
from aggregator.server import build
from aggregator.store import StoreConfig, open_blobs, open_store
from confide.doctor import DiskLimits, Finding, Status, exit_code
from confide.pki import Role, init_ca, issue

FED = "doctorfed"
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The federation CA with a good, an expired and a foreign-CA aggregator certificate."""
    d = tmp_path_factory.mktemp("pki")
    init_ca(d, federation=FED, now=NOW - timedelta(days=60))
    issue(d, "aggregator", role=Role.AGGREGATOR, dns=["localhost"], ips=["127.0.0.1"])
    issue(d, "old-aggregator", role=Role.AGGREGATOR, days=1, now=NOW - timedelta(days=30))
    issue(d, "site-1", role=Role.SITE)
    foreign = d / "foreign"
    init_ca(foreign, federation=FED)
    issue(foreign, "aggregator", role=Role.AGGREGATOR)
    return d


def _config(tmp_path: Path, ca_dir: Path, *, name: str = "aggregator", **kw: str) -> Path:
    """Copy ``name``'s files here and write aggregator.toml for them; ``kw`` overrides keys."""
    pki = tmp_path / "pki"
    if not pki.exists():
        pki.mkdir()
        for f in (f"{name}.crt", f"{name}.key", f"{name}.sign.key", "ca.crt", "crl.pem"):
            shutil.copy2(ca_dir / f, pki / f)
    values = {
        "federation": FED,
        "listen": "127.0.0.1:0",
        "crl": f"{pki}/crl.pem",
        "cert": f"{pki}/{name}.crt",
    }
    values.update(kw)
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text(f"""
federation = "{values["federation"]}"
[server]
listen = "{values["listen"]}"
[tls]
ca = "{pki}/ca.crt"
cert = "{values["cert"]}"
key = "{pki}/{name}.key"
signing_key = "{pki}/{name}.sign.key"
crl = "{values["crl"]}"
[state]
dir = "{tmp_path}/state"
""")
    return cfg


def _state(tmp_path: Path) -> Path:
    """A state folder with a real store holding one model version and its blob."""
    state = tmp_path / "state"
    store = open_store(StoreConfig(), state_dir=state)
    store.close()
    sha, _ = open_blobs(StoreConfig(), state_dir=state).put([("w", _weights())])
    with sqlite3.connect(state / "aggregator.db") as db:
        db.execute(
            "INSERT INTO model_versions (job, version_no, sha256, created) VALUES (?, ?, ?, ?)",
            ("job-1", 0, sha, 0.0),
        )
    return state


def _weights():
    import numpy as np

    return np.arange(6, dtype=np.float32).reshape(2, 3)


def _doctor(cfg: Path, **limits) -> list[Finding]:
    return run_doctor(cfg, now=NOW, limits=Limits(**limits))


def _only_failure(findings: list[Finding], check: str) -> Finding:
    """The one failed line, which must be ``check``'s; the doctor's exit code is 1."""
    failed = [f for f in findings if f.status is Status.FAIL]
    assert [f.check for f in failed] == [check], failed
    assert exit_code(findings) == 1 and failed[0].fix
    return failed[0]


def _line(findings: list[Finding], check: str) -> Finding:
    (found,) = [f for f in findings if f.check == check]
    return found


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_all_green_with_a_bindable_address_and_a_stored_model(tmp_path, ca_dir, free_port):
    """A well-installed aggregator with state: every line ok, exit 0."""
    _state(tmp_path)
    findings = _doctor(_config(tmp_path, ca_dir, listen=f"127.0.0.1:{free_port}"))
    assert [f for f in findings if f.status is not Status.OK] == []
    assert exit_code(findings) == 0
    assert [f.check for f in findings] == [
        "config",
        "tls key",
        "signing key",
        "chain",
        "crl",
        "names",
        "expiry",
        "listen",
        "disk",
        "state aggregator.db",
        "blobs",
    ]
    assert _line(findings, "listen").detail == f"127.0.0.1:{free_port} can be bound"
    assert "schema 2" in _line(findings, "state aggregator.db").detail
    assert _line(findings, "blobs").detail.startswith("1 model versions, every blob present")


def test_the_command_prints_the_checklist_and_exits_2_on_a_config_error(tmp_path, capsys):
    """`confide-aggregator doctor` with an invalid key: one FAIL line naming it, exit 2."""
    (tmp_path / "a.toml").write_text('federation = "f"\n[server]\nlisten = "nowhere"\n')
    assert main(["doctor", "--config", str(tmp_path / "a.toml")]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL  config") and "config key 'server.listen'" in out[0]
    assert out[-1] == "doctor: 1 failure, 0 warnings (1 check)"


def test_the_command_exits_1_on_a_failed_check(tmp_path, ca_dir, capsys):
    """`confide-aggregator doctor --config` after the command: a failed line, its fix, exit 1."""
    cfg = _config(tmp_path, ca_dir)
    os.chmod(tmp_path / "pki" / "aggregator.key", 0o640)
    assert main(["doctor", "--config", str(cfg), "--timeout", "2"]) == 1
    out = capsys.readouterr().out.splitlines()
    (i,) = [n for n, line in enumerate(out) if line.startswith("FAIL  tls key")]
    assert out[i + 1] == f"      fix: chmod 600 {tmp_path}/pki/aggregator.key"
    assert out[-1] == "doctor: 1 failure, 0 warnings (11 checks)"


def test_a_signing_key_readable_by_group_fails(tmp_path, ca_dir):
    """A signing key of mode 0640 fails its line with the chmod."""
    cfg = _config(tmp_path, ca_dir)
    os.chmod(tmp_path / "pki" / "aggregator.sign.key", 0o640)
    line = _only_failure(_doctor(cfg), "signing key")
    assert "mode 640" in line.detail and line.fix.startswith("chmod 600 ")


def test_a_certificate_from_another_ca_fails_the_chain(tmp_path, ca_dir):
    """An aggregator certificate the configured CA did not issue fails the chain line."""
    cfg = _config(tmp_path, ca_dir)
    for f in ("aggregator.crt", "aggregator.key", "aggregator.sign.key"):
        shutil.copy2(ca_dir / "foreign" / f, tmp_path / "pki" / f)
    line = _only_failure(_doctor(cfg), "chain")
    assert "does not verify against the CA" in line.detail
    assert "confide-aggregator enroll" in line.fix


def test_a_crl_not_signed_by_the_ca_fails(tmp_path, ca_dir):
    """A revocation list of another CA fails the crl line."""
    cfg = _config(tmp_path, ca_dir)
    shutil.copy2(ca_dir / "foreign" / "crl.pem", tmp_path / "pki" / "crl.pem")
    line = _only_failure(_doctor(cfg), "crl")
    assert "is not signed by the CA" in line.detail


def test_running_without_a_crl_is_a_warning(tmp_path, ca_dir):
    """crl = "none": the crl line warns that revoked certificates are accepted; exit 0."""
    findings = _doctor(_config(tmp_path, ca_dir, crl="none"))
    crl = _line(findings, "crl")
    assert crl.status is Status.WARN and "revoked certificates are still accepted" in crl.detail
    assert exit_code(findings) == 0


def test_a_site_certificate_fails_the_names(tmp_path, ca_dir):
    """tls.cert holding a site's certificate: the names line says it is not an aggregator's."""
    _config(tmp_path, ca_dir)
    for f in ("site-1.crt", "site-1.key", "site-1.sign.key"):
        shutil.copy2(ca_dir / f, tmp_path / "pki" / f.replace("site-1", "aggregator"))
    line = _only_failure(_doctor(tmp_path / "aggregator.toml"), "names")
    assert "is the site certificate of 'site-1', not an aggregator's" in line.detail


def test_another_federation_name_fails_the_names(tmp_path, ca_dir):
    """federation in the config that the certificate does not carry fails the names line."""
    line = _only_failure(_doctor(_config(tmp_path, ca_dir, federation="otherfed")), "names")
    assert "federation is 'otherfed'" in line.detail


def test_an_expired_certificate_fails_the_expiry(tmp_path, ca_dir):
    """An expired aggregator certificate fails the expiry line (and only that line)."""
    line = _only_failure(_doctor(_config(tmp_path, ca_dir, name="old-aggregator")), "expiry")
    assert line.detail.startswith("certificate expired at")


def test_an_address_held_by_another_program_fails(tmp_path, ca_dir):
    """server.listen taken by a plain socket: the listen line fails and says how to find it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = _only_failure(
            _doctor(_config(tmp_path, ca_dir, listen=f"127.0.0.1:{port}"), handshake_timeout_s=0.5),
            "listen",
        )
    assert "is in use by another program" in line.detail and f"sport = :{port}" in line.fix


def test_an_address_served_by_this_aggregator_is_ok(tmp_path, ca_dir):
    """The address held by a running aggregator with this identity: found by a handshake, ok."""
    cfg = _config(tmp_path, ca_dir)
    pki = tmp_path / "pki"
    agg, port = build(
        AggregatorConfig(
            federation=FED,
            listen="127.0.0.1:0",
            state_dir=tmp_path / "running",
            ca=pki / "ca.crt",
            cert=pki / "aggregator.crt",
            key=pki / "aggregator.key",
            signing_key=pki / "aggregator.sign.key",
            crl=pki / "crl.pem",
        )
    )
    try:
        cfg.write_text(cfg.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        findings = _doctor(cfg, handshake_timeout_s=5.0)
    finally:
        agg.stop(grace=0)
    listen = _line(findings, "listen")
    assert (
        listen.status is Status.OK and "served by an aggregator with this identity" in listen.detail
    )


def test_too_little_free_disk_fails(tmp_path, ca_dir):
    """Free space under state.dir below the threshold fails the disk line."""
    limits = DiskLimits(fail_bytes=2**62, warn_bytes=2**63)
    line = _only_failure(_doctor(_config(tmp_path, ca_dir), disk=limits), "disk")
    assert "free under" in line.detail


def test_little_free_disk_warns(tmp_path, ca_dir):
    """Free space between the two thresholds is a warning, exit 0."""
    findings = _doctor(_config(tmp_path, ca_dir), disk=DiskLimits(fail_bytes=1, warn_bytes=2**62))
    assert _line(findings, "disk").status is Status.WARN and exit_code(findings) == 0


def test_a_store_from_a_newer_release_fails(tmp_path, ca_dir):
    """aggregator.db with a schema version above this release's fails its state line."""
    cfg = _config(tmp_path, ca_dir)
    state = _state(tmp_path)
    with sqlite3.connect(state / "aggregator.db") as db:
        db.execute("PRAGMA user_version=99")
    line = _only_failure(_doctor(cfg), "state aggregator.db")
    assert "schema 99, newer than this release's 2" in line.detail


def test_a_damaged_store_fails(tmp_path, ca_dir):
    """aggregator.db whose primary-key index no longer matches its rows fails its state line."""
    cfg = _config(tmp_path, ca_dir)
    state = _state(tmp_path)
    with sqlite3.connect(state / "aggregator.db") as db:
        db.execute("CREATE TABLE filler (a INTEGER, b INTEGER)")
        db.executemany("INSERT INTO filler VALUES (?, ?)", [(i, 2 * i) for i in range(50)])
        db.execute("CREATE INDEX filler_a ON filler (a)")
    with sqlite3.connect(state / "aggregator.db") as db:
        db.execute("PRAGMA writable_schema=ON")
        db.execute(
            "UPDATE sqlite_master SET sql = 'CREATE INDEX filler_a ON filler (b)' "
            "WHERE name = 'filler_a'"
        )
    line = _only_failure(_doctor(cfg), "state aggregator.db")
    assert "is damaged" in line.detail and "backup" in line.fix


def test_a_model_version_without_its_blob_fails(tmp_path, ca_dir):
    """A stored model version whose blob file is gone fails the blobs line."""
    cfg = _config(tmp_path, ca_dir)
    state = _state(tmp_path)
    for blob in (state / "blobs").rglob("*"):
        if blob.is_file() and blob.suffix != ".header":
            blob.unlink()
    line = _only_failure(_doctor(cfg), "blobs")
    assert "1 of 1 model versions have no blob" in line.detail and "job 'job-1'" in line.detail
