"""The site's privacy ledger: one SQLite file that makes sure no dataset is overspent.

Each round a site takes part in is an entry for its dataset, holding the parameters of both
privacy layers (``confide.dp.budget.RoundCost``), so the cumulative ε is recomputed by exact
RDP composition over every entry, never by adding per-round epsilons.

An entry's life::

    reserve ──> reserved ──mark_sent──> sent          (counted)
                   │
                   └──release_unsent──> released      (not counted; only before 'sent')

``reserve`` checks the cap and commits durably (WAL, ``synchronous=FULL``: the commit is
fsynced) before it returns, and the caller sends nothing before it returns. A 'reserved'
entry whose process died stays counted: the update may have left, so the ledger never
undercounts. ``release_unsent`` is for the one case the site can prove nothing left (the
worker failed before producing an update).

An entry is keyed by columns, never by a joined string: its dataset, its job (``job_id``), its
kind, what it charges (``task_id``: the TRAIN task's id for a round; the evaluated model's
SHA-256 for a hold-out evaluation) and its round. One such key can be reserved once, unless
released: the same task re-sent after a reconnect would be a second mechanism. A reservation
made with ``JobLimits`` is refused, in the same transaction, when the job's signed rounds,
attempts or ε target do not allow it (``agent.admission.limits.check_charge``, over the job's
round entries): what one job may spend is as durable as what a dataset has spent.

A hold-out evaluation (``agent.tasks.evaluation``) is an entry of kind ``evaluation``, reserved
without ``JobLimits``: it counts against the dataset's cap and in its job's reported ε, but not
as an attempt of the job nor against its signed training ε target (its own bound is signed
too: ``evaluation.*``).

The file is upgraded in place when opened (``_upgrade``, under ``BEGIN IMMEDIATE``: another
process may be opening it too). The entries table is versioned by its columns rather than
``PRAGMA user_version``, which belongs to the whole file, and the daemon keeps other tables
(evaluations, model versions, job bindings) in the same file: a table without ``task_id`` is
of the first layout, whose ``job_id`` joined ``<job>/<task>`` (``<job>/evaluation/<model>``
for an evaluation), and is rebuilt into the current one, every entry, id and cost kept.

The math lives in ``confide.dp``; this module only stores parameters and calls it.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NewType, Protocol

from agent.admission.limits import JobLimits, check_charge
from agent.admission.rules import RuleRefusal, dataset_rule
from confide.dp.budget import RecordCost, RoundCost, UpdateCost, cumulative_epsilon
from confide.errors import ConfigError, InternalError, PolicyRefusal, Reason
from confide.statefiles import private_file
from confide.types import JobId

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_MAX_EPSILON",
    "Budget",
    "Entry",
    "EntryState",
    "Ledger",
    "ReservationId",
    "Spent",
]

DEFAULT_DELTA = 1e-5
"""δ at which a dataset's cumulative ε is computed and capped, unless the ledger is told."""

DEFAULT_MAX_EPSILON = 10.0
"""Record-level ε cap for a dataset whose policy sets none."""

ReservationId = NewType("ReservationId", int)
"""The ledger's id for one reserved round."""


class EntryState:
    """The states of an entry (stored as text)."""

    RESERVED = "reserved"
    SENT = "sent"
    RELEASED = "released"


class _PolicyLike(Protocol):
    @property
    def max_epsilon(self) -> float | None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Spent:
    """What a dataset has spent: record-level ε, site-level ε (both at the ledger's δ), rounds
    (hold-out evaluations are in ε, not in the round count)."""

    epsilon: float
    update_epsilon: float
    rounds: int


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """One dataset's line in ``confide-agent budget``."""

    dataset: str
    max_epsilon: float
    spent_epsilon: float
    remaining_epsilon: float
    update_epsilon: float
    rounds: int
    in_flight: int
    delta: float


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One stored round or evaluation.

    Args:
        job_id: the job it was charged to.
        task_id: what it charges: a round's TRAIN task id, an evaluation's model SHA-256.
        round: the round (for an evaluation, the evaluated model's version).
    """

    id: ReservationId
    dataset: str
    job_id: JobId
    task_id: str
    round: int
    state: str
    cost: RoundCost
    created_at: float
    updated_at: float


_TABLE = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('round', 'evaluation')),
    round INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'sent', 'released')),
    rec_sample_rate REAL, rec_noise_multiplier REAL, rec_steps INTEGER, rec_delta REAL,
    upd_noise_multiplier REAL, upd_sensitivity_factor REAL,
    upd_tau REAL, upd_dim INTEGER, upd_l1_ratio REAL,
    epsilon REAL NOT NULL, update_epsilon REAL NOT NULL, cost_delta REAL NOT NULL,
    release_proof TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""

_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS entries_live_task "
    "ON entries (dataset, job_id, kind, task_id, round) WHERE state != 'released'",
    "CREATE INDEX IF NOT EXISTS entries_job ON entries (dataset, job_id, kind)",
)

_COLUMNS = (
    "id, dataset, job_id, task_id, round, state, rec_sample_rate, rec_noise_multiplier, "
    "rec_steps, rec_delta, upd_noise_multiplier, upd_sensitivity_factor, upd_tau, upd_dim, "
    "upd_l1_ratio, epsilon, update_epsilon, cost_delta, created_at, updated_at, kind"
)

_FIRST_LAYOUT_LATER_COLUMNS = {
    "upd_tau": "NULL",
    "upd_dim": "NULL",
    "upd_l1_ratio": "NULL",
    "kind": "'round'",
    "job": "NULL",
}
"""Columns the first layout gained over time, and what a file from before each reads as: NULL
discrete-Gaussian columns are the continuous Gaussian its rows were charged for, every entry
before ``kind`` was a round, and a NULL ``job`` is an entry made before per-job limits."""


class Ledger:
    """The privacy ledger over one SQLite file; safe for threads of one process.

    Use ``Ledger.open(path)``; every method is serialized by one lock, and every write is a
    ``BEGIN IMMEDIATE`` transaction, so another process on the same file cannot interleave
    a check and an insert either.
    """

    def __init__(
        self, conn: sqlite3.Connection, *, delta: float, default_max_epsilon: float
    ) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.delta = delta
        self.default_max_epsilon = default_max_epsilon

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        delta: float = DEFAULT_DELTA,
        default_max_epsilon: float = DEFAULT_MAX_EPSILON,
    ) -> Ledger:
        """Open (creating if needed) the ledger file at ``path``.

        Args:
            path: the SQLite file, in the daemon's private state folder.
            delta: δ at which cumulative ε is computed and capped.
            default_max_epsilon: the cap for datasets whose policy sets none.

        Raises:
            ConfigError: δ or the default cap is out of range (keys ``ledger.*``).
            InternalError: the file cannot be opened or is not a ledger.
        """
        if not 0.0 < delta < 1.0:
            raise ConfigError("ledger.delta", f"must be in (0, 1), got {delta}")
        if not default_max_epsilon >= 0.0:
            raise ConfigError("ledger.max_epsilon", f"must be >= 0, got {default_max_epsilon}")
        try:
            private_file(Path(path))  # 0600 under any umask, before SQLite creates it
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            _upgrade(conn)
        except (sqlite3.Error, OSError) as exc:
            raise InternalError(f"cannot open privacy ledger {path}: {exc}") from exc
        return cls(conn, delta=delta, default_max_epsilon=default_max_epsilon)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reserve(
        self,
        *,
        dataset: str,
        job_id: JobId,
        task_id: str,
        round: int,
        layer_costs: RoundCost,
        max_epsilon: float | None = None,
        max_update_epsilon: float | None = None,
        limits: JobLimits | None = None,
    ) -> ReservationId:
        """Durably reserve one round's cost, or refuse if it would cross a cap.

        The cumulative record-level ε after adding this round (RDP composition of every
        reserved and sent entry of ``dataset``) must stay <= the cap; so must the site-level ε
        when ``max_update_epsilon`` is given. Both are taken at the round's δ
        (``layer_costs.delta``, the job's), never at one looser than the ledger's own δ: a job
        cannot buy a larger budget by naming a large δ.

        Args:
            dataset: the site's dataset name.
            job_id: the job.
            task_id: what is charged: the round's TRAIN task id, or for an evaluation
                (``layer_costs.evaluation``) the evaluated model's SHA-256.
            round: the round number (an evaluation's: the model's version).
            layer_costs: the round's parameters on both layers.
            max_epsilon: the policy's record-level cap; None: the ledger's default.
            max_update_epsilon: an optional site-level cap.
            limits: the signed job's limits at this site (``agent.admission.limits``), which
                the job's round entries (``job_id``, that of ``limits``) are counted against.

        Raises:
            RuleRefusal: BUDGET_EXCEEDED when a cap would be crossed, naming its rule: the
                dataset's (``policy.datasets.<dataset>.max_epsilon``, also when the ledger's
                default applies; ``...max_update_epsilon``) or the job's signed ε target
                (``job.privacy.sample.target_epsilon``); ROUND_NOT_SIGNED or
                ATTEMPTS_EXCEEDED when the job's signed rounds or the attempts it may be
                charged do not allow it (``agent.admission.limits.check_charge``).
            PolicyRefusal: DENIED when this task (round, or evaluated model)
                of this job is already reserved or sent for the dataset.
            ValueError: ``limits`` are for another job than ``job_id``.
        """
        if limits is not None and limits.job_id != job_id:
            raise ValueError(f"limits of job {limits.job_id!r} for an entry of job {job_id!r}")
        cap = self.default_max_epsilon if max_epsilon is None else float(max_epsilon)
        now = time.time()
        rec, upd = layer_costs.record, layer_costs.update
        kind = "evaluation" if layer_costs.evaluation else "round"
        with self._write() as conn:
            live = conn.execute(
                "SELECT state FROM entries WHERE dataset=? AND job_id=? AND kind=? "
                "AND task_id=? AND round=? AND state != 'released'",
                (dataset, job_id, kind, task_id, round),
            ).fetchone()
            if live is not None:
                raise PolicyRefusal(
                    f"dataset '{dataset}': {kind} {round} of job {job_id} (task {task_id!r}) "
                    f"is already {live[0]}",
                    reason=Reason.DENIED,
                )
            if limits is not None:
                charged = conn.execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE dataset=? AND job_id=? "
                    "AND kind='round' AND state != 'released' ORDER BY id",
                    (dataset, job_id),
                ).fetchall()
                check_charge(
                    limits,
                    round=round,
                    charged=[(e.round, e.cost) for e in map(_entry, charged)],
                    cost=layer_costs,
                )
            costs = [e.cost for e in self._entries(conn, dataset)]
            at = min(layer_costs.delta, self.delta)
            eps, upd_eps = cumulative_epsilon([*costs, layer_costs], delta=at)
            if not eps <= cap:
                spent, _ = cumulative_epsilon(costs, delta=at)
                raise RuleRefusal(
                    dataset_rule(dataset, "max_epsilon"),
                    f"dataset '{dataset}': privacy budget exceeded: spent ε={spent:.4g}, this "
                    f"round would make it {_fmt(eps)}, cap {cap:.4g} (δ={at:g})",
                    reason=Reason.BUDGET_EXCEEDED,
                    public=True,
                )
            if max_update_epsilon is not None and not upd_eps <= max_update_epsilon:
                raise RuleRefusal(
                    dataset_rule(dataset, "max_update_epsilon"),
                    f"dataset '{dataset}': update-level budget exceeded: this round would make "
                    f"ε={_fmt(upd_eps)}, cap {max_update_epsilon:.4g} (δ={at:g})",
                    reason=Reason.BUDGET_EXCEEDED,
                    public=True,
                )
            rec_cols = (None,) * 4 if rec is None else dataclasses.astuple(rec)
            upd_cols = (None,) * 5 if upd is None else dataclasses.astuple(upd)
            eps_cols = (layer_costs.epsilon, layer_costs.update_epsilon, layer_costs.delta)
            key = (dataset, job_id, task_id, int(round))
            cur = conn.execute(
                f"INSERT INTO entries ({_COLUMNS.partition(', ')[2]}) "
                f"VALUES (?, ?, ?, ?, 'reserved', {', '.join('?' * 15)})",
                (*key, *rec_cols, *upd_cols, *eps_cols, now, now, kind),
            )
            rid = cur.lastrowid
        if rid is None:  # pragma: no cover - sqlite always sets it after an INSERT
            raise InternalError("ledger insert returned no id")
        return ReservationId(rid)

    def mark_sent(self, reservation: ReservationId) -> None:
        """Record that the round's update left the site (idempotent).

        Raises:
            PolicyRefusal: DENIED if the reservation was released.
            InternalError: no such reservation.
        """
        with self._write() as conn:
            state = self._state(conn, reservation)
            if state == EntryState.RELEASED:
                raise PolicyRefusal(
                    f"reservation {reservation} was released; it cannot be sent",
                    reason=Reason.DENIED,
                )
            if state == EntryState.RESERVED:
                conn.execute(
                    "UPDATE entries SET state='sent', updated_at=? WHERE id=?",
                    (time.time(), reservation),
                )

    def release_unsent(self, reservation: ReservationId, *, proof: str) -> None:
        """Give back a reservation whose update provably never existed.

        Allowed only while the entry is 'reserved'; after 'sent' it is refused.

        Args:
            reservation: the reservation.
            proof: why nothing can have left, e.g. "worker exited 1 before an update".

        Raises:
            PolicyRefusal: DENIED if the entry was sent or already released.
            InternalError: no such reservation.
            ValueError: ``proof`` is empty.
        """
        if not proof.strip():
            raise ValueError("release_unsent needs a proof that nothing left the site")
        with self._write() as conn:
            state = self._state(conn, reservation)
            if state != EntryState.RESERVED:
                raise PolicyRefusal(
                    f"reservation {reservation} is {state}; only an unsent reservation "
                    "can be released",
                    reason=Reason.DENIED,
                )
            conn.execute(
                "UPDATE entries SET state='released', release_proof=?, updated_at=? WHERE id=?",
                (proof, time.time(), reservation),
            )

    def spent(self, dataset: str) -> Spent:
        """Cumulative spend of ``dataset`` over reserved and sent entries."""
        with self._lock:
            costs = [e.cost for e in self._entries(self._conn, dataset)]
        eps, upd = cumulative_epsilon(costs, delta=self.delta)
        return Spent(epsilon=eps, update_epsilon=upd, rounds=sum(not c.evaluation for c in costs))

    def entries(self, dataset: str, *, include_released: bool = False) -> list[Entry]:
        """The stored entries of ``dataset``, oldest first."""
        with self._lock:
            return self._entries(self._conn, dataset, include_released=include_released)

    def budgets(self, policy: Mapping[str, _PolicyLike]) -> list[Budget]:
        """One line per dataset in the policy or in the ledger, sorted by name."""
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT dataset FROM entries").fetchall()
        names = sorted({*policy, *(r[0] for r in rows)})
        out: list[Budget] = []
        for name in names:
            p = policy.get(name)
            cap = self.default_max_epsilon
            if p is not None and p.max_epsilon is not None:
                cap = float(p.max_epsilon)
            entries = self.entries(name)
            eps, upd = cumulative_epsilon([e.cost for e in entries], delta=self.delta)
            out.append(
                Budget(
                    dataset=name,
                    max_epsilon=cap,
                    spent_epsilon=eps,
                    remaining_epsilon=max(cap - eps, 0.0),
                    update_epsilon=upd,
                    rounds=sum(not e.cost.evaluation for e in entries),
                    in_flight=sum(e.state == EntryState.RESERVED for e in entries),
                    delta=self.delta,
                )
            )
        return out

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")  # fsynced (synchronous=FULL) before this returns
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise InternalError(f"privacy ledger write failed: {exc}") from exc
                raise

    @staticmethod
    def _state(conn: sqlite3.Connection, reservation: ReservationId) -> str:
        row = conn.execute("SELECT state FROM entries WHERE id=?", (reservation,)).fetchone()
        if row is None:
            raise InternalError(f"no ledger reservation {reservation}")
        return str(row[0])

    @staticmethod
    def _entries(
        conn: sqlite3.Connection, dataset: str, *, include_released: bool = False
    ) -> list[Entry]:
        where = "" if include_released else " AND state != 'released'"
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE dataset=?{where} ORDER BY id", (dataset,)
        ).fetchall()
        return [_entry(r) for r in rows]


def _upgrade(conn: sqlite3.Connection) -> None:
    """Create the entries table, or rebuild one of the first layout into the current one.

    The first layout keyed an entry by one string in ``job_id``: ``<job>/<task id>`` for a
    round, ``<job>/evaluation/<model>`` for an evaluation (``_split_key`` takes them apart).
    Ids, states, costs and times are copied as they are, so a reservation id held across the
    upgrade still names its entry and nothing already counted stops counting.
    """
    conn.execute("BEGIN IMMEDIATE")  # another process may be upgrading the same file
    try:
        have = {str(row[1]) for row in conn.execute("PRAGMA table_info(entries)")}
        rows: list[tuple[Any, ...]] = []
        if have and "task_id" not in have:
            picked = ", ".join(
                c if c in have else f"{default} AS {c}"
                for c, default in _FIRST_LAYOUT_LATER_COLUMNS.items()
            )
            rows = conn.execute(
                "SELECT id, dataset, job_id, round, state, rec_sample_rate, "
                "rec_noise_multiplier, rec_steps, rec_delta, upd_noise_multiplier, "
                "upd_sensitivity_factor, epsilon, update_epsilon, cost_delta, release_proof, "
                f"created_at, updated_at, {picked} FROM entries ORDER BY id"
            ).fetchall()
            conn.execute("DROP TABLE entries")  # its indexes go with it
        if not have or "task_id" not in have:
            conn.execute(_TABLE)
        for row in rows:
            (rid, ds, key, rnd, *middle, tau, dim, l1, kind, job) = row
            job_id, task_id = _split_key(str(key), job=job, kind=str(kind))
            conn.execute(
                "INSERT INTO entries (id, dataset, job_id, task_id, round, state, "
                "rec_sample_rate, rec_noise_multiplier, rec_steps, rec_delta, "
                "upd_noise_multiplier, upd_sensitivity_factor, epsilon, update_epsilon, "
                "cost_delta, release_proof, created_at, updated_at, upd_tau, upd_dim, "
                f"upd_l1_ratio, kind) VALUES ({', '.join('?' * 22)})",
                (rid, ds, job_id, task_id, rnd, *middle, tau, dim, l1, kind),
            )
        for index in _INDEXES:  # not executescript: it would commit the transaction
            conn.execute(index)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _split_key(key: str, *, job: str | None, kind: str) -> tuple[str, str]:
    """(job id, task id) of a first-layout entry keyed ``key``.

    An evaluation's key is ``<job>/evaluation/<model SHA-256>``; a round's is ``<job>/<task
    id>``, where ``job`` (the column added with per-job limits) says where the job id ends,
    and before that column the job id ends at the first ``/`` (as its upgrade then read it).
    A key with no ``/`` (entries from before task ids) is the job's, with no task id.
    """
    if kind == "evaluation":
        job_id, sep, model = key.rpartition("/evaluation/")
        if sep:
            return job_id, model
    if job and key.startswith(job + "/"):
        return job, key[len(job) + 1 :]
    job_id, sep, task_id = key.partition("/")
    if sep and job_id:
        return job_id, task_id
    return key, ""


def _entry(r: Any) -> Entry:
    (
        rid,
        ds,
        job,
        task,
        rnd,
        state,
        q,
        z,
        steps,
        rdelta,
        uz,
        uk,
        ut,
        ud,
        ul1,
        eps,
        ueps,
        cdelta,
        ca,
        ua,
        kind,
    ) = r
    record = None if q is None else RecordCost(float(q), float(z), int(steps), float(rdelta))
    update = (
        None
        if uz is None
        else UpdateCost(float(uz), float(uk), float(ut or 0.0), int(ud or 0), float(ul1 or 0.0))
    )
    cost = RoundCost(record, update, float(eps), float(ueps), float(cdelta), kind == "evaluation")
    return Entry(
        ReservationId(rid), ds, JobId(job), str(task), int(rnd), state, cost, float(ca), float(ua)
    )


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.4g}"
