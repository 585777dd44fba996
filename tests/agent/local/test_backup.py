"""``confide-agent backup`` and ``restore``: the ledger and the other state files, online and
verified.

The state these tests back up is the previous release's (``tests/fixtures/prev_release``):
a ledger with the charges of a finished private job, and the site's audit trail of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.local.audit import AUDIT_FILE, SiteAudit
from agent.local.backup import LEDGER_FILE, backup_state, restore_state, schema_versions
from agent.main import main
from agent.privacy.ledger import Ledger
from confide.backup import MANIFEST
from confide.errors import InternalError, Reason

ROOT = Path(__file__).resolve().parents[3]
PREV = ROOT / "tests" / "fixtures" / "prev_release"
DATASET = "breast_cancer"


def _spent(state: Path) -> float:
    with Ledger.open(state / LEDGER_FILE) as ledger:
        return ledger.spent(DATASET).epsilon


def _entries(state: Path) -> int:
    audit = SiteAudit(state / AUDIT_FILE)
    try:
        return audit.verify()
    finally:
        audit.close()


@pytest.fixture
def state(tmp_path) -> Path:
    """An agent's state folder holding site-1's files of the previous release, upgraded."""
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    for name in (LEDGER_FILE, AUDIT_FILE):
        shutil.copyfile(PREV / "site-1" / name, d / name)
    assert _spent(d) > 0 and _entries(d) > 0
    return d


def test_a_restore_holds_the_ledgers_charges_and_the_audit_trail(state, tmp_path):
    """A backup restored into an empty folder has the same spent ε and audit chain."""
    manifest = backup_state(state, tmp_path / "b", now=1.0e9)
    assert sorted(manifest.files) == [AUDIT_FILE, LEDGER_FILE]
    done = restore_state(tmp_path / "new", tmp_path / "b", now=2.0e9)
    assert done.audit_entries == _entries(state)
    assert _spent(tmp_path / "new") == _spent(state)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [AUDIT_FILE, LEDGER_FILE]


def test_a_write_in_flight_is_not_in_the_copy_and_does_not_block_it(state, tmp_path):
    """A backup taken while another connection holds an uncommitted write on the ledger (every
    row of every table deleted) copies the ledger as committed, without waiting for it."""
    spent = _spent(state)
    writer = sqlite3.connect(state / LEDGER_FILE, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        tables = [r[0] for r in writer.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            if not table.startswith("sqlite_"):
                writer.execute(f'DELETE FROM "{table}"')
        backup_state(state, tmp_path / "b", now=1.0e9)
        writer.execute("ROLLBACK")
    finally:
        writer.close()
    restore_state(tmp_path / "new", tmp_path / "b", now=2.0e9)
    assert _spent(tmp_path / "new") == spent


def test_backups_under_a_steady_audit_writer_each_restore_whole(state, tmp_path):
    """Backups taken while the daemon's audit trail grows each restore to a chain that
    verifies and holds every entry written before the backup began."""
    initial = _entries(state)
    audit = SiteAudit(state / AUDIT_FILE)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            audit.append("job_denied", at=float(i), job=f"j{i}", detail="test")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for i in range(3):
            before = _entries(state)
            backup_state(state, tmp_path / f"b{i}", now=1.0e9)
            done = restore_state(tmp_path / f"new{i}", tmp_path / f"b{i}", now=2.0e9)
            assert done.audit_entries >= before
    finally:
        stop.set()
        thread.join()
        audit.close()
    assert _entries(state) > initial  # the writer did write meanwhile


def _tamper_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _rehash(backup: Path) -> None:
    body = json.loads((backup / MANIFEST).read_text())
    for name, entry in body["files"].items():
        data = (backup / name).read_bytes()
        entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (backup / MANIFEST).write_text(json.dumps(body))


@pytest.mark.parametrize("name", [LEDGER_FILE, AUDIT_FILE])
def test_an_altered_file_is_refused_by_name(state, tmp_path, name):
    """A byte flipped in a backed-up file refuses the restore naming that file; nothing is
    written."""
    backup_state(state, tmp_path / "b", now=1.0e9)
    _tamper_byte(tmp_path / "b" / name)
    with pytest.raises(InternalError) as err:
        restore_state(tmp_path / "new", tmp_path / "b", now=2.0e9)
    assert err.value.reason is Reason.BACKUP_DAMAGED
    assert str(tmp_path / "b" / name) in err.value.message
    assert not (tmp_path / "new").exists()


def test_an_edited_audit_trail_is_refused_even_with_a_matching_manifest(state, tmp_path):
    """A backup whose audit trail was edited and re-hashed into the manifest fails the chain
    check; the state folder is left empty."""
    backup_state(state, tmp_path / "b", now=1.0e9)
    db = sqlite3.connect(tmp_path / "b" / AUDIT_FILE)
    db.execute("UPDATE site_audit SET body = replace(body, 'task', 'tusk') WHERE seq = 1")
    db.commit()
    db.close()
    _rehash(tmp_path / "b")
    with pytest.raises(InternalError) as err:
        restore_state(tmp_path / "new", tmp_path / "b", now=2.0e9)
    assert err.value.reason is Reason.BACKUP_DAMAGED
    assert list((tmp_path / "new").iterdir()) == []


def test_a_file_from_a_newer_release_is_refused(state, tmp_path):
    """A ledger whose schema version is past what this release writes refuses the restore
    with SCHEMA_TOO_NEW."""
    backup_state(state, tmp_path / "b", now=1.0e9)
    newer = schema_versions()[LEDGER_FILE] + 1
    db = sqlite3.connect(tmp_path / "b" / LEDGER_FILE)
    db.execute(f"PRAGMA user_version={newer}")
    db.commit()
    db.close()
    _rehash(tmp_path / "b")
    with pytest.raises(InternalError) as err:
        restore_state(tmp_path / "new", tmp_path / "b", now=2.0e9)
    assert err.value.reason is Reason.SCHEMA_TOO_NEW
    assert LEDGER_FILE in err.value.message
    assert not (tmp_path / "new").exists()


def test_an_aggregators_backup_is_not_an_agents(state, tmp_path):
    """Restoring a backup of another kind is refused before anything is written."""
    backup_state(state, tmp_path / "b", now=1.0e9)
    body = json.loads((tmp_path / "b" / MANIFEST).read_text())
    body["kind"] = "aggregator"
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(body))
    with pytest.raises(InternalError) as err:
        restore_state(tmp_path / "new", tmp_path / "b", now=2.0e9)
    assert err.value.reason is Reason.BACKUP_DAMAGED


_HOLD_OPEN = """
import sys
from agent.privacy.ledger import Ledger
ledger = Ledger.open(sys.argv[1])
print("open", flush=True)
sys.stdin.read()
"""


def test_state_in_use_or_present_is_never_replaced_silently(state, tmp_path):
    """Restoring over a ledger a running agent holds is refused even with force; over existing
    state it needs force, which moves the old files aside."""
    backup_state(state, tmp_path / "b", now=1.0e9)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_OPEN, str(state / LEDGER_FILE)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        with pytest.raises(InternalError) as err:
            restore_state(state, tmp_path / "b", force=True, now=2.0e9)
        assert err.value.reason is Reason.STATE_NOT_EMPTY
    finally:
        proc.communicate("", timeout=30)
    with pytest.raises(InternalError) as err:
        restore_state(state, tmp_path / "b", now=2.0e9)
    assert err.value.reason is Reason.STATE_NOT_EMPTY
    done = restore_state(state, tmp_path / "b", force=True, now=2.0e9)
    assert done.moved_aside is not None
    assert sorted(p.name for p in done.moved_aside.iterdir()) == [AUDIT_FILE, LEDGER_FILE]
    assert _spent(state) == _spent(done.moved_aside)


def test_the_commands_back_up_and_restore(pki, state, tmp_path, capsys):
    """backup and restore exit 0 and say what they did (restore warns that later charges are
    forgotten); a damaged backup exits 1 with one line naming the file."""
    cfg = tmp_path / "agent.toml"
    (tmp_path / "data.csv").write_text("a,b,y\n1,2,0\n3,4,1\n")
    cfg.write_text(f"""
federation = "testfed"
[aggregator]
address = "127.0.0.1:9"
[tls]
ca = "{pki.dir}/ca.crt"
cert = "{pki.dir}/site-1.crt"
key = "{pki.dir}/site-1.key"
signing_key = "{pki.dir}/site-1.sign.key"
[state]
dir = "{state}"
[datasets.tabular]
path = "{tmp_path}/data.csv"
features = ["a", "b"]
label = "y"
""")
    assert main(["backup", "--to", str(tmp_path / "b"), "--config", str(cfg)]) == 0
    assert LEDGER_FILE in capsys.readouterr().out
    assert main(["restore", "--from", str(tmp_path / "b"), "--config", str(cfg)]) == 1
    assert capsys.readouterr().err.strip().endswith("(state_not_empty)")
    assert main(["restore", "--from", str(tmp_path / "b"), "--force", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "warning: the privacy ledger" in out
    _tamper_byte(tmp_path / "b" / LEDGER_FILE)
    assert main(["restore", "--from", str(tmp_path / "b"), "--force", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "b" / LEDGER_FILE) in err[0]
