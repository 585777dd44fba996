"""The blob collection (aggregator.blob_collection): blobs no row names go once past their
grace, audited; every named blob stays, whatever its job's state; a submit racing a
collection never loses its files; a backup taken after a collection still restores."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from structlog.testing import capture_logs

from aggregator.backup import backup_state, restore_state
from aggregator.blob_collection import BlobCollector, collect_blobs
from aggregator.bundles import bundle_parts, check_bundle_job, receive_blob
from aggregator.store import (
    AuditNote,
    BlobStore,
    JobRow,
    ModelRow,
    Store,
    StoreConfig,
    open_blobs,
    open_store,
)
from confide import bundle
from confide.cli.jobs import upload_bundle_files
from confide.errors import ConfigError
from confide.jobfile import LoadedJob, with_initial_weights
from confide.v1 import admin_pb2, common_pb2, federation_pb2
from confide.wire.blob import BlobAssembler
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import tiny_spec

GRACE = 86400.0
T0 = 1_000_000.0


class _Clock:
    """The blob store's clock, moved by the test."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@dataclass
class _State:
    store: Store
    blobs: BlobStore
    clock: _Clock

    def collect(self, *, after: float):
        """One collection ``after`` seconds past T0, with the default grace."""
        return collect_blobs(self.store, self.blobs, now=T0 + after, grace_s=GRACE)


@pytest.fixture
def st(tmp_path):
    """A store and blob store in one state folder, the blobs dated by a fake clock at T0."""
    clock = _Clock(T0)
    state = tmp_path / "state"
    store = open_store(StoreConfig(), state_dir=state)
    yield _State(store, open_blobs(StoreConfig(), state_dir=state, clock=clock), clock)
    store.close()


class _Admin:
    """``Admin.UploadBlob`` without gRPC: the operator's client code against receive_blob."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def UploadBlob(self, parts, timeout: float) -> admin_pb2.UploadBlobReply:
        _, sha = receive_blob(parts, self.blobs, max_model_bytes=1 << 20)
        return admin_pb2.UploadBlobReply(sha256=sha)


def _job(seed: int = 0) -> LoadedJob:
    """A bundle job: its archive and initial weights (different per seed)."""
    archive = bundle.pack({"model.py": f"SEED = {seed}\n".encode()})
    initial = [("net.weight", np.full((2, 3), 0.5 + seed, np.float32))]
    spec = tiny_spec(model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_BUNDLE))
    return LoadedJob(
        spec=with_initial_weights(spec, archive=archive, initial=initial),
        bundle=archive,
        initial=initial,
    )


def _names(job: LoadedJob) -> tuple[str, str]:
    return job.spec.model.code_sha256.hex(), job.spec.model.initial_sha256.hex()


def _submit(st: _State, job: LoadedJob, job_id: str) -> None:
    """What SubmitJob does for a bundle job once the envelope checks: the files, then the row."""
    v0 = check_bundle_job(job.spec, st.blobs)
    st.store.add_job(
        JobRow(
            id=job_id,
            spec=job.spec.SerializeToString(),
            signed_job=b"env",
            signer_cert=b"pem",
            state="running",
            error="",
            submitted_by="alice",
            created=st.clock(),
        ),
        ModelRow(job=job_id, version_no=0, sha256=v0, optimizer_state="", created=st.clock()),
        audit=AuditNote(event="job_submitted", actor="alice", at=st.clock(), job=job_id),
    )


def _builtin_job(st: _State, job_id: str) -> list[str]:
    """A built-in job with a done round: versions 0 and 1 and an optimizer state."""
    v0, _ = st.blobs.put([("w", np.zeros(4, np.float32))])
    spec = tiny_spec().SerializeToString()
    row = JobRow(
        id=job_id,
        spec=spec,
        signed_job=b"env",
        signer_cert=b"pem",
        state="running",
        error="",
        submitted_by="alice",
        created=st.clock(),
    )
    note = AuditNote(event="e", actor="a", at=st.clock(), job=job_id)
    st.store.add_job(
        row,
        ModelRow(job=job_id, version_no=0, sha256=v0, optimizer_state="", created=1.0),
        audit=note,
    )
    st.store.start_round(job_id, 1, attempt=1, model_in=v0, at=2.0, audit=note)
    v1, _ = st.blobs.put([("w", np.ones(4, np.float32))])
    opt, _ = st.blobs.put([("m", np.full(4, 0.25, np.float32))])
    model = ModelRow(job=job_id, version_no=1, sha256=v1, optimizer_state=opt, created=3.0)
    st.store.complete_round(job_id, 1, model=model, metrics={}, audit=note)
    return [v0, v1, opt]


def _stored(blobs: BlobStore) -> set[str]:
    return {b.name for b in blobs.stored()}


# ----- what goes, what stays -----


def test_an_old_blob_no_row_names_is_removed_logged_and_audited(st):
    """An abandoned upload past its grace is removed, logged with its size and audited."""
    job = _job()
    upload_bundle_files(_Admin(st.blobs), job)
    code, initial = _names(job)
    sizes = {b.name: b.size for b in st.blobs.stored()}
    with capture_logs() as logs:
        done = st.collect(after=GRACE + 1)
    assert {b.name for b in done.removed} == {code, initial}
    assert done.freed_bytes == sum(sizes.values()) and (done.kept_named, done.failed) == (0, 0)
    assert not st.blobs.has_bytes(code) and not st.blobs.has_bytes(initial)
    assert _stored(st.blobs) == set()
    audited = [e for e in st.store.audit_entries() if e.event == "blob_collected"]
    assert sorted(e.detail for e in audited) == sorted(
        f"{name} {size} bytes" for name, size in sizes.items()
    )
    assert all((e.actor, e.at) == ("aggregator", T0 + GRACE + 1) for e in audited)
    st.store.verify_audit_chain()
    logged = [(e["event"], e.get("blob")) for e in logs]
    assert ("blob_collected", code) in logged and ("blob_collected", initial) in logged
    [summary] = [e for e in logs if e["event"] == "blob_collection_done"]
    assert (summary["removed"], summary["freed_bytes"]) == (2, done.freed_bytes)


def test_a_blob_no_row_names_is_kept_until_its_grace_has_passed(st):
    """At exactly its grace an unnamed blob stays; one second later it goes."""
    sha = st.blobs.put_bytes(b"an upload whose submit is still to come")
    done = st.collect(after=GRACE)
    assert done.removed == () and done.kept_young == 1 and st.blobs.has_bytes(sha)
    assert [e for e in st.store.audit_entries() if e.event == "blob_collected"] == []
    assert [b.name for b in st.collect(after=GRACE + 1).removed] == [sha]


def test_every_named_kind_is_kept_however_old(st):
    """Code archive, initial weights, model versions and optimizer state stay after a century;
    only the unnamed decoy beside them goes."""
    job = _job()
    upload_bundle_files(_Admin(st.blobs), job)
    _submit(st, job, "bundle")
    named = {*_names(job), *_builtin_job(st, "builtin")}
    decoy = st.blobs.put_bytes(b"nobody names me")
    done = st.collect(after=100 * 365 * GRACE)
    assert [b.name for b in done.removed] == [decoy]
    assert done.kept_named == len(named) == 5
    assert _stored(st.blobs) == named
    for row in st.store.models("builtin"):
        assert st.blobs.load(row.sha256) is not None
    assert b"".join(p.chunk for p in bundle_parts(st.store, st.blobs, "bundle")) == job.bundle


@pytest.mark.parametrize("state", ["failed", "cancelled", "done"])
def test_a_finished_jobs_blobs_are_kept_whatever_its_state(st, state):
    """A failed, cancelled or done job keeps its code, weights, versions and optimizer state:
    its history stays downloadable and in backups."""
    job = _job()
    upload_bundle_files(_Admin(st.blobs), job)
    _submit(st, job, "bundle")
    named = {*_names(job), *_builtin_job(st, "builtin")}
    for job_id in ("bundle", "builtin"):
        st.store.set_job_state(job_id, state, error="why" if state == "failed" else "")
    done = st.collect(after=10 * GRACE)
    assert done.removed == () and _stored(st.blobs) == named


def test_a_model_blob_between_its_write_and_its_row_is_kept(st):
    """A round's new model is put before complete_round names it: a collection meanwhile
    keeps it (young), and once the row exists it is named for good."""
    [v0, _, _] = _builtin_job(st, "j")
    st.clock.at = T0 + 5 * GRACE
    v2, _ = st.blobs.put([("w", np.full(4, 2.0, np.float32))])
    assert st.collect(after=5 * GRACE + 1).removed == ()
    model = ModelRow(job="j", version_no=2, sha256=v2, optimizer_state="", created=4.0)
    st.store.start_round("j", 2, attempt=1, model_in=v0, at=4.0, audit=_note())
    st.store.complete_round("j", 2, model=model, metrics={}, audit=_note())
    assert st.collect(after=100 * GRACE).removed == () and st.blobs.has(v2)


def _note() -> AuditNote:
    return AuditNote(event="e", actor="a", at=T0, job="j")


# ----- racing a submit -----


class _ThenActs:
    """The store as the collection sees it, with ``between`` run right after it read the names:
    the operator acts after the collection chose its candidates, before it removes them."""

    def __init__(self, store: Store, between) -> None:
        self._store, self._between = store, between

    def blob_refs(self):
        refs = self._store.blob_refs()
        self._between()
        return refs

    def __getattr__(self, name: str):
        return getattr(self._store, name)


@pytest.mark.parametrize("upload_again", [True, False])
def test_a_submit_between_a_collections_choice_and_its_removal_keeps_its_files(st, upload_again):
    """An upload two days old, then (again uploaded or not) submitted while a collection has
    already chosen it: the job's row names files that are there, and sites can fetch them."""
    job = _job()
    upload_bundle_files(_Admin(st.blobs), job)
    st.clock.at = T0 + 2 * GRACE

    def operator_acts() -> None:
        if upload_again:
            upload_bundle_files(_Admin(st.blobs), job)
        _submit(st, job, "j")

    done = collect_blobs(
        _ThenActs(st.store, operator_acts), st.blobs, now=st.clock(), grace_s=GRACE
    )
    assert done.removed == () and done.kept_young == 2
    code, initial = _names(job)
    assert st.store.job("j") is not None
    assert st.blobs.has_bytes(code) and st.blobs.has(initial)
    assert b"".join(p.chunk for p in bundle_parts(st.store, st.blobs, "j")) == job.bundle
    assert st.collect(after=100 * GRACE).removed == ()  # named now: kept for good


def test_a_submit_after_a_collection_took_its_files_is_refused_and_stores_no_job(st):
    """When the removal came first, the submit is refused naming the missing file: no job row
    ever names a blob that is not there."""
    job = _job()
    upload_bundle_files(_Admin(st.blobs), job)
    st.clock.at = T0 + 2 * GRACE
    assert len(st.collect(after=2 * GRACE).removed) == 2
    with pytest.raises(ConfigError) as err:
        _submit(st, job, "j")
    assert err.value.key == "model.code"
    assert st.store.jobs() == []


# ----- failures never stop it -----


class _RefusingRemove:
    """A blob store whose disk refuses to remove one blob."""

    def __init__(self, blobs: BlobStore, refused: str) -> None:
        self._blobs, self._refused = blobs, refused

    def remove(self, sha_hex: str, *, stored_before: float) -> bool:
        if sha_hex == self._refused:
            raise PermissionError("read-only file system")
        return self._blobs.remove(sha_hex, stored_before=stored_before)

    def __getattr__(self, name: str):
        return getattr(self._blobs, name)


def test_a_removal_the_disk_refuses_is_logged_and_the_others_still_go(st):
    """One refused removal is counted and logged; the rest of the run goes on."""
    keep = st.blobs.put_bytes(b"on a read-only disk")
    gone = st.blobs.put_bytes(b"removable")
    with capture_logs() as logs:
        done = collect_blobs(
            st.store, _RefusingRemove(st.blobs, keep), now=T0 + 2 * GRACE, grace_s=GRACE
        )
    assert [b.name for b in done.removed] == [gone] and done.failed == 1
    assert st.blobs.has_bytes(keep) and not st.blobs.has_bytes(gone)
    [failed] = [e for e in logs if e["event"] == "blob_collect_failed"]
    assert failed["blob"] == keep and "read-only" in failed["error"]


class _Broken:
    """A store whose reads fail (a locked or damaged database)."""

    def blob_refs(self):
        raise OSError("database is locked")


def test_the_collector_logs_a_failed_run_and_runs_again(st):
    """A run that cannot read the names removes nothing and is logged; the thread runs at
    start and again, and stops at once when asked."""
    old = st.blobs.put_bytes(b"unnamed")
    broken = BlobCollector(_Broken(), st.blobs, grace_s=GRACE, clock=lambda: T0 + 2 * GRACE)
    with capture_logs() as logs:
        assert broken.run_once() is None
    assert st.blobs.has_bytes(old)
    assert [e["event"] for e in logs] == ["blob_collection_failed"]

    runs: list[float] = []
    twice = threading.Event()

    def clock() -> float:
        runs.append(T0)
        if len(runs) >= 2:
            twice.set()
        return T0 + 2 * GRACE

    collector = BlobCollector(st.store, st.blobs, grace_s=GRACE, clock=clock, every_s=0.01)
    collector.start()
    try:
        assert twice.wait(10)
    finally:
        collector.stop(timeout=10)
    assert not collector._thread.is_alive()
    assert not st.blobs.has_bytes(old)


# ----- backup and restore after a collection -----


def test_a_backup_taken_after_a_collection_restores_and_verifies(pki, tmp_path):
    """After a collection the backup holds every named blob and no collected one, and its
    restore verifies the audit chain (with the blob_collected entries) and every blob."""
    config = make_config(pki, tmp_path / "state")
    clock = _Clock(T0)
    live = _State(
        open_store(config.store, state_dir=config.state_dir),
        open_blobs(config.store, state_dir=config.state_dir, clock=clock),
        clock,
    )
    try:
        job = _job()
        upload_bundle_files(_Admin(live.blobs), job)
        _submit(live, job, "bundle")
        named = {*_names(job), *_builtin_job(live, "builtin")}
        upload_bundle_files(_Admin(live.blobs), _job(seed=1))  # abandoned
        done = live.collect(after=2 * GRACE)
        assert len(done.removed) == 2
        backup_state(config, tmp_path / "backup", now=T0)
        entries = live.store.verify_audit_chain()
    finally:
        live.store.close()
    target = make_config(pki, tmp_path / "restored")
    restored = restore_state(target, tmp_path / "backup", now=T0)
    assert restored.audit_entries == entries and restored.blobs == len(named)
    store = open_store(target.store, state_dir=target.state_dir)
    try:
        assert store.blob_refs().names == named
        collected = [e for e in store.audit_entries() if e.event == "blob_collected"]
        assert {e.detail.split()[0] for e in collected} == {b.name for b in done.removed}
    finally:
        store.close()
    assert _stored(open_blobs(target.store, state_dir=target.state_dir)) == named


# ----- over gRPC, against a live aggregator -----


def _download_model(op, job_id: str, version: str):
    parts = op.admin.DownloadModel(
        federation_pb2.DownloadRequest(job_id=job_id, model_version=version), timeout=10
    )
    first = next(parts)
    asm = BlobAssembler(first.header, max_bytes=1 << 20)
    for p in parts:
        asm.add(p.chunk)
    return asm.finish()


def _download_bundle(site, job_id: str) -> bytes:
    parts = list(site.fed.DownloadBundle(federation_pb2.BundleRequest(job_id=job_id), timeout=10))
    return b"".join(p.chunk for p in parts[1:])


def test_a_cancelled_jobs_model_and_code_stay_downloadable_after_a_collection(
    server, clients, tmp_path
):
    """The operator can still download a cancelled bundle job's version 0, and a site its
    code, after a collection run a month later."""
    agg, _ = server
    site, operator = clients
    op = operator()
    job = _job()
    upload_bundle_files(op.admin, job)
    job_id = op.submit(job.spec)
    op.admin.CancelJob(admin_pb2.JobRef(job_id=job_id), timeout=10)
    deadline = time.monotonic() + 10
    while (row := agg.store.job(job_id)) is not None and row.state != "cancelled":
        assert time.monotonic() < deadline, row.state
        time.sleep(0.01)
    blobs = open_blobs(StoreConfig(), state_dir=tmp_path / "state")
    done = collect_blobs(agg.store, blobs, now=time.time() + 30 * GRACE, grace_s=GRACE)
    assert done.removed == () and done.kept_named == 2
    code, initial = _names(job)
    got = _download_model(op, job_id, initial)
    assert [(n, a.tolist()) for n, a in got] == [(n, a.tolist()) for n, a in job.initial or []]
    s = site("site-1")
    s.connect()
    data = _download_bundle(s, job_id)
    assert data == job.bundle and hashlib.sha256(data).hexdigest() == code


def test_an_upload_again_over_grpc_saves_a_stale_copy_for_the_submit(server, clients, tmp_path):
    """Files first uploaded two days ago are collected; uploaded again, a collection run just
    before the submit keeps them, and the job runs from them."""
    agg, _ = server
    site, operator = clients
    job = _job()
    state = tmp_path / "state"
    stale = open_blobs(StoreConfig(), state_dir=state, clock=lambda: time.time() - 2 * GRACE)
    blobs = open_blobs(StoreConfig(), state_dir=state)
    upload_bundle_files(_Admin(stale), job)  # an abandoned attempt, two days ago
    assert len(collect_blobs(agg.store, blobs, now=time.time(), grace_s=GRACE).removed) == 2
    upload_bundle_files(_Admin(stale), job)  # back, still dated two days ago
    op = operator()
    upload_bundle_files(op.admin, job)  # confide job submit uploads again ...
    done = collect_blobs(agg.store, blobs, now=time.time(), grace_s=GRACE)
    assert done.removed == ()
    job_id = op.submit(job.spec)  # ... then submits
    s = site("site-1")
    s.connect()
    assert _download_bundle(s, job_id) == job.bundle
