"""Pure tests of the round state machine: no I/O, no clock."""

from __future__ import annotations

import pytest

from aggregator import rounds as r
from confide.errors import Reason, ReplayedMessage, Unauthorized

P = r.JobParams("job", rounds=2, min_sites=2, round_timeout_s=10.0, max_retries=1)


def _collecting(now: float = 0.0) -> r.RoundState:
    s = r.RoundState(P, model_version="v0")
    s, _ = r.advance(s, r.SiteConnected("a"), now=now)
    s, _actions = r.advance(s, r.SiteConnected("b"), now=now)
    assert s.phase is r.RoundPhase.COLLECTING
    return s


def test_waits_for_min_sites_then_sends_train():
    """A round starts once min_sites eligible sites are connected; each gets a TRAIN task."""
    s = r.RoundState(P, model_version="v0")
    s, actions = r.advance(s, r.SiteConnected("a"), now=0)
    assert s.phase is r.RoundPhase.WAITING and actions == []
    s, actions = r.advance(s, r.SiteConnected("b"), now=1)
    assert s.deadline == 11.0 and s.selected == {"a", "b"}
    assert r.SendTask(r.TaskKind.TRAIN, ("a", "b"), 1, 1, "v0", 10.0) in actions


def test_round_completes_when_all_answered():
    """When every selected site sent an update the round aggregates, then the next one starts."""
    s = _collecting()
    s, actions = r.advance(s, r.UpdateReceived("a", 1), now=1)
    assert actions == []
    s, actions = r.advance(s, r.UpdateReceived("b", 1), now=2)
    assert actions == [r.Aggregate(1, ("a", "b"))] and s.phase is r.RoundPhase.AGGREGATING
    s, actions = r.advance(s, r.ModelStored(1, "v1"), now=3)
    assert (s.round, s.phase, s.model_version) == (2, r.RoundPhase.COLLECTING, "v1")
    assert any(isinstance(a, r.SendTask) and a.kind is r.TaskKind.TRAIN for a in actions)


def test_deadline_with_enough_updates_aggregates():
    """A deadline with at least min_sites updates aggregates what arrived."""
    p = r.JobParams("job", rounds=1, min_sites=1, round_timeout_s=10.0, max_retries=0)
    s, _ = r.advance(r.RoundState(p, eligible=frozenset({"a", "b"})), r.Resume(), now=0)
    s, _ = r.advance(s, r.UpdateReceived("a", 1), now=1)
    s, actions = r.advance(s, r.DeadlinePassed(), now=5)
    assert actions == []
    s, actions = r.advance(s, r.DeadlinePassed(), now=10)
    assert actions == [r.Aggregate(1, ("a",))]


def test_deadline_with_too_few_retries_then_fails():
    """Too few updates at the deadline fail the round; it retries, then the job fails."""
    s = _collecting()
    s, _ = r.advance(s, r.UpdateReceived("a", 1), now=1)
    s, actions = r.advance(s, r.DeadlinePassed(), now=10)
    assert actions[0] == r.RoundFailed(1, 1, Reason.ROUND_ABORTED, retry=True)
    assert (s.phase, s.attempt, s.round) == (r.RoundPhase.COLLECTING, 2, 1)
    assert s.updated == frozenset()
    s, actions = r.advance(s, r.ReportReceived("a", 1, r.TaskKind.TRAIN, ok=False), now=11)
    s, actions = r.advance(s, r.DeadlinePassed(), now=20)
    assert s.phase is r.RoundPhase.FAILED
    assert isinstance(actions[-1], r.FinishJob) and actions[-1].phase is r.RoundPhase.FAILED
    assert r.RoundFailed(1, 2, Reason.ROUND_ABORTED, retry=False) in actions


def test_late_update_for_old_round_refused():
    """An update for a round that already ended is refused as replayed."""
    s = _collecting()
    s, _ = r.advance(s, r.UpdateReceived("a", 1), now=1)
    s, _ = r.advance(s, r.UpdateReceived("b", 1), now=1)
    s, _ = r.advance(s, r.ModelStored(1, "v1"), now=2)
    with pytest.raises(ReplayedMessage) as err:
        r.advance(s, r.UpdateReceived("a", 1), now=3)
    assert err.value.reason is Reason.REPLAYED


def test_second_update_and_unselected_site_refused():
    """A second update is replayed; a site outside the selection is NOT_SELECTED."""
    s = _collecting()
    s, _ = r.advance(s, r.UpdateReceived("a", 1), now=1)
    with pytest.raises(ReplayedMessage):
        r.advance(s, r.UpdateReceived("a", 1), now=1)
    with pytest.raises(Unauthorized) as err:
        r.advance(s, r.UpdateReceived("c", 1), now=1)
    assert err.value.reason is Reason.NOT_SELECTED


def test_last_round_evaluates_then_done():
    """After the last round the final model is evaluated, then the job is done."""
    p = r.JobParams("job", rounds=1, min_sites=1, round_timeout_s=10.0, max_retries=0)
    s, _ = r.advance(r.RoundState(p), r.SiteConnected("a"), now=0)
    s, _ = r.advance(s, r.UpdateReceived("a", 1), now=1)
    s, actions = r.advance(s, r.ModelStored(1, "v1"), now=2)
    assert s.phase is r.RoundPhase.EVALUATING
    assert actions == [r.SendTask(r.TaskKind.EVALUATE, ("a",), 1, 1, "v1", 10.0)]
    s, actions = r.advance(s, r.ReportReceived("a", 1, r.TaskKind.EVALUATE, ok=True), now=3)
    assert s.phase is r.RoundPhase.DONE
    assert actions[-1] == r.FinishJob(r.RoundPhase.DONE, "")


def test_reconnecting_selected_site_gets_task_again():
    """A selected site that reconnects before answering is sent its task again."""
    s = _collecting()
    s, _ = r.advance(s, r.SiteDisconnected("a"), now=1)
    s, actions = r.advance(s, r.SiteConnected("a"), now=2)
    assert actions == [r.SendTask(r.TaskKind.TRAIN, ("a",), 1, 1, "v0", 10.0)]


def test_cancel_finishes_job():
    """Cancelling ends the job and tells its sites."""
    s = _collecting()
    s, actions = r.advance(s, r.Cancel(), now=1)
    assert s.phase is r.RoundPhase.CANCELLED
    assert actions[0].kind is r.TaskKind.JOB_DONE  # type: ignore[union-attr]


def test_pending_evaluation_waits_for_min_sites_then_sends_evaluate():
    """A final evaluation resumed with no site connected waits for min_sites, then evaluates."""
    s = r.evaluation_pending(r.RoundState(P, round=2, model_version="v2"))
    s, actions = r.advance(s, r.Resume(), now=0)
    assert (s.phase, actions) == (r.RoundPhase.EVALUATING, [])
    s, actions = r.advance(s, r.SiteConnected("a"), now=1)
    assert (s.phase, actions) == (r.RoundPhase.EVALUATING, [])
    s, actions = r.advance(s, r.SiteConnected("b"), now=2)
    assert actions == [r.SendTask(r.TaskKind.EVALUATE, ("a", "b"), 2, 1, "v2", 10.0)]
    s, _ = r.advance(s, r.ReportReceived("a", 2, r.TaskKind.EVALUATE, True), now=3)
    s, actions = r.advance(s, r.ReportReceived("b", 2, r.TaskKind.EVALUATE, True), now=4)
    assert s.phase is r.RoundPhase.DONE
    assert r.SendTask(r.TaskKind.JOB_DONE, ("a", "b"), 2, 1, "v2", 0.0) in actions


SECURE = r.JobParams(
    "job",
    rounds=1,
    min_sites=3,
    round_timeout_s=10.0,
    max_retries=0,
    secure=True,
    stage_timeout_s=5.0,
    max_sites=4,
)


def test_a_secure_round_selects_at_most_max_sites():
    """A secure job whose rules bound the round size selects no more eligible sites."""
    sites = frozenset({"a", "b", "c", "d", "e"})
    s, actions = r.advance(r.RoundState(SECURE, eligible=sites), r.Resume(), now=0)
    assert s.phase is r.RoundPhase.ADVERTISE and s.selected == {"a", "b", "c", "d"}
    assert r.RoundStarted(1, 1, ("a", "b", "c", "d"), "") in actions


def test_secure_phases_run_through_the_check_and_consistency_stages():
    """The six SecAgg+ stages close in order; a site the share check leaves out
    (SecAggDropped) counts as answered, so the next stage does not wait for it."""
    s, _ = r.advance(r.RoundState(SECURE, eligible=frozenset("abc")), r.Resume(), now=0)
    for phase in r.SECURE_PHASES[:2]:
        for site in "abc":
            s, actions = r.advance(s, r.SecAggReceived(site, 1, phase), now=1)
        assert isinstance(actions[0], r.CloseStage) and actions[0].closing is phase
    assert s.phase is r.RoundPhase.CHECK_SHARES
    for site in "abc":
        s, actions = r.advance(s, r.SecAggReceived(site, 1, r.RoundPhase.CHECK_SHARES), now=2)
    assert s.phase is r.RoundPhase.MASKED_INPUT and s.stage_sites == {"a", "b", "c"}
    s, actions = r.advance(s, r.SecAggDropped(1, 1, ("c",)), now=2)
    assert actions == [] and "c" in s.answered
    s, _ = r.advance(s, r.SecAggDropped(1, 2, ("a",)), now=2)  # another attempt: ignored
    assert "a" not in s.answered
    for site in "ab":
        s, actions = r.advance(s, r.SecAggReceived(site, 1, r.RoundPhase.MASKED_INPUT), now=3)
    assert s.phase is r.RoundPhase.CONSISTENCY and s.stage_sites == {"a", "b"}
    for site in "ab":
        s, actions = r.advance(s, r.SecAggReceived(site, 1, r.RoundPhase.CONSISTENCY), now=4)
    assert s.phase is r.RoundPhase.UNMASK
    for site in "ab":
        s, actions = r.advance(s, r.SecAggReceived(site, 1, r.RoundPhase.UNMASK), now=5)
    assert actions == [r.Aggregate(1, ("a", "b"))]
