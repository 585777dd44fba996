"""The SQLite store and the blob files beyond the contract: schema upgrades, columns read by
name, the factory's choice, fsyncs, what in the blob folder is not a blob. The contract
itself is ``test_store_contract.py``."""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from aggregator.store import (
    AuditNote,
    FailureRow,
    JobRow,
    ModelRow,
    RoundRow,
    SiteRoundRow,
    SiteRow,
    StoreConfig,
    open_blobs,
    open_store,
)
from aggregator.store import sqlite_rows as cols
from aggregator.store.blobs import FileBlobStore
from aggregator.store.sqlite import SqliteStore
from confide.errors import InternalError


def test_the_default_backend_is_one_private_sqlite_file_in_the_state_folder(tmp_path):
    """``[store]`` left out opens SQLite at <state>/aggregator.db (0600) and blobs/ (0700)."""
    store = open_store(StoreConfig(), state_dir=tmp_path / "state")
    blobs = open_blobs(StoreConfig(), state_dir=tmp_path / "state")
    try:
        assert isinstance(store, SqliteStore) and isinstance(blobs, FileBlobStore)
        assert oct(os.stat(tmp_path / "state" / "aggregator.db").st_mode & 0o777) == oct(0o600)
        assert oct(os.stat(tmp_path / "state" / "blobs").st_mode & 0o777) == oct(0o700)
    finally:
        store.close()


def test_new_blob_shard_folder_is_fsynced_in_the_root(tmp_path, monkeypatch):
    """Putting a blob into a new shard folder fsyncs the blobs root (the folder's entry)."""
    synced: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    blobs = FileBlobStore(tmp_path / "blobs")
    monkeypatch.setattr("aggregator.store.blobs.os.fsync", recording)
    sha, _ = blobs.put([("w", np.ones(3, dtype=np.float32))])
    assert str(tmp_path / "blobs") in synced
    assert str(tmp_path / "blobs" / sha[:2]) in synced


_V1_SCHEMA = """
CREATE TABLE sites (id TEXT PRIMARY KEY, datasets TEXT NOT NULL, device TEXT NOT NULL,
  agent_version TEXT NOT NULL, last_heartbeat REAL NOT NULL);
CREATE TABLE round_sites (job TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL,
  outcome TEXT NOT NULL, reason TEXT NOT NULL, num_samples INTEGER NOT NULL,
  epsilon REAL NOT NULL, update_epsilon REAL NOT NULL, metrics TEXT NOT NULL,
  PRIMARY KEY (job, round, site));
INSERT INTO sites VALUES ('site-1', '["tab"]', 'cpu', '0.1', 5.0);
INSERT INTO round_sites VALUES ('j', 1, 'site-1', 'ok', '', 10, 0.5, 0.0, '{}');
PRAGMA user_version = 1;
"""


def test_a_version_1_database_is_upgraded_in_place(tmp_path):
    """A schema-1 file gains the version-2 columns; its rows read with their defaults."""
    db = sqlite3.connect(tmp_path / "a.db")
    db.executescript(_V1_SCHEMA)
    db.close()
    st = SqliteStore(tmp_path / "a.db")
    site = st.site("site-1")
    assert site is not None and site.sizes == {}
    row = st.round_sites("j")[0]
    assert (row.num_samples, row.weight, row.update_norm, row.clipped) == (10, 0.0, 0.0, False)
    st.record_site(
        SiteRoundRow(
            job="j",
            round=2,
            site="site-1",
            outcome="ok",
            reason="",
            num_samples=3,
            epsilon=0.1,
            update_epsilon=0.0,
            metrics={},
            weight=2.0,
            update_norm=1.5,
            clipped=True,
        )
    )
    assert st.round_sites("j", lo=2)[0].clipped
    st.close()
    db = sqlite3.connect(tmp_path / "a.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_a_database_from_a_newer_aggregator_is_refused(tmp_path):
    """A file whose schema is newer than this code is refused, not read or rewritten."""
    db = sqlite3.connect(tmp_path / "a.db")
    db.execute("PRAGMA user_version = 3")
    db.close()
    with pytest.raises(InternalError, match="schema 3"):
        SqliteStore(tmp_path / "a.db")
    db = sqlite3.connect(tmp_path / "a.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


_KEYS = {
    "sites": "id",
    "jobs": "id",
    "rounds": "job, round",
    "round_sites": "job, round, site",
    "model_versions": "job, version_no",
    "audit": "seq",
    "round_failures": "job, round, site",
}
_TABLES = {
    "sites": cols.SITES,
    "jobs": cols.JOBS,
    "rounds": cols.ROUNDS,
    "round_sites": cols.ROUND_SITES,
    "model_versions": cols.MODELS,
    "audit": cols.AUDIT,
    "round_failures": cols.FAILURES,
}


def test_rows_are_read_by_column_name_whatever_the_tables_column_order(tmp_path):
    """A file whose tables hold their columns in reverse order reads and writes the same rows."""
    site = SiteRow(
        id="s", datasets=["d"], device="cpu", agent_version="1", last_heartbeat=2.0, sizes={}
    )
    job = JobRow(
        id="j",
        spec=b"spec",
        signed_job=b"env",
        signer_cert=b"pem",
        state="running",
        error="e",
        submitted_by="alice",
        created=3.0,
        final_metrics={"loss": 1.0},
    )
    rnd = RoundRow(
        job="j",
        round=1,
        state="done",
        attempt=2,
        model_version_in="in",
        model_version_out="out",
        metrics={"m": 1.0},
        started=4.0,
        finished=5.0,
    )
    answer = SiteRoundRow(
        job="j",
        round=1,
        site="s",
        outcome="ok",
        reason="r",
        num_samples=6,
        epsilon=0.5,
        update_epsilon=0.25,
        metrics={"acc": 0.5},
        weight=7.0,
        update_norm=8.0,
        clipped=True,
    )
    model = ModelRow(job="j", version_no=1, sha256="out", optimizer_state="opt", created=9.0)
    failure = FailureRow(
        job="j", round=1, site="t", attempt=2, outcome="failed", reason="x", detail="y", at=10.0
    )
    note = AuditNote(event="e", actor="a", at=11.0, job="j", round=1, reason="r", detail="d")
    entry = note.link(seq=1, prev_hash=bytes(32))
    db = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    for table, columns in _TABLES.items():
        db.execute(
            f"CREATE TABLE {table} ({', '.join(reversed(columns))}, PRIMARY KEY ({_KEYS[table]}))"
        )
    writes = [
        ("sites", cols.SITES, cols.site_params(site)),
        ("jobs", cols.JOBS, cols.job_params(job)),
        ("rounds", cols.ROUNDS, cols.round_params(rnd)),
        ("round_sites", cols.ROUND_SITES, cols.site_round_params(answer)),
        ("model_versions", cols.MODELS, cols.model_params(model)),
        ("audit", cols.AUDIT, cols.audit_params(entry)),
        ("round_failures", cols.FAILURES, cols.failure_params(failure)),
    ]
    for table, columns, params in writes:
        names = ", ".join(columns)
        db.execute(
            f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + c for c in columns)})", params
        )
    db.execute("PRAGMA user_version = 2")
    db.close()

    st = SqliteStore(tmp_path / "a.db")
    assert st.site("s") == site and st.job("j") == job and st.rounds("j") == [rnd]
    assert st.round_sites("j") == [answer] and st.models("j") == [model]
    assert st.audit_entries() == [entry] and st.failures("j") == [failure]
    assert st.jobs_page(after=0, limit=5) == [(1, job)]
    st.record_site(replace(answer, site="u"))
    st.close()
    db = sqlite3.connect(tmp_path / "a.db")
    assert db.execute(
        "SELECT site, num_samples, weight, clipped FROM round_sites WHERE site = 'u'"
    ).fetchall() == [("u", 6, 7.0, 1)]


# ----- the blob folder: what is not a blob, and interrupted writes -----


def test_names_in_the_blob_folder_that_are_not_blobs_are_never_listed_or_removed(tmp_path):
    """Foreign names (another name, a wrong shard, upper case, a link, a folder, a header
    alone) are not blobs: never listed, never removed, a link's target never touched."""
    blobs = FileBlobStore(tmp_path / "blobs", clock=lambda: 100.0)
    real = blobs.put_bytes(b"code")
    root = blobs.root
    victim = tmp_path / "victim"
    victim.write_bytes(b"outside the store")
    linked = "ab" + "1" * 62
    (root / "ab").mkdir()
    foreign = [
        root / "README",
        root / "ab" / "notablob",
        root / "ab" / ("cd" + "2" * 62),  # a blob name in the wrong shard
        root / "ab" / ("AB" + "3" * 62),
        root / "ab" / ("ab" + "4" * 62 + ".header"),  # a header without its bytes
        root / "zz" / ("zz" + "5" * 62),
    ]
    for path in foreign:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    (root / "ab" / linked).symlink_to(victim)
    (root / "ab" / ("ab" + "6" * 62)).mkdir()
    for path in [*foreign, victim]:
        os.utime(path, (1.0, 1.0))
    assert [b.name for b in blobs.stored()] == [real]
    for name in (linked, "ab" + "6" * 62, "ab" + "4" * 62):
        assert not blobs.remove(name, stored_before=1e12)
    assert blobs.discard_partial(before=1e12) == (0, 0)
    assert all(p.exists() for p in foreign) and (root / "ab" / linked).is_symlink()
    assert victim.read_bytes() == b"outside the store"


def test_an_interrupted_writes_temporary_file_is_discarded_once_old(tmp_path):
    """A ``.tmp-`` file older than the cutoff goes; a younger one stays; blobs are untouched."""
    blobs = FileBlobStore(tmp_path / "blobs", clock=lambda: 100.0)
    sha = blobs.put_bytes(b"code")
    shard = blobs.root / sha[:2]
    old, young = shard / ".tmp-old", shard / ".tmp-young"
    old.write_bytes(b"half a blob")
    young.write_bytes(b"half")
    os.utime(old, (50.0, 50.0))
    os.utime(young, (150.0, 150.0))
    assert blobs.discard_partial(before=100.0) == (1, len(b"half a blob"))
    assert not old.exists() and young.exists() and blobs.has_bytes(sha)


def test_a_write_in_progress_is_never_discarded(tmp_path, monkeypatch):
    """A temporary file this process is writing stays, however old its cutoff says it is, and
    its put completes into a readable blob."""
    blobs = FileBlobStore(tmp_path / "blobs", clock=lambda: 100.0)
    blobs.put_bytes(b"first")  # the shard folders exist; the next write is mid-way below
    writing, release = threading.Event(), threading.Event()
    real = os.fsync

    def slow(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".tmp-"):
            writing.set()
            assert release.wait(10)
        real(fd)

    monkeypatch.setattr("aggregator.store.blobs.os.fsync", slow)
    data = b"a large upload" * 1000
    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(blobs.put_bytes(data)))
    t.start()
    try:
        assert writing.wait(10)
        assert blobs.discard_partial(before=1e12) == (0, 0)
    finally:
        release.set()
        t.join(10)
    assert blobs.read_bytes(done[0], max_bytes=len(data)) == data


def test_a_removal_cut_short_leaves_bytes_without_a_header_never_the_reverse(tmp_path, monkeypatch):
    """The header goes first: a removal that fails between the two leaves bytes alone, still
    listed, and the next removal finishes it."""
    blobs = FileBlobStore(tmp_path / "blobs", clock=lambda: 100.0)
    sha, _ = blobs.put([("w", np.ones(3, np.float32))])
    real = Path.unlink

    def refuse_bytes(self: Path, missing_ok: bool = False) -> None:
        if self.name == sha:
            raise PermissionError("refused")
        real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse_bytes)
    with pytest.raises(OSError):
        blobs.remove(sha, stored_before=200.0)
    monkeypatch.undo()
    assert not blobs.has(sha) and blobs.has_bytes(sha)
    assert [b.name for b in blobs.stored()] == [sha]
    assert blobs.remove(sha, stored_before=200.0) and not blobs.has_bytes(sha)
