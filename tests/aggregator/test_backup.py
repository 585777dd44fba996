"""``confide-aggregator backup`` and ``restore``: online, consistent, verified, refusing damage."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from aggregator.backup import backup_state, restore_state
from aggregator.main import main
from aggregator.store import AuditNote, JobRow, ModelRow, SiteRoundRow, open_blobs, open_store
from aggregator.store.factory import DB_FILE
from aggregator.store.sqlite_schema import SCHEMA_VERSION
from confide import bundle
from confide.backup import MANIFEST
from confide.errors import InternalError, Reason
from confide.v1 import common_pb2
from tests.aggregator.conftest import make_config

ROOT = Path(__file__).resolve().parents[2]


def _note(i: int) -> AuditNote:
    return AuditNote(event=f"e{i}", actor="op", at=float(i), job="j", round=i, detail="")


def _answer(rnd: int, site: str) -> SiteRoundRow:
    return SiteRoundRow(
        job="j",
        round=rnd,
        site=site,
        outcome="ok",
        reason="",
        num_samples=10,
        epsilon=0.5,
        update_epsilon=0.1,
        metrics={},
    )


class _Live:
    """A running aggregator's store and blobs, advanced one completed round at a time."""

    def __init__(self, config) -> None:
        self.store = open_store(config.store, state_dir=config.state_dir)
        self.blobs = open_blobs(config.store, state_dir=config.state_dir)
        v0, _ = self.blobs.put([("w", np.zeros(8, np.float32))])
        job = JobRow(
            id="j",
            spec=b"spec",
            signed_job=b"env",
            signer_cert=b"pem",
            state="running",
            error="",
            submitted_by="op",
            created=1.0,
        )
        model = ModelRow(job="j", version_no=0, sha256=v0, optimizer_state="", created=1.0)
        self.store.add_job(job, model, audit=_note(0))
        self.rounds = 0
        self.last = v0

    def complete_round(self) -> None:
        """Start, answer and complete the next round with a new model and optimizer blob."""
        r = self.rounds + 1
        self.store.start_round("j", r, attempt=1, model_in=self.last, at=float(r), audit=_note(r))
        self.store.record_site(_answer(r, "site-1"))
        sha, _ = self.blobs.put([("w", np.full(8, r, np.float32))])
        opt, _ = self.blobs.put([("m", np.full(8, -r, np.float32))])
        row = ModelRow(job="j", version_no=r, sha256=sha, optimizer_state=opt, created=float(r))
        self.store.complete_round("j", r, model=row, metrics={}, audit=_note(r))
        self.rounds, self.last = r, sha


@pytest.fixture
def live(pki, tmp_path):
    """A store with a job and two completed rounds, open as the running daemon holds it."""
    state = _Live(make_config(pki, tmp_path / "state"))
    state.complete_round()
    state.complete_round()
    yield state
    state.store.close()


def _restored(pki, backup: Path, target: Path, **kw):
    config = make_config(pki, target)
    done = restore_state(config, backup, now=2.0e9, **kw)
    return config, done


def test_a_backup_restores_every_round_model_and_audit_entry(pki, live, tmp_path):
    """A restore of a backup holds the rows, the blobs and the audit chain of the live state."""
    backup_state(make_config(pki, tmp_path / "state"), tmp_path / "b", now=1.0e9)
    config, done = _restored(pki, tmp_path / "b", tmp_path / "new")
    assert done.audit_entries == live.store.verify_audit_chain()
    assert done.blobs == 2 * live.rounds + 1  # v0, and a model and an optimizer per round
    st = open_store(config.store, state_dir=config.state_dir)
    blobs = open_blobs(config.store, state_dir=config.state_dir)
    try:
        assert st.models("j") == live.store.models("j")
        assert st.rounds("j") == live.store.rounds("j")
        assert st.round_sites("j") == live.store.round_sites("j")
        for m in st.models("j"):
            np.testing.assert_array_equal(
                blobs.load(m.sha256)[0][1], live.blobs.load(m.sha256)[0][1]
            )
    finally:
        st.close()
    assert not any(p.name.startswith(".restore-") for p in config.state_dir.iterdir())


def test_a_write_in_flight_is_not_in_the_copy_and_does_not_block_it(pki, live, tmp_path):
    """A backup taken inside another connection's open write transaction copies the state as
    committed before it, and the write commits afterwards."""
    config = make_config(pki, tmp_path / "state")
    before = live.store.verify_audit_chain()

    def back_up_now() -> None:
        backup_state(config, tmp_path / "b", now=1.0e9)

    live.store.record_site(_answer(2, "site-2"), audit=_note(99), before_commit=back_up_now)
    assert live.store.verify_audit_chain() == before + 1
    restored, done = _restored(pki, tmp_path / "b", tmp_path / "new")
    assert done.audit_entries == before
    st = open_store(restored.store, state_dir=restored.state_dir)
    try:
        assert [a.site for a in st.round_sites("j", lo=2, hi=2)] == ["site-1"]
    finally:
        st.close()


def test_backups_under_a_steady_writer_each_restore_whole(pki, live, tmp_path):
    """Backups taken while another thread completes round after round each restore to a store
    whose audit chain verifies and whose every model version has its blobs."""
    config = make_config(pki, tmp_path / "state")
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                live.complete_round()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = []
        for i in range(3):
            start = live.rounds
            backup_state(config, tmp_path / f"b{i}", now=1.0e9)
            _, done = _restored(pki, tmp_path / f"b{i}", tmp_path / f"new{i}")
            seen.append(done.audit_entries)
            assert done.audit_entries >= 1 + 2 * start  # every round completed before is in
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert live.rounds > 2


def _tamper_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["store", "blob", "header"])
def test_an_altered_file_is_refused_by_name_and_nothing_is_written(pki, live, tmp_path, which):
    """A byte flipped in any file of a backup refuses the restore, naming that file; the state
    folder stays empty."""
    backup_state(make_config(pki, tmp_path / "state"), tmp_path / "b", now=1.0e9)
    blob = next(p for p in (tmp_path / "b" / "blobs").rglob("*") if p.is_file())
    victim = {
        "store": tmp_path / "b" / "store" / DB_FILE,
        "blob": blob.with_suffix(""),
        "header": blob.with_suffix(".header"),
    }[which]
    _tamper_byte(victim)
    with pytest.raises(InternalError) as err:
        _restored(pki, tmp_path / "b", tmp_path / "new")
    assert err.value.reason is Reason.BACKUP_DAMAGED
    assert str(victim) in err.value.message
    assert not (tmp_path / "new").exists()


def test_a_missing_extra_or_escaping_file_is_refused(pki, live, tmp_path):
    """A file gone, a file not in the manifest, or a manifest naming a path outside the
    backup: each refuses the restore."""
    config = make_config(pki, tmp_path / "state")
    for case in ("missing", "extra", "escape", "no-manifest"):
        b = tmp_path / f"b-{case}"
        backup_state(config, b, now=1.0e9)
        if case == "missing":
            (b / "store" / DB_FILE).unlink()
        elif case == "extra":
            (b / "blobs" / "stray").write_bytes(b"x")
        elif case == "escape":
            body = json.loads((b / MANIFEST).read_text())
            body["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
            (b / MANIFEST).write_text(json.dumps(body))
        else:
            (b / MANIFEST).unlink()
        with pytest.raises(InternalError) as err:
            _restored(pki, b, tmp_path / f"new-{case}")
        assert err.value.reason is Reason.BACKUP_DAMAGED, case


def _rewrite_manifest(backup: Path) -> None:
    """Re-hash the backup's files into its manifest, as a backup written that way would be."""
    body = json.loads((backup / MANIFEST).read_text())
    for name, entry in body["files"].items():
        data = (backup / name).read_bytes()
        entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (backup / MANIFEST).write_text(json.dumps(body))


def test_a_backup_from_a_newer_schema_is_refused_clearly(pki, live, tmp_path):
    """A backup whose store has a newer schema than this release refuses with SCHEMA_TOO_NEW,
    saying which release wrote it; nothing is written."""
    b = tmp_path / "b"
    backup_state(make_config(pki, tmp_path / "state"), b, now=1.0e9)
    db = sqlite3.connect(b / "store" / DB_FILE)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    body = json.loads((b / MANIFEST).read_text())
    body["schemas"][f"store/{DB_FILE}"] = SCHEMA_VERSION + 1
    body["release"] = "99.0"
    (b / MANIFEST).write_text(json.dumps(body))
    _rewrite_manifest(b)
    with pytest.raises(InternalError) as err:
        _restored(pki, b, tmp_path / "new")
    assert err.value.reason is Reason.SCHEMA_TOO_NEW
    assert "99.0" in err.value.message
    assert not (tmp_path / "new").exists()
    # The file itself is checked too, whatever the manifest claims.
    body["schemas"][f"store/{DB_FILE}"] = SCHEMA_VERSION
    (b / MANIFEST).write_text(json.dumps(body))
    _rewrite_manifest(b)
    with pytest.raises(InternalError) as err:
        _restored(pki, b, tmp_path / "new")
    assert err.value.reason is Reason.SCHEMA_TOO_NEW
    assert [p.name for p in (tmp_path / "new").iterdir()] == []


def test_a_non_empty_state_folder_needs_force_and_is_moved_aside(pki, live, tmp_path):
    """Restoring over existing state is refused; with force the old contents move aside whole."""
    b = tmp_path / "b"
    backup_state(make_config(pki, tmp_path / "state"), b, now=1.0e9)
    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("keep me")
    with pytest.raises(InternalError) as err:
        _restored(pki, b, target)
    assert err.value.reason is Reason.STATE_NOT_EMPTY
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    _, done = _restored(pki, b, target, force=True)
    assert done.moved_aside is not None
    assert (done.moved_aside / "old.txt").read_text() == "keep me"
    assert sorted(p.name for p in target.iterdir()) == ["aggregator.db", "blobs"]


_HOLD_OPEN = """
import sys, time
from pathlib import Path
from aggregator.store import StoreConfig, open_store
st = open_store(StoreConfig(), state_dir=Path(sys.argv[1]))
print("open", flush=True)
sys.stdin.read()
"""


def test_a_store_open_in_a_running_aggregator_is_never_replaced(pki, live, tmp_path):
    """Even with force, a restore refuses a state folder whose store another process holds."""
    b = tmp_path / "b"
    backup_state(make_config(pki, tmp_path / "state"), b, now=1.0e9)
    target = tmp_path / "target"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_OPEN, str(target)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        with pytest.raises(InternalError) as err:
            _restored(pki, b, target, force=True)
        assert err.value.reason is Reason.STATE_NOT_EMPTY
    finally:
        proc.communicate("", timeout=30)
    _, done = _restored(pki, b, target, force=True)
    assert done.moved_aside is not None


def _config_file(pki: Path, state: Path, path: Path) -> Path:
    path.write_text(
        f"""federation = "testfed"
[server]
listen = "127.0.0.1:0"
[tls]
ca = "{pki}/ca.crt"
cert = "{pki}/aggregator.crt"
key = "{pki}/aggregator.key"
signing_key = "{pki}/aggregator.sign.key"
crl = "{pki}/crl.pem"
[state]
dir = "{state}"
"""
    )
    return path


def test_the_commands_back_up_restore_and_refuse_in_one_line(pki, live, tmp_path, capsys):
    """backup and restore exit 0 and say what they did; a damaged backup exits 1 with one line
    naming the file; a backup into a non-empty folder is refused."""
    cfg = _config_file(pki, tmp_path / "state", tmp_path / "a.toml")
    assert main(["backup", "--to", str(tmp_path / "b"), "--config", str(cfg)]) == 0
    assert "model blobs" in capsys.readouterr().out
    assert main(["backup", "--to", str(tmp_path / "b"), "--config", str(cfg)]) == 1
    assert "(state_not_empty)" in capsys.readouterr().err
    new = _config_file(pki, tmp_path / "new", tmp_path / "n.toml")
    assert main(["restore", "--from", str(tmp_path / "b"), "--config", str(new)]) == 0
    assert "audit chain of 5 entries verified" in capsys.readouterr().out
    _tamper_byte(tmp_path / "b" / "store" / DB_FILE)
    other = _config_file(pki, tmp_path / "other", tmp_path / "o.toml")
    assert main(["restore", "--from", str(tmp_path / "b"), "--config", str(other)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "b" / "store" / DB_FILE) in err[0]
    assert err[0].endswith("(backup_damaged)")


def test_a_backup_of_nothing_is_refused(pki, tmp_path):
    """A state folder without a store has nothing to back up: refused, and no store is made."""
    with pytest.raises(InternalError):
        backup_state(make_config(pki, tmp_path / "state"), tmp_path / "b", now=1.0e9)
    assert not (tmp_path / "state" / DB_FILE).exists()


def test_a_bundle_jobs_code_archive_is_backed_up_and_restored(pki, live, tmp_path):
    """A restored aggregator can still serve a bundle job's code: the archive is in the backup."""
    data = bundle.pack({"model.py": b"def build_model(spec): ...\n"})
    sha = live.blobs.put_bytes(data)
    spec = common_pb2.JobSpec(
        model=common_pb2.ModelSpec(
            kind=common_pb2.MODEL_KIND_BUNDLE, code_sha256=bytes.fromhex(sha)
        )
    )
    row = JobRow(
        id="b",
        spec=spec.SerializeToString(),
        signed_job=b"env",
        signer_cert=b"pem",
        state="running",
        error="",
        submitted_by="op",
        created=2.0,
    )
    v0 = ModelRow(job="b", version_no=0, sha256=live.last, optimizer_state="", created=2.0)
    live.store.add_job(row, v0, audit=_note(9))
    backup_state(make_config(pki, tmp_path / "state"), tmp_path / "b", now=1.0e9)
    assert (tmp_path / "b" / "blobs" / sha[:2] / sha).read_bytes() == data
    config, _ = _restored(pki, tmp_path / "b", tmp_path / "new")
    blobs = open_blobs(config.store, state_dir=config.state_dir)
    assert blobs.read_bytes(sha, max_bytes=len(data)) == data
