"""Manual approval: under ``approval = "manual"`` no job touches data until a local operator
says yes.

Design choice: a job's task that arrives before an answer is REFUSED with reason
``approval_pending`` (rule ``policy.approval``) rather than held open. Holding a task would
pin the session's task loop and the aggregator's round on a human for hours, and a held task
dies with a restart of either side; a refusal costs nothing, the aggregator's retry/backoff
sends the job's next task, and the request itself is durable. The first such task files the
request (job, signer, code hash, dataset, planned privacy cost, rounds); ``confide-agent
jobs`` lists it, ``approve JOB`` / ``deny JOB --reason`` answer it over the local API.

An approval covers one signed job: the key is the SHA-256 of the signed job envelope (its
spec and its operator's signature), and the job id it arrived under must match, so neither a
re-signed spec nor the same signed job under another job id rides on it. A request nobody
answers within ``expires_s`` expires: from then on the job's tasks are refused
``approval_expired`` (the aggregator sees why), unless the operator approves it after all.

Requests live in their own SQLite file in the agent's state folder (``approvals.db``), so a
restart loses no answer. ``Approvals`` is their one owner.
"""

from __future__ import annotations

import enum
import hashlib
import math
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.admission.rules import RuleRefusal
from agent.local.audit import SiteAudit, code_hash
from agent.privacy.counted import uncounted_note
from confide.errors import ConfideError, InternalError, Reason
from confide.statefiles import open_database
from confide.v1 import common_pb2, federation_pb2

__all__ = [
    "APPROVALS_FILE",
    "DEFAULT_EXPIRES_S",
    "RULE",
    "ApprovalError",
    "ApprovalMode",
    "ApprovalRequest",
    "ApprovalState",
    "Approvals",
    "job_digest",
]

APPROVALS_FILE = "approvals.db"
DEFAULT_EXPIRES_S = 7 * 24 * 3600.0
RULE = "policy.approval"
"""The rule every approval refusal names."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    digest TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    signer TEXT NOT NULL,
    code_sha256 TEXT NOT NULL,
    dataset TEXT NOT NULL,
    privacy TEXT NOT NULL,
    rounds INTEGER NOT NULL,
    requested_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL,
    decided_at REAL NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT ''
);
"""


class ApprovalMode(enum.Enum):
    """Whether a local operator must approve each job."""

    AUTO = "auto"
    MANUAL = "manual"


class ApprovalState(enum.Enum):
    """Where a job's approval request stands."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class ApprovalError(ConfideError):
    """An operator's approve/deny cannot be done (no such job, already answered)."""

    default_reason = Reason.UNKNOWN_JOB


@dataclass(frozen=True)
class ApprovalRequest:
    """One job's request, as the operator sees it.

    Args:
        digest: hex SHA-256 of the signed job envelope (what an approval covers).
        job_id: the aggregator's job id it arrived under.
        signer: the operator who signed the job.
        code_sha256: the job's code hash (``builtin:KIND`` for built-in models).
        dataset: the site dataset it asks for.
        privacy: the planned privacy cost in words (from the signed job).
        rounds: the job's rounds.
        requested_at: unix seconds of the first task.
        expires_at: when an unanswered request expires.
        state: pending, approved, denied or expired.
        decided_at: when it was answered (0 if not).
        reason: the operator's reason for a denial.
    """

    digest: str
    job_id: str
    signer: str
    code_sha256: str
    dataset: str
    privacy: str
    rounds: int
    requested_at: float
    expires_at: float
    state: ApprovalState
    decided_at: float = 0.0
    reason: str = ""


def job_digest(signed_job: common_pb2.Envelope) -> str:
    """The hex SHA-256 of a signed job envelope: the identity an approval covers."""
    return hashlib.sha256(signed_job.SerializeToString(deterministic=True)).hexdigest()


def planned_privacy(spec: common_pb2.JobSpec, *, trust_bundle_dp: bool = False) -> str:
    """The job's signed privacy parameters in a line (what the operator approves), with what
    this site would not count (``agent.privacy.counted``; ``trust_bundle_dp`` as there)."""
    parts = []
    rp = spec.record_privacy
    if rp.enabled:
        if rp.target_epsilon > 0:
            parts.append(f"record epsilon <= {rp.target_epsilon:g} at delta {rp.delta:g}")
        else:
            parts.append(f"record noise sigma {rp.noise_multiplier:g} at delta {rp.delta:g}")
    up = spec.update_privacy
    if up.clip_norm > 0:
        parts.append(f"update clip {up.clip_norm:g}, noise z {up.noise_multiplier:g}")
    note = uncounted_note(spec, trust_bundle_dp=trust_bundle_dp)
    if note:
        parts.append(note)
    return "; ".join(parts) or "no privacy protection"


class Approvals:
    """The durable approval requests and the operator's answers.

    Args:
        path: the SQLite file (``":memory:"`` in unit tests).
        expires_s: how long a request waits for an answer.
        audit: where operator decisions and expiries are recorded.

    Raises:
        InternalError: the file cannot be opened.
    """

    def __init__(
        self, path: Path | str, *, expires_s: float = DEFAULT_EXPIRES_S, audit: SiteAudit
    ) -> None:
        if not (math.isfinite(expires_s) and expires_s > 0):
            raise ValueError("expires_s must be a positive number of seconds")
        self._conn = open_database(path, schema=_SCHEMA, what="approvals")
        self._lock = threading.Lock()
        self._expires_s = expires_s
        self._audit = audit

    @property
    def expires_s(self) -> float:
        """How long a new request waits for an answer (a policy reload may change it)."""
        return self._expires_s

    @expires_s.setter
    def expires_s(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError("expires_s must be a positive number of seconds")
        self._expires_s = value

    def check(
        self,
        task: federation_pb2.Task,
        spec: common_pb2.JobSpec,
        *,
        signer: str,
        now: float,
        trust_bundle_dp: bool = False,
    ) -> None:
        """Let the task through only if its signed job was approved; file a request if new.

        ``trust_bundle_dp`` (the site's policy) decides what the request's planned
        privacy cost says is not counted (``planned_privacy``).

        Raises:
            RuleRefusal: (rule ``policy.approval``) ``APPROVAL_PENDING`` while nobody has
                answered, ``APPROVAL_EXPIRED`` once the request expired, ``DENIED`` when the
                operator denied it, ``REPLAYED`` when the approved job arrives under another
                job id.
        """
        digest = job_digest(task.signed_job)
        expired_now = False
        with self._lock:
            req = self._get(digest)
            if req is None:
                self._conn.execute(
                    "INSERT INTO approvals (digest, job_id, signer, code_sha256, dataset, privacy,"
                    " rounds, requested_at, expires_at, state) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        digest,
                        task.job_id,
                        signer,
                        code_hash(spec.model),
                        spec.dataset.name,
                        planned_privacy(spec, trust_bundle_dp=trust_bundle_dp),
                        spec.rounds,
                        now,
                        now + self._expires_s,
                        ApprovalState.PENDING.value,
                    ),
                )
                req = self._get(digest)
                assert req is not None
            elif req.state is ApprovalState.PENDING and now >= req.expires_at:
                self._set(digest, ApprovalState.EXPIRED, now=now, reason="")
                req = self._get(digest)
                assert req is not None
                expired_now = True
        if expired_now:
            self._audit.append("approval_expired", at=now, job=req.job_id, detail=digest)
        if req.job_id != task.job_id:
            raise RuleRefusal(
                RULE,
                f"the approval of this signed job covers job {req.job_id}, not {task.job_id}",
                reason=Reason.REPLAYED,
            )
        if req.state is ApprovalState.APPROVED:
            return
        if req.state is ApprovalState.DENIED:
            raise RuleRefusal(
                RULE,
                f"a local operator denied job {req.job_id}: {req.reason}",
                reason=Reason.DENIED,
            )
        if req.state is ApprovalState.EXPIRED:
            raise RuleRefusal(
                RULE,
                f"nobody approved job {req.job_id} before its request expired",
                reason=Reason.APPROVAL_EXPIRED,
            )
        raise RuleRefusal(
            RULE,
            f"job {req.job_id} waits for a local operator's approval",
            reason=Reason.APPROVAL_PENDING,
        )

    def requests(self, *, include_decided: bool = False) -> list[ApprovalRequest]:
        """The requests an operator should look at (pending and expired), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM approvals ORDER BY requested_at"
            ).fetchall()
        reqs = [_request(r) for r in rows]
        if include_decided:
            return reqs
        return [r for r in reqs if r.state in (ApprovalState.PENDING, ApprovalState.EXPIRED)]

    def approve(self, job_id: str, *, now: float) -> ApprovalRequest:
        """Approve the signed job that arrived as ``job_id``.

        Raises:
            ApprovalError: no request for that job, or it was already approved or denied.
        """
        return self._decide(job_id, ApprovalState.APPROVED, now=now, reason="")

    def deny(self, job_id: str, *, reason: str, now: float) -> ApprovalRequest:
        """Deny the signed job that arrived as ``job_id``, with the operator's ``reason``.

        Raises:
            ApprovalError: no request for that job, or it was already approved or denied.
        """
        return self._decide(job_id, ApprovalState.DENIED, now=now, reason=reason)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    # ----- helpers -----

    def _decide(
        self, job_id: str, state: ApprovalState, *, now: float, reason: str
    ) -> ApprovalRequest:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM approvals WHERE job_id = ? ORDER BY requested_at DESC",
                (job_id,),
            ).fetchall()
            if not rows:
                raise ApprovalError(f"no approval request for job {job_id!r}")
            req = _request(rows[0])
            if req.state in (ApprovalState.APPROVED, ApprovalState.DENIED):
                raise ApprovalError(
                    f"job {job_id} was already {req.state.value}", reason=Reason.WRONG_STAGE
                )
            self._set(req.digest, state, now=now, reason=reason)
            decided = self._get(req.digest)
            assert decided is not None
        req = decided
        event = "job_approved" if state is ApprovalState.APPROVED else "job_denied"
        self._audit.append(
            event,
            at=now,
            job=job_id,
            decision=state.value,
            signer=req.signer,
            code_sha256=req.code_sha256,
            dataset=req.dataset,
            detail=reason,
        )
        return req

    def _get(self, digest: str) -> ApprovalRequest | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM approvals WHERE digest = ?", (digest,)
        ).fetchone()
        return None if row is None else _request(row)

    def _set(self, digest: str, state: ApprovalState, *, now: float, reason: str) -> None:
        try:
            self._conn.execute(
                "UPDATE approvals SET state = ?, decided_at = ?, reason = ? WHERE digest = ?",
                (state.value, now, reason, digest),
            )
        except sqlite3.Error as exc:
            raise InternalError(f"cannot record the approval: {exc}") from exc


_COLUMNS = (
    "digest, job_id, signer, code_sha256, dataset, privacy, rounds, requested_at, expires_at,"
    " state, decided_at, reason"
)


def _request(row: tuple[object, ...]) -> ApprovalRequest:
    (digest, job_id, signer, code, dataset, privacy, rounds, req_at, exp_at, state, dec, why) = row
    return ApprovalRequest(
        digest=str(digest),
        job_id=str(job_id),
        signer=str(signer),
        code_sha256=str(code),
        dataset=str(dataset),
        privacy=str(privacy),
        rounds=int(rounds),  # type: ignore[call-overload]
        requested_at=float(req_at),  # type: ignore[arg-type]
        expires_at=float(exp_at),  # type: ignore[arg-type]
        state=ApprovalState(state),
        decided_at=float(dec),  # type: ignore[arg-type]
        reason=str(why),
    )
