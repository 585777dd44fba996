"""The aggregator's one persistence interface: SQLite in WAL mode, one file, one lock.

Every state transition commits with ``synchronous=FULL`` before the aggregator acts on it, so
a killed aggregator restarts with every completed round and model version (an in-progress
round restarts from its input model). Model bytes live in ``BlobStore``; rows hold their hex
SHA-256. The audit log is a hash chain (``aggregator.audit``) appended in the same transaction
as the change it records. ``PRAGMA user_version`` versions the schema.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aggregator.audit import GENESIS, AuditEntry, entry_hash, verify_chain
from aggregator.rows import (
    AuditNote,
    FailureRow,
    JobRow,
    ModelRow,
    RoundRow,
    SiteRoundRow,
    SiteRow,
    audit_entry,
    failure_row,
    job_row,
    model_row,
    round_row,
    site_round_row,
    site_row,
)
from aggregator.schema import SCHEMA_VERSION, open_schema
from confide.statefiles import private_dir, private_file

__all__ = [
    "SCHEMA_VERSION",
    "AuditNote",
    "FailureRow",
    "JobRow",
    "ModelRow",
    "RoundRow",
    "SiteRoundRow",
    "SiteRow",
    "Store",
]


class Store:
    """SQLite-backed state of the aggregator; every method is thread-safe.

    Args:
        path: the database file (created 0600 with its schema when missing, in a folder
            created 0700).

    Raises:
        InternalError: the file has a newer schema than this code knows.
    """

    def __init__(self, path: Path) -> None:
        private_file(private_dir(path.parent) / path.name)  # 0700/0600 under any umask
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        open_schema(self._db, path)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # ----- audit -----

    def _append(self, cur: sqlite3.Cursor, note: AuditNote) -> AuditEntry:
        row = cur.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(row[0]) + 1, bytes(row[1])) if row else (1, GENESIS)
        e = AuditEntry(
            seq,
            note.at,
            note.event,
            note.actor,
            note.job,
            note.round,
            note.reason,
            note.detail,
            prev,
        )
        h = entry_hash(prev, e)
        cur.execute(
            "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
            (seq, e.at, e.event, e.actor, e.job, e.round, e.reason, e.detail, prev, h),
        )
        return AuditEntry(**{**e.__dict__, "hash": h})

    def audit(self, note: AuditNote) -> AuditEntry:
        """Append one audit entry on its own."""
        with self._tx() as cur:
            return self._append(cur, note)

    def audit_entries(self, *, after_seq: int = 0, limit: int = 0) -> list[AuditEntry]:
        """Audit entries with ``seq > after_seq``, oldest first (``limit`` 0: all)."""
        rows = self._query(
            "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit if limit > 0 else -1),
        )
        return [audit_entry(r) for r in rows]

    def verify_audit_chain(self) -> int:
        """Check the whole audit chain; returns the number of entries.

        Raises:
            AuditTampered: an entry was altered, removed or reordered.
        """
        return verify_chain(self.audit_entries())

    # ----- sites -----

    def upsert_site(self, row: SiteRow, *, audit: AuditNote | None = None) -> None:
        """Record a site's registration."""
        with self._tx() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO sites VALUES (?,?,?,?,?,?)",
                (
                    row.id,
                    json.dumps(row.datasets),
                    row.device,
                    row.agent_version,
                    row.last_heartbeat,
                    json.dumps(row.sizes),
                ),
            )
            if audit:
                self._append(cur, audit)

    def set_heartbeat(self, site: str, at: float) -> None:
        """Record when a site was last heard from."""
        with self._tx() as cur:
            cur.execute("UPDATE sites SET last_heartbeat = ? WHERE id = ?", (at, site))

    def sites(self, *, after: str = "", limit: int = 0) -> list[SiteRow]:
        """Registered sites with an id after ``after``, by id (``limit`` 0: all)."""
        return [
            site_row(r)
            for r in self._query(
                "SELECT * FROM sites WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit if limit > 0 else -1),
            )
        ]

    def site(self, site: str) -> SiteRow | None:
        """One registered site, or None."""
        rows = self._query("SELECT * FROM sites WHERE id = ?", (site,))
        return site_row(rows[0]) if rows else None

    # ----- jobs -----

    def add_job(self, row: JobRow, model: ModelRow, *, audit: AuditNote) -> None:
        """Record a submitted job with its version-0 model, atomically."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    row.id,
                    row.spec,
                    row.signed_job,
                    row.signer_cert,
                    row.state,
                    row.error,
                    row.submitted_by,
                    row.created,
                    json.dumps(row.final_metrics),
                ),
            )
            self._add_model(cur, model)
            self._append(cur, audit)

    def set_job_state(
        self,
        job: str,
        state: str,
        *,
        error: str = "",
        final_metrics: dict[str, float] | None = None,
        audit: AuditNote | None = None,
    ) -> None:
        """Move a job to ``state`` (with its error or final metrics)."""
        with self._tx() as cur:
            cur.execute("UPDATE jobs SET state = ?, error = ? WHERE id = ?", (state, error, job))
            if final_metrics is not None:
                cur.execute(
                    "UPDATE jobs SET final_metrics = ? WHERE id = ?",
                    (json.dumps(final_metrics), job),
                )
            if audit:
                self._append(cur, audit)

    def jobs(self, job: str | None = None) -> list[JobRow]:
        """Every job (or just ``job``), oldest first."""
        sql, args = "SELECT * FROM jobs", ()
        if job is not None:
            sql, args = sql + " WHERE id = ?", (job,)  # type: ignore[assignment]
        return [job_row(r) for r in self._query(sql + " ORDER BY created, id", args)]

    def jobs_page(self, *, after: int, limit: int) -> list[tuple[int, JobRow]]:
        """Up to ``limit`` jobs submitted after the one with row number ``after``, with their
        row numbers (submission order; a listing's keys)."""
        return [
            (int(r[0]), job_row(r[1:]))
            for r in self._query(
                "SELECT rowid, * FROM jobs WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, limit)
            )
        ]

    def job(self, job: str) -> JobRow | None:
        """One job, or None."""
        rows = self.jobs(job)
        return rows[0] if rows else None

    # ----- models -----

    def _add_model(self, cur: sqlite3.Cursor, m: ModelRow) -> None:
        cur.execute(
            "INSERT INTO model_versions VALUES (?,?,?,?,?)",
            (m.job, m.version_no, m.sha256, m.optimizer_state, m.created),
        )

    def latest_model(self, job: str) -> ModelRow | None:
        """A job's newest model version, or None."""
        rows = self._query(
            "SELECT * FROM model_versions WHERE job = ? ORDER BY version_no DESC LIMIT 1", (job,)
        )
        return model_row(rows[0]) if rows else None

    def models(self, job: str) -> list[ModelRow]:
        """A job's model versions, oldest first."""
        return [
            model_row(r)
            for r in self._query(
                "SELECT * FROM model_versions WHERE job = ? ORDER BY version_no", (job,)
            )
        ]

    # ----- rounds -----

    def start_round(
        self, job: str, round: int, *, attempt: int, model_in: str, at: float, audit: AuditNote
    ) -> None:
        """Record that an attempt of a round started (forgetting an earlier attempt's sites)."""
        with self._tx() as cur:
            cur.execute("DELETE FROM round_sites WHERE job = ? AND round = ?", (job, round))
            cur.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?,?,?,?,?,?,?,?,?)",
                (job, round, "collecting", attempt, model_in, "", "{}", at, 0.0),
            )
            self._append(cur, audit)

    def set_round_state(
        self, job: str, round: int, state: str, *, at: float, audit: AuditNote | None = None
    ) -> None:
        """Move a round to ``state`` (failed, cancelled, ...); a done round stays done."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE rounds SET state = ?, finished = ? "
                "WHERE job = ? AND round = ? AND state != 'done'",
                (state, at, job, round),
            )
            if audit:
                self._append(cur, audit)

    def complete_round(
        self,
        job: str,
        round: int,
        *,
        model: ModelRow,
        metrics: dict[str, float],
        audit: AuditNote,
    ) -> None:
        """Record a round's new model version and mark the round done, atomically.

        The model blob must already be durable on disk.
        """
        with self._tx() as cur:
            self._add_model(cur, model)
            cur.execute(
                "UPDATE rounds SET state = 'done', model_version_out = ?, metrics = ?, "
                "finished = ? WHERE job = ? AND round = ?",
                (model.sha256, json.dumps(metrics), model.created, job, round),
            )
            self._append(cur, audit)

    def record_site(
        self,
        row: SiteRoundRow,
        *,
        audit: AuditNote | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Record one site's answer in a round (round 0: the final evaluation).

        A row with outcome ``ok`` is never replaced by a later failure: the accepted update
        (and the epsilon it spent) stays on record.

        Args:
            before_commit: run inside the transaction after the writes; if it raises, the
                row and audit entry are rolled back.
        """
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO round_sites VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (job, round, site) DO UPDATE SET outcome = excluded.outcome, "
                "reason = excluded.reason, num_samples = excluded.num_samples, "
                "epsilon = excluded.epsilon, update_epsilon = excluded.update_epsilon, "
                "metrics = excluded.metrics, weight = excluded.weight, "
                "update_norm = excluded.update_norm, clipped = excluded.clipped "
                "WHERE round_sites.outcome != 'ok' OR excluded.outcome = 'ok'",
                (
                    row.job,
                    row.round,
                    row.site,
                    row.outcome,
                    row.reason,
                    row.num_samples,
                    row.epsilon,
                    row.update_epsilon,
                    json.dumps(row.metrics),
                    row.weight,
                    row.update_norm,
                    int(row.clipped),
                ),
            )
            if audit:
                self._append(cur, audit)
            if before_commit is not None:
                before_commit()

    def rounds(
        self, job: str, *, after: int = 0, limit: int = 0, newest: bool = False
    ) -> list[RoundRow]:
        """A job's rounds numbered above ``after``, in order (``limit`` 0: all); ``newest``:
        the last ``limit`` of them, newest first."""
        order = "DESC" if newest else "ASC"
        return [
            round_row(r)
            for r in self._query(
                f"SELECT * FROM rounds WHERE job = ? AND round > ? ORDER BY round {order} LIMIT ?",
                (job, after, limit if limit > 0 else -1),
            )
        ]

    def count_rounds(self, job: str) -> int:
        """How many rounds of ``job`` are recorded."""
        return int(self._query("SELECT COUNT(*) FROM rounds WHERE job = ?", (job,))[0][0])

    def round_sites(self, job: str, *, lo: int = 0, hi: int = -1) -> list[SiteRoundRow]:
        """A job's site answers of rounds ``lo``..``hi`` (-1: no upper end), by round then site
        (round 0 holds the final evaluation)."""
        return [
            site_round_row(r)
            for r in self._query(
                "SELECT * FROM round_sites WHERE job = ? AND round >= ? AND (? < 0 OR round <= ?) "
                "ORDER BY round, site",
                (job, lo, hi, hi),
            )
        ]

    def epsilon_by_site(self, job: str) -> dict[str, float]:
        """Each site's largest reported ε over its accepted updates in ``job``.

        Sites report the job's cumulative ε (their ledger composes the rounds by RDP), so the
        job's figure per site is the latest, i.e. the largest.
        """
        return {
            str(r[0]): float(r[1])
            for r in self._query(
                "SELECT site, MAX(epsilon) FROM round_sites "
                "WHERE job = ? AND round > 0 AND outcome = 'ok' GROUP BY site ORDER BY site",
                (job,),
            )
        }

    # ----- failure reasons -----

    def record_failure(self, row: FailureRow) -> None:
        """Record why a site gave a round attempt no update (replacing an earlier attempt's).

        One row per (job, round, site), so a site cannot grow the table beyond the rounds
        it takes part in; ``row.detail`` is bounded by the caller.
        """
        with self._tx() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO round_failures VALUES (?,?,?,?,?,?,?,?)",
                (
                    row.job,
                    row.round,
                    row.site,
                    row.attempt,
                    row.outcome,
                    row.reason,
                    row.detail,
                    row.at,
                ),
            )

    def failures(
        self, job: str, *, round: int | None = None, lo: int = 0, hi: int = -1
    ) -> list[FailureRow]:
        """A job's failure reasons of one ``round``, or of rounds ``lo``..``hi`` (-1: no upper
        end), by round then site."""
        if round is not None:
            lo = hi = round
        return [
            failure_row(r)
            for r in self._query(
                "SELECT * FROM round_failures WHERE job = ? AND round >= ? "
                "AND (? < 0 OR round <= ?) ORDER BY round, site",
                (job, lo, hi, hi),
            )
        ]
