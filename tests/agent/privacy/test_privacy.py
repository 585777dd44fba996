# ruff: noqa: RUF002
"""The daemon's privacy step: plans that hold in the worst case, floors that cannot be skipped,
figures that cannot leak, and reports that carry no data."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agent.admission.site_policy import DatasetPolicy
from agent.privacy.ledger import Ledger
from agent.privacy.plan import PrivacyPlan, dpsgd_schedule, planned_survivors, protect_update
from agent.tasks.runner import TaskOutcome, TaskRunner
from confide.data.datasets import DataFormat, DatasetDescription, count_train_records
from confide.dp.budget import cumulative_epsilon, discrete_update_cost
from confide.errors import ConfigError, PolicyRefusal, Reason
from confide.secagg import job_params
from confide.secagg.encoding import decode, secure_encoding
from confide.secagg.rotation import rotation_seed
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, BlobAssembler, open_envelope
from tests.agent.conftest import (
    DATASET,
    FEDERATION,
    MODEL_SHA,
    job_spec,
    make_runner,
    report_of,
    signed_task,
)
from tests.agent.fakes import FakeTransport


def _secure_spec(min_sites: int, threshold: float) -> common_pb2.JobSpec:
    spec = job_spec()
    spec.min_sites = min_sites
    spec.secure_aggregation.CopyFrom(
        common_pb2.SecureAggregation(enabled=True, threshold=threshold, clip_range=1.0, bits=16)
    )
    return spec


@pytest.mark.parametrize("min_sites", [3, 5, 10, 40])
def test_planned_survivors_is_the_protocols_threshold_not_a_share_of_min_sites(min_sites):
    """Noise is planned for the t sites SecAgg+ can unmask with, never for more."""
    spec = _secure_spec(min_sites, 0.66)
    t = job_params(spec, n=min_sites).threshold
    assert planned_survivors(spec) == min(min_sites, t)
    plain = job_spec()
    plain.min_sites = min_sites
    assert planned_survivors(plain) == min_sites


@pytest.mark.parametrize(
    "mechanism",
    [common_pb2.UPDATE_MECHANISM_UNSPECIFIED, common_pb2.UPDATE_MECHANISM_CONTINUOUS_GAUSSIAN],
)
def test_worst_case_survivors_cost_more_epsilon(tmp_path, mechanism):
    """Planning with fewer survivors charges more site-level ε for the same z (never less),
    with the default discrete mechanism and with the continuous one."""
    ledger = Ledger.open(tmp_path / "l.db")
    spec = _secure_spec(5, 0.66)
    spec.secure_aggregation.clip_range = 6.0  # wide enough for the continuous mechanism
    spec.update_privacy.CopyFrom(
        common_pb2.UpdatePrivacy(
            clip_norm=1.0, noise_multiplier=1.0, delta=1e-5, mechanism=mechanism
        )
    )
    plan = PrivacyPlan(ledger).plan(spec, job_id="j", num_train=100, min_update_noise=0.0)
    t = planned_survivors(spec)
    assert t < 5
    assert plan.cost.update is not None
    if mechanism == common_pb2.UPDATE_MECHANISM_CONTINUOUS_GAUSSIAN:
        # sigma_eff = z * sqrt(t / m): the cost's sensitivity factor is sqrt(m / t).
        assert plan.cost.update.sensitivity_factor == pytest.approx(np.sqrt(5 / t))
        assert plan.noise_std == pytest.approx(1.0 / np.sqrt(5))
    else:
        # t discrete shares of std z*C/sqrt(m) against the rounding-inflated sensitivity.
        p = secure_encoding(spec).ddg
        assert p is not None and plan.noise_std == 0.0  # its noise is added when encoding
        sigma_eff = np.sqrt(t) * p.noise_std / (p.l2_sensitivity * p.granularity)
        assert plan.cost.update.effective_noise_multiplier == pytest.approx(sigma_eff)
        assert sigma_eff == pytest.approx(np.sqrt(t / 5), rel=1e-4)
        assert sigma_eff < np.sqrt(t / 5)
    ledger.close()


def test_share_keys_below_the_planned_threshold_is_refused(pki, dataset, workers, aggregator):
    """A SHARE_KEYS request whose threshold is below the site's plan is refused unsafe_request."""
    from agent.tasks.secure import install

    runner = _runner(pki, dataset, workers, tmp_ledger=None)
    install(runner)
    spec = _secure_spec(4, 3)  # t = 3 of 4 (t = n is refused: one dropout would abort)
    t = FakeTransport(aggregator)
    train = signed_task(pki.alice, spec=spec, task_id="job-1/1/1/train")
    assert runner.run(train, t) is TaskOutcome.OK
    share = signed_task(
        pki.alice, spec=spec, kind=federation_pb2.TASK_KIND_SHARE_KEYS, task_id="job-1/1/1/sk"
    )
    share.share_keys.CopyFrom(federation_pb2.ShareKeysRequest(threshold=2, num_selected=4))
    assert runner.run(share, t) is TaskOutcome.REFUSED
    assert report_of(pki, aggregator.reports[-1]).reason == "unsafe_request"


def _noisy_secure_spec(z: float) -> common_pb2.JobSpec:
    spec = _secure_spec(4, 3)
    spec.update_privacy.CopyFrom(
        common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=z, delta=1e-5)
    )
    return spec


def test_a_secure_job_below_the_noise_floor_is_refused(tmp_path):
    """Under SecAgg one site's extra noise cannot give the sum the floor's z: the job is
    refused unsafe_request instead of being charged as if every site added the floor."""
    planner = PrivacyPlan(Ledger.open(tmp_path / "l.db"))
    policy = DatasetPolicy(max_epsilon=100.0, min_update_noise=0.5)
    args = dict(job_id="j", dataset="d", num_train=40, policy=policy)
    with pytest.raises(PolicyRefusal) as err:
        planner.plan_for_site(_noisy_secure_spec(0.4), **args)
    assert err.value.reason is Reason.UNSAFE_REQUEST
    assert getattr(err.value, "rule", "") == "policy.datasets.d.min_update_noise"
    planner.plan_for_site(_noisy_secure_spec(0.5), **args)  # at the floor: planned
    plain = job_spec()
    plain.update_privacy.CopyFrom(_noisy_secure_spec(0.4).update_privacy)
    floored = planner.plan_for_site(plain, **args)  # alone, the site adds the floor itself
    assert floored.noise_std == pytest.approx(0.5)
    planner.ledger.close()


def test_secure_stage_zero_keeps_the_discrete_encoding_and_charges_its_cost(
    pki, dataset, workers, aggregator, tmp_path
):
    """A secure job with update privacy: the site masks d' = 8 words (6 weights, rotated,
    rounded), which decode to its clipped delta, charges Proposition 14's cost for t sites,
    and nothing per-site (no out_of_range) is left on the wire beside the masked input."""
    from agent.tasks.secure import install

    runner = _runner(
        pki,
        dataset,
        workers,
        tmp_ledger=tmp_path / "l.db",
        policy=DatasetPolicy(max_epsilon=float("inf")),
    )
    site = install(runner)
    spec = _noisy_secure_spec(0.0)  # clip only, so the kept words decode to the clipped delta
    task = signed_task(pki.alice, spec=spec, task_id="job-1/1/1/train")
    assert runner.run(task, FakeTransport(aggregator)) is TaskOutcome.OK
    entry = site._rounds[("job-1", 1)]
    enc = secure_encoding(spec)
    assert enc.ddg is not None and enc.length == 8
    assert entry.x is not None and entry.x.shape == (8,) and entry.x.dtype == np.uint32
    got = decode(entry.x, enc, n=1, seed=rotation_seed(federation=FEDERATION, attempt="job-1/1/1"))
    want = np.full(6, 0.25) * min(1.0, 1.0 / np.linalg.norm(np.full(6, 0.25)))
    assert np.linalg.norm(got - want) <= enc.ddg.granularity * np.sqrt(8)
    [charged] = runner.privacy.ledger.entries(DATASET)
    assert charged.cost.update == discrete_update_cost(enc.ddg, summands=planned_survivors(spec))
    assert "out_of_range" not in federation_pb2.UpdateHeader.DESCRIPTOR.fields_by_name


def test_a_discrete_cost_survives_the_ledger(tmp_path):
    """The ledger stores a discrete round's (σ_eff, τ, d', Δ₁/Δ₂) and recomposes the same ε."""
    ledger = Ledger.open(tmp_path / "l.db")
    planner = PrivacyPlan(ledger)
    spec = _noisy_secure_spec(0.8)
    plan = planner.plan(spec, job_id="j", num_train=40, min_update_noise=0.0)
    assert plan.cost.update is not None and plan.cost.update.dim == 8
    with planner.charge(
        task_id="t1", dataset="d", job_id="j", round=1, plan=plan, max_epsilon=100.0
    ) as charge:
        charge.mark_sent()
    ledger.close()
    again = Ledger.open(tmp_path / "l.db")
    [entry] = again.entries("d")
    assert entry.cost.update == plan.cost.update
    assert again.spent("d").update_epsilon == cumulative_epsilon([plan.cost], delta=again.delta)[1]
    again.close()


def _runner(pki, dataset, workers, *, tmp_ledger, policy=None) -> TaskRunner:
    privacy = PrivacyPlan(Ledger.open(tmp_ledger)) if tmp_ledger is not None else None
    return make_runner(pki, dataset, workers, privacy=privacy, policy=policy)


def _upload_header(pki, up, round=1) -> federation_pb2.UpdateHeader:
    payload = open_envelope(
        up.header,
        verify_key=pki.site.info.signing_public_key,
        now=time.time(),
        expect=Binding(FEDERATION, "site-1", common_pb2.STAGE_UPDATE, job_id="job-1", round=round),
    )
    return federation_pb2.UpdateHeader.FromString(payload)


def test_noise_floor_cannot_be_skipped_by_omitting_update_clipping(
    pki, dataset, workers, aggregator, tmp_path
):
    """A site with min_update_noise refuses a job that sets no update clipping (no noise)."""
    runner = _runner(
        pki,
        dataset,
        workers,
        tmp_ledger=tmp_path / "l.db",
        policy=DatasetPolicy(max_epsilon=float("inf"), min_update_noise=0.5),
    )
    spec = job_spec()
    spec.record_privacy.CopyFrom(
        common_pb2.RecordPrivacy(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    )
    t = FakeTransport(aggregator)
    assert runner.run(signed_task(pki.alice, spec=spec), t) is TaskOutcome.REFUSED
    rep = report_of(pki, aggregator.reports[-1])
    assert rep.reason == "unsafe_request"
    assert f"(rule policy.datasets.{DATASET}.min_update_noise)" in rep.message
    assert not aggregator.uploads


def test_update_is_clipped_noised_and_training_figures_are_withheld_under_dp(
    pki, dataset, workers, aggregator, tmp_path
):
    """A record-private job sends a clipped update, its cumulative ε, and no training figures."""
    runner = _runner(
        pki, dataset, workers, tmp_ledger=tmp_path / "l.db", policy=DatasetPolicy(max_epsilon=100.0)
    )
    spec = job_spec()
    spec.record_privacy.CopyFrom(
        common_pb2.RecordPrivacy(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    )
    spec.update_privacy.CopyFrom(
        common_pb2.UpdatePrivacy(clip_norm=0.1, noise_multiplier=0.0, delta=1e-5)
    )
    spec.evaluation.noise_multiplier = 10.0  # the policy allows noised hold-out figures only
    assert runner.run(signed_task(pki.alice, spec=spec), FakeTransport(aggregator)) is (
        TaskOutcome.OK
    )
    [up] = aggregator.uploads
    header = _upload_header(pki, up)
    assert set(header.metrics) == {"eval_accuracy", "eval_loss", "eval_samples"}
    assert header.epsilon > 0 and header.num_samples == 40
    asm = BlobAssembler(header.blob, max_bytes=1 << 20)
    asm.add(up.data)
    flat = np.concatenate([a.ravel() for _, a in asm.finish()])
    assert np.linalg.norm(flat) <= 0.1 + 1e-6
    # The worker was told the daemon's own q (batch / records it counted).
    [dp] = workers.started[0].dp
    assert dp is not None and dp.sample_rate == pytest.approx(min(1.0, 32 / 40))


@pytest.mark.parametrize(
    ("batch_size", "local_epochs", "z", "target"),
    [(32, 1, 1.0, 0.0), (7, 3, 0.0, 4.0), (64, 2, 0.8, 0.0)],
)
def test_the_ledger_charges_the_schedule_the_worker_runs(
    pki, dataset, workers, aggregator, tmp_path, batch_size, local_epochs, z, target
):
    """The (q, σ, T) the ledger stores for a round are exactly the DpSgdParams the worker was
    sent, and both are ``dpsgd_schedule`` of the job for the records the daemon counted."""
    ledger = Ledger.open(tmp_path / "l.db")
    runner = make_runner(
        pki, dataset, workers, privacy=PrivacyPlan(ledger), policy=DatasetPolicy(max_epsilon=1e3)
    )
    spec = job_spec()
    spec.training.batch_size = batch_size
    spec.training.local_epochs = local_epochs
    spec.record_privacy.CopyFrom(
        common_pb2.RecordPrivacy(
            enabled=True, noise_multiplier=z, target_epsilon=target, max_grad_norm=1.0, delta=1e-5
        )
    )
    spec.evaluation.noise_multiplier = 10.0
    assert runner.run(signed_task(pki.alice, spec=spec), FakeTransport(aggregator)) is (
        TaskOutcome.OK
    )
    [dp] = workers.started[0].dp
    [entry] = [e for e in ledger.entries(DATASET) if not e.cost.evaluation]
    rec = entry.cost.record
    assert dp is not None and rec is not None
    assert (rec.sample_rate, rec.noise_multiplier, rec.steps) == (
        dp.sample_rate,
        dp.noise_multiplier,
        dp.steps,
    )
    assert (dp.sample_rate, dp.steps) == dpsgd_schedule(
        spec.training, num_train=count_train_records(dataset)
    )
    assert dp.noise_multiplier > 0 and dp.max_grad_norm == 1.0


def test_record_delta_must_be_below_one_over_n(tmp_path):
    """The site's own rule on top of the job's: δ >= 1/n for its n records is refused naming
    privacy.sample.delta; δ just below 1/n passes."""
    plan = PrivacyPlan(Ledger.open(tmp_path / "l.db"))
    spec = job_spec()
    spec.record_privacy.CopyFrom(
        common_pb2.RecordPrivacy(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3)
    )
    with pytest.raises(ConfigError) as info:
        plan.plan(spec, job_id="j", num_train=1000, min_update_noise=0.0)
    assert info.value.key == "privacy.sample.delta"
    spec.record_privacy.delta = 1e-5
    assert plan.plan(spec, job_id="j", num_train=99_999, min_update_noise=0.0).dp is not None


def test_failure_reports_carry_the_reason_but_no_data(pki, dataset, workers, aggregator):
    """A failure's message stays in the site's log; the aggregator hears only the reason."""
    runner = _runner(pki, dataset, workers, tmp_ledger=None)
    dataset.path.write_text("a,b,y\n1,SECRET-PATIENT-ID,0\n")
    spec = job_spec()
    workers.fail_next = True
    t = FakeTransport(aggregator)
    assert runner.run(signed_task(pki.alice, spec=spec), t) is TaskOutcome.FAILED
    report = report_of(pki, aggregator.reports[-1])
    assert report.reason == "worker_failed"
    assert "SECRET" not in report.message and "died" not in report.message


def test_a_refused_report_does_not_end_the_session(pki, dataset, workers, aggregator):
    """If the aggregator refuses a late failure report, run() logs it and returns normally."""
    runner = _runner(pki, dataset, workers, tmp_ledger=None)
    t = FakeTransport(aggregator)

    def refuse(envelope):
        raise PolicyRefusal("stale report", reason=Reason.REPLAYED)

    t.report = refuse  # type: ignore[method-assign]
    workers.fail_next = True
    assert runner.run(signed_task(pki.alice, spec=job_spec()), t) is TaskOutcome.FAILED


@pytest.mark.parametrize("fmt", ["csv", "npz", "parquet"])
def test_the_daemon_counts_training_records_itself(tmp_path, fmt):
    """count_train_records agrees with what the worker trains on, for every file format."""
    from confide.data.datasets import load_arrays

    n = 37
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n) % 2
    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        path.write_text(
            "a,b,y\n" + "".join(f"{a},{b},{c}\n" for (a, b), c in zip(x, y, strict=True))
        )
        features = ("a", "b")
    elif fmt == "npz":
        np.savez(path, x=x, y=y)
        features = ("x",)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "y": y}), path)
        features = ("a", "b")
    cfg = DatasetDescription(
        name="d", path=path, format=DataFormat(fmt), features=features, label="y"
    )
    assert count_train_records(cfg) == len(load_arrays(cfg).y_train) == n - round(n * 0.2)


def test_declared_sizes_are_what_the_worker_trains_and_evaluates_on(tmp_path):
    """The sizes a site declares at register match its split; an unreadable dataset is left out."""
    from agent.data.declared import declared_sizes
    from confide.data.datasets import load_arrays

    path = tmp_path / "d.csv"
    path.write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(41)))
    cfg = DatasetDescription(name="d", path=path, format=DataFormat.CSV, features=("a",), label="y")
    gone = DatasetDescription(
        name="gone", path=tmp_path / "no.csv", format=DataFormat.CSV, features=("a",), label="y"
    )
    [size] = declared_sizes([cfg, gone])
    data = load_arrays(cfg)
    assert (size.name, size.train_records, size.holdout_records) == (
        "d",
        len(data.y_train),
        len(data.y_holdout),
    )


def test_protect_update_never_exceeds_c_before_noise():
    """Without noise, the protected update's norm is at most C whatever the worker sent."""
    from agent.privacy.plan import RoundPrivacy
    from confide.dp.budget import round_cost

    plan = RoundPrivacy(
        dp=None, cost=round_cost(record=None, update=None, delta=1e-5), clip_norm=0.5, noise_std=0.0
    )
    big = [("w", np.full((10, 10), 3.0, dtype=np.float32)), ("b", np.ones(10, dtype=np.float32))]
    out = protect_update(big, plan)
    assert [n for n, _ in out] == ["w", "b"] and out[0][1].shape == (10, 10)
    assert np.linalg.norm(np.concatenate([a.ravel() for _, a in out])) <= 0.5 + 1e-6


def test_a_signed_job_never_runs_under_a_second_job_id(pki, dataset, workers, aggregator, tmp_path):
    """The same operator-signed job replayed under a new job id is refused, also after restart."""
    from agent.admission.binding import JobBindings

    def runner_with(bindings):
        r = _runner(pki, dataset, workers, tmp_ledger=None)
        r.job_bindings = bindings
        return r

    t = FakeTransport(aggregator)
    first = signed_task(pki.alice, spec=job_spec(), job_id="job-1", task_id="a")
    again = federation_pb2.Task()
    again.CopyFrom(first)
    again.job_id, again.task_id = "job-2", "b"
    aggregator.models[("job-2", MODEL_SHA)] = aggregator.models[("job-1", MODEL_SHA)]
    bindings = JobBindings(tmp_path / "bind.db")
    runner = runner_with(bindings)
    assert runner.run(first, t) is TaskOutcome.OK
    assert runner.run(first, t) is TaskOutcome.OK  # the same job id keeps running
    assert runner.run(again, t) is TaskOutcome.REFUSED
    assert report_of(pki, aggregator.reports[-1]).reason == "replayed"
    bindings.close()
    reopened = runner_with(JobBindings(tmp_path / "bind.db"))
    assert reopened.run(again, t) is TaskOutcome.REFUSED


def test_a_charge_is_released_only_if_nothing_left(tmp_path):
    """An error before mark_sent releases the round's cost; one after it keeps it counted."""
    ledger = Ledger.open(tmp_path / "l.db")
    planner = PrivacyPlan(ledger)
    spec = job_spec()
    spec.update_privacy.CopyFrom(
        common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5)
    )
    plan = planner.plan(spec, job_id="j", num_train=40, min_update_noise=0.0)
    args = dict(dataset="d", job_id="j", round=1, plan=plan, max_epsilon=100.0)
    with pytest.raises(RuntimeError), planner.charge(task_id="t1", **args):
        raise RuntimeError("worker failed before any update existed")
    assert ledger.spent("d").rounds == 0
    with pytest.raises(RuntimeError), planner.charge(task_id="t2", **args) as charge:
        eps, _ = charge.mark_sent()
        assert eps > 0
        raise RuntimeError("upload failed after the update left")
    assert ledger.spent("d").rounds == 1
    ledger.close()


def test_a_jobs_epsilon_is_stated_at_its_own_delta(tmp_path):
    """A job at δ=1e-8 is planned, charged and reported at 1e-8; one naming δ=0.1 at the
    ledger's 1e-5; a job naming no δ at the ledger's."""
    ledger = Ledger.open(tmp_path / "l.db")
    planner = PrivacyPlan(ledger)
    spec = job_spec()
    spec.update_privacy.CopyFrom(
        common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=2.0, delta=1e-8)
    )
    assert planner.job_delta(spec) == 1e-8
    assert planner.job_delta(job_spec()) == ledger.delta
    loose = job_spec()
    loose.update_privacy.CopyFrom(
        common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=2.0, delta=0.1)
    )
    assert planner.job_delta(loose) == ledger.delta
    plan = planner.plan(spec, job_id="j", num_train=40, min_update_noise=0.0)
    assert plan.cost.delta == 1e-8
    with planner.charge(
        task_id="t1", dataset="d", job_id="j", round=1, plan=plan, max_epsilon=100.0
    ) as charge:
        charge.mark_sent()
    rec, site = planner.job_epsilon(dataset="d", job_id="j")
    assert (rec, site) == cumulative_epsilon([plan.cost], delta=1e-8)
    assert site > cumulative_epsilon([plan.cost], delta=1e-5)[1]
    ledger.close()
