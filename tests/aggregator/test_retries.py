"""Retrying a round: a refused round backs off, the signed job bounds the retries, and the
job fails naming the site that refused and its reason."""

from __future__ import annotations

import dataclasses

import pytest

from aggregator import rounds as r
from aggregator.jobs import new_job, resume_point
from aggregator.server import build
from confide.errors import Reason
from confide.v1 import admin_pb2, common_pb2, federation_pb2
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import ACK, delta_like, tiny_spec

P = r.JobParams(
    "job",
    rounds=2,
    min_sites=2,
    round_timeout_s=10.0,
    max_retries=3,
    max_job_retries=5,
    retry_backoff_s=4.0,
)
TRAIN = r.TaskKind.TRAIN


def _collecting(p: r.JobParams = P, now: float = 0.0) -> r.RoundState:
    s, _ = r.advance(r.RoundState(p, model_version="v0"), r.SiteConnected("a"), now=now)
    s, _ = r.advance(s, r.SiteConnected("b"), now=now)
    assert s.phase is r.RoundPhase.COLLECTING
    return s


def _refused(s: r.RoundState, *, now: float) -> tuple[r.RoundState, list[r.Action]]:
    """Site a sends its update, site b refuses for a configuration reason."""
    s, _ = r.advance(s, r.UpdateReceived("a", s.round), now=now)
    return r.advance(
        s, r.ReportReceived("b", s.round, TRAIN, ok=False, refusal="schema_mismatch"), now=now
    )


def _started(actions: list[r.Action]) -> bool:
    return any(isinstance(a, r.RoundStarted) for a in actions)


def test_a_refused_round_is_retried_only_after_a_doubling_backoff():
    """A round a site refused waits retry_backoff_s (then twice that) before its retry; a
    site reconnecting or a resume does not cut the wait short."""
    s, actions = _refused(_collecting(), now=1.0)
    assert actions == [r.RoundFailed(1, 1, Reason.ROUND_ABORTED, retry=True)]
    assert (s.phase, s.attempt, s.deadline) == (r.RoundPhase.WAITING, 2, 5.0)
    for event in (r.SiteDisconnected("b"), r.SiteConnected("b"), r.Resume(), r.DeadlinePassed()):
        s, actions = r.advance(s, event, now=4.9)
        assert not _started(actions) and s.phase is r.RoundPhase.WAITING
    s, actions = r.advance(s, r.DeadlinePassed(), now=5.0)
    assert r.SendTask(TRAIN, ("a", "b"), 1, 2, "v0", 10.0) in actions
    s, actions = _refused(s, now=6.0)
    assert (s.attempt, s.deadline, s.job_retries) == (3, 6.0 + 8.0, 2)


def test_a_failure_without_refusal_is_retried_at_once():
    """A round that timed out with too few updates (nobody refused) is retried at once."""
    s, _ = r.advance(_collecting(), r.UpdateReceived("a", 1), now=1.0)
    s, actions = r.advance(s, r.DeadlinePassed(), now=10.0)
    assert _started(actions) and (s.phase, s.attempt) == (r.RoundPhase.COLLECTING, 2)


def test_spent_retries_fail_the_job_with_the_refusing_sites_reason():
    """When the round's retries are spent the job fails naming the site and its reason, which
    is also the failure's audit reason."""
    s = _collecting(dataclasses.replace(P, max_retries=1))
    s, _ = _refused(s, now=1.0)
    s, _ = r.advance(s, r.DeadlinePassed(), now=5.0)
    s, actions = _refused(s, now=6.0)
    assert s.phase is r.RoundPhase.FAILED
    assert r.RoundFailed(1, 2, Reason.ROUND_ABORTED, retry=False) in actions
    finish = actions[-1]
    assert isinstance(finish, r.FinishJob) and finish.reason == "schema_mismatch"
    assert "refused by b (schema_mismatch)" in finish.error


def test_the_signed_retries_bound_the_whole_job():
    """With one retry for the job, a retried round 1 leaves none for round 2."""
    s = _collecting(dataclasses.replace(P, max_job_retries=1))
    s, _ = r.advance(s, r.DeadlinePassed(), now=10.0)  # round 1, attempt 1: no update
    assert s.attempt == 2
    s, _ = r.advance(s, r.UpdateReceived("a", 1), now=11.0)
    s, _ = r.advance(s, r.UpdateReceived("b", 1), now=11.0)
    s, _ = r.advance(s, r.ModelStored(1, "v1"), now=12.0)
    assert (s.round, s.attempt) == (2, 1)
    s, _ = r.advance(s, r.DeadlinePassed(), now=30.0)
    assert s.phase is r.RoundPhase.FAILED
    assert "the job's 1 retries are spent" in s.error


@pytest.mark.parametrize(
    ("attempts", "config_retries", "expect"),
    [
        ({}, 3, (2, 2)),  # the defaults: 3 attempts of a round, 2 retries in the job
        ({"max_round_attempts": 2, "max_job_retries": 0}, 3, (1, 0)),
        ({"max_round_attempts": 5}, 1, (1, 2)),  # the aggregator's own bound may be lower
    ],
)
def test_the_aggregator_never_asks_for_more_attempts_than_the_job_signed(
    attempts, config_retries, expect
):
    """A job's round retries are the lower of the aggregator's and the signed job's, and its
    job-wide retries are the signed job's."""
    spec = tiny_spec()
    for k, v in attempts.items():
        setattr(spec.attempts, k, v)
    job = new_job(
        "j",
        spec,
        common_pb2.Envelope(),
        b"",
        model_version="0" * 64,  # a blob's hex SHA-256: the job's version chain hashes it
        version_no=0,
        max_retries=config_retries,
        eligible=frozenset(),
    )
    assert (job.state.params.max_retries, job.state.params.max_job_retries) == expect


def test_a_resumed_job_remembers_its_retries():
    """After a restart the retries of completed rounds and the interrupted attempt count."""
    job = new_job(
        "j",
        tiny_spec(rounds=5),
        common_pb2.Envelope(),
        b"",
        model_version="0" * 64,  # a blob's hex SHA-256: the job's version chain hashes it
        version_no=0,
        max_retries=3,
        eligible=frozenset(),
    )
    state, _ = resume_point(job, done=2, attempts={1: 2, 2: 1, 3: 2})
    assert (state.round, state.attempt, state.job_retries) == (3, 3, 1 + 2)


@pytest.fixture
def server(pki, tmp_path):
    """The live server of ``clients``, retrying refused rounds after 0.3 s."""
    agg, port = build(make_config(pki, tmp_path / "state", retry_backoff_s=0.3))
    yield agg, port
    agg.stop(grace=0)


def _attempt(job_id, s1, s2, *, reason: str) -> None:
    """One attempt: site-1 sends its update, site-2 refuses with ``reason``."""
    t1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    t2 = s2.next_task(federation_pb2.TASK_KIND_TRAIN)
    assert s1.upload(t1, delta_like(s1.download(job_id, t1.model_version), 0.1)) == ACK
    assert s2.report(t2, outcome=common_pb2.OUTCOME_REFUSED, reason=reason) == ACK


def _failed_job(clients, *, reason: str) -> tuple[admin_pb2.JobStatus, list]:
    """A job whose site-2 refuses both attempts of round 1 that the job signed for."""
    site, operator = clients
    op = operator()
    s1, s2 = site("site-1"), site("site-2")
    s1.connect()
    s2.connect()
    spec = tiny_spec(round_timeout_s=30.0)
    spec.attempts.max_round_attempts = 2
    job_id = op.submit(spec)
    _attempt(job_id, s1, s2, reason=reason)
    _attempt(job_id, s1, s2, reason=reason)
    s1.next_task(federation_pb2.TASK_KIND_JOB_DONE)
    status = op.admin.GetJob(admin_pb2.JobRef(job_id=job_id))
    return status, list(op.admin.ListAudit(admin_pb2.AuditRequest()).entries)


def test_a_site_refusing_for_its_configuration_fails_the_job_with_its_reason(clients):
    """Over mTLS: a refused round is retried only after the backoff, at most as often as the
    job signed, and the job then fails naming site-2 and schema_mismatch (also audited)."""
    status, audit = _failed_job(clients, reason="schema_mismatch")
    assert status.state == admin_pb2.JOB_STATE_FAILED
    assert "refused by site-2 (schema_mismatch)" in status.error
    failed = next(e for e in audit if e.event == "round_failed")
    retried = [e for e in audit if e.event == "round_started"][1]
    assert retried.at - failed.at >= 0.3
    assert sum(e.event == "round_started" for e in audit) == 2
    assert [e.reason for e in audit if e.event == "job_failed"] == ["schema_mismatch"]


def test_a_sites_reason_reaches_the_job_error_only_as_a_known_reason(clients):
    """A refusing site's free text never reaches the operator's job error: unknown reasons
    read 'denied'."""
    status, _ = _failed_job(clients, reason="see http://evil.example/ now")
    assert "refused by site-2 (denied)" in status.error and "evil" not in status.error
