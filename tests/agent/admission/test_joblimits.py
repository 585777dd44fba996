# Math notation (σ, ε) in docstrings and comments, as in agent/admission/limits.py.
# ruff: noqa: RUF002, RUF003
"""A hostile aggregator against the real site: the signed job bounds rounds, attempts and ε."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.admission.binding import JobBindings
from agent.admission.limits import JobLimits, check_charge, job_epsilon, job_limits
from agent.admission.rules import RuleRefusal
from agent.admission.site_policy import AttemptCaps, DatasetPolicy
from agent.privacy.ledger import Ledger
from agent.privacy.plan import PrivacyPlan
from agent.tasks.runner import TaskOutcome, TaskRunner
from confide.dp.accountant import AccountantKind, noise_multiplier_for
from confide.dp.budget import RecordCost, RoundCost, round_cost
from confide.errors import PolicyRefusal, Reason
from confide.jobspec import DEFAULT_JOB_RETRIES, DEFAULT_ROUND_ATTEMPTS
from confide.v1 import common_pb2, federation_pb2
from tests.agent.conftest import DATASET, job_spec, make_runner, report_of, signed_task
from tests.agent.fakes import FakeTransport, SessionHarness
from tests.agent.privacy.first_layout import OldEntry, write_first_layout

TARGET = 3.0


def _private_spec(rounds: int = 2, **attempts: int) -> common_pb2.JobSpec:
    """A job signed for ``rounds`` rounds at record-level ε <= 3 (δ = 1e-5)."""
    spec = job_spec()
    spec.rounds = rounds
    spec.record_privacy.CopyFrom(
        common_pb2.RecordPrivacy(enabled=True, target_epsilon=TARGET, max_grad_norm=1.0, delta=1e-5)
    )
    for k, v in attempts.items():
        setattr(spec.attempts, k, v)
    return spec


def _site(pki, dataset, workers, path, *, caps: AttemptCaps | None = None) -> TaskRunner:
    """The real task runner with a real ledger and job bindings in ``path``."""
    runner = make_runner(
        pki, dataset, workers, privacy=PrivacyPlan(Ledger.open(path)), policy=DatasetPolicy()
    )
    runner.job_bindings = JobBindings(path)
    if caps is not None:
        runner.site = dataclasses.replace(runner.site, attempt_caps=caps)
    return runner


def _hostile_tasks(pki, spec, *, rounds: int, attempts: int) -> list[federation_pb2.Task]:
    """TRAIN tasks for rounds 1..``rounds``, ``attempts`` of each, all with fresh task ids."""
    return [
        signed_task(pki.alice, spec=spec, round=r, task_id=f"job-1/{r}/{a}/train", attempt=a)
        for r in range(1, rounds + 1)
        for a in range(1, attempts + 1)
    ]


def _reasons(pki, aggregator) -> list[str]:
    return [report_of(pki, env).reason for env in aggregator.reports]


def test_extra_rounds_and_attempts_are_refused_and_epsilon_stays_at_the_target(
    pki, dataset, workers, aggregator, tmp_path
):
    """A fake aggregator sends 6 rounds x 5 attempts of a job signed for 2 rounds at ε 3:
    the session serves every task, the site trains at most rounds + retries times, refuses
    the rest with a reason and a log event, and the job's ε stays <= 3."""
    spec = _private_spec(rounds=2)
    runner = _site(pki, dataset, workers, tmp_path / "ledger.db")
    tasks = _hostile_tasks(pki, spec, rounds=6, attempts=5)
    with capture_logs() as logs, SessionHarness(runner, aggregator) as h:
        aggregator.wait_for(lambda: aggregator.streams)
        for task in tasks:
            aggregator.stream.push(task)
        aggregator.wait_for(
            lambda: len(aggregator.uploads) + len(aggregator.reports) == len(tasks), timeout=60
        )
        st = h.session.status()
        assert st.connected and st.tasks_done + st.tasks_failed == len(tasks)
    allowed = spec.rounds + DEFAULT_JOB_RETRIES
    assert len(aggregator.uploads) == allowed
    reasons = _reasons(pki, aggregator)
    assert set(reasons) == {"attempts_exceeded", "round_not_signed"}
    assert reasons.count("round_not_signed") == 4 * 5  # rounds 3..6, refused before download
    refused = [e for e in logs if e["event"] == "task_failed"]
    assert len(refused) == len(reasons) and all(e["outcome"] == "refused" for e in refused)
    rec, _ = runner.privacy.job_epsilon(dataset=DATASET, job_id="job-1")
    assert rec <= TARGET
    ledger = runner.privacy.ledger
    assert len(ledger.entries(DATASET)) == allowed
    assert {e.round for e in ledger.entries(DATASET)} == {1, 2}


def test_two_retries_stay_within_the_target_a_third_is_refused(
    pki, dataset, workers, aggregator, tmp_path
):
    """Two retries of round 1 (σ planned for rounds + retries) keep ε <= 3; round 2 still
    runs; a third retry is refused attempts_exceeded instead of overshooting to 3.41."""
    spec = _private_spec(rounds=2)
    runner = _site(pki, dataset, workers, tmp_path / "ledger.db")
    t = FakeTransport(aggregator)
    for a in (1, 2, 3):
        task = signed_task(pki.alice, spec=spec, round=1, task_id=f"job-1/1/{a}/train")
        assert runner.run(task, t) is TaskOutcome.OK
    assert runner.run(signed_task(pki.alice, spec=spec, round=2, task_id="r2"), t) is (
        TaskOutcome.OK
    )
    extra = signed_task(pki.alice, spec=spec, round=2, task_id="job-1/2/2/train")
    assert runner.run(extra, t) is TaskOutcome.REFUSED
    assert report_of(pki, aggregator.reports[-1]).reason == "attempts_exceeded"
    rec, _ = runner.privacy.job_epsilon(dataset=DATASET, job_id="job-1")
    assert TARGET - 0.05 <= rec <= TARGET  # the whole target, spread over every attempt
    # Planning for the signed rounds alone (the old σ) would have overshot with 2 retries.
    dp = workers.started[0].dp[0]
    assert dp is not None
    naive = noise_multiplier_for(
        kind=AccountantKind.RDP,
        target_epsilon=TARGET,
        sample_rate=dp.sample_rate,
        steps=dp.steps * spec.rounds,
        delta=1e-5,
    )
    assert dp.noise_multiplier > naive


def test_the_attempt_field_buys_no_extra_charge(pki, dataset, workers, aggregator, tmp_path):
    """Task.attempt is the aggregator's word and limits nothing: four tasks of round 1 whose
    ids name attempts 1-4 while their fields say 99, 1, 1, 1 are charged by the ledger's
    count, so the first three train and the fourth is refused attempts_exceeded."""
    spec = _private_spec(rounds=2)
    runner = _site(pki, dataset, workers, tmp_path / "ledger.db")
    t = FakeTransport(aggregator)
    tasks = [
        signed_task(pki.alice, spec=spec, round=1, task_id=f"job-1/1/{a}/train", attempt=field)
        for a, field in zip((1, 2, 3, 4), (99, 1, 1, 1), strict=True)
    ]
    outcomes = [runner.run(task, t) for task in tasks]
    assert outcomes == [TaskOutcome.OK] * DEFAULT_ROUND_ATTEMPTS + [TaskOutcome.REFUSED]
    assert _reasons(pki, aggregator) == ["attempts_exceeded"]
    assert [e.task_id for e in runner.privacy.ledger.entries(DATASET)] == [
        f"job-1/1/{a}/train" for a in (1, 2, 3)
    ]


def test_the_refusals_survive_a_restart_of_the_site(pki, dataset, workers, aggregator, tmp_path):
    """After a restart (new ledger, runner and planner on the same file) the job's spent
    attempts are still counted: a further retry is refused, the next round still runs."""
    spec = _private_spec(rounds=3, max_round_attempts=2, max_job_retries=1)
    path = tmp_path / "ledger.db"
    t = FakeTransport(aggregator)
    first = _site(pki, dataset, workers, path)
    for task_id in ("job-1/1/1/train", "job-1/1/2/train"):
        task = signed_task(pki.alice, spec=spec, round=1, task_id=task_id)
        assert first.run(task, t) is TaskOutcome.OK
    # A crash with a reservation in flight: reserved, never marked sent, never released.
    plan = first.privacy.plan(spec, job_id="job-1", num_train=40, min_update_noise=0.0)
    first.privacy.ledger.reserve(
        dataset=DATASET,
        job_id="job-1",
        task_id="crashed",
        round=2,
        layer_costs=plan.cost,
        limits=job_limits(spec, job_id="job-1", caps=AttemptCaps()),
    )
    first.privacy.ledger.close()
    again = _site(pki, dataset, workers, path)
    retry2 = signed_task(pki.alice, spec=spec, round=2, task_id="job-1/2/2/train")
    assert again.run(retry2, t) is TaskOutcome.REFUSED  # the crashed attempt counts
    assert report_of(pki, aggregator.reports[-1]).reason == "attempts_exceeded"
    r3 = signed_task(pki.alice, spec=spec, round=3, task_id="job-1/3/1/train")
    assert again.run(r3, t) is TaskOutcome.OK
    assert [e.round for e in again.privacy.ledger.entries(DATASET)] == [1, 1, 2, 3]


def test_the_site_policy_lowers_the_jobs_attempts(pki, dataset, workers, aggregator, tmp_path):
    """A site capping attempts at 1 per round refuses a retry the job allows, and plans σ
    for its own A = rounds (more ε per round than the job's A, never over the target)."""
    spec = _private_spec(rounds=2)
    runner = _site(
        pki,
        dataset,
        workers,
        tmp_path / "ledger.db",
        caps=AttemptCaps(max_round_attempts=1, max_job_retries=0),
    )
    t = FakeTransport(aggregator)
    tasks = _hostile_tasks(pki, spec, rounds=2, attempts=2)
    outcomes = [runner.run(task, t) for task in tasks]
    assert outcomes == [TaskOutcome.OK, TaskOutcome.REFUSED] * 2
    assert set(_reasons(pki, aggregator)) == {"attempts_exceeded"}
    rec, _ = runner.privacy.job_epsilon(dataset=DATASET, job_id="job-1")
    assert TARGET - 0.05 <= rec <= TARGET
    limits = job_limits(spec, job_id="j", caps=AttemptCaps(max_round_attempts=5))
    assert limits.max_round_attempts == DEFAULT_ROUND_ATTEMPTS  # a cap never raises a limit


def test_a_round_beyond_the_signed_job_is_refused_before_any_download(
    pki, dataset, workers, aggregator, tmp_path
):
    """Round 0 and round rounds + 1 are refused round_not_signed; no worker ever starts."""
    spec = _private_spec(rounds=2)
    runner = _site(pki, dataset, workers, tmp_path / "ledger.db")
    t = FakeTransport(aggregator)
    for rnd in (0, 3):
        task = signed_task(pki.alice, spec=spec, round=rnd, model_version="not-there")
        assert runner.run(task, t) is TaskOutcome.REFUSED
        assert report_of(pki, aggregator.reports[-1]).reason == "round_not_signed"
    assert not workers.started and not runner.privacy.ledger.entries(DATASET)


def test_update_noise_alone_claims_record_epsilon_so_training_figures_stay_home(
    pki, dataset, workers, aggregator, tmp_path
):
    """A job with update noise but no DP-SGD reports a finite record-level ε, and so sends
    no training loss or accuracy (exact figures of the training records)."""
    spec = job_spec()
    spec.update_privacy.CopyFrom(
        common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=4.0, delta=1e-5)
    )
    spec.evaluation.noise_multiplier = 10.0  # the default policy gives noised figures only
    runner = _site(pki, dataset, workers, tmp_path / "ledger.db")
    assert runner.run(signed_task(pki.alice, spec=spec), FakeTransport(aggregator)) is (
        TaskOutcome.OK
    )
    [up] = aggregator.uploads
    header = federation_pb2.UpdateHeader.FromString(up.header.payload)
    assert 0 < header.epsilon < float("inf")
    assert set(header.metrics) == {"eval_accuracy", "eval_loss", "eval_samples"}


def test_a_ledger_from_before_job_limits_keeps_counting_its_jobs_attempts(tmp_path):
    """An old ledger file (entries keyed '<job>/<task>', no job column) is upgraded in place:
    the attempts a running job was already charged count against its limits."""
    path = tmp_path / "old.db"
    record = RecordCost(0.5, 4.0, 10, 1e-5)
    write_first_layout(
        path,
        [OldEntry(f"job-1/job-1/1/{a}/train", 1, record, 1.0) for a in (1, 2)],
        dataset=DATASET,
        job_column=False,
    )
    limits = JobLimits("job-1", rounds=3, max_round_attempts=2, max_job_retries=5)
    with Ledger.open(path) as ledger, pytest.raises(PolicyRefusal) as err:
        ledger.reserve(
            dataset=DATASET,
            job_id="job-1",
            task_id="t3",
            round=1,
            layer_costs=_cost(4),
            limits=limits,
        )
    assert err.value.reason is Reason.ATTEMPTS_EXCEEDED


def _cost(sigma: float, *, q: float = 0.5, steps: int = 10) -> RoundCost:
    return round_cost(record=RecordCost(q, sigma, steps, 1e-5), update=None, delta=1e-5)


@pytest.mark.parametrize(
    ("caps", "round", "charged", "cost", "reason", "rule"),
    [
        (AttemptCaps(), 3, [], 4.0, Reason.ROUND_NOT_SIGNED, "job.rounds"),
        (AttemptCaps(), 1, [1, 1], 4.0, Reason.ATTEMPTS_EXCEEDED, "job.max_round_attempts"),
        (
            AttemptCaps(max_round_attempts=1),
            1,
            [1],
            4.0,
            Reason.ATTEMPTS_EXCEEDED,
            "policy.max_round_attempts",
        ),
        (AttemptCaps(), 2, [1, 1, 2], 4.0, Reason.ATTEMPTS_EXCEEDED, "job.max_job_retries"),
        (
            AttemptCaps(max_job_retries=0),
            1,
            [1],
            4.0,
            Reason.ATTEMPTS_EXCEEDED,
            "policy.max_job_retries",
        ),
        (AttemptCaps(), 1, [], 0.3, Reason.BUDGET_EXCEEDED, "job.privacy.sample.target_epsilon"),
    ],
)
def test_each_refusal_names_the_signed_key_or_the_site_cap_that_refused(
    caps, round, charged, cost, reason, rule
):
    """Rounds, attempts, retries and the ε target refuse naming the job file's key, or the
    site's policy key where the site's cap is what lowered the limit."""
    spec = _private_spec(rounds=2, max_round_attempts=2, max_job_retries=1)
    limits = job_limits(spec, job_id="j", caps=caps)
    done = [(r, _cost(4.0)) for r in charged]
    with pytest.raises(RuleRefusal) as err:
        check_charge(limits, round=round, charged=done, cost=_cost(cost))
    assert (err.value.reason, err.value.rule) == (reason, rule)


def test_a_round_over_the_datasets_cap_names_the_rule_in_the_report_and_the_audit_trail(
    pki, dataset, workers, aggregator, tmp_path
):
    """A TRAIN round that would pass the dataset's max_epsilon is refused budget_exceeded; the
    aggregator's report and the site's audit trail both name policy.datasets.NAME.max_epsilon."""
    spec = job_spec()
    spec.record_privacy.CopyFrom(
        common_pb2.RecordPrivacy(enabled=True, noise_multiplier=0.3, max_grad_norm=1.0, delta=1e-5)
    )
    runner = _site(pki, dataset, workers, tmp_path / "ledger.db")
    capped = {DATASET: DatasetPolicy(max_epsilon=0.5)}
    runner.site = dataclasses.replace(runner.site, policies=capped)
    assert runner.run(signed_task(pki.alice, spec=spec), FakeTransport(aggregator)) is (
        TaskOutcome.REFUSED
    )
    rule = f"policy.datasets.{DATASET}.max_epsilon"
    rep = report_of(pki, aggregator.reports[-1])
    assert rep.reason == "budget_exceeded" and rep.message.endswith(f"(rule {rule})")
    [ended] = [e for e in runner.audit.entries() if e.event == "task_ended"]
    assert (ended.decision, ended.reason, ended.rule) == ("refused", "budget_exceeded", rule)
    assert not aggregator.uploads and not runner.privacy.ledger.entries(DATASET)


def test_the_epsilon_check_catches_what_the_plan_did_not_foresee():
    """A round whose σ fell mid-job (e.g. the dataset grew) is refused at the job's target
    even though attempts are left; one at the planned σ is accepted."""
    limits = JobLimits("j", rounds=10, max_round_attempts=3, max_job_retries=2, target_epsilon=4.0)
    charged = [(1, _cost(4.0)), (2, _cost(4.0))]
    check_charge(limits, round=3, charged=charged, cost=_cost(4.0))
    with pytest.raises(PolicyRefusal) as err:
        check_charge(limits, round=3, charged=charged, cost=_cost(0.8))
    assert err.value.reason is Reason.BUDGET_EXCEEDED


def test_a_prv_job_gets_every_attempt_it_was_planned_for():
    """σ planned with PRV for A attempts passes the job check for all A (RDP alone would
    refuse the last ones), and the (A + 1)-th is refused."""
    q, steps, attempts = 0.5, 4, 3
    sigma = noise_multiplier_for(
        kind=AccountantKind.PRV,
        target_epsilon=1.0,
        sample_rate=q,
        steps=steps * attempts,
        delta=1e-5,
    )
    costs = [_cost(sigma, q=q, steps=steps)] * attempts
    assert job_epsilon(costs, kind=AccountantKind.RDP, delta=1e-5) > 1.0
    limits = JobLimits(
        "j",
        rounds=attempts + 1,
        max_round_attempts=1,
        max_job_retries=0,
        target_epsilon=1.0,
        accountant=AccountantKind.PRV,
    )
    charged: list[tuple[int, RoundCost]] = []
    for rnd, cost in enumerate(costs, start=1):
        check_charge(limits, round=rnd, charged=charged, cost=cost)
        charged.append((rnd, cost))
    with pytest.raises(PolicyRefusal) as err:
        check_charge(limits, round=attempts + 1, charged=charged, cost=costs[0])
    assert err.value.reason is Reason.BUDGET_EXCEEDED


@settings(max_examples=200, deadline=None)
@given(
    rounds=st.integers(1, 5),
    per_round=st.integers(1, 4),
    retries=st.integers(0, 4),
    asks=st.lists(st.integers(-1, 7), max_size=40),
)
def test_whatever_rounds_are_asked_the_charges_stay_within_the_signed_limits(
    rounds, per_round, retries, asks
):
    """For any sequence of requested rounds, the accepted charges number at most
    rounds + retries, at most per_round per round, and all lie in 1..rounds."""
    limits = JobLimits("j", rounds=rounds, max_round_attempts=per_round, max_job_retries=retries)
    cost = _cost(1.0)
    charged: list[tuple[int, RoundCost]] = []
    for rnd in asks:
        try:
            check_charge(limits, round=rnd, charged=charged, cost=cost)
        except PolicyRefusal as exc:
            assert exc.reason in {Reason.ROUND_NOT_SIGNED, Reason.ATTEMPTS_EXCEEDED}
            continue
        charged.append((rnd, cost))
    got = [r for r, _ in charged]
    assert len(got) <= rounds + retries
    assert all(1 <= r <= rounds and got.count(r) <= per_round for r in got)
