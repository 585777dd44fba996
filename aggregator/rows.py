"""Plain rows the store reads and writes (one dataclass per table, plus an audit note)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AuditNote",
    "JobRow",
    "ModelRow",
    "RoundRow",
    "SiteRoundRow",
    "SiteRow",
]


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
    """A registered site (connection state is in memory only)."""

    id: str
    datasets: list[str]
    device: str
    agent_version: str
    last_heartbeat: float


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
    """What one site did in one round."""

    job: str
    round: int
    site: str
    outcome: str
    reason: str
    num_samples: int
    epsilon: float
    update_epsilon: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class ModelRow:
    """A global model version: its blob and the server optimizer's state blob ("" if none)."""

    job: str
    version_no: int
    sha256: str
    optimizer_state: str
    created: float
