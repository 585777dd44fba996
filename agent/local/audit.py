"""The site's audit trail: every task seen and every decision, in a hash-chained log.

A privacy officer asks of a site "what ran here, on which data, on whose signature, and what
did it cost?". Each task the agent sees adds ``task_seen`` when it arrives and ``task_ended``
when it is answered; the end entry carries the decision (``approved`` or ``refused``, and the
rule that refused), the signer, the code hash, the global model hash, the dataset, the ε
charged, start, end and outcome. Operator decisions (``job_approved``, ``job_denied``) and
expired approval requests are entries too.

The chain is the aggregator's (``confide.audit_chain``): ``hash_n = sha256(hash_{n-1} ||
canonical_json(entry_n))``, so ``confide-agent audit verify`` detects an edited, removed or
reordered entry. The log lives in its own SQLite file in the agent's state folder
(``audit.db``, WAL, ``synchronous=FULL``), so the officer's tools can read it while the daemon
runs, and even when it does not.

``SiteAudit`` is the log's one owner: task handlers tell it facts as they learn them
(``seen``, ``admitted``, ``charged``, ``ended``) and it writes the entries.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confide.audit_chain import GENESIS, canonical_json, link_hash, verify_chain
from confide.errors import InternalError
from confide.statefiles import open_database
from confide.v1 import common_pb2, federation_pb2

__all__ = ["AUDIT_FILE", "SiteAudit", "SiteEntry", "code_hash"]

AUDIT_FILE = "audit.db"
"""The audit log's file name in the agent's state folder."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS site_audit (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class SiteEntry:
    """One entry of the site's audit trail.

    Args:
        seq: position in the chain, from 1.
        at: unix seconds when it was written.
        event: ``task_seen``, ``task_ended``, ``job_approved``, ``job_denied``,
            ``approval_expired``; ``evaluation_released``, ``evaluation_repeated``,
            ``evaluation_refused`` (``agent.tasks.evaluation``; ``round`` is then the model
            version).
        job: the aggregator's job id.
        round: the task's round (0 for none).
        task: the task id ("" for operator decisions).
        kind: the task kind, e.g. ``TASK_KIND_TRAIN``.
        decision: ``approved``, ``refused`` or "" (not decided, or the task failed first).
        outcome: ``ok``, ``refused``, ``failed`` or "".
        reason: a ``confide.errors.Reason`` value or "".
        rule: the policy rule that refused, e.g. ``policy.trusted_signers``, or "".
        signer: the operator who signed the job (once verified), or "".
        code_sha256: hex SHA-256 of the job's code bundle, or ``builtin:KIND``.
        model_hash: hex SHA-256 of the global model the task names.
        dataset: the site dataset the job used.
        epsilon: record-level ε this task charged to the dataset (0 for none).
        job_epsilon: the job's cumulative record-level ε at this site after this task.
        started: unix seconds the task arrived (task_ended only).
        ended: unix seconds it was answered (task_ended only).
        detail: free text for humans (the operator's reason for a denial; for a task, what
            ran but was not counted in ``epsilon``, e.g. a bundle's DP-SGD).
        prev_hash: the previous entry's hash.
        hash: this entry's hash.
    """

    seq: int
    at: float
    event: str
    job: str = ""
    round: int = 0
    task: str = ""
    kind: str = ""
    decision: str = ""
    outcome: str = ""
    reason: str = ""
    rule: str = ""
    signer: str = ""
    code_sha256: str = ""
    model_hash: str = ""
    dataset: str = ""
    epsilon: float = 0.0
    job_epsilon: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    detail: str = ""
    prev_hash: bytes = GENESIS
    hash: bytes = b""

    def body(self) -> dict[str, object]:
        """The entry's content: every field but its hashes."""
        d = dataclasses.asdict(self)
        del d["prev_hash"], d["hash"]
        return d

    def canonical(self) -> bytes:
        """The canonical JSON bytes the entry's hash covers."""
        return canonical_json(self.body())


@dataclass
class _Facts:
    """What is known of a task in flight (one writer: the task's own handler)."""

    job: str
    round: int
    task: str
    kind: str
    model_hash: str
    started: float
    decision: str = ""
    signer: str = ""
    code_sha256: str = ""
    dataset: str = ""
    epsilon: float = 0.0
    job_epsilon: float = 0.0
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def code_hash(model: common_pb2.ModelSpec) -> str:
    """The job's code identity: the bundle's hex SHA-256, or ``builtin:KIND`` for built-ins."""
    if model.code_sha256:
        return model.code_sha256.hex()
    return "builtin:" + common_pb2.ModelKind.Name(model.kind)


class SiteAudit:
    """The site's hash-chained audit log and the facts of the tasks in flight.

    Args:
        path: the SQLite file, or ``":memory:"`` (unit tests, runners without a state folder).

    Raises:
        InternalError: the file cannot be opened.
    """

    def __init__(self, path: Path | str) -> None:
        self._conn = open_database(path, schema=_SCHEMA, what="the audit log")
        self._lock = threading.Lock()
        self._open: dict[str, _Facts] = {}

    @classmethod
    def read_only(cls, path: Path) -> SiteAudit:
        """Open an existing log for reading (``confide-agent audit``).

        Raises:
            InternalError: the file does not exist or is not an audit log.
        """
        if not path.is_file():
            raise InternalError(f"no audit log at {path}")
        return cls(path)

    # ----- facts of tasks in flight -----

    def seen(self, task: federation_pb2.Task, *, now: float) -> None:
        """A task arrived: write ``task_seen`` and start collecting its facts."""
        facts = _Facts(
            job=task.job_id,
            round=task.round,
            task=task.task_id,
            kind=federation_pb2.TaskKind.Name(task.kind),
            model_hash=task.model_version,
            started=now,
        )
        with self._lock:
            self._open[task.task_id] = facts
        self.append(
            "task_seen",
            at=now,
            job=facts.job,
            round=facts.round,
            task=facts.task,
            kind=facts.kind,
            model_hash=facts.model_hash,
        )

    def admitted(self, task_id: str, *, signer: str, code_sha256: str, dataset: str) -> None:
        """The task's job passed the site's policy (and approval, when manual)."""
        with self._lock:
            facts = self._open.get(task_id)
            if facts is not None:
                facts.decision = "approved"
                facts.signer, facts.code_sha256, facts.dataset = signer, code_sha256, dataset

    def identified(self, task_id: str, *, signer: str, code_sha256: str, dataset: str) -> None:
        """Who signed the task's job and what it asks for, known before the decision."""
        with self._lock:
            facts = self._open.get(task_id)
            if facts is not None:
                facts.signer, facts.code_sha256, facts.dataset = signer, code_sha256, dataset

    def charged(self, task_id: str, *, epsilon: float, job_epsilon: float, note: str = "") -> None:
        """The task counted ``epsilon`` against its dataset for good.

        Args:
            note: what ran but was not counted (``agent.privacy.counted``), written as the
                ``task_ended`` entry's detail; "" when everything was.
        """
        with self._lock:
            facts = self._open.get(task_id)
            if facts is not None:
                facts.epsilon, facts.job_epsilon = epsilon, job_epsilon
                facts.detail = note

    def ended(
        self, task_id: str, *, outcome: str, reason: str = "", rule: str = "", now: float
    ) -> None:
        """The task was answered: write ``task_ended`` with everything learnt about it."""
        with self._lock:
            facts = self._open.pop(task_id, None)
        if facts is None:
            return
        decision = facts.decision
        if outcome == "refused":
            decision = "refused"
        self.append(
            "task_ended",
            at=now,
            job=facts.job,
            round=facts.round,
            task=facts.task,
            kind=facts.kind,
            decision=decision,
            outcome=outcome,
            reason=reason,
            rule=rule,
            signer=facts.signer,
            code_sha256=facts.code_sha256,
            model_hash=facts.model_hash,
            dataset=facts.dataset,
            epsilon=facts.epsilon,
            job_epsilon=facts.job_epsilon,
            started=facts.started,
            ended=now,
            detail=facts.detail,
        )

    # ----- the chain -----

    def append(self, event: str, *, at: float, **fields: object) -> SiteEntry:
        """Append one entry, durably, linked to the last one.

        Raises:
            InternalError: the log cannot be written.
        """
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                row = self._conn.execute(
                    "SELECT seq, hash FROM site_audit ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (1, GENESIS) if row is None else (row[0] + 1, bytes(row[1]))
                entry = SiteEntry(seq=seq, at=at, event=event, prev_hash=prev, **fields)  # type: ignore[arg-type]
                entry = dataclasses.replace(entry, hash=link_hash(prev, entry.canonical()))
                self._conn.execute(
                    "INSERT INTO site_audit (seq, body, prev_hash, hash) VALUES (?, ?, ?, ?)",
                    (seq, entry.canonical().decode(), prev, entry.hash),
                )
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise InternalError(f"cannot write the audit log: {exc}") from exc
        return entry

    def entries(self) -> Iterator[SiteEntry]:
        """Every stored entry in the order stored (by ``seq``), as stored.

        Raises:
            InternalError: a row is not an entry (the file was edited by hand).
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, body, prev_hash, hash FROM site_audit ORDER BY seq"
            ).fetchall()
        for seq, body, prev, h in rows:
            try:
                fields = json.loads(body)
                fields["seq"] = seq  # the row's position, so a renumbered row is caught
                yield SiteEntry(**fields, prev_hash=bytes(prev), hash=bytes(h))
            except (ValueError, TypeError) as exc:
                raise InternalError(f"audit entry {seq} is not readable: {exc}") from exc

    def verify(self) -> int:
        """Check the whole chain; returns the number of entries.

        Raises:
            AuditTampered: names the first edited, removed or reordered entry.
            InternalError: a row is not an entry at all.
        """
        return verify_chain(self.entries())

    def head(self) -> str:
        """The hex hash of the newest entry (all zeros for an empty log)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT hash FROM site_audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return (GENESIS if row is None else bytes(row[0])).hex()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()
