"""The plain rows the store reads and writes: one dataclass per table, plus an audit note.

They carry no storage detail (no column order, no encoding), so every ``Store``
implementation builds and returns the same values. Every field is keyword-only: a row is
never built by position, so adding a column cannot shift another's value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from aggregator.audit import AuditEntry, entry_hash

__all__ = [
    "AuditNote",
    "FailureRow",
    "JobRow",
    "ModelRow",
    "RoundRow",
    "SiteRoundRow",
    "SiteRow",
]


@dataclass(frozen=True, kw_only=True)
class AuditNote:
    """An audit entry to append together with a change (seq and hashes are assigned)."""

    event: str
    actor: str
    at: float
    job: str = ""
    round: int = 0
    reason: str = ""
    detail: str = ""

    def link(self, *, seq: int, prev_hash: bytes) -> AuditEntry:
        """The chain entry this note becomes at position ``seq`` after ``prev_hash``, hashed.

        Args:
            seq: the entry's position in the chain, from 1.
            prev_hash: the previous entry's hash (``GENESIS`` for the first).
        """
        entry = AuditEntry(
            seq=seq,
            at=self.at,
            event=self.event,
            actor=self.actor,
            job=self.job,
            round=self.round,
            reason=self.reason,
            detail=self.detail,
            prev_hash=prev_hash,
        )
        return replace(entry, hash=entry_hash(prev_hash, entry))


@dataclass(frozen=True, kw_only=True)
class SiteRow:
    """A registered site (connection state is in memory only).

    Args:
        sizes: dataset name -> (training records, hold-out records), as the site declared
            them at register (datasets it declared no size for are absent).
    """

    id: str
    datasets: list[str]
    device: str
    agent_version: str
    last_heartbeat: float
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class JobRow:
    """A submitted job: its spec, the operator's signed envelope and certificate."""

    id: str
    spec: bytes
    signed_job: bytes
    signer_cert: bytes
    state: str
    error: str
    submitted_by: str
    created: float
    final_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RoundRow:
    """One round of a job (the latest attempt)."""

    job: str
    round: int
    state: str
    attempt: int
    model_version_in: str
    model_version_out: str
    metrics: dict[str, float]
    started: float
    finished: float


@dataclass(frozen=True, kw_only=True)
class SiteRoundRow:
    """What one site did in one round.

    Args:
        weight: its update's weight in the aggregate (0: no update).
        update_norm: its plaintext update's L2 norm as received (0: none or masked).
        clipped: whether the aggregator scaled that update down to the job's norm bound.
    """

    job: str
    round: int
    site: str
    outcome: str
    reason: str
    num_samples: int
    epsilon: float
    update_epsilon: float
    metrics: dict[str, float]
    weight: float = 0.0
    update_norm: float = 0.0
    clipped: bool = False


@dataclass(frozen=True, kw_only=True)
class ModelRow:
    """A global model version: its blob and the server optimizer's state blob ("" if none)."""

    job: str
    version_no: int
    sha256: str
    optimizer_state: str
    created: float


@dataclass(frozen=True, kw_only=True)
class FailureRow:
    """Why one site gave a round attempt no update: its report, or silence.

    Args:
        attempt: the round attempt (only the round's latest attempt is shown).
        outcome: ``refused``, ``failed`` or ``silent`` (no report).
        reason: the ``confide.errors.Reason`` value.
        detail: one line, already bounded (``confide.disclose.one_line``); never data.
        at: unix seconds.
    """

    job: str
    round: int
    site: str
    attempt: int
    outcome: str
    reason: str
    detail: str
    at: float
