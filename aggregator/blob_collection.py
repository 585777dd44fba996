"""The blob collection: remove blobs that no row names once they are old enough.

Blobs come before the rows that name them: an operator uploads a bundle job's code archive
and initial weights (``Admin.UploadBlob``) before ``SubmitJob``, and a round writes its new
model before the row that records it. When the row never comes (a submit refused or
abandoned, a tool retrying, a crash between the blob and its row) the blob is named by
nothing and would stay forever. ``collect_blobs`` removes such a blob once it was last
stored (put or refreshed) more than the grace period ago (``[store]
unreferenced_blob_grace_s``, a day by default, an hour at least), so an upload whose submit
is still to come, or a model blob whose row is being written, is never taken.

What is kept, however old: every blob ``Store.blob_refs`` names (``aggregator.store.refs``):
every model version and optimizer state, and every stored job's code archive and initial
weights, whatever the job's state. A failed or cancelled job keeps them all: its versions
stay downloadable by the operator (``Admin.DownloadModel`` serves any stored version of any
job), a backup holds them, and its code is what reads those weights back into a model.

Why the race with a submit cannot lose a blob: the collection lists the blobs first, then
reads the names, then removes each candidate with ``BlobStore.remove(name,
stored_before=cutoff)``, which checks the blob's age again at the instant of removal. Every
writer of a row puts or ``refresh``es the blob first (``check_bundle_job``, ``put``), which
makes it young; so either that comes first and the blob is kept, or the removal comes first
and the submit is refused as not uploaded (or ``put`` writes the blob again).

Each removal is logged (``blob_collected``) and appended to the audit chain with the blob's
name and size; a run ends with a summary (``blob_collection_done``). A failure to remove one
blob is logged and the run goes on; a failed run is logged and the next one tries again: the
collection never stops the aggregator. ``BlobCollector`` runs it on its own thread at start
and then every hour, so rounds never wait for it (the store's calls it makes are short).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from aggregator.store import AuditNote, BlobStore, Store
from aggregator.store.interface import StoredBlob

__all__ = ["COLLECT_EVERY_S", "BlobCollector", "Collection", "collect_blobs"]

log = structlog.get_logger("aggregator.blobs")

COLLECT_EVERY_S = 3600.0
"""How often ``BlobCollector`` runs after its first run at start (an hour: at most the
least grace, so a blob outlives its grace by at most this)."""


@dataclass(frozen=True, kw_only=True)
class Collection:
    """What one run of ``collect_blobs`` did.

    Args:
        removed: the blobs removed.
        kept_named: blobs past the grace that a row names.
        kept_young: blobs no row names that are within the grace (or were put or refreshed
            again while the run went on).
        failed: blobs whose removal the storage refused (each logged).
        partial_files: files of interrupted writes removed (``BlobStore.discard_partial``).
        partial_bytes: their bytes.
    """

    removed: tuple[StoredBlob, ...]
    kept_named: int
    kept_young: int
    failed: int
    partial_files: int
    partial_bytes: int

    @property
    def freed_bytes(self) -> int:
        """The bytes the run gave back: removed blobs and partial writes."""
        return sum(b.size for b in self.removed) + self.partial_bytes


def collect_blobs(
    store: Store,
    blobs: BlobStore,
    *,
    now: float,
    grace_s: float,
    stopping: Callable[[], bool] = lambda: False,
) -> Collection:
    """Remove every blob that no row names and that was last stored before ``now - grace_s``.

    Args:
        store: the rows (``Store.blob_refs``) and the audit chain each removal is added to.
        blobs: the blob store.
        now: unix seconds, the store's clock.
        grace_s: how long a blob no row names is kept after it was last stored.
        stopping: asked between removals; True ends the run early (the aggregator stops).

    Raises:
        OSError: the blob store cannot be listed.
        InternalError: the store cannot be read (or the backend's own error).
    """
    cutoff = now - grace_s
    listed = list(blobs.stored())  # before the names: a blob named after them was refreshed
    named = store.blob_refs().names
    removed: list[StoredBlob] = []
    kept_named = kept_young = failed = 0
    for blob in sorted(listed, key=lambda b: b.name):
        if blob.stored_at >= cutoff:
            kept_young += 1
            continue
        if blob.name in named:
            kept_named += 1
            continue
        if stopping():
            break
        try:
            gone = blobs.remove(blob.name, stored_before=cutoff)
        except Exception as exc:  # one blob's failure must not end the run
            failed += 1
            log.error("blob_collect_failed", blob=blob.name, error=str(exc))
            continue
        if not gone:  # put or refreshed since the listing, or already gone
            kept_young += 1
            continue
        removed.append(blob)
        _record(store, blob, now=now)
    partial_files = partial_bytes = 0
    try:
        partial_files, partial_bytes = blobs.discard_partial(before=cutoff)
    except Exception as exc:
        log.error("blob_partial_discard_failed", error=str(exc))
    done = Collection(
        removed=tuple(removed),
        kept_named=kept_named,
        kept_young=kept_young,
        failed=failed,
        partial_files=partial_files,
        partial_bytes=partial_bytes,
    )
    log.info(
        "blob_collection_done",
        removed=len(removed),
        freed_bytes=done.freed_bytes,
        kept_named=kept_named,
        kept_young=kept_young,
        failed=failed,
        partial_files=partial_files,
        grace_s=grace_s,
    )
    return done


def _record(store: Store, blob: StoredBlob, *, now: float) -> None:
    """Log one removal and append it to the audit chain (a failed append is logged)."""
    log.info("blob_collected", blob=blob.name, bytes=blob.size, stored_at=blob.stored_at)
    try:
        store.audit(
            AuditNote(
                event="blob_collected",
                actor="aggregator",
                at=now,
                detail=f"{blob.name} {blob.size} bytes",
            )
        )
    except Exception as exc:  # the blob is gone either way; the log line above says so
        log.error("blob_collected_not_audited", blob=blob.name, error=str(exc))


class BlobCollector:
    """One daemon thread that runs ``collect_blobs`` at start and every ``every_s`` seconds.

    Args:
        store: the aggregator's rows.
        blobs: its blob store.
        grace_s: ``[store] unreferenced_blob_grace_s``.
        clock: unix seconds (the aggregator's clock, which also dates the blobs).
        every_s: the time between runs.
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        *,
        grace_s: float,
        clock: Callable[[], float],
        every_s: float = COLLECT_EVERY_S,
    ) -> None:
        self._store, self._blobs, self._clock = store, blobs, clock
        self._grace_s, self._every_s = grace_s, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blob-collector", daemon=True)

    def start(self) -> None:
        """Start the thread (its first run begins at once)."""
        self._thread.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        """End the thread after the removal in progress (waiting up to ``timeout`` seconds)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def run_once(self) -> Collection | None:
        """One run now; None when it failed (logged: the next run tries again)."""
        try:
            return collect_blobs(
                self._store,
                self._blobs,
                now=self._clock(),
                grace_s=self._grace_s,
                stopping=self._stop.is_set,
            )
        except Exception as exc:
            log.error("blob_collection_failed", error=str(exc))
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            if self._stop.wait(self._every_s):
                return
