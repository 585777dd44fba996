"""Plain rows the store reads and writes (one dataclass per table, plus an audit note), and
the functions that build each from a ``SELECT *`` database row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aggregator.audit import AuditEntry

__all__ = [
    "AuditNote",
    "FailureRow",
    "JobRow",
    "ModelRow",
    "RoundRow",
    "SiteRoundRow",
    "SiteRow",
    "audit_entry",
    "failure_row",
    "job_row",
    "model_row",
    "round_row",
    "site_round_row",
    "site_row",
]

DbRow = Sequence[Any]


@dataclass(frozen=True)
class AuditNote:
    """An audit entry to append together with a change (seq and hashes are assigned)."""

    event: str
    actor: str
    at: float
    job: str = ""
    round: int = 0
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ModelRow:
    """A global model version: its blob and the server optimizer's state blob ("" if none)."""

    job: str
    version_no: int
    sha256: str
    optimizer_state: str
    created: float


def site_row(r: DbRow) -> SiteRow:
    """A ``sites`` row."""
    sizes = {str(k): (int(v[0]), int(v[1])) for k, v in json.loads(str(r[5])).items()}
    return SiteRow(str(r[0]), json.loads(str(r[1])), str(r[2]), str(r[3]), float(r[4]), sizes)


def job_row(r: DbRow) -> JobRow:
    """A ``jobs`` row."""
    return JobRow(
        str(r[0]),
        bytes(r[1]),
        bytes(r[2]),
        bytes(r[3]),
        str(r[4]),
        str(r[5]),
        str(r[6]),
        float(r[7]),
        json.loads(str(r[8])),
    )


def round_row(r: DbRow) -> RoundRow:
    """A ``rounds`` row."""
    return RoundRow(
        str(r[0]),
        int(r[1]),
        str(r[2]),
        int(r[3]),
        str(r[4]),
        str(r[5]),
        json.loads(str(r[6])),
        float(r[7]),
        float(r[8]),
    )


def site_round_row(r: DbRow) -> SiteRoundRow:
    """A ``round_sites`` row."""
    return SiteRoundRow(
        str(r[0]),
        int(r[1]),
        str(r[2]),
        str(r[3]),
        str(r[4]),
        int(r[5]),
        float(r[6]),
        float(r[7]),
        json.loads(str(r[8])),
        float(r[9]),
        float(r[10]),
        bool(r[11]),
    )


def model_row(r: DbRow) -> ModelRow:
    """A ``model_versions`` row."""
    return ModelRow(str(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]))


def audit_entry(r: DbRow) -> AuditEntry:
    """An ``audit`` row."""
    return AuditEntry(
        int(r[0]),
        float(r[1]),
        str(r[2]),
        str(r[3]),
        str(r[4]),
        int(r[5]),
        str(r[6]),
        str(r[7]),
        bytes(r[8]),
        bytes(r[9]),
    )


@dataclass(frozen=True)
class FailureRow:
    """Why one site gave a round attempt no update: its report, or silence.

    Args:
        attempt: the round attempt (only the round's latest attempt is shown).
        outcome: ``refused`` or ``failed``.
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


def failure_row(r: DbRow) -> FailureRow:
    """A ``round_failures`` row."""
    return FailureRow(
        str(r[0]), int(r[1]), str(r[2]), int(r[3]), str(r[4]), str(r[5]), str(r[6]), float(r[7])
    )
