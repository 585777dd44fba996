"""Copy and probe the daemons' SQLite state files while a daemon may be using them.

``copy_database`` copies a file online with SQLite's backup API (``sqlite3.Connection.backup``)
in one step (``pages=-1``), which reads the whole source inside one read transaction: the copy
is the database as of one instant, every transaction committed before it is in, none that
commits during it is, and in WAL mode the daemon's writers are not blocked meanwhile
(sqlite.org/backup.html). The copy is left in rollback-journal mode, one self-contained file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from confide.errors import InternalError, Reason
from confide.statefiles import private_file

__all__ = ["copy_connection", "copy_database", "database_in_use", "user_version"]

_SQLITE_MAGIC = b"SQLite format 3\x00"


def copy_database(src: Path, dest: Path) -> int:
    """Copy the SQLite file ``src`` to ``dest`` (0600) online; returns the copy's schema version.

    ``src`` may be in use by a daemon: see the module docstring for why the copy is one
    consistent instant. Nothing in ``src`` is created or changed (no schema is run).

    Raises:
        InternalError: ``src`` is missing or not a SQLite database, or ``dest`` cannot be written.
    """
    if not src.is_file():
        raise InternalError(f"{src} does not exist: nothing to back up there")
    try:
        source = sqlite3.connect(f"file:{src}?mode=rw", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise InternalError(f"cannot open {src}: {exc}") from exc
    try:
        return copy_connection(source, dest)
    finally:
        source.close()


def copy_connection(source: sqlite3.Connection, dest: Path) -> int:
    """Copy the database behind ``source`` to the new file ``dest`` (0600) in one step.

    Returns the copy's schema version. The caller keeps other threads off ``source``
    meanwhile; other processes and connections may go on writing.

    Raises:
        InternalError: the copy failed (``source`` is not a database, ``dest`` not writable).
    """
    try:
        private_file(dest)
        copy = sqlite3.connect(str(dest), isolation_level=None)
        try:
            source.backup(copy, pages=-1)
            copy.execute("PRAGMA journal_mode=DELETE")
            return int(copy.execute("PRAGMA user_version").fetchone()[0])
        finally:
            copy.close()
    except (sqlite3.Error, OSError) as exc:
        raise InternalError(f"cannot copy a database to {dest}: {exc}") from exc


def user_version(path: Path) -> int:
    """The schema version (``PRAGMA user_version``) of a SQLite file no process is writing.

    Raises:
        InternalError: the file is not a SQLite database (``BACKUP_DAMAGED``).
    """
    with path.open("rb") as f:
        if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise InternalError(f"{path} is not a SQLite database", reason=Reason.BACKUP_DAMAGED)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise InternalError(f"cannot read {path}: {exc}", reason=Reason.BACKUP_DAMAGED) from exc


def database_in_use(path: Path) -> bool:
    """Whether another process has the SQLite file ``path`` open (a running daemon).

    A connection in WAL mode holds a shared lock on its file for as long as it is open, so
    an exclusive lock cannot be had while any other connection lives; the probe asks for one
    without waiting and lets it go at once.
    """
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=0, isolation_level=None)
    except sqlite3.Error:
        return True
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()
