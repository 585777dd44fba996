"""The SQLite store's schema and its upgrades (``PRAGMA user_version``).

Version 1: sites, jobs, rounds, round_sites, model_versions, audit.
Version 2: sites.sizes (declared dataset sizes, JSON); round_sites.weight, update_norm and
clipped (what the aggregator did with a site's update); round_failures (why a site gave a
round attempt no update, created when missing).

``aggregator.store.sqlite`` names every column it reads and writes, so a column's position
in its table means nothing: an upgrade adds columns wherever ``ALTER TABLE`` puts them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from confide.errors import InternalError

__all__ = ["SCHEMA_VERSION", "open_schema"]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
  id TEXT PRIMARY KEY, datasets TEXT NOT NULL, device TEXT NOT NULL,
  agent_version TEXT NOT NULL, last_heartbeat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, spec BLOB NOT NULL, signed_job BLOB NOT NULL, signer_cert BLOB NOT NULL,
  state TEXT NOT NULL, error TEXT NOT NULL, submitted_by TEXT NOT NULL, created REAL NOT NULL,
  final_metrics TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS rounds (
  job TEXT NOT NULL, round INTEGER NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL,
  model_version_in TEXT NOT NULL, model_version_out TEXT NOT NULL DEFAULT '',
  metrics TEXT NOT NULL DEFAULT '{}', started REAL NOT NULL, finished REAL NOT NULL DEFAULT 0,
  PRIMARY KEY (job, round));
CREATE TABLE IF NOT EXISTS round_sites (
  job TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL, outcome TEXT NOT NULL,
  reason TEXT NOT NULL, num_samples INTEGER NOT NULL, epsilon REAL NOT NULL,
  update_epsilon REAL NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (job, round, site));
CREATE TABLE IF NOT EXISTS model_versions (
  job TEXT NOT NULL, version_no INTEGER NOT NULL, sha256 TEXT NOT NULL,
  optimizer_state TEXT NOT NULL DEFAULT '', created REAL NOT NULL,
  PRIMARY KEY (job, version_no));
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY, at REAL NOT NULL, event TEXT NOT NULL, actor TEXT NOT NULL,
  job TEXT NOT NULL, round INTEGER NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
  prev_hash BLOB NOT NULL, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS round_failures (
  job TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL, attempt INTEGER NOT NULL,
  outcome TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL,
  PRIMARY KEY (job, round, site));
"""

_ADDED = [
    ("sites", "sizes", "TEXT NOT NULL DEFAULT '{}'"),
    ("round_sites", "weight", "REAL NOT NULL DEFAULT 0"),
    ("round_sites", "update_norm", "REAL NOT NULL DEFAULT 0"),
    ("round_sites", "clipped", "INTEGER NOT NULL DEFAULT 0"),
]
"""Version-2 columns: (table, column, declaration), added in this order."""


def open_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables a fresh database lacks and upgrade an older one to this version.

    Raises:
        InternalError: the file has a newer schema than this code knows.
    """
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise InternalError(f"{path} has schema {version}; this aggregator knows {SCHEMA_VERSION}")
    db.executescript(_SCHEMA)
    for table, column, decl in _ADDED:
        have = {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
