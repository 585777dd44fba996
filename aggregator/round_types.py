"""The round state machine's vocabulary: phases, state, events and actions (all frozen).

Kept apart from ``rounds.advance`` so SecAgg+ phases, events and actions can be added here
without touching the transition logic's module size; ``aggregator.rounds`` re-exports all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from confide.errors import Reason

__all__ = [
    "SECURE_PHASES",
    "TERMINAL",
    "Action",
    "Aggregate",
    "Cancel",
    "CloseStage",
    "DeadlinePassed",
    "Event",
    "FinishJob",
    "JobParams",
    "ModelStored",
    "ReportReceived",
    "Resume",
    "RoundFailed",
    "RoundPhase",
    "RoundStarted",
    "RoundState",
    "SecAggAborted",
    "SecAggDropped",
    "SecAggReceived",
    "SendTask",
    "SiteConnected",
    "SiteDisconnected",
    "TaskKind",
    "UpdateReceived",
]


class RoundPhase(enum.Enum):
    """Where a job's current round stands."""

    WAITING = "waiting"  # running, waiting for min_sites eligible sites
    COLLECTING = "collecting"  # TRAIN tasks out; plaintext updates arriving
    ADVERTISE = "advertise"  # SecAgg+ stage 0: TRAIN tasks out; AdvertiseKeys arriving
    SHARE_KEYS = "share_keys"  # SecAgg+ stage 1: ShareKeys arriving
    CHECK_SHARES = "check_shares"  # SecAgg+ stage 2: SharesChecked arriving
    MASKED_INPUT = "masked_input"  # SecAgg+ stage 3: masked inputs (uploads) arriving
    CONSISTENCY = "consistency"  # SecAgg+ stage 4: ConsistencySignature arriving
    UNMASK = "unmask"  # SecAgg+ stage 5: UnmaskShares arriving
    AGGREGATING = "aggregating"  # enough answers; the coordinator applies the optimizer
    EVALUATING = "evaluating"  # last round done; EVALUATE tasks out
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({RoundPhase.DONE, RoundPhase.FAILED, RoundPhase.CANCELLED})
SECURE_PHASES = (
    RoundPhase.ADVERTISE,
    RoundPhase.SHARE_KEYS,
    RoundPhase.CHECK_SHARES,
    RoundPhase.MASKED_INPUT,
    RoundPhase.CONSISTENCY,
    RoundPhase.UNMASK,
)
"""The SecAgg+ phases in order; each one's answering sites are the next one's expected sites."""


class TaskKind(enum.Enum):
    """The tasks a job sends (``federation.proto`` TaskKind)."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    JOB_DONE = "job_done"
    SHARE_KEYS = "share_keys"
    CHECK_SHARES = "check_shares"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"


@dataclass(frozen=True)
class JobParams:
    """The parts of a JobSpec the state machine needs.

    Args:
        max_retries: retries of one round (the aggregator's config, lowered to the signed
            job's attempts per round minus one: sites refuse any further attempt anyway).
        max_job_retries: retries over the whole job (the signed job's); None: no bound.
        retry_backoff_s: the wait before retrying a round that a site refused (a refusal is
            the site's policy or configuration, so an immediate retry would only be refused
            again and charge the healthy sites once more); doubled for each further attempt.
    """

    job_id: str
    rounds: int
    min_sites: int
    round_timeout_s: float
    max_retries: int
    secure: bool = False
    stage_timeout_s: float = 0.0
    max_job_retries: int | None = None
    retry_backoff_s: float = 0.0
    max_sites: int = 0  # the most sites a round selects (0: all eligible)
    dataset: str = ""


@dataclass(frozen=True)
class RoundState:
    """A job's round state; ``round`` counts from 1, ``attempt`` from 1.

    Args:
        eligible: connected sites that expose the job's dataset.
        selected: sites sent this round's task.
        updated: selected sites whose update is in the running sum; in a SecAgg+ phase,
            the sites whose message of the current stage was accepted.
        answered: selected sites that answered (update or report); in a SecAgg+ phase, the
            current stage's sites that answered, failed, or disconnected (dropped).
        stage_sites: in a SecAgg+ phase, the sites expected to answer the current stage
            (all selected at ADVERTISE, then those accepted at the previous stage).
        deadline: unix seconds when the current phase times out, or None; in WAITING, the
            earliest time a retry after a refusal may start.
        job_retries: retries of any round started so far in the job.
        refusals: (site, reason) of each site that refused the current attempt's task.
        no_site: a WAITING ``deadline`` is the one for a job whose dataset no connected site
            exposes (the job fails when it passes), not a refused round's backoff.
    """

    params: JobParams
    phase: RoundPhase = RoundPhase.WAITING
    round: int = 1
    attempt: int = 1
    model_version: str = ""
    eligible: frozenset[str] = frozenset()
    selected: frozenset[str] = frozenset()
    updated: frozenset[str] = frozenset()
    answered: frozenset[str] = frozenset()
    stage_sites: frozenset[str] = frozenset()
    deadline: float | None = None
    started_at: float = 0.0
    error: str = ""
    job_retries: int = 0
    refusals: tuple[tuple[str, str], ...] = ()
    no_site: bool = False


# ----- events -----


@dataclass(frozen=True)
class SiteConnected:
    """An eligible site opened its task stream."""

    site: str


@dataclass(frozen=True)
class SiteDisconnected:
    """An eligible site's task stream ended or it timed out."""

    site: str


@dataclass(frozen=True)
class UpdateReceived:
    """A site's update was verified and added to the running sum."""

    site: str
    round: int


@dataclass(frozen=True)
class ReportReceived:
    """A site reported on a task; ``ok`` False means failed or refused.

    ``refusal``: the site's reason (a ``Reason`` value) when its policy REFUSED the task,
    "" otherwise; a refusal would repeat on an immediate retry, a failure may not.
    """

    site: str
    round: int
    kind: TaskKind
    ok: bool
    refusal: str = ""


@dataclass(frozen=True)
class SecAggReceived:
    """A site's SecAgg+ message of ``phase``'s stage was verified and taken into the round."""

    site: str
    round: int
    phase: RoundPhase


@dataclass(frozen=True)
class SecAggAborted:
    """Closing a SecAgg+ stage (or unmasking) found fewer than t sites: nothing revealed."""

    round: int
    attempt: int
    why: str


@dataclass(frozen=True)
class SecAggDropped:
    """Closing a SecAgg+ stage left ``sites`` out of the next one (they get no task)."""

    round: int
    attempt: int
    sites: tuple[str, ...]


@dataclass(frozen=True)
class DeadlinePassed:
    """The timer fired (a no-op unless ``now`` is past the state's deadline)."""


@dataclass(frozen=True)
class ModelStored:
    """The aggregated model of ``round`` is durable as ``model_version``."""

    round: int
    model_version: str


@dataclass(frozen=True)
class Cancel:
    """An operator cancelled the job."""


@dataclass(frozen=True)
class Resume:
    """Start a round if enough sites are there (after submit or restart)."""


Event = (
    SiteConnected
    | SiteDisconnected
    | UpdateReceived
    | ReportReceived
    | SecAggReceived
    | SecAggAborted
    | SecAggDropped
    | DeadlinePassed
    | ModelStored
    | Cancel
    | Resume
)

# ----- actions -----


@dataclass(frozen=True)
class SendTask:
    """Queue a task of ``kind`` for each of ``sites``."""

    kind: TaskKind
    sites: tuple[str, ...]
    round: int
    attempt: int
    model_version: str
    deadline_s: float


@dataclass(frozen=True)
class RoundStarted:
    """A round attempt began: reset the running sum, persist and audit."""

    round: int
    attempt: int
    sites: tuple[str, ...]
    model_version: str


@dataclass(frozen=True)
class Aggregate:
    """Apply the server optimizer to the running sum and store the new model."""

    round: int
    sites: tuple[str, ...]


@dataclass(frozen=True)
class CloseStage:
    """End SecAgg+ stage ``closing`` and send the next stage's task to each of ``sites``.

    ``sites`` are the sites accepted at ``closing`` (U1, U2, ...). The coordinator closes
    the stage in the ``ServerRound``; a ``RoundAborted`` comes back as ``SecAggAborted``,
    and sites it sends no next task come back as ``SecAggDropped``.
    """

    round: int
    attempt: int
    closing: RoundPhase
    sites: tuple[str, ...]
    deadline_s: float


@dataclass(frozen=True)
class RoundFailed:
    """A round attempt got too few updates; ``retry`` says whether another attempt follows.

    Args:
        missing: selected sites whose update (or stage message) did not arrive.
        gone: those of ``missing`` whose task stream had ended by then.
        phase: the phase the attempt failed in (which SecAgg+ stage, or collecting).
        why: the secure-aggregation abort's explanation, if that is how it failed.

    The last four are diagnostics for the operator (``confide job status``), so they take no
    part in comparing two actions.
    """

    round: int
    attempt: int
    reason: Reason
    retry: bool
    missing: tuple[str, ...] = field(default=(), compare=False)
    gone: tuple[str, ...] = field(default=(), compare=False)
    phase: str = field(default="", compare=False)
    why: str = field(default="", compare=False)


@dataclass(frozen=True)
class FinishJob:
    """The job ended in ``phase`` (DONE, FAILED or CANCELLED); ``reason`` is the audit
    reason of a failure (a refusing site's, when one made the last round fail)."""

    phase: RoundPhase
    error: str = ""
    reason: str = ""


Action = SendTask | RoundStarted | CloseStage | Aggregate | RoundFailed | FinishJob
