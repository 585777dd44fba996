"""The ``Store`` in SQLite: WAL mode, one file, one connection behind one lock.

Every transaction commits with ``synchronous=FULL`` before the method returns, so a killed
aggregator restarts with every completed round and model version (an in-progress round
restarts from its input model). Every statement names its columns and every row is read by
column name (``sqlite3.Row``), so the physical column order of a table, which differs
between a fresh and an upgraded file, never matters. ``aggregator.store.sqlite_schema``
holds the tables and their upgrades, ``aggregator.store.sqlite_rows`` each row's columns.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aggregator.audit import GENESIS, AuditEntry, verify_chain
from aggregator.store.interface import StoreBackup
from aggregator.store.refs import BlobRefs
from aggregator.store.rows import (
    AuditNote,
    FailureRow,
    JobRow,
    ModelRow,
    RoundRow,
    SiteRoundRow,
    SiteRow,
)
from aggregator.store.sqlite_backup import backup_sqlite, named_blobs
from aggregator.store.sqlite_rows import (
    AUDIT,
    FAILURES,
    JOBS,
    MODELS,
    ROUND_SITES,
    ROUNDS,
    SITES,
    audit_entry,
    audit_params,
    failure_params,
    failure_row,
    job_params,
    job_row,
    model_params,
    model_row,
    round_params,
    round_row,
    site_params,
    site_round_params,
    site_round_row,
    site_row,
)
from aggregator.store.sqlite_schema import open_schema
from confide.errors import InternalError
from confide.statefiles import open_database, private_dir

__all__ = ["SqliteStore"]


def _select(table: str, columns: Sequence[str]) -> str:
    return f"SELECT {', '.join(columns)} FROM {table}"


def _insert(table: str, columns: Sequence[str], *, verb: str = "INSERT") -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    return f"{verb} INTO {table} ({names}) VALUES ({values})"


def _no_limit(limit: int) -> int:
    return limit if limit > 0 else -1  # SQLite's LIMIT -1: all rows


class SqliteStore:
    """The aggregator's rows in one SQLite file; every method is thread-safe.

    Args:
        path: the database file (created 0600 with its schema when missing, in a folder
            created 0700); an older schema is upgraded in place.
        create: False: open an existing file as it is, to back it up while a daemon runs:
            nothing is created, no schema is run or upgraded (other methods may then fail on
            a file of another schema version).

    Raises:
        InternalError: the file cannot be opened, or has a newer schema than this code knows
            (with ``create``), or does not exist (without).
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self._lock = threading.Lock()
        self._path = path
        if not create:
            if not path.is_file():
                raise InternalError(f"there is no aggregator store at {path}")
            self._db = sqlite3.connect(
                f"file:{path}?mode=rw",
                uri=True,
                check_same_thread=False,
                isolation_level=None,
                timeout=30.0,
            )
            self._db.row_factory = sqlite3.Row
            return
        private_dir(path.parent)
        self._db = open_database(path, schema="", what="the aggregator's store")
        self._db.row_factory = sqlite3.Row
        open_schema(self._db, path)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def backup(self, into: Path) -> StoreBackup:
        """Copy the database to ``into/<its file name>`` as of one instant (SQLite's backup
        API); writers in other processes go on meanwhile, this store's wait for the copy."""
        with self._lock:
            return backup_sqlite(self._db, into=into, name=self._path.name)

    def blob_refs(self) -> BlobRefs:
        """The blobs the rows name, read in one transaction."""
        with self._lock:
            return named_blobs(self._db)

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

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, tuple(args)).fetchall())

    # ----- audit -----

    def _append(self, cur: sqlite3.Cursor, note: AuditNote) -> AuditEntry:
        last = cur.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if last is None:
            entry = note.link(seq=1, prev_hash=GENESIS)
        else:
            entry = note.link(seq=int(last["seq"]) + 1, prev_hash=bytes(last["hash"]))
        cur.execute(_insert("audit", AUDIT), audit_params(entry))
        return entry

    def audit(self, note: AuditNote) -> AuditEntry:
        """Append one audit entry on its own."""
        with self._tx() as cur:
            return self._append(cur, note)

    def audit_entries(self, *, after_seq: int = 0, limit: int = 0) -> list[AuditEntry]:
        """Audit entries with ``seq > after_seq``, oldest first (``limit`` 0: all)."""
        rows = self._query(
            _select("audit", AUDIT) + " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, _no_limit(limit)),
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
            cur.execute(_insert("sites", SITES, verb="INSERT OR REPLACE"), site_params(row))
            if audit:
                self._append(cur, audit)

    def set_heartbeat(self, site: str, at: float) -> None:
        """Record when a site was last heard from."""
        with self._tx() as cur:
            cur.execute("UPDATE sites SET last_heartbeat = ? WHERE id = ?", (at, site))

    def sites(self, *, after: str = "", limit: int = 0) -> list[SiteRow]:
        """Registered sites with an id after ``after``, by id (``limit`` 0: all)."""
        rows = self._query(
            _select("sites", SITES) + " WHERE id > ? ORDER BY id LIMIT ?",
            (after, _no_limit(limit)),
        )
        return [site_row(r) for r in rows]

    def site(self, site: str) -> SiteRow | None:
        """One registered site, or None."""
        rows = self._query(_select("sites", SITES) + " WHERE id = ?", (site,))
        return site_row(rows[0]) if rows else None

    # ----- jobs -----

    def add_job(self, row: JobRow, model: ModelRow, *, audit: AuditNote) -> None:
        """Record a submitted job with its version-0 model, atomically."""
        with self._tx() as cur:
            cur.execute(_insert("jobs", JOBS), job_params(row))
            cur.execute(_insert("model_versions", MODELS), model_params(model))
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
        where, args = ("", ()) if job is None else (" WHERE id = ?", (job,))
        rows = self._query(_select("jobs", JOBS) + where + " ORDER BY created, id", args)
        return [job_row(r) for r in rows]

    def jobs_page(self, *, after: int, limit: int) -> list[tuple[int, JobRow]]:
        """Up to ``limit`` jobs submitted after the one with row number ``after``, with their
        row numbers (SQLite's rowid: submission order)."""
        rows = self._query(
            _select("jobs", ("rowid AS row_no", *JOBS)) + " WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit),
        )
        return [(int(r["row_no"]), job_row(r)) for r in rows]

    def job(self, job: str) -> JobRow | None:
        """One job, or None."""
        rows = self.jobs(job)
        return rows[0] if rows else None

    # ----- models -----

    def latest_model(self, job: str) -> ModelRow | None:
        """A job's newest model version, or None."""
        rows = self._query(
            _select("model_versions", MODELS) + " WHERE job = ? ORDER BY version_no DESC LIMIT 1",
            (job,),
        )
        return model_row(rows[0]) if rows else None

    def models(self, job: str) -> list[ModelRow]:
        """A job's model versions, oldest first."""
        rows = self._query(
            _select("model_versions", MODELS) + " WHERE job = ? ORDER BY version_no", (job,)
        )
        return [model_row(r) for r in rows]

    # ----- rounds -----

    def start_round(
        self, job: str, round: int, *, attempt: int, model_in: str, at: float, audit: AuditNote
    ) -> None:
        """Record that an attempt of a round started (forgetting an earlier attempt's sites)."""
        row = RoundRow(
            job=job,
            round=round,
            state="collecting",
            attempt=attempt,
            model_version_in=model_in,
            model_version_out="",
            metrics={},
            started=at,
            finished=0.0,
        )
        with self._tx() as cur:
            cur.execute("DELETE FROM round_sites WHERE job = ? AND round = ?", (job, round))
            cur.execute(_insert("rounds", ROUNDS, verb="INSERT OR REPLACE"), round_params(row))
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
            cur.execute(_insert("model_versions", MODELS), model_params(model))
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
        replaced = ", ".join(f"{c} = excluded.{c}" for c in ROUND_SITES[3:])
        with self._tx() as cur:
            cur.execute(
                _insert("round_sites", ROUND_SITES)
                + f" ON CONFLICT (job, round, site) DO UPDATE SET {replaced} "
                "WHERE round_sites.outcome != 'ok' OR excluded.outcome = 'ok'",
                site_round_params(row),
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
        rows = self._query(
            _select("rounds", ROUNDS)
            + f" WHERE job = ? AND round > ? ORDER BY round {order} LIMIT ?",
            (job, after, _no_limit(limit)),
        )
        return [round_row(r) for r in rows]

    def count_rounds(self, job: str) -> int:
        """How many rounds of ``job`` are recorded."""
        rows = self._query("SELECT COUNT(*) AS n FROM rounds WHERE job = ?", (job,))
        return int(rows[0]["n"])

    def round_sites(self, job: str, *, lo: int = 0, hi: int = -1) -> list[SiteRoundRow]:
        """A job's site answers of rounds ``lo``..``hi`` (-1: no upper end), by round then site
        (round 0 holds the final evaluation)."""
        rows = self._query(
            _select("round_sites", ROUND_SITES)
            + " WHERE job = ? AND round >= ? AND (? < 0 OR round <= ?) ORDER BY round, site",
            (job, lo, hi, hi),
        )
        return [site_round_row(r) for r in rows]

    def epsilon_by_site(self, job: str) -> dict[str, float]:
        """Each site's largest reported ε over its accepted updates in ``job``."""
        rows = self._query(
            "SELECT site, MAX(epsilon) AS epsilon FROM round_sites "
            "WHERE job = ? AND round > 0 AND outcome = 'ok' GROUP BY site ORDER BY site",
            (job,),
        )
        return {str(r["site"]): float(r["epsilon"]) for r in rows}

    # ----- failure reasons -----

    def record_failure(self, row: FailureRow) -> None:
        """Record why a site gave a round attempt no update (replacing an earlier attempt's)."""
        with self._tx() as cur:
            cur.execute(
                _insert("round_failures", FAILURES, verb="INSERT OR REPLACE"),
                failure_params(row),
            )

    def failures(
        self, job: str, *, round: int | None = None, lo: int = 0, hi: int = -1
    ) -> list[FailureRow]:
        """A job's failure reasons of one ``round``, or of rounds ``lo``..``hi`` (-1: no upper
        end), by round then site."""
        if round is not None:
            lo = hi = round
        rows = self._query(
            _select("round_failures", FAILURES)
            + " WHERE job = ? AND round >= ? AND (? < 0 OR round <= ?) ORDER BY round, site",
            (job, lo, hi, hi),
        )
        return [failure_row(r) for r in rows]
