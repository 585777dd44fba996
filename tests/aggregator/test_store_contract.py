"""The store contract: what every ``Store`` and ``BlobStore`` implementation must do.

Each test runs once per entry of ``IMPLEMENTATIONS`` through the ``store_factory`` fixture
(SQLite today). A new backend (PostgreSQL) adds its entry and must pass this file unchanged;
behaviour of one implementation only (SQLite's schema upgrades, the blob files' fsyncs) is
tested in ``test_store_sqlite.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from aggregator.audit import AuditTampered
from aggregator.store import (
    AuditNote,
    BlobStore,
    FailureRow,
    JobRow,
    ModelRow,
    RoundRow,
    SiteRoundRow,
    SiteRow,
    Store,
    StoreBackend,
    StoreConfig,
    open_blobs,
    open_store,
)
from aggregator.store.factory import DB_FILE
from confide import bundle
from confide.errors import InternalError
from confide.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Backend:
    """One implementation under test.

    Args:
        config: the ``[store]`` table that selects it.
        raw_sql: runs one SQL statement on its database behind the store's back (a tamperer
            with write access to the database, or a fault injected from outside).
    """

    config: StoreConfig
    raw_sql: Callable[[Path, str], None]


def _sqlite_sql(state_dir: Path, statement: str) -> None:
    db = sqlite3.connect(state_dir / DB_FILE, isolation_level=None)
    try:
        db.execute(statement)
    finally:
        db.close()


IMPLEMENTATIONS = {
    "sqlite": Backend(StoreConfig(backend=StoreBackend.SQLITE), _sqlite_sql),
}
"""Every implementation the contract runs against, by name."""


@dataclass
class StoreFactory:
    """Opens one implementation over one state folder; each call is a fresh open (a restart)."""

    backend: Backend
    state_dir: Path
    opened: list[Store] = field(default_factory=list)

    def __call__(self) -> Store:
        store = open_store(self.backend.config, state_dir=self.state_dir)
        self.opened.append(store)
        return store

    def blobs(self, clock: Callable[[], float] = time.time) -> BlobStore:
        """The blob store beside it, dating blobs by ``clock``."""
        return open_blobs(self.backend.config, state_dir=self.state_dir, clock=clock)

    def tamper(self, statement: str) -> None:
        """Change the stored data behind the store's back."""
        self.backend.raw_sql(self.state_dir, statement)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Each implementation in turn, over a fresh state folder; every store opened is closed."""
    factory = StoreFactory(IMPLEMENTATIONS[request.param], tmp_path / "state")
    yield factory
    for store in factory.opened:
        store.close()


def _note(i: int) -> AuditNote:
    return AuditNote(
        event=f"event_{i}", actor="site-1", at=1000.0 + i, job="job", round=i, detail=f"détail {i}"
    )


def _job(job_id: str = "j", *, created: float = 1.0) -> JobRow:
    return JobRow(
        id=job_id,
        spec=b"spec",
        signed_job=b"env",
        signer_cert=b"pem",
        state="running",
        error="",
        submitted_by="alice",
        created=created,
    )


def _model(version: int = 0, *, job_id: str = "j", created: float = 1.0) -> ModelRow:
    return ModelRow(
        job=job_id,
        version_no=version,
        sha256=f"{version:064x}",
        optimizer_state="",
        created=created,
    )


def _answer(rnd: int, site: str, outcome: str = "ok", **kw: object) -> SiteRoundRow:
    fields: dict[str, object] = {
        "job": "j",
        "round": rnd,
        "site": site,
        "outcome": outcome,
        "reason": "",
        "num_samples": 10,
        "epsilon": 0.5,
        "update_epsilon": 0.1,
        "metrics": {},
    }
    return SiteRoundRow(**{**fields, **kw})  # type: ignore[arg-type]


def _failure(rnd: int, site: str, *, attempt: int = 1, detail: str = "no update") -> FailureRow:
    return FailureRow(
        job="j",
        round=rnd,
        site=site,
        attempt=attempt,
        outcome="silent",
        reason="unavailable",
        detail=detail,
        at=9.0,
    )


# ----- the audit chain -----


def test_audit_chain_verifies(store_factory):
    """A chain of appended entries verifies, and each links to its predecessor."""
    st = store_factory()
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
def test_audit_chain_detects_tampering(store_factory, sql):
    """Changing or removing any stored audit row makes verification raise."""
    st = store_factory()
    for i in range(5):
        st.audit(_note(i))
    st.close()
    store_factory.tamper(sql)
    with pytest.raises(AuditTampered):
        store_factory().verify_audit_chain()


def test_concurrent_appends_form_one_unbroken_chain(store_factory):
    """Entries appended from many threads at once are numbered 1..n without gaps and verify."""
    st = store_factory()
    threads = [
        threading.Thread(target=lambda t=t: [st.audit(_note(100 * t + i)) for i in range(25)])
        for t in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert st.verify_audit_chain() == 100
    assert [e.seq for e in st.audit_entries()] == list(range(1, 101))


# ----- rows read back as written -----


def test_every_field_of_every_row_reads_back_as_written(store_factory):
    """Each row type, with every field off its default, reads back equal (no column swapped)."""
    st = store_factory()
    site = SiteRow(
        id="site-1",
        datasets=["tab", "img"],
        device="cuda",
        agent_version="1.2.3",
        last_heartbeat=5.5,
        sizes={"tab": (100, 20), "img": (7, 3)},
    )
    st.upsert_site(site, audit=_note(0))
    assert st.site("site-1") == site and st.sites() == [site]
    st.set_heartbeat("site-1", 6.25)
    assert st.site("site-1") == replace(site, last_heartbeat=6.25)

    job = replace(_job(), final_metrics={"accuracy": 0.75})
    m0 = replace(_model(), optimizer_state="ab" * 32)
    st.add_job(job, m0, audit=_note(1))
    assert st.job("j") == job and st.jobs() == [job]
    st.set_job_state("j", "done", error="why", final_metrics={"loss": 0.25}, audit=_note(2))
    assert st.job("j") == replace(job, state="done", error="why", final_metrics={"loss": 0.25})
    st.set_job_state("j", "failed", error="later")
    assert st.job("j") == replace(job, state="failed", error="later", final_metrics={"loss": 0.25})

    st.start_round("j", 1, attempt=2, model_in=m0.sha256, at=7.5, audit=_note(3))
    started = RoundRow(
        job="j",
        round=1,
        state="collecting",
        attempt=2,
        model_version_in=m0.sha256,
        model_version_out="",
        metrics={},
        started=7.5,
        finished=0.0,
    )
    assert st.rounds("j") == [started]
    answer = _answer(
        1,
        "site-1",
        reason="r",
        num_samples=12,
        epsilon=1.5,
        update_epsilon=0.3,
        metrics={"eval_loss": 0.5},
        weight=2.0,
        update_norm=1.25,
        clipped=True,
    )
    st.record_site(answer, audit=_note(4))
    assert st.round_sites("j") == [answer]
    m1 = _model(version=1, created=8.5)
    st.complete_round("j", 1, model=m1, metrics={"aggregated": 2.0}, audit=_note(5))
    done = replace(started, state="done", model_version_out=m1.sha256, metrics={"aggregated": 2.0})
    assert st.rounds("j") == [replace(done, finished=8.5)]
    assert st.models("j") == [m0, m1] and st.latest_model("j") == m1

    failure = FailureRow(
        job="j",
        round=1,
        site="site-2",
        attempt=3,
        outcome="refused",
        reason="denied",
        detail="policy",
        at=9.5,
    )
    st.record_failure(failure)
    assert st.failures("j") == [failure]

    entry = st.audit(_note(6))
    assert st.audit_entries()[-1] == entry
    assert (entry.seq, entry.event, entry.actor, entry.at) == (7, "event_6", "site-1", 1006.0)
    assert (entry.job, entry.round, entry.reason, entry.detail) == ("job", 6, "", "détail 6")


def test_hostile_text_is_stored_verbatim(store_factory):
    """Names and details a hostile site chooses (quotes, SQL, any script, 64 KiB) are data."""
    st = store_factory()
    hostile = ["x'); DROP TABLE jobs; --", "%_*?", 'a"b\\c', "日本語 ☃ \u202e", "z" * 65536]
    st.add_job(_job(), _model(), audit=_note(0))
    for i, text in enumerate(hostile):
        st.record_site(_answer(1, text, reason=text, metrics={text: float(i)}))
        st.record_failure(_failure(2, text, detail=text))
        st.audit(AuditNote(event="e", actor=text, at=1.0, detail=text))
    assert sorted(r.site for r in st.round_sites("j")) == sorted(hostile)
    assert all(r.reason == r.site and r.metrics.keys() == {r.site} for r in st.round_sites("j"))
    assert all(f.detail == f.site for f in st.failures("j", round=2))
    assert [e.actor for e in st.audit_entries(after_seq=1)] == hostile
    assert st.job("j") == _job()
    assert st.verify_audit_chain() == 1 + len(hostile)


# ----- what a change keeps, and what it refuses -----


def test_record_site_never_replaces_ok_with_a_failure(store_factory):
    """A failure recorded after an ok answer for the same site and round leaves the ok row."""
    store = store_factory()
    ok = SiteRoundRow(
        job="j",
        round=1,
        site="s",
        outcome="ok",
        reason="",
        num_samples=10,
        epsilon=0.5,
        update_epsilon=0.1,
        metrics={"eval_accuracy": 0.9},
    )
    store.record_site(ok)
    store.record_site(
        SiteRoundRow(
            job="j",
            round=1,
            site="s",
            outcome="failed",
            reason="internal",
            num_samples=0,
            epsilon=0.0,
            update_epsilon=0.0,
            metrics={},
        )
    )
    assert store.round_sites("j") == [ok]
    again = SiteRoundRow(
        job="j",
        round=1,
        site="s",
        outcome="ok",
        reason="",
        num_samples=12,
        epsilon=0.6,
        update_epsilon=0.1,
        metrics={},
    )
    store.record_site(again)
    assert store.round_sites("j") == [again]
    store.close()


def test_a_failing_before_commit_rolls_back_the_row_and_its_audit_entry(store_factory):
    """If the work done inside record_site's transaction raises, neither row nor entry stays."""
    st = store_factory()
    st.audit(_note(0))

    def refuse() -> None:
        raise ValueError("the sum refused it")

    with pytest.raises(ValueError, match="the sum refused it"):
        st.record_site(_answer(1, "site-1"), audit=_note(1), before_commit=refuse)
    assert st.round_sites("j") == []
    assert [e.seq for e in st.audit_entries()] == [1]
    st.record_site(_answer(1, "site-1"), audit=_note(1), before_commit=lambda: None)
    assert [r.site for r in st.round_sites("j")] == ["site-1"]
    assert st.verify_audit_chain() == 2


def test_a_second_job_with_the_same_id_changes_nothing(store_factory):
    """Adding a job whose id exists raises, and leaves the first job, its model and the log."""
    st = store_factory()
    st.add_job(_job(), _model(), audit=_note(0))
    with pytest.raises(Exception):  # noqa: B017  # the backend's integrity error
        st.add_job(replace(_job(), submitted_by="mallory"), _model(created=2.0), audit=_note(1))
    assert st.jobs() == [_job()] and st.models("j") == [_model()]
    assert st.verify_audit_chain() == 1


def test_a_done_round_stays_done(store_factory):
    """Marking a completed round failed later keeps it done with its output model."""
    st = store_factory()
    st.add_job(_job(), _model(), audit=_note(0))
    st.start_round("j", 1, attempt=1, model_in=_model().sha256, at=2.0, audit=_note(1))
    st.complete_round("j", 1, model=_model(version=1, created=3.0), metrics={}, audit=_note(2))
    st.set_round_state("j", 1, "failed", at=4.0, audit=_note(3))
    (rnd,) = st.rounds("j")
    assert (rnd.state, rnd.model_version_out, rnd.finished) == ("done", _model(1).sha256, 3.0)
    st.start_round("j", 2, attempt=1, model_in=_model(1).sha256, at=5.0, audit=_note(4))
    st.set_round_state("j", 2, "failed", at=6.0)
    assert [(r.round, r.state, r.finished) for r in st.rounds("j")] == [
        (1, "done", 3.0),
        (2, "failed", 6.0),
    ]


def test_a_new_attempt_forgets_only_that_rounds_answers(store_factory):
    """Starting a round's next attempt drops that round's site answers, not other rounds'."""
    st = store_factory()
    st.start_round("j", 1, attempt=1, model_in="m0", at=1.0, audit=_note(0))
    st.record_site(_answer(1, "site-1"))
    st.start_round("j", 2, attempt=1, model_in="m1", at=2.0, audit=_note(1))
    st.record_site(_answer(2, "site-1"))
    st.record_site(_answer(0, "site-1"))  # the final evaluation
    st.start_round("j", 2, attempt=2, model_in="m1", at=3.0, audit=_note(2))
    assert [(r.round, r.site) for r in st.round_sites("j")] == [(0, "site-1"), (1, "site-1")]
    assert [(r.round, r.attempt, r.started) for r in st.rounds("j")] == [(1, 1, 1.0), (2, 2, 3.0)]


def test_epsilon_by_site_is_the_largest_of_its_accepted_updates(store_factory):
    """Only ok answers of training rounds count, and each site's figure is its largest."""
    st = store_factory()
    st.record_site(_answer(1, "a", epsilon=0.5))
    st.record_site(_answer(2, "a", epsilon=1.5))
    st.record_site(_answer(3, "a", "failed", epsilon=9.0))
    st.record_site(_answer(0, "a", epsilon=8.0))
    st.record_site(_answer(1, "b", epsilon=0.25))
    st.record_site(replace(_answer(1, "c", epsilon=7.0), job="other"))
    assert st.epsilon_by_site("j") == {"a": 1.5, "b": 0.25}
    assert st.epsilon_by_site("nobody") == {}


def test_failures_keep_one_row_per_site_and_round(store_factory):
    """A later attempt's reason replaces the earlier one; filters pick rounds by number."""
    st = store_factory()
    for rnd in (1, 2, 3):
        st.record_failure(_failure(rnd, "s"))
    st.record_failure(_failure(2, "s", attempt=2, detail="again"))
    st.record_failure(_failure(2, "a"))
    assert [(f.round, f.site, f.attempt) for f in st.failures("j")] == [
        (1, "s", 1),
        (2, "a", 1),
        (2, "s", 2),
        (3, "s", 1),
    ]
    assert [f.detail for f in st.failures("j", round=2)] == ["no update", "again"]
    assert [f.round for f in st.failures("j", lo=2, hi=3)] == [2, 2, 3]
    assert [f.round for f in st.failures("j", lo=3)] == [3]
    assert st.failures("other") == []


def test_listings_are_ordered_and_paged(store_factory):
    """Sites by id, jobs by creation and submission, rounds by number: each pages as stated."""
    st = store_factory()
    for name in ("c", "a", "b"):
        st.upsert_site(
            SiteRow(id=name, datasets=[], device="cpu", agent_version="1", last_heartbeat=0.0)
        )
    st.set_heartbeat("nobody", 5.0)
    assert [s.id for s in st.sites()] == ["a", "b", "c"]
    assert [s.id for s in st.sites(after="a", limit=1)] == ["b"]
    assert st.site("nobody") is None

    for job_id, created in (("y", 2.0), ("x", 2.0), ("w", 1.0)):
        st.add_job(_job(job_id, created=created), _model(job_id=job_id), audit=_note(0))
    assert [j.id for j in st.jobs()] == ["w", "x", "y"]
    page = st.jobs_page(after=0, limit=2)
    assert [j.id for _, j in page] == ["y", "x"]
    keys = [k for k, _ in page]
    assert 0 < keys[0] < keys[1]
    assert [j.id for _, j in st.jobs_page(after=keys[1], limit=5)] == ["w"]
    assert st.job("v") is None and st.latest_model("v") is None and st.models("v") == []

    for rnd in (1, 2, 3, 4):
        st.start_round("y", rnd, attempt=1, model_in="m", at=float(rnd), audit=_note(rnd))
        st.record_site(replace(_answer(rnd, "s"), job="y"))
    assert st.count_rounds("y") == 4 and st.count_rounds("x") == 0
    assert [r.round for r in st.rounds("y", after=1, limit=2)] == [2, 3]
    assert [r.round for r in st.rounds("y", limit=2, newest=True)] == [4, 3]
    assert [r.round for r in st.round_sites("y", lo=2, hi=3)] == [2, 3]
    assert [r.round for r in st.round_sites("y", lo=3)] == [3, 4]


# ----- restarts and crashes -----


def test_reopened_store_keeps_completed_round_and_model(store_factory):
    """A store reopened after a completed round has that round, its model blob and its sites."""
    blobs = store_factory.blobs()
    st = store_factory()
    v0, _ = blobs.put([("x", np.zeros(4, dtype=np.float32))])
    v1, _ = blobs.put([("x", np.ones(4, dtype=np.float32))])
    st.add_job(
        JobRow(
            id="j",
            spec=b"spec",
            signed_job=b"env",
            signer_cert=b"pem",
            state="running",
            error="",
            submitted_by="alice",
            created=1.0,
        ),
        ModelRow(job="j", version_no=0, sha256=v0, optimizer_state="", created=1.0),
        audit=_note(0),
    )
    st.start_round("j", 1, attempt=1, model_in=v0, at=2.0, audit=_note(1))
    st.record_site(
        SiteRoundRow(
            job="j",
            round=1,
            site="site-1",
            outcome="ok",
            reason="",
            num_samples=10,
            epsilon=0.5,
            update_epsilon=0.1,
            metrics={"eval_loss": 1.0},
        )
    )
    st.complete_round(
        "j",
        1,
        model=ModelRow(job="j", version_no=1, sha256=v1, optimizer_state="", created=3.0),
        metrics={"aggregated": 1.0},
        audit=_note(2),
    )
    st.close()
    st = store_factory()
    (rnd,) = st.rounds("j")
    assert (rnd.state, rnd.model_version_out) == ("done", v1)
    assert [m.sha256 for m in st.models("j")] == [v0, v1]
    assert st.round_sites("j")[0].metrics == {"eval_loss": 1.0}
    np.testing.assert_array_equal(store_factory.blobs().load(v1)[0][1], np.ones(4))
    assert st.verify_audit_chain() == 3


_KILLED = """
import os, signal, sys
from pathlib import Path
import numpy as np
from aggregator.store import ModelRow, StoreBackend, StoreConfig, open_blobs, open_store
from tests.aggregator.test_store_contract import _answer, _job, _model, _note
config, state = StoreConfig(backend=StoreBackend(sys.argv[1])), Path(sys.argv[2])
st = open_store(config, state_dir=state)
sha, _ = open_blobs(config, state_dir=state).put([("w", np.ones(3, np.float32))])
st.add_job(_job(), _model(), audit=_note(0))
st.start_round("j", 1, attempt=1, model_in=_model().sha256, at=2.0, audit=_note(1))
st.record_site(_answer(1, "site-1"), audit=_note(2))
v1 = ModelRow(job="j", version_no=1, sha256=sha, optimizer_state="", created=3.0)
st.complete_round("j", 1, model=v1, metrics={}, audit=_note(3))
st.start_round("j", 2, attempt=1, model_in=sha, at=4.0, audit=_note(4))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_loses_no_change_whose_call_returned(store_factory):
    """SIGKILL right after the calls return (no close): a reopen has every change and blob."""
    backend = store_factory.backend.config.backend.value
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED, backend, str(store_factory.state_dir)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    st = store_factory()
    assert [(r.round, r.state) for r in st.rounds("j")] == [(1, "done"), (2, "collecting")]
    v0, v1 = st.models("j")
    assert v0 == _model() and (v1.version_no, v1.created) == (1, 3.0)
    np.testing.assert_array_equal(store_factory.blobs().load(v1.sha256)[0][1], np.ones(3))
    assert [r.site for r in st.round_sites("j")] == ["site-1"]
    assert st.verify_audit_chain() == 5


# ----- the blob store -----


def test_blobs_round_trip_and_are_stored_once(store_factory):
    """Tensors put come back equal, by header, load and chunks; the same tensors again are one
    blob."""
    blobs = store_factory.blobs()
    arrays: list[tuple[str, np.ndarray]] = [
        ("a", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ("b", np.ones(5, np.float64)),
    ]
    sha, header = blobs.put(arrays)
    assert blobs.has(sha) and blobs.put(arrays) == (sha, header)
    assert blobs.header(sha) == header
    for (name, want), (got_name, got) in zip(arrays, blobs.load(sha), strict=True):
        assert name == got_name
        np.testing.assert_array_equal(got, want)
    chunks = list(blobs.chunks(sha, chunk_bytes=7))
    assert all(len(c) <= 7 for c in chunks)
    assert b"".join(chunks) == b"".join(
        a.astype(a.dtype.newbyteorder("<")).tobytes() for _, a in arrays
    )
    empty, _ = blobs.put([])
    assert blobs.load(empty) == []


@pytest.mark.parametrize(
    "name",
    ["", "../" * 8 + "etc/passwd", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "0" * 62 + "/x"],
)
def test_a_name_that_is_not_a_hash_names_no_blob(store_factory, name):
    """A hostile or mistyped blob name is absent and refused, never a path outside the store."""
    blobs = store_factory.blobs()
    assert not blobs.has(name)
    for read in (blobs.header, blobs.load, lambda n: list(blobs.chunks(n))):
        with pytest.raises(InternalError):
            read(name)


def test_a_missing_blob_is_not_found(store_factory):
    """A well-formed name of a blob never stored is absent and raises FileNotFoundError."""
    blobs = store_factory.blobs()
    assert not blobs.has("0" * 64)
    for read in (blobs.header, blobs.load, lambda n: list(blobs.chunks(n))):
        with pytest.raises(FileNotFoundError):
            read("0" * 64)


def test_raw_bytes_round_trip_stored_once_and_refused_when_altered_or_too_large(store_factory):
    """A code bundle's bytes are stored under their hash, read back checked, and bounded."""
    blobs = store_factory.blobs()
    data = b"ustar archive bytes" * 10
    sha = blobs.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert blobs.has_bytes(sha) and blobs.put_bytes(data) == sha
    assert not blobs.has(sha)  # bytes alone, no tensor header
    assert blobs.read_bytes(sha, max_bytes=len(data)) == data
    assert b"".join(blobs.chunks(sha, chunk_bytes=7)) == data
    with pytest.raises(InternalError):
        blobs.read_bytes(sha, max_bytes=len(data) - 1)
    for name in ("0" * 64, "../" * 8 + "etc/passwd"):
        assert not blobs.has_bytes(name)
    with pytest.raises(FileNotFoundError):
        blobs.read_bytes("0" * 64, max_bytes=10)
    with pytest.raises(InternalError):
        blobs.read_bytes("g" * 64, max_bytes=10)


# ----- what the rows name, and the blob store's collection half -----


class _Clock:
    """A settable clock for the blob store (unix seconds)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def _bundle_spec(code: str, initial: str) -> bytes:
    model = common_pb2.ModelSpec(
        kind=common_pb2.MODEL_KIND_BUNDLE,
        code_sha256=bytes.fromhex(code),
        initial_sha256=bytes.fromhex(initial),
    )
    return common_pb2.JobSpec(name="b", model=model).SerializeToString()


def test_blob_refs_name_every_version_optimizer_round_and_bundle_file_in_any_job_state(
    store_factory,
):
    """Every model version, optimizer state, round model and bundle file is named, whatever
    the job's state; a built-in job's spec and a spec that does not decode name nothing."""
    st = store_factory()
    code, initial, v1, opt, v2 = (f"{i:064x}" for i in range(10, 15))
    bundle_job = replace(_job("b"), spec=_bundle_spec(code, initial))
    st.add_job(bundle_job, replace(_model(job_id="b"), sha256=initial), audit=_note(0))
    st.start_round("b", 1, attempt=1, model_in=initial, at=2.0, audit=_note(1))
    st.complete_round(
        "b",
        1,
        model=replace(_model(1, job_id="b"), sha256=v1, optimizer_state=opt),
        metrics={},
        audit=_note(2),
    )
    st.set_job_state("b", "cancelled", audit=_note(3))
    builtin = replace(_job("i"), spec=common_pb2.JobSpec(name="i").SerializeToString())
    st.add_job(builtin, replace(_model(job_id="i"), sha256=v2), audit=_note(4))
    st.set_job_state("i", "failed", error="boom", audit=_note(5))
    st.add_job(replace(_job("x"), spec=b"\xff\xff"), _model(job_id="x"), audit=_note(6))
    st.start_round("x", 1, attempt=1, model_in="not a blob name", at=2.0, audit=_note(7))
    refs = st.blob_refs()
    assert refs.archives == {code}
    assert refs.models == {initial, v1, opt, v2, _model().sha256}
    assert refs.names == refs.models | {code}
    assert store_factory().blob_refs() == refs  # a reopened store names the same


def test_stored_lists_each_blob_with_its_size_and_when_it_was_stored(store_factory):
    """``stored`` lists model and raw blobs with the bytes they take and the clock at put."""
    clock = _Clock(1000.0)
    blobs = store_factory.blobs(clock)
    assert list(blobs.stored()) == []
    sha, header = blobs.put([("w", np.ones(4, np.float32))])
    clock.at = 2000.0
    raw = blobs.put_bytes(b"archive")
    got = {b.name: b for b in blobs.stored()}
    assert set(got) == {sha, raw}
    assert (got[sha].stored_at, got[raw].stored_at) == (1000.0, 2000.0)
    assert got[raw].size == len(b"archive")
    assert got[sha].size >= header.total_bytes == 16  # its header is counted too


def test_storing_or_refreshing_a_blob_again_restarts_its_age(store_factory):
    """A put, put_bytes or refresh of a stored blob makes it young; refresh of nothing: False."""
    clock = _Clock(100.0)
    blobs = store_factory.blobs(clock)
    sha, _ = blobs.put([("w", np.ones(2, np.float32))])
    raw = blobs.put_bytes(b"code")

    def ages() -> dict[str, float]:
        return {b.name: b.stored_at for b in blobs.stored()}

    clock.at = 200.0
    blobs.put([("w", np.ones(2, np.float32))])
    assert ages() == {sha: 200.0, raw: 100.0}
    clock.at = 300.0
    blobs.put_bytes(b"code")
    assert ages() == {sha: 200.0, raw: 300.0}
    clock.at = 400.0
    assert blobs.refresh(sha) and blobs.refresh(raw)
    assert ages() == {sha: 400.0, raw: 400.0}
    for name in ("0" * 64, "../" * 8 + "etc/passwd", "A" * 64):
        assert not blobs.refresh(name)
    assert set(ages()) == {sha, raw}  # a refresh of nothing creates nothing


def test_remove_takes_a_blob_stored_before_the_cutoff_and_nothing_else(store_factory):
    """A blob stored at the cutoff stays; before it, bytes and header go; a bad name raises."""
    blobs = store_factory.blobs(_Clock(100.0))
    sha, _ = blobs.put([("w", np.ones(2, np.float32))])
    raw = blobs.put_bytes(b"code")
    assert not blobs.remove(sha, stored_before=100.0)
    assert not blobs.remove(raw, stored_before=50.0)
    assert blobs.has(sha) and blobs.has_bytes(raw)
    assert blobs.remove(sha, stored_before=101.0)
    assert not blobs.has(sha) and not blobs.has_bytes(sha)
    with pytest.raises(FileNotFoundError):
        blobs.header(sha)
    assert [b.name for b in blobs.stored()] == [raw]
    assert not blobs.remove(sha, stored_before=101.0)  # gone already
    assert not blobs.remove("0" * 64, stored_before=1e12)
    with pytest.raises(InternalError):
        blobs.remove("../" * 8 + "etc/passwd", stored_before=1e12)
    assert blobs.read_bytes(raw, max_bytes=10) == b"code"
    assert blobs.discard_partial(before=1e12) == (0, 0)  # blobs are never partial writes
    assert blobs.has_bytes(raw)


def test_a_blob_put_again_after_a_listing_is_not_removed_by_that_listings_run(store_factory):
    """A collection that listed a blob as old cannot take it once it is put or refreshed."""
    clock = _Clock(100.0)
    blobs = store_factory.blobs(clock)
    sha, _ = blobs.put([("w", np.ones(2, np.float32))])
    raw = blobs.put_bytes(b"code")
    listed = {b.name: b.stored_at for b in blobs.stored()}
    assert listed == {sha: 100.0, raw: 100.0}
    clock.at = 10_000.0
    blobs.put([("w", np.ones(2, np.float32))])
    assert blobs.refresh(raw)
    for name in listed:
        assert not blobs.remove(name, stored_before=5_000.0)
    assert blobs.has(sha) and blobs.has_bytes(raw)


def test_a_refresh_racing_a_removal_either_keeps_the_blob_or_reports_it_gone(store_factory):
    """Across threads a refresh and a removal never both win: a True refresh means the blob is
    there afterwards, a False one means the removal took it first."""
    old = store_factory.blobs(_Clock(100.0))
    young = store_factory.blobs(_Clock(10_000.0))
    data = bundle.pack({"model.py": b"x = 1\n"})
    for _ in range(200):
        sha = old.put_bytes(data)  # (again) dated 100
        start = threading.Barrier(2)
        got: dict[str, bool] = {}
        t = threading.Thread(target=_refresh_at, args=(start, young, sha, got))
        t.start()
        start.wait()
        got["remove"] = old.remove(sha, stored_before=5_000.0)
        t.join()
        assert got["refresh"] != got["remove"]
        assert young.has_bytes(sha) == got["refresh"]
        if got["refresh"]:  # kept and young: age it again for the next turn
            assert old.remove(sha, stored_before=20_000.0)


def _refresh_at(start: threading.Barrier, blobs: BlobStore, sha: str, got: dict[str, bool]) -> None:
    start.wait()
    got["refresh"] = blobs.refresh(sha)
