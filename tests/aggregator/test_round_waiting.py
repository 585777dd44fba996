"""Pure tests: a job with no site for its dataset fails at a deadline; failures name sites."""

from __future__ import annotations

from aggregator import rounds as r

P = r.JobParams("job", rounds=1, min_sites=2, round_timeout_s=10.0, max_retries=0, dataset="tab")


def test_waiting_without_any_eligible_site_fails_at_the_deadline():
    """No connected site exposes the dataset: the job fails once round_timeout_s passes."""
    s, actions = r.advance(r.RoundState(P), r.Resume(), now=100)
    assert (s.phase, s.deadline, actions) == (r.RoundPhase.WAITING, 110.0, [])
    s, actions = r.advance(s, r.DeadlinePassed(), now=109.9)
    assert s.phase is r.RoundPhase.WAITING and actions == []
    s, actions = r.advance(s, r.DeadlinePassed(), now=110)
    assert s.phase is r.RoundPhase.FAILED
    assert s.error == "no connected site exposes dataset 'tab' (waited 10 s for one)"
    assert actions[-1] == r.FinishJob(r.RoundPhase.FAILED, s.error, "unknown_dataset")


def test_one_eligible_site_lifts_the_deadline_and_losing_it_sets_a_new_one():
    """An eligible site means the job waits for the rest without a deadline; none sets one again."""
    s, _ = r.advance(r.RoundState(P), r.Resume(), now=0)
    s, _ = r.advance(s, r.SiteConnected("a"), now=5)
    assert s.phase is r.RoundPhase.WAITING and s.deadline is None
    s, _ = r.advance(s, r.DeadlinePassed(), now=50)
    assert s.phase is r.RoundPhase.WAITING
    s, _ = r.advance(s, r.SiteDisconnected("a"), now=60)
    assert s.deadline == 70.0


def test_a_failed_attempt_names_the_sites_that_sent_nothing_and_those_gone():
    """RoundFailed lists the selected sites without an update, and which had disconnected."""
    p3 = r.JobParams("job", rounds=1, min_sites=3, round_timeout_s=10.0, max_retries=0)
    s, _ = r.advance(r.RoundState(p3), r.SiteConnected("a"), now=0)
    s, _ = r.advance(s, r.SiteConnected("b"), now=0)
    s, _ = r.advance(s, r.SiteConnected("c"), now=0)
    s, _ = r.advance(s, r.UpdateReceived("a", 1), now=1)
    s, _ = r.advance(s, r.SiteDisconnected("c"), now=2)
    s, actions = r.advance(s, r.DeadlinePassed(), now=10)
    failed = next(a for a in actions if isinstance(a, r.RoundFailed))
    assert (failed.missing, failed.gone, failed.phase) == (("b", "c"), ("c",), "collecting")
