"""Private state on disk: folders 0700 and database files 0600, whatever the umask.

The aggregator's state (its database, model blobs) and the agent's (privacy ledger, task
history) are nobody else's to read. The systemd units set ``UMask=0077``, but a daemon run by
hand inherits the shell's umask (often 022, which made them 0755/0644), so the code sets the
modes itself: a folder is created 0700 and a database file 0600 before SQLite opens it (SQLite
gives its ``-wal`` and ``-shm`` files the database file's mode).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from confide.errors import InternalError

__all__ = ["DIR_MODE", "FILE_MODE", "open_database", "private_dir", "private_file"]

DIR_MODE = 0o700
FILE_MODE = 0o600
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    """Create ``path`` owner-only (0700) if it is missing; return it.

    Missing parents are created too (with the umask's mode: they hold only this folder).
    An existing folder is left as it is: it may be one the operator chose and shares.

    Raises:
        OSError: the folder cannot be created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)  # the umask can only take bits away from 0700
    except FileExistsError:
        return path
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Make ``path`` an owner-only (0600) file, creating it empty if missing; return it.

    For a SQLite database: called before ``sqlite3.connect``, so the file never exists with
    wider permissions, and its ``-wal``/``-shm``/``-journal`` files (which SQLite creates with
    the database's mode) are tightened too when an older run left them wider.

    Raises:
        OSError: the file cannot be created or its mode set.
    """
    fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in _SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        try:
            os.chmod(side, FILE_MODE)
        except FileNotFoundError:
            continue
    return path


def open_database(path: Path | str, *, schema: str, what: str) -> sqlite3.Connection:
    """Open (creating 0600) a daemon's SQLite state file: WAL, ``synchronous=FULL``, ``schema``.

    Autocommit mode (callers open their own transactions); usable from several threads
    (callers hold their own lock). ``":memory:"`` gives a private in-memory database (tests).

    Args:
        path: the database file, or ``":memory:"``.
        schema: SQL run at open (``CREATE TABLE IF NOT EXISTS ...``).
        what: what the file holds, for the error message (e.g. ``"the audit log"``).

    Raises:
        InternalError: the file cannot be created, opened or given its schema.
    """
    try:
        if str(path) != ":memory:":
            private_file(Path(path))
        conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        if str(path) != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
    except (OSError, sqlite3.Error) as exc:
        raise InternalError(f"cannot open {what} in {path}: {exc}") from exc
    return conn
