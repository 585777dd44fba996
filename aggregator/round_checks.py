"""Whether a site's message may enter its job's round now: pure checks over ``RoundState``.

Kept apart from ``aggregator.rounds`` (which re-exports them) so the transition logic stays
one module of bounded size; the coordinator calls these before any side effect, and
``rounds.advance`` calls them again on the matching events.
"""

from __future__ import annotations

from aggregator.round_types import SECURE_PHASES, RoundPhase, RoundState, TaskKind
from confide.errors import Reason, ReplayedMessage, Unauthorized
from confide.types import TaskId

__all__ = ["STAGE_TASK", "check_report", "check_secagg", "check_update", "task_id"]


STAGE_TASK = {
    RoundPhase.COLLECTING: TaskKind.TRAIN,
    RoundPhase.ADVERTISE: TaskKind.TRAIN,
    RoundPhase.SHARE_KEYS: TaskKind.SHARE_KEYS,
    RoundPhase.CHECK_SHARES: TaskKind.CHECK_SHARES,
    RoundPhase.MASKED_INPUT: TaskKind.MASKED_INPUT,
    RoundPhase.CONSISTENCY: TaskKind.CONSISTENCY,
    RoundPhase.UNMASK: TaskKind.UNMASK,
    RoundPhase.EVALUATING: TaskKind.EVALUATE,
}
"""The task kind whose reports each phase accepts."""


def task_id(job_id: str, round: int, attempt: int, kind: TaskKind) -> TaskId:
    """The id of the task of ``kind`` for an attempt of a round (the same for every site).

    Unique per (job, round, attempt, kind), which is all a site relies on: it compares ids
    and keys its ledger by them, never parses them (the attempt travels as ``Task.attempt``).
    """
    return TaskId(f"{job_id}/{round}/{attempt}/{kind.value}")


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


def check_report(state: RoundState, *, site: str, round: int, kind: TaskKind) -> None:
    """Whether ``site`` may report on its task of ``kind`` for ``round`` now (only once).

    Raises:
        ReplayedMessage: another round (REPLAYED), a task kind the current phase does not
            wait for (WRONG_STAGE), or a site that already answered (REPLAYED).
        Unauthorized: the site is not waited for in this phase (reason NOT_SELECTED).
    """
    if round != state.round:
        raise ReplayedMessage(f"report for round {round}; the current round is {state.round}")
    if kind is not STAGE_TASK.get(state.phase):
        raise ReplayedMessage(
            f"round {round} is {state.phase.value}: no {kind.value} report is due",
            reason=Reason.WRONG_STAGE,
        )
    if site not in (state.stage_sites if state.phase in SECURE_PHASES else state.selected):
        raise Unauthorized(f"{site!r} has no {kind.value} task now", reason=Reason.NOT_SELECTED)
    if site in state.answered:
        raise ReplayedMessage(f"{site!r} already answered its {kind.value} task")


def check_secagg(state: RoundState, *, site: str, round: int, phase: RoundPhase) -> None:
    """Whether ``site`` may send its message of SecAgg+ stage ``phase`` for ``round`` now.

    Raises:
        ReplayedMessage: another round (REPLAYED), another stage than the open one
            (WRONG_STAGE), or a second message of this stage (REPLAYED).
        Unauthorized: not selected for the round, or not in this stage's set of sites
            (reason NOT_SELECTED).
    """
    if round != state.round:
        raise ReplayedMessage(f"message for round {round}; the current round is {state.round}")
    if site not in state.selected:
        raise Unauthorized(
            f"{site!r} was not selected for round {round}", reason=Reason.NOT_SELECTED
        )
    if state.phase is not phase:
        raise ReplayedMessage(
            f"round {round} is {state.phase.value}, not {phase.value}", reason=Reason.WRONG_STAGE
        )
    if site not in state.stage_sites:
        raise Unauthorized(
            f"{site!r} is not in stage {phase.value} of round {round}", reason=Reason.NOT_SELECTED
        )
    if site in state.answered:
        raise ReplayedMessage(f"{site!r} already answered stage {phase.value} (or dropped)")
