"""The doctor's checks of a daemon's host: free disk under its state, and its state databases.

Free disk (``DiskLimits``): a daemon whose disk fills stops durably recording what it did, so
the doctor fails below ``fail_bytes`` (1 GiB: SQLite needs room for its write-ahead log and
checkpoints, and the aggregator for one more model version at the default model size limit,
512 MiB, written beside the last) and warns below ``warn_bytes`` (5 GiB: a few rounds' model
versions of a large model).

State databases: every SQLite state file is opened read-only, passes ``PRAGMA
integrity_check``, and carries a schema (``PRAGMA user_version``) no newer than the one this
release knows; an older one is upgraded in place when the daemon opens it. A file that does
not exist yet is fine: the daemon creates it at its first start.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from confide.doctor.checklist import Finding

__all__ = ["DiskLimits", "StateFile", "database_finding", "disk_finding"]

_GiB = 1024**3


@dataclass(frozen=True)
class DiskLimits:
    """Free space under a state folder below which the doctor warns or fails.

    Args:
        fail_bytes: fail below this.
        warn_bytes: warn below this.
    """

    fail_bytes: int = 1 * _GiB
    warn_bytes: int = 5 * _GiB


@dataclass(frozen=True)
class StateFile:
    """One SQLite file of a daemon's state.

    Args:
        name: the file name in the state folder.
        holds: what it holds, for the checklist (``privacy ledger, job bindings``).
        version: the newest ``PRAGMA user_version`` this release writes.
    """

    name: str
    holds: str
    version: int


def disk_finding(state_dir: Path, *, limits: DiskLimits) -> Finding:
    """The ``disk`` line: free space on the filesystem that holds ``state_dir``."""
    check = "disk"
    where = state_dir
    while not where.exists() and where != where.parent:
        where = where.parent  # before the first start: the folder it will be made in
    try:
        st = os.statvfs(where)
    except OSError as exc:
        return Finding.fail(check, f"cannot stat {where}: {exc.strerror}", f"check {state_dir}")
    free = st.f_bavail * st.f_frsize
    text = f"{_gib(free)} free under {state_dir}"
    fix = f"free space on the filesystem of {state_dir}, or move [state] dir to a larger one"
    if free < limits.fail_bytes:
        return Finding.fail(check, f"{text}: under {_gib(limits.fail_bytes)}", fix)
    if free < limits.warn_bytes:
        return Finding.warn(check, f"{text}: under {_gib(limits.warn_bytes)}", fix)
    return Finding.ok(check, text)


def database_finding(state_dir: Path, file: StateFile) -> Finding:
    """The ``state NAME`` line: the file is intact and its schema is one this release reads."""
    check = f"state {file.name}"
    path = state_dir / file.name
    if not path.exists():
        return Finding.ok(check, f"{path}: not created yet (the daemon makes it at first start)")
    restore = (
        f"stop the daemon, move {path} aside and restore it from the last backup (README: Backups)"
    )
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        return Finding.fail(check, f"{path} cannot be opened: {exc}", restore)
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        return Finding.fail(check, f"{path} is not a readable SQLite database: {exc}", restore)
    finally:
        conn.close()
    if rows != ["ok"]:
        return Finding.fail(
            check, f"{path} is damaged: {rows[0]} ({len(rows)} problem(s))", restore
        )
    if version > file.version:
        return Finding.fail(
            check,
            f"{path} has schema {version}, newer than this release's {file.version}",
            "a newer release wrote it: install that release again, or restore the backup "
            "taken before the upgrade",
        )
    return Finding.ok(check, f"{path}: intact, schema {version} ({file.holds})")


def _gib(n: int) -> str:
    return f"{n / _GiB:.1f} GiB"
