"""confide.statefiles.open_database: the daemons' SQLite state files, private under any umask."""

from __future__ import annotations

import os
import stat

import pytest

from confide.errors import InternalError
from confide.statefiles import open_database


def test_a_state_database_is_0600_under_umask_0_and_has_its_schema(tmp_path):
    """The file is created owner-only before SQLite opens it, in WAL mode, with the schema."""
    old = os.umask(0)
    try:
        conn = open_database(tmp_path / "s.db", schema="CREATE TABLE t (x)", what="a test")
        conn.execute("INSERT INTO t VALUES (1)")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.db").stat().st_mode) == 0o600
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_an_unopenable_file_is_an_internal_error_naming_what_it_holds(tmp_path):
    """A folder where the file should be gives InternalError naming the file's purpose."""
    (tmp_path / "d.db").mkdir()
    with pytest.raises(InternalError, match="the audit log"):
        open_database(tmp_path / "d.db", schema="", what="the audit log")
