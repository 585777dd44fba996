"""What the aggregator asks of its persistent state: ``Store`` (rows) and ``BlobStore`` (bytes).

Callers type against these Protocols only; ``aggregator.store.open_store`` picks the
implementation that ``[store].backend`` names (SQLite today, ``aggregator.store.sqlite``). A
new backend passes ``tests/aggregator/store_contract.py`` and is added to the factory; no
caller changes.

The contract every implementation keeps:

- Durability: a method that changes state returns only once the change is durable, so an
  aggregator killed at any instant restarts with every change whose call returned.
- Atomicity: each method is one transaction; the rows it writes and the audit entry passed
  with them are committed together or not at all. A method that fails raises (an
  ``InternalError``, or the backend's own error, e.g. ``sqlite3.Error``) and changes nothing;
  callers treat any exception from the store that way and never name a backend's type.
- Thread safety: any method may be called from any thread at any time.
- The audit log is a hash chain (``aggregator.audit``): entries are numbered from 1 without
  gaps, each linking to its predecessor; a stored entry that was altered, removed or
  reordered makes ``verify_audit_chain`` raise ``AuditTampered``.
- Model bytes are never in the ``Store``: rows carry a blob's hex SHA-256, and its bytes are
  in the ``BlobStore`` (written durably before the row that names them).
- Backup: ``backup`` copies the rows online, as of one instant, while other calls go on; a
  backend brings its own way (SQLite's backup API; ``pg_dump`` for PostgreSQL) and its own
  ``restore_store`` case in ``aggregator.store.factory``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy.typing as npt

from aggregator.audit import AuditEntry
from aggregator.store.refs import BlobRefs
from aggregator.store.rows import (
    AuditNote,
    FailureRow,
    JobRow,
    ModelRow,
    RoundRow,
    SiteRoundRow,
    SiteRow,
)
from confide.v1 import common_pb2
from confide.wire.blob import CHUNK_BYTES, NamedArrays

__all__ = ["Arrays", "BlobStore", "Store", "StoreBackup", "StoredBlob"]

Arrays = Sequence[tuple[str, npt.NDArray[Any]]]
"""Named tensors, in model order."""


@dataclass(frozen=True)
class StoreBackup:
    """What ``Store.backup`` wrote.

    Args:
        files: the files it wrote, relative to the backup's folder.
        schema: the schema version of the copy (the backend's, e.g. SQLite's ``user_version``).
        blobs: every blob the copied rows name (``aggregator.store.refs``): the blobs a
            restore needs.
    """

    files: tuple[str, ...]
    schema: int
    blobs: BlobRefs


@dataclass(frozen=True, kw_only=True)
class StoredBlob:
    """One blob as ``BlobStore.stored`` lists it.

    Args:
        name: its hex SHA-256.
        size: the bytes it takes in the store (a model blob's header included).
        stored_at: the store's clock (unix seconds) when it was last put or refreshed.
    """

    name: str
    size: int
    stored_at: float


class Store(Protocol):
    """The aggregator's rows: sites, jobs, rounds, site answers, model versions, audit.

    ``limit`` 0 means no limit wherever a method takes one.
    """

    def close(self) -> None:
        """Release the store; no other method may be called after (closing again is harmless)."""
        ...

    def backup(self, into: Path) -> StoreBackup:
        """Copy every row into the empty folder ``into``, as of one instant, online.

        Other calls, from this process or another, go on meanwhile. The copy holds every
        change whose call returned before ``backup`` was called, and each transaction whole
        or not at all; the blobs its rows name were durable before those rows were written.
        Works on a store opened with ``create=False`` whatever its schema version.

        Raises:
            InternalError: the copy cannot be written.
        """
        ...

    def blob_refs(self) -> BlobRefs:
        """The blobs the rows name (``aggregator.store.refs``), as of one instant.

        What a blob collection must keep and a backup must hold. A row is written only after
        the blob it names is durable and is never deleted, so a blob named once stays named.
        """
        ...

    # ----- audit -----

    def audit(self, note: AuditNote) -> AuditEntry:
        """Append one audit entry on its own; returns it as stored (seq and hashes set)."""
        ...

    def audit_entries(self, *, after_seq: int = 0, limit: int = 0) -> list[AuditEntry]:
        """Audit entries with ``seq > after_seq``, oldest first."""
        ...

    def verify_audit_chain(self) -> int:
        """Check the whole audit chain; returns the number of entries.

        Raises:
            AuditTampered: an entry was altered, removed or reordered.
        """
        ...

    # ----- sites -----

    def upsert_site(self, row: SiteRow, *, audit: AuditNote | None = None) -> None:
        """Record a site's registration (replacing its earlier one)."""
        ...

    def set_heartbeat(self, site: str, at: float) -> None:
        """Record when a site was last heard from (an unknown site: nothing)."""
        ...

    def sites(self, *, after: str = "", limit: int = 0) -> list[SiteRow]:
        """Registered sites with an id after ``after``, by id."""
        ...

    def site(self, site: str) -> SiteRow | None:
        """One registered site, or None."""
        ...

    # ----- jobs -----

    def add_job(self, row: JobRow, model: ModelRow, *, audit: AuditNote) -> None:
        """Record a submitted job with its version-0 model, atomically.

        Raises:
            the backend's error: a job with that id, or that job's version 0, exists
                (nothing is recorded).
        """
        ...

    def set_job_state(
        self,
        job: str,
        state: str,
        *,
        error: str = "",
        final_metrics: dict[str, float] | None = None,
        audit: AuditNote | None = None,
    ) -> None:
        """Move a job to ``state`` with its ``error`` (and its final metrics, when given)."""
        ...

    def jobs(self, job: str | None = None) -> list[JobRow]:
        """Every job (or just ``job``), by creation time then id."""
        ...

    def jobs_page(self, *, after: int, limit: int) -> list[tuple[int, JobRow]]:
        """Up to ``limit`` jobs submitted after the one keyed ``after``, with their keys.

        Keys are positive integers increasing in submission order (a listing's page tokens;
        0 is before the first job).
        """
        ...

    def job(self, job: str) -> JobRow | None:
        """One job, or None."""
        ...

    # ----- models -----

    def latest_model(self, job: str) -> ModelRow | None:
        """A job's newest model version, or None."""
        ...

    def models(self, job: str) -> list[ModelRow]:
        """A job's model versions, oldest first."""
        ...

    # ----- rounds -----

    def start_round(
        self, job: str, round: int, *, attempt: int, model_in: str, at: float, audit: AuditNote
    ) -> None:
        """Record that an attempt of a round started ``collecting`` from ``model_in``.

        Replaces the round's earlier attempt and forgets that attempt's site answers.
        """
        ...

    def set_round_state(
        self, job: str, round: int, state: str, *, at: float, audit: AuditNote | None = None
    ) -> None:
        """Move a round to ``state`` (failed, cancelled, ...) finished at ``at``; a done round
        stays done (the audit entry is still appended)."""
        ...

    def complete_round(
        self,
        job: str,
        round: int,
        *,
        model: ModelRow,
        metrics: dict[str, float],
        audit: AuditNote,
    ) -> None:
        """Record a round's new model version and mark the round done, atomically.

        The model blob must already be durable in the ``BlobStore``.
        """
        ...

    def record_site(
        self,
        row: SiteRoundRow,
        *,
        audit: AuditNote | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Record one site's answer in a round (round 0: the final evaluation).

        A row with outcome ``ok`` is never replaced by a later failure: the accepted update
        (and the epsilon it spent) stays on record. A later ``ok`` replaces it.

        Args:
            before_commit: run inside the transaction after the writes; if it raises, the
                row and audit entry are rolled back and the exception propagates.
        """
        ...

    def rounds(
        self, job: str, *, after: int = 0, limit: int = 0, newest: bool = False
    ) -> list[RoundRow]:
        """A job's rounds numbered above ``after``, in order; ``newest``: the last ``limit``
        of them, newest first."""
        ...

    def count_rounds(self, job: str) -> int:
        """How many rounds of ``job`` are recorded."""
        ...

    def round_sites(self, job: str, *, lo: int = 0, hi: int = -1) -> list[SiteRoundRow]:
        """A job's site answers of rounds ``lo``..``hi`` (-1: no upper end), by round then site
        (round 0 holds the final evaluation)."""
        ...

    def epsilon_by_site(self, job: str) -> dict[str, float]:
        """Each site's largest reported ε over its accepted (``ok``) updates of rounds >= 1
        in ``job``, by site.

        Sites report the job's cumulative ε (their ledger composes the rounds by RDP), so the
        job's figure per site is the latest, i.e. the largest.
        """
        ...

    # ----- failure reasons -----

    def record_failure(self, row: FailureRow) -> None:
        """Record why a site gave a round attempt no update (replacing an earlier attempt's).

        One row per (job, round, site), so a site cannot grow the table beyond the rounds
        it takes part in; ``row.detail`` is bounded by the caller.
        """
        ...

    def failures(
        self, job: str, *, round: int | None = None, lo: int = 0, hi: int = -1
    ) -> list[FailureRow]:
        """A job's failure reasons of one ``round``, or of rounds ``lo``..``hi`` (-1: no upper
        end), by round then site."""
        ...


class BlobStore(Protocol):
    """Model versions and code bundles, content-addressed by the hex SHA-256 of their bytes.

    A model blob (tensors) has a header beside its bytes; a raw blob (a job's code archive,
    ``confide.bundle``) is bytes alone, stored and served but never imported or run. Both live
    in one address space: a name is the SHA-256 of the bytes stored under it. A blob that
    ``has`` (or ``has_bytes``) reports is complete and durable; a name that is not 64
    lowercase hex digits names no blob.

    Collection (``aggregator.blob_collection``): each blob has a ``stored_at``, the store's
    clock when it was last put (``put`` or ``put_bytes``, also of bytes already stored) or
    ``refresh``ed. ``remove(name, stored_before=t)`` takes a blob only if its ``stored_at``
    is before ``t``, and that check and the removal are atomic with respect to ``put``,
    ``put_bytes`` and ``refresh`` in this process. So whoever writes a row naming a blob
    puts or refreshes it first, and a collection that chose a blob from an older listing
    cannot take it from under that row: either the refresh comes first and the blob is
    kept, or the removal comes first and the refresh answers False (the writer refuses, or
    ``put`` writes the blob again). Storage that an interrupted write left behind is never
    a blob: ``stored`` does not list it and only ``discard_partial`` removes it.
    """

    def has(self, sha_hex: str) -> bool:
        """Whether the blob and its header are stored."""
        ...

    def put(self, arrays: Arrays) -> tuple[str, common_pb2.BlobHeader]:
        """Store tensors durably (once: the same tensors again are a no-op); returns the
        blob's hex SHA-256 and header.

        Raises:
            OSError: the storage refused the write.
        """
        ...

    def header(self, sha_hex: str) -> common_pb2.BlobHeader:
        """The stored header of a blob.

        Raises:
            FileNotFoundError: no such blob.
            InternalError: ``sha_hex`` is not a blob name (reason ``UNKNOWN_JOB``).
        """
        ...

    def load(self, sha_hex: str) -> NamedArrays:
        """The blob's tensors (read-only).

        Raises:
            FileNotFoundError: no such blob.
            InternalError: ``sha_hex`` is not a blob name (reason ``UNKNOWN_JOB``).
        """
        ...

    def chunks(self, sha_hex: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The blob's bytes in chunks of at most ``chunk_bytes``, for streaming.

        Raises:
            FileNotFoundError: no such blob.
            InternalError: ``sha_hex`` is not a blob name (reason ``UNKNOWN_JOB``).
        """
        ...

    def put_bytes(self, data: bytes) -> str:
        """Store raw bytes durably (once); returns their hex SHA-256.

        Raises:
            OSError: the storage refused the write.
        """
        ...

    def has_bytes(self, sha_hex: str) -> bool:
        """Whether bytes with this hex SHA-256 are stored (a model blob's bytes count too)."""
        ...

    def read_bytes(self, sha_hex: str, *, max_bytes: int) -> bytes:
        """The stored bytes named ``sha_hex``, checked against their name.

        Raises:
            FileNotFoundError: no such blob.
            InternalError: ``sha_hex`` is not a blob name (reason ``UNKNOWN_JOB``), the bytes
                are over ``max_bytes`` or no longer hash to their name.
        """
        ...

    def stored(self) -> Iterator[StoredBlob]:
        """Every complete blob in the store, in no particular order, with its size and age.

        A blob put or removed meanwhile may or may not be listed. Anything in the storage
        that is not a blob (another name, an interrupted write) is not listed.

        Raises:
            OSError: the storage cannot be listed.
        """
        ...

    def refresh(self, sha_hex: str) -> bool:
        """Whether bytes named ``sha_hex`` are stored; if so, their ``stored_at`` becomes now.

        Called before writing a row that names a blob the caller did not just put, so a
        collection in progress keeps it (a name that is not a blob name: False).

        Raises:
            OSError: the storage refused the update.
        """
        ...

    def remove(self, sha_hex: str, *, stored_before: float) -> bool:
        """Remove the blob (bytes and header) if it was last stored before ``stored_before``.

        Returns whether it was removed: False when there is no such blob or it was put or
        refreshed at or after ``stored_before``. It does not ask whether a row names it: that
        is the caller's question (``Store.blob_refs``).

        Raises:
            OSError: the storage refused the removal (the blob may be gone or whole; never a
                header without its bytes).
            InternalError: ``sha_hex`` is not a blob name (reason ``UNKNOWN_JOB``).
        """
        ...

    def discard_partial(self, *, before: float) -> tuple[int, int]:
        """Remove what interrupted writes left behind, last changed before ``before``; a write
        in progress in this process is never touched. Returns (files, bytes) removed.

        Raises:
            OSError: the storage refused a removal.
        """
        ...
