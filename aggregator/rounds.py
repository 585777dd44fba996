"""A job's rounds as an explicit state machine: a frozen dataclass and a pure ``advance``.

``advance(state, event, *, now)`` returns the next state and the actions the coordinator must
carry out (send tasks, aggregate, record a failure, finish the job). It reads no clock, touches
no socket, file or database, so every transition is a unit test and the state can be persisted
after each one (STYLE rule 1): a killed aggregator restarts the in-progress round from its
input model and loses no completed round.

Plaintext flow (docs/protocol.md)::

    WAITING --(min_sites eligible)--> COLLECTING --(all answered | deadline, >= min_sites
    updates)--> AGGREGATING --(ModelStored)--> WAITING (next round) ... --> EVALUATING --> DONE
    COLLECTING --(too few updates)--> WAITING (attempt + 1) ... --> FAILED (retries spent)

SecAgg+ (Bell et al. 2020) will add phases between WAITING and AGGREGATING: ADVERTISE
(stage 0), SHARE_KEYS (1), MASKED_INPUT (2) and UNMASK (3). Each is a new ``RoundPhase``,
new events (``KeysAdvertised``, ``SharesReceived``, ...) and a branch in ``advance``; the
dispatch on ``phase`` below is where they slot in, and ``_start_round`` picks the first phase.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from confide.errors import Reason, ReplayedMessage, Unauthorized

__all__ = [
    "Action",
    "Aggregate",
    "Cancel",
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
    "SendTask",
    "SiteConnected",
    "SiteDisconnected",
    "TaskKind",
    "UpdateReceived",
    "advance",
    "check_update",
    "task_id",
]


class RoundPhase(enum.Enum):
    """Where a job's current round stands."""

    WAITING = "waiting"  # running, waiting for min_sites eligible sites
    COLLECTING = "collecting"  # TRAIN tasks out; plaintext updates arriving
    # SecAgg+ phases to come: ADVERTISE, SHARE_KEYS, MASKED_INPUT, UNMASK
    AGGREGATING = "aggregating"  # enough answers; the coordinator applies the optimizer
    EVALUATING = "evaluating"  # last round done; EVALUATE tasks out
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({RoundPhase.DONE, RoundPhase.FAILED, RoundPhase.CANCELLED})


class TaskKind(enum.Enum):
    """The tasks a plaintext job sends (``federation.proto`` TaskKind)."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    JOB_DONE = "job_done"


@dataclass(frozen=True)
class JobParams:
    """The parts of a JobSpec the state machine needs."""

    job_id: str
    rounds: int
    min_sites: int
    round_timeout_s: float
    max_retries: int


@dataclass(frozen=True)
class RoundState:
    """A job's round state; ``round`` counts from 1, ``attempt`` from 1.

    Args:
        eligible: connected sites that expose the job's dataset.
        selected: sites sent this round's task.
        updated: selected sites whose update is in the running sum.
        answered: selected sites that answered (update or report).
        deadline: unix seconds when the current phase times out, or None.
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
    deadline: float | None = None
    started_at: float = 0.0
    error: str = ""


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
    """A site reported on a task; ``ok`` False means failed or refused."""

    site: str
    round: int
    kind: TaskKind
    ok: bool


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
class RoundFailed:
    """A round attempt got too few updates; ``retry`` says whether another attempt follows."""

    round: int
    attempt: int
    reason: Reason
    retry: bool


@dataclass(frozen=True)
class FinishJob:
    """The job ended in ``phase`` (DONE, FAILED or CANCELLED)."""

    phase: RoundPhase
    error: str = ""


Action = SendTask | RoundStarted | Aggregate | RoundFailed | FinishJob


def task_id(job_id: str, round: int, attempt: int, kind: TaskKind) -> str:
    """The id of the task of ``kind`` for an attempt of a round (the same for every site)."""
    return f"{job_id}/{round}/{attempt}/{kind.value}"


def check_update(state: RoundState, *, site: str, round: int) -> None:
    """Whether ``site`` may upload an update for ``round`` now.

    Raises:
        ReplayedMessage: the update is for another round, arrives outside the collecting
            phase, or a second time.
        Unauthorized: the site was not selected for this round (reason NOT_SELECTED).
    """
    if round != state.round:
        raise ReplayedMessage(f"update for round {round}; the current round is {state.round}")
    if site not in state.selected:
        raise Unauthorized(
            f"{site!r} was not selected for round {round}", reason=Reason.NOT_SELECTED
        )
    if state.phase is not RoundPhase.COLLECTING:
        raise ReplayedMessage(
            f"round {round} is {state.phase.value}, not collecting updates",
            reason=Reason.WRONG_STAGE,
        )
    if site in state.answered:
        raise ReplayedMessage(f"{site!r} already answered round {round}")


def advance(state: RoundState, event: Event, *, now: float) -> tuple[RoundState, list[Action]]:
    """The next state and the actions to carry out, for one event.

    Args:
        state: the current state.
        event: what happened.
        now: unix seconds (a parameter so tests pin it).

    Raises:
        ReplayedMessage, Unauthorized: an ``UpdateReceived`` that ``check_update`` refuses.
    """
    if isinstance(event, UpdateReceived):
        check_update(state, site=event.site, round=event.round)
    if state.phase in TERMINAL:
        return state, []
    if isinstance(event, SiteConnected):
        state = _replace(state, eligible=state.eligible | {event.site})
        actions = _resend(state, event.site)
        return _maybe_start(state, actions, now=now)
    if isinstance(event, SiteDisconnected):
        return _replace(state, eligible=state.eligible - {event.site}), []
    if isinstance(event, UpdateReceived):
        state = _replace(
            state, updated=state.updated | {event.site}, answered=state.answered | {event.site}
        )
        return _maybe_close(state, now=now, timed_out=False)
    if isinstance(event, ReportReceived):
        expect = TaskKind.EVALUATE if state.phase is RoundPhase.EVALUATING else TaskKind.TRAIN
        if (
            event.kind is not expect
            or event.round != state.round
            or event.site not in state.selected
            or event.site in state.answered
        ):
            return state, []
        return _maybe_close(
            _replace(state, answered=state.answered | {event.site}), now=now, timed_out=False
        )
    if isinstance(event, DeadlinePassed):
        if state.deadline is None or now < state.deadline:
            return state, []
        return _maybe_close(state, now=now, timed_out=True)
    if isinstance(event, ModelStored):
        if state.phase is not RoundPhase.AGGREGATING or event.round != state.round:
            return state, []
        if state.round >= state.params.rounds:
            return _start_evaluation(_replace(state, model_version=event.model_version), now=now)
        nxt = _replace(
            state,
            phase=RoundPhase.WAITING,
            round=state.round + 1,
            attempt=1,
            model_version=event.model_version,
        )
        return _maybe_start(nxt, [], now=now)
    if isinstance(event, Cancel):
        return _finish(state, RoundPhase.CANCELLED, "cancelled by an operator", [])
    return _maybe_start(state, [], now=now)  # Resume


def _replace(state: RoundState, **changes: object) -> RoundState:
    return dataclasses.replace(state, **changes)  # type: ignore[arg-type]


def _resend(state: RoundState, site: str) -> list[Action]:
    """A selected site that reconnects before answering gets its task again."""
    if site not in state.selected or site in state.answered or state.deadline is None:
        return []
    if state.phase is RoundPhase.COLLECTING:
        kind = TaskKind.TRAIN
    elif state.phase is RoundPhase.EVALUATING:
        kind = TaskKind.EVALUATE
    else:
        return []
    return [
        SendTask(
            kind,
            (site,),
            state.round,
            state.attempt,
            state.model_version,
            state.params.round_timeout_s,
        )
    ]


def _maybe_start(
    state: RoundState, actions: list[Action], *, now: float
) -> tuple[RoundState, list[Action]]:
    if state.phase is not RoundPhase.WAITING or len(state.eligible) < state.params.min_sites:
        return state, actions
    sites = tuple(sorted(state.eligible))
    timeout = state.params.round_timeout_s
    state = _replace(
        state,
        phase=RoundPhase.COLLECTING,
        selected=frozenset(sites),
        updated=frozenset(),
        answered=frozenset(),
        deadline=now + timeout,
        started_at=now,
    )
    return state, [
        *actions,
        RoundStarted(state.round, state.attempt, sites, state.model_version),
        SendTask(TaskKind.TRAIN, sites, state.round, state.attempt, state.model_version, timeout),
    ]


def _maybe_close(
    state: RoundState, *, now: float, timed_out: bool
) -> tuple[RoundState, list[Action]]:
    if not timed_out and not state.selected <= state.answered:
        return state, []
    if state.phase is RoundPhase.EVALUATING:
        return _finish(state, RoundPhase.DONE, "", [])
    if state.phase is not RoundPhase.COLLECTING:
        return state, []
    if len(state.updated) >= state.params.min_sites:
        state = _replace(state, phase=RoundPhase.AGGREGATING, deadline=None)
        return state, [Aggregate(state.round, tuple(sorted(state.updated)))]
    retry = state.attempt <= state.params.max_retries
    failed = RoundFailed(state.round, state.attempt, Reason.ROUND_ABORTED, retry)
    if not retry:
        error = (
            f"round {state.round} got fewer than {state.params.min_sites} updates "
            f"in {state.attempt} attempts"
        )
        return _finish(state, RoundPhase.FAILED, error, [failed])
    nxt = _replace(
        state,
        phase=RoundPhase.WAITING,
        attempt=state.attempt + 1,
        deadline=None,
        selected=frozenset(),
        updated=frozenset(),
        answered=frozenset(),
    )
    return _maybe_start(nxt, [failed], now=now)


def _start_evaluation(state: RoundState, *, now: float) -> tuple[RoundState, list[Action]]:
    sites = tuple(sorted(state.eligible))
    if not sites:
        return _finish(state, RoundPhase.DONE, "", [])
    timeout = state.params.round_timeout_s
    state = _replace(
        state,
        phase=RoundPhase.EVALUATING,
        selected=frozenset(sites),
        updated=frozenset(),
        answered=frozenset(),
        deadline=now + timeout,
    )
    return state, [
        SendTask(TaskKind.EVALUATE, sites, state.round, state.attempt, state.model_version, timeout)
    ]


def _finish(
    state: RoundState, phase: RoundPhase, error: str, actions: list[Action]
) -> tuple[RoundState, list[Action]]:
    state = _replace(state, phase=phase, deadline=None, error=error)
    done = SendTask(
        TaskKind.JOB_DONE,
        tuple(sorted(state.eligible)),
        state.round,
        state.attempt,
        state.model_version,
        0.0,
    )
    return state, [*actions, done, FinishJob(phase, error)]
