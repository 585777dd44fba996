"""The one place that picks the store's implementation: ``[store].backend`` in the config.

Callers get a ``Store`` and a ``BlobStore`` from here and type against those Protocols, so a
new backend (PostgreSQL for a hosted, multi-replica aggregator) is a new member of
``StoreBackend``, a new ``case`` below and a run of the contract suite
(``tests/aggregator/store_contract.py``); no caller changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import assert_never

from aggregator.store.blobs import FileBlobStore
from aggregator.store.interface import BlobStore, Store
from aggregator.store.sqlite import SqliteStore
from aggregator.store.sqlite_backup import restore_sqlite, sqlite_in_use
from aggregator.store.sqlite_schema import SCHEMA_VERSION
from confide.errors import InternalError, Reason
from confide.statefiles import private_dir

__all__ = [
    "DB_FILE",
    "MIN_UNREFERENCED_BLOB_GRACE_S",
    "UNREFERENCED_BLOB_GRACE_S",
    "StoreBackend",
    "StoreConfig",
    "open_blobs",
    "open_store",
    "restore_store",
    "schema_version",
    "store_in_use",
]

DB_FILE = "aggregator.db"
"""The SQLite backend's file in the state folder."""

BLOBS_DIR = "blobs"

UNREFERENCED_BLOB_GRACE_S = 86400.0
"""The default ``[store] unreferenced_blob_grace_s``: a day, far longer than an upload takes
to be followed by its submit, or a model blob by the row that names it."""

MIN_UNREFERENCED_BLOB_GRACE_S = 3600.0
"""The least grace ``[store] unreferenced_blob_grace_s`` accepts: an hour."""


class StoreBackend(Enum):
    """Where the aggregator keeps its rows (``[store].backend``)."""

    SQLITE = "sqlite"
    """One SQLite file in WAL mode, ``<state.dir>/aggregator.db``: embedded, nothing to run."""


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """The ``[store]`` table.

    Args:
        backend: the ``Store`` implementation.
        unreferenced_blob_grace_s: a blob no row names is removed only once it was last
            stored this long ago (``aggregator.blob_collection``).
    """

    backend: StoreBackend = StoreBackend.SQLITE
    unreferenced_blob_grace_s: float = UNREFERENCED_BLOB_GRACE_S


def open_store(config: StoreConfig, *, state_dir: Path, create: bool = True) -> Store:
    """Open (creating or upgrading) the store that ``config`` names.

    Args:
        config: the ``[store]`` table.
        state_dir: the aggregator's state folder (``[state].dir``).
        create: False: open an existing store as it is, to back it up while the daemon runs
            (nothing is created or upgraded).

    Raises:
        InternalError: the store cannot be opened, holds a newer schema than this code
            (with ``create``), or does not exist (without ``create``).
    """
    match config.backend:
        case StoreBackend.SQLITE:
            return SqliteStore(state_dir / DB_FILE, create=create)
        case _:
            assert_never(config.backend)


def schema_version(config: StoreConfig) -> int:
    """The newest schema version of the store that this code reads (and writes)."""
    match config.backend:
        case StoreBackend.SQLITE:
            return SCHEMA_VERSION
        case _:
            assert_never(config.backend)


def store_in_use(config: StoreConfig, *, state_dir: Path) -> bool:
    """Whether a running aggregator has the store open (a restore must not replace it)."""
    match config.backend:
        case StoreBackend.SQLITE:
            return sqlite_in_use(state_dir / DB_FILE)
        case _:
            assert_never(config.backend)


def restore_store(config: StoreConfig, *, source: Path, files: list[str], state_dir: Path) -> None:
    """Put back the rows that ``Store.backup`` wrote into ``source`` as the store of
    ``state_dir``, which has none yet; ``open_store`` then upgrades an older schema.

    Args:
        files: the files ``Store.backup`` wrote, relative to ``source``.

    Raises:
        InternalError: a newer schema than this code's (``SCHEMA_TOO_NEW``), files that are
            not this backend's (``BACKUP_DAMAGED``), or the store cannot be written.
    """
    match config.backend:
        case StoreBackend.SQLITE:
            if files != [DB_FILE]:
                raise InternalError(
                    f"{source} holds {files}, not a SQLite store's {DB_FILE}",
                    reason=Reason.BACKUP_DAMAGED,
                )
            private_dir(state_dir)
            restore_sqlite(source / DB_FILE, state_dir / DB_FILE)
        case _:
            assert_never(config.backend)


def open_blobs(
    config: StoreConfig, *, state_dir: Path, clock: Callable[[], float] = time.time
) -> BlobStore:
    """Open the blob store: files under ``<state_dir>/blobs`` whatever ``config.backend``
    (a hosted backend keeps its blobs on the state volume until it brings its own).

    Args:
        config: the ``[store]`` table.
        state_dir: the aggregator's state folder (``[state].dir``).
        clock: unix seconds: when each blob is stored (its age, for the collection).

    Raises:
        OSError: the folder cannot be created.
    """
    del config  # one blob store today; the argument keeps callers unchanged when there are two
    return FileBlobStore(state_dir / BLOBS_DIR, clock=clock)
