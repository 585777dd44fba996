"""The SQLite store and the blob files beyond the contract: schema upgrades, columns read by
name, the factory's choice, fsyncs. The contract itself is ``test_store_contract.py``."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace

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
