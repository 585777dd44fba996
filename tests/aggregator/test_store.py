"""The store: audit hash chain, tamper detection, and what survives a restart."""

from __future__ import annotations

import itertools
import sqlite3

import numpy as np
import pytest

from aggregator.audit import AuditTampered
from aggregator.blobs import BlobStore
from aggregator.store import AuditNote, JobRow, ModelRow, SiteRoundRow, Store


def _note(i: int) -> AuditNote:
    return AuditNote(f"event_{i}", "site-1", 1000.0 + i, "job", i, "", f"détail {i}")


def test_audit_chain_verifies(tmp_path):
    """A chain of appended entries verifies, and each links to its predecessor."""
    st = Store(tmp_path / "a.db")
    entries = [st.audit(_note(i)) for i in range(5)]
    assert st.verify_audit_chain() == 5
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert [e.seq for e in st.audit_entries(after_seq=2, limit=2)] == [3, 4]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit SET detail = 'forged' WHERE seq = 3",
        "DELETE FROM audit WHERE seq = 2",
        "UPDATE audit SET at = at + 1 WHERE seq = 5",
    ],
)
def test_audit_chain_detects_tampering(tmp_path, sql):
    """Changing or removing any stored audit row makes verification raise."""
    st = Store(tmp_path / "a.db")
    for i in range(5):
        st.audit(_note(i))
    st.close()
    db = sqlite3.connect(tmp_path / "a.db")
    db.execute(sql)
    db.commit()
    db.close()
    with pytest.raises(AuditTampered):
        Store(tmp_path / "a.db").verify_audit_chain()


def test_reopened_store_keeps_completed_round_and_model(tmp_path):
    """A store reopened after a completed round has that round, its model blob and its sites."""
    blobs = BlobStore(tmp_path / "blobs")
    st = Store(tmp_path / "a.db")
    v0, _ = blobs.put([("x", np.zeros(4, dtype=np.float32))])
    v1, _ = blobs.put([("x", np.ones(4, dtype=np.float32))])
    st.add_job(
        JobRow("j", b"spec", b"env", b"pem", "running", "", "alice", 1.0),
        ModelRow("j", 0, v0, "", 1.0),
        audit=_note(0),
    )
    st.start_round("j", 1, attempt=1, model_in=v0, at=2.0, audit=_note(1))
    st.record_site(SiteRoundRow("j", 1, "site-1", "ok", "", 10, 0.5, 0.1, {"eval_loss": 1.0}))
    st.complete_round(
        "j", 1, model=ModelRow("j", 1, v1, "", 3.0), metrics={"aggregated": 1.0}, audit=_note(2)
    )
    st.close()
    st = Store(tmp_path / "a.db")
    (rnd,) = st.rounds("j")
    assert (rnd.state, rnd.model_version_out) == ("done", v1)
    assert [m.sha256 for m in st.models("j")] == [v0, v1]
    assert st.round_sites("j")[0].metrics == {"eval_loss": 1.0}
    np.testing.assert_array_equal(BlobStore(tmp_path / "blobs").load(v1)[0][1], np.ones(4))
    assert st.verify_audit_chain() == 3


def test_record_site_never_replaces_ok_with_a_failure(tmp_path):
    """A failure recorded after an ok answer for the same site and round leaves the ok row."""
    store = Store(tmp_path / "a.db")
    ok = SiteRoundRow("j", 1, "s", "ok", "", 10, 0.5, 0.1, {"eval_accuracy": 0.9})
    store.record_site(ok)
    store.record_site(SiteRoundRow("j", 1, "s", "failed", "internal", 0, 0.0, 0.0, {}))
    assert store.round_sites("j") == [ok]
    again = SiteRoundRow("j", 1, "s", "ok", "", 12, 0.6, 0.1, {})
    store.record_site(again)
    assert store.round_sites("j") == [again]
    store.close()


def test_new_blob_shard_folder_is_fsynced_in_the_root(tmp_path, monkeypatch):
    """Putting a blob into a new shard folder fsyncs the blobs root (the folder's entry)."""
    import os

    synced: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    blobs = BlobStore(tmp_path / "blobs")
    monkeypatch.setattr("aggregator.blobs.os.fsync", recording)
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
    st = Store(tmp_path / "a.db")
    assert st.site("site-1").sizes == {}
    row = st.round_sites("j")[0]
    assert (row.num_samples, row.weight, row.update_norm, row.clipped) == (10, 0.0, 0.0, False)
    st.record_site(SiteRoundRow("j", 2, "site-1", "ok", "", 3, 0.1, 0.0, {}, 2.0, 1.5, True))
    assert st.round_sites("j", lo=2)[0].clipped
    st.close()
    db = sqlite3.connect(tmp_path / "a.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
