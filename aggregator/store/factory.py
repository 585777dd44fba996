"""The one place that picks the store's implementation: ``[store].backend`` in the config.

Callers get a ``Store`` and a ``BlobStore`` from here and type against those Protocols, so a
new backend (PostgreSQL for a hosted, multi-replica aggregator) is a new member of
``StoreBackend``, a new ``case`` below and a run of the contract suite
(``tests/aggregator/store_contract.py``); no caller changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import assert_never

from aggregator.store.blobs import FileBlobStore
from aggregator.store.interface import BlobStore, Store
from aggregator.store.sqlite import SqliteStore

__all__ = ["DB_FILE", "StoreBackend", "StoreConfig", "open_blobs", "open_store"]

DB_FILE = "aggregator.db"
"""The SQLite backend's file in the state folder."""

BLOBS_DIR = "blobs"


class StoreBackend(Enum):
    """Where the aggregator keeps its rows (``[store].backend``)."""

    SQLITE = "sqlite"
    """One SQLite file in WAL mode, ``<state.dir>/aggregator.db``: embedded, nothing to run."""


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """The ``[store]`` table.

    Args:
        backend: the ``Store`` implementation.
    """

    backend: StoreBackend = StoreBackend.SQLITE


def open_store(config: StoreConfig, *, state_dir: Path) -> Store:
    """Open (creating or upgrading) the store that ``config`` names.

    Args:
        config: the ``[store]`` table.
        state_dir: the aggregator's state folder (``[state].dir``).

    Raises:
        InternalError: the store cannot be opened, or holds a newer schema than this code.
    """
    match config.backend:
        case StoreBackend.SQLITE:
            return SqliteStore(state_dir / DB_FILE)
        case _:
            assert_never(config.backend)


def open_blobs(config: StoreConfig, *, state_dir: Path) -> BlobStore:
    """Open the blob store: files under ``<state_dir>/blobs`` whatever ``config.backend``
    (a hosted backend keeps its blobs on the state volume until it brings its own).

    Args:
        config: the ``[store]`` table.
        state_dir: the aggregator's state folder (``[state].dir``).

    Raises:
        OSError: the folder cannot be created.
    """
    del config  # one blob store today; the argument keeps callers unchanged when there are two
    return FileBlobStore(state_dir / BLOBS_DIR)
