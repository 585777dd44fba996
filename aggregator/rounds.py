"""A job's rounds as an explicit state machine: a frozen dataclass and a pure ``advance``.

``advance(state, event, *, now)`` returns the next state and the actions the coordinator must
carry out (send tasks, aggregate, record a failure, finish the job). It reads no clock, touches
no socket, file or database, so every transition is a unit test and the state can be persisted
after each one (STYLE rule 1): a killed aggregator restarts the in-progress round from its
input model and loses no completed round.

Plaintext flow (docs/protocol.md)::

    WAITING --(min_sites eligible)--> COLLECTING --(all answered | deadline, >= min_sites
    updates)--> AGGREGATING --(ModelStored)--> WAITING (next round) ... --> EVALUATING --> DONE

EVALUATING with no sites selected waits for min_sites eligible sites before it sends
EVALUATE (a restart during the final evaluation resumes there; no site is connected yet).
    COLLECTING --(too few updates)--> WAITING (attempt + 1) ... --> FAILED (retries spent)

A round retried after a site REFUSED its task (the site's policy or configuration, which an
immediate retry would meet again) waits in WAITING until ``deadline``:
``retry_backoff_s · 2^(attempt-1)`` after the failure, at most ``MAX_BACKOFF_S``. Retries are
bounded per round (``max_retries``) and per job (``max_job_retries``, the signed job's); when
they are spent the job fails with the refusing sites and their reasons.

SecAgg+ flow (Bell et al. 2020; docs/protocol.md "A secure round"): WAITING -> ADVERTISE
(stage 0, TRAIN tasks out) -> SHARE_KEYS (1) -> CHECK_SHARES (2) -> MASKED_INPUT (3) ->
CONSISTENCY (4) -> UNMASK (5) -> AGGREGATING. A secure round selects at most the job's
``max_sites`` eligible sites (a count threshold bounds the round sizes that are safe).
Each stage waits for its ``stage_sites`` (all selected sites at ADVERTISE, then the sites
accepted at the stage before) until all answered (a message, a failure report, or a dropped
task stream) or its own deadline passes (``round_timeout_s`` for ADVERTISE, which includes
training; ``stage_timeout_s`` after). Closing a stage emits ``CloseStage``; the coordinator
runs the ``confide.secagg`` close, which raises ``RoundAborted`` below t sites and comes back
as ``SecAggAborted``: the round then fails and is retried exactly like a plaintext round with
too few updates; sites the close leaves out of the next stage come back as ``SecAggDropped``
and count as answered. The threshold itself lives in the coordinator's ``ServerRound``.
"""

from __future__ import annotations

import dataclasses

from aggregator.round_checks import (
    STAGE_TASK,
    check_report,
    check_secagg,
    check_update,
    task_id,
)
from aggregator.round_types import (
    SECURE_PHASES,
    TERMINAL,
    Action,
    Aggregate,
    Cancel,
    CloseStage,
    DeadlinePassed,
    Event,
    FinishJob,
    JobParams,
    ModelStored,
    ReportReceived,
    Resume,
    RoundFailed,
    RoundPhase,
    RoundStarted,
    RoundState,
    SecAggAborted,
    SecAggDropped,
    SecAggReceived,
    SendTask,
    SiteConnected,
    SiteDisconnected,
    TaskKind,
    UpdateReceived,
)
from confide.errors import Reason, ReplayedMessage, Unauthorized

__all__ = [
    "SECURE_PHASES",
    "STAGE_TASK",
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
    "advance",
    "check_report",
    "check_secagg",
    "check_update",
    "evaluation_pending",
    "task_id",
]

MAX_BACKOFF_S = 3600.0
"""The longest wait before retrying a refused round."""


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
    if isinstance(event, SecAggReceived):
        check_secagg(state, site=event.site, round=event.round, phase=event.phase)
    if state.phase in TERMINAL:
        return state, []
    if isinstance(event, SiteConnected):
        state = _replace(state, eligible=state.eligible | {event.site})
        actions = _resend(state, event.site)
        return _maybe_start(state, actions, now=now)
    if isinstance(event, SiteDisconnected):
        state = _replace(state, eligible=state.eligible - {event.site})
        if state.phase is RoundPhase.WAITING:
            return _maybe_start(state, [], now=now)
        if state.phase in SECURE_PHASES and event.site in state.stage_sites:
            # A dropped stream drops the site from this stage (its state at the site is in
            # memory only), so the stage need not wait for its deadline.
            state = _replace(state, answered=state.answered | {event.site})
            return _maybe_close(state, now=now, timed_out=False)
        return state, []
    if isinstance(event, (UpdateReceived, SecAggReceived)):
        state = _replace(
            state, updated=state.updated | {event.site}, answered=state.answered | {event.site}
        )
        return _maybe_close(state, now=now, timed_out=False)
    if isinstance(event, ReportReceived):
        try:
            check_report(state, site=event.site, round=event.round, kind=event.kind)
        except (ReplayedMessage, Unauthorized):
            return state, []
        refusals = state.refusals
        if event.refusal:
            refusals = (*refusals, (event.site, event.refusal))
        return _maybe_close(
            _replace(state, answered=state.answered | {event.site}, refusals=refusals),
            now=now,
            timed_out=False,
        )
    if isinstance(event, DeadlinePassed):
        if state.deadline is None or now < state.deadline:
            return state, []
        if state.phase is RoundPhase.WAITING:
            if state.no_site:
                error = _no_site_error(state)
                return _finish(
                    state, RoundPhase.FAILED, error, [], reason=Reason.UNKNOWN_DATASET.value
                )
            # a refused round's backoff is over
            return _maybe_start(_replace(state, deadline=None), [], now=now)
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
    if isinstance(event, SecAggAborted):
        live = (*SECURE_PHASES, RoundPhase.AGGREGATING)
        if state.phase not in live or (event.round, event.attempt) != (state.round, state.attempt):
            return state, []
        return _fail_round(state, now=now, why=event.why)
    if isinstance(event, SecAggDropped):
        if state.phase not in SECURE_PHASES or (event.round, event.attempt) != (
            state.round,
            state.attempt,
        ):
            return state, []
        gone = frozenset(event.sites) & state.stage_sites
        return _maybe_close(
            _replace(state, answered=state.answered | gone), now=now, timed_out=False
        )
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
    if state.phase is RoundPhase.EVALUATING and not state.selected:
        # A final evaluation waiting for sites (after a restart): like a round, it starts
        # once min_sites eligible sites are connected.
        if len(state.eligible) < state.params.min_sites:
            return state, actions
        state, sent = _start_evaluation(state, now=now)
        return state, [*actions, *sent]
    if state.phase is not RoundPhase.WAITING:
        return state, actions
    if len(state.eligible) < state.params.min_sites:
        return _waiting(state, now=now), actions
    if state.deadline is not None and now < state.deadline and not state.no_site:
        return state, actions  # backing off after a refused attempt
    sites = tuple(sorted(state.eligible))
    if state.params.max_sites:
        sites = sites[: state.params.max_sites]
    timeout = state.params.round_timeout_s
    state = _replace(
        state,
        phase=RoundPhase.ADVERTISE if state.params.secure else RoundPhase.COLLECTING,
        selected=frozenset(sites),
        updated=frozenset(),
        answered=frozenset(),
        stage_sites=frozenset(sites),
        deadline=now + timeout,
        started_at=now,
        refusals=(),
        no_site=False,
    )
    return state, [
        *actions,
        RoundStarted(state.round, state.attempt, sites, state.model_version),
        SendTask(TaskKind.TRAIN, sites, state.round, state.attempt, state.model_version, timeout),
    ]


def _waiting(state: RoundState, *, now: float) -> RoundState:
    """A waiting round's deadline: set while no connected site exposes the dataset.

    A job whose dataset no connected site exposes fails when it passes (``_no_site_error``)
    instead of staying "running" for ever; once one eligible site is connected the round
    waits, without a deadline, for the rest of ``min_sites``. A refused round's backoff
    (a deadline that is not ``no_site``) is left as it is.
    """
    if state.deadline is not None and not state.no_site:
        return state
    if state.eligible:
        return _replace(state, deadline=None, no_site=False) if state.no_site else state
    if state.deadline is None:
        return _replace(state, deadline=now + state.params.round_timeout_s, no_site=True)
    return state


def _no_site_error(state: RoundState) -> str:
    name = f"dataset {state.params.dataset!r}" if state.params.dataset else "its dataset"
    return f"no connected site exposes {name} (waited {state.params.round_timeout_s:g} s for one)"


def _maybe_close(
    state: RoundState, *, now: float, timed_out: bool
) -> tuple[RoundState, list[Action]]:
    if state.phase in SECURE_PHASES:
        return _close_stage(state, now=now, timed_out=timed_out)
    if not timed_out and not state.selected <= state.answered:
        return state, []
    if state.phase is RoundPhase.EVALUATING:
        return _finish(state, RoundPhase.DONE, "", [])
    if state.phase is not RoundPhase.COLLECTING:
        return state, []
    if len(state.updated) >= state.params.min_sites:
        state = _replace(state, phase=RoundPhase.AGGREGATING, deadline=None)
        return state, [Aggregate(state.round, tuple(sorted(state.updated)))]
    return _fail_round(state, now=now)


def _close_stage(
    state: RoundState, *, now: float, timed_out: bool
) -> tuple[RoundState, list[Action]]:
    """End the current SecAgg+ stage when all its sites answered or its deadline passed."""
    if not timed_out and not state.stage_sites <= state.answered:
        return state, []
    accepted = tuple(sorted(state.updated))
    if state.phase is RoundPhase.UNMASK:
        # U3 (this stage's sites) is the sum; the replies (U5) are checked by ``finish``.
        state = _replace(state, phase=RoundPhase.AGGREGATING, deadline=None)
        return state, [Aggregate(state.round, tuple(sorted(state.stage_sites)))]
    closing = state.phase
    timeout = state.params.stage_timeout_s
    nxt = SECURE_PHASES[SECURE_PHASES.index(closing) + 1]
    state = _replace(
        state,
        phase=nxt,
        stage_sites=frozenset(accepted),
        updated=frozenset(),
        # Sites already gone are dropped from the new stage at once.
        answered=frozenset(accepted) - state.eligible,
        deadline=now + timeout,
    )
    return state, [CloseStage(state.round, state.attempt, closing, accepted, timeout)]


def _fail_round(state: RoundState, *, now: float, why: str = "") -> tuple[RoundState, list[Action]]:
    """Record a failed attempt of the round; retry it (after a backoff if refused) or fail
    the job, naming the sites that refused."""
    p = state.params
    round_left = state.attempt <= p.max_retries
    job_left = p.max_job_retries is None or state.job_retries < p.max_job_retries
    retry = round_left and job_left
    refused = ", ".join(f"{site} ({reason})" for site, reason in sorted(state.refusals))
    missing = state.selected - state.updated
    failed = RoundFailed(
        state.round,
        state.attempt,
        Reason.ROUND_ABORTED,
        retry,
        missing=tuple(sorted(missing)),
        gone=tuple(sorted(missing - state.eligible)),
        phase=state.phase.value,
        why=why,
    )
    if not retry:
        error = (
            f"round {state.round} got fewer than {p.min_sites} updates in {state.attempt} attempts"
        )
        if round_left:
            error += f" (the job's {p.max_job_retries} retries are spent)"
        if refused:
            error += f"; refused by {refused}"
        reason = min(state.refusals)[1] if state.refusals else Reason.ROUND_ABORTED.value
        return _finish(state, RoundPhase.FAILED, error, [failed], reason=reason)
    backoff = None
    if state.refusals and p.retry_backoff_s > 0:
        backoff = now + min(MAX_BACKOFF_S, p.retry_backoff_s * 2.0 ** (state.attempt - 1))
    nxt = _replace(
        state,
        phase=RoundPhase.WAITING,
        attempt=state.attempt + 1,
        job_retries=state.job_retries + 1,
        deadline=backoff,
        selected=frozenset(),
        updated=frozenset(),
        answered=frozenset(),
        stage_sites=frozenset(),
    )
    return _maybe_start(nxt, [failed], now=now)


def _start_evaluation(state: RoundState, *, now: float) -> tuple[RoundState, list[Action]]:
    """Send EVALUATE to every eligible site; with none, wait for sites (see ``_maybe_start``)."""
    sites = tuple(sorted(state.eligible))
    if not sites:
        return evaluation_pending(state), []
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


def evaluation_pending(state: RoundState) -> RoundState:
    """``state`` in the final evaluation, waiting for min_sites eligible sites to send it."""
    return _replace(
        state,
        phase=RoundPhase.EVALUATING,
        selected=frozenset(),
        updated=frozenset(),
        answered=frozenset(),
        stage_sites=frozenset(),
        deadline=None,
    )


def _finish(
    state: RoundState, phase: RoundPhase, error: str, actions: list[Action], *, reason: str = ""
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
    return state, [*actions, done, FinishJob(phase, error, reason)]
