"""Backup and restore of the SQLite store: the online copy, the schema check, the put-back.

``SqliteStore.backup`` copies its open connection's database with SQLite's backup API
(``confide.statecopy.copy_connection``: one step, one read transaction, so one instant) and
reads from the copy, not the live file, which blobs its rows name (``named_blobs``, which
the live store's ``blob_refs`` also runs). ``restore_sqlite`` puts a
copy back as a new database file, refusing one whose schema is newer than this code's;
opening it afterwards upgrades an older one (``aggregator.store.sqlite_schema``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aggregator.store.interface import StoreBackup
from aggregator.store.refs import BlobRefs, blob_refs
from aggregator.store.sqlite_schema import SCHEMA_VERSION
from confide.errors import InternalError, Reason
from confide.statecopy import copy_connection, copy_database, database_in_use, user_version

__all__ = ["backup_sqlite", "named_blobs", "restore_sqlite", "sqlite_in_use"]


def backup_sqlite(source: sqlite3.Connection, *, into: Path, name: str) -> StoreBackup:
    """Copy the database behind ``source`` to ``into/name``; the caller holds its lock.

    Raises:
        InternalError: the copy cannot be written or read back.
    """
    dest = into / name
    schema = copy_connection(source, dest)
    try:
        copy = sqlite3.connect(f"file:{dest}?mode=ro", uri=True, isolation_level=None)
        try:
            blobs = named_blobs(copy)
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise InternalError(f"cannot read the copy {dest}: {exc}") from exc
    return StoreBackup(files=(name,), schema=schema, blobs=blobs)


def named_blobs(db: sqlite3.Connection) -> BlobRefs:
    """The blobs the rows of ``db`` name (``aggregator.store.refs``), read in one transaction.

    ``db`` is in autocommit mode (``isolation_level=None``) and not in a transaction; the
    caller holds its lock.

    Raises:
        sqlite3.Error: the database cannot be read.
    """
    db.execute("BEGIN")
    try:
        models = db.execute("SELECT sha256, optimizer_state FROM model_versions").fetchall()
        rounds = db.execute("SELECT model_version_in, model_version_out FROM rounds").fetchall()
        specs = db.execute("SELECT spec FROM jobs").fetchall()
    finally:
        db.execute("COMMIT")
    return blob_refs(
        specs=(bytes(row[0]) for row in specs),
        models=(str(sha) for row in (*models, *rounds) for sha in row),
    )


def restore_sqlite(source: Path, dest: Path) -> None:
    """Put the backed-up database ``source`` back as the new file ``dest`` (0600).

    Raises:
        InternalError: ``SCHEMA_TOO_NEW``: ``source`` was written by a newer release;
            ``BACKUP_DAMAGED``: it is not a SQLite database; or ``dest`` cannot be written.
    """
    version = user_version(source)
    if version > SCHEMA_VERSION:
        raise InternalError(
            f"{source} holds store schema {version}; this aggregator knows schemas up to "
            f"{SCHEMA_VERSION}: restore it with the release that made the backup, or a newer one",
            reason=Reason.SCHEMA_TOO_NEW,
        )
    copy_database(source, dest)


def sqlite_in_use(path: Path) -> bool:
    """Whether a running aggregator has the database file ``path`` open."""
    return database_in_use(path)
