"""A privacy ledger file in its first layout, written by SQL, for the upgrade tests.

The first layout keyed an entry by one string in ``job_id`` (``<job>/<task id>``, or
``<job>/evaluation/<model>``); its ``job`` column (per-job limits), ``kind`` column
(evaluations) and discrete-Gaussian columns were added over time, so a file may lack them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from confide.dp.budget import RecordCost

_TABLE = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'sent', 'released')),
    rec_sample_rate REAL, rec_noise_multiplier REAL, rec_steps INTEGER, rec_delta REAL,
    upd_noise_multiplier REAL, upd_sensitivity_factor REAL,
    {discrete}
    epsilon REAL NOT NULL, update_epsilon REAL NOT NULL, cost_delta REAL NOT NULL,
    release_proof TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
    {job}
);
CREATE UNIQUE INDEX entries_live_round ON entries (dataset, job_id, round)
    WHERE state != 'released';
"""


@dataclass(frozen=True)
class OldEntry:
    """One first-layout row: its joined key, and the ``job``/``kind`` columns if present."""

    key: str
    round: int
    record: RecordCost
    epsilon: float
    state: str = "sent"
    job: str | None = None
    kind: str = "round"


def write_first_layout(
    path: Path,
    entries: list[OldEntry],
    *,
    dataset: str = "ds",
    job_column: bool = True,
    kind_column: bool = True,
    discrete_columns: bool = True,
) -> None:
    """Create ``path`` as a first-layout ledger holding ``entries`` of ``dataset`` (ids 1, 2,
    ...), with or without the columns added over time."""
    discrete = "upd_tau REAL, upd_dim INTEGER, upd_l1_ratio REAL," if discrete_columns else ""
    job = ", job TEXT" if job_column else ""
    with sqlite3.connect(path) as conn:
        conn.executescript(_TABLE.format(discrete=discrete, job=job))
        if job_column:
            conn.execute("CREATE INDEX entries_job ON entries (dataset, job)")
        if kind_column:
            conn.execute("ALTER TABLE entries ADD COLUMN kind TEXT NOT NULL DEFAULT 'round'")
        for e in entries:
            r = e.record
            cols = ["dataset", "job_id", "round", "state", "rec_sample_rate"]
            cols += ["rec_noise_multiplier", "rec_steps", "rec_delta", "epsilon"]
            cols += ["update_epsilon", "cost_delta", "created_at", "updated_at"]
            values: list[object] = [dataset, e.key, e.round, e.state, r.sample_rate]
            values += [r.noise_multiplier, r.steps, r.delta, e.epsilon, 0.0, r.delta, 1.0, 2.0]
            if job_column:
                cols.append("job")
                values.append(e.job)
            if kind_column:
                cols.append("kind")
                values.append(e.kind)
            conn.execute(
                f"INSERT INTO entries ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                values,
            )
    conn.close()
