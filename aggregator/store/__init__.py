"""The aggregator's persistent state, behind two Protocols callers type against.

``Store`` (``interface.py``) holds the rows: sites, jobs, rounds, site answers, model
versions and the audit hash chain. ``BlobStore`` holds the model bytes, content-addressed.
``open_store`` and ``open_blobs`` (``factory.py``) build the implementations that the
``[store]`` config table names: SQLite (``sqlite.py``) and files on disk (``blobs.py``) today.
The row dataclasses (``rows.py``) are the same for every implementation.
"""

from __future__ import annotations

from aggregator.store.factory import StoreBackend, StoreConfig, open_blobs, open_store
from aggregator.store.interface import BlobStore, Store
from aggregator.store.rows import (
    AuditNote,
    FailureRow,
    JobRow,
    ModelRow,
    RoundRow,
    SiteRoundRow,
    SiteRow,
)

__all__ = [
    "AuditNote",
    "BlobStore",
    "FailureRow",
    "JobRow",
    "ModelRow",
    "RoundRow",
    "SiteRoundRow",
    "SiteRow",
    "Store",
    "StoreBackend",
    "StoreConfig",
    "open_blobs",
    "open_store",
]
