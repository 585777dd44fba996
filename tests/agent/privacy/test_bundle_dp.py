# Math notation (σ, ε, δ, z) in docstrings, as in agent/privacy/plan.py.
# ruff: noqa: RUF002, RUF003
"""A code bundle's DP-SGD runs in the job's code: a site counts it only when its policy says so."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from agent.admission.approvals import Approvals, planned_privacy
from agent.admission.rules import RuleRefusal
from agent.admission.site_policy import DatasetPolicy
from agent.local.audit import SiteAudit
from agent.privacy.counted import RECORD_NOT_COUNTED
from agent.privacy.ledger import Ledger
from agent.privacy.plan import PrivacyPlan
from agent.tasks.runner import TaskOutcome, TaskRunner
from agent.workers.bundles import SiteBundles
from confide import bundle
from confide.dp.accountant import SampledGaussian, rdp_curve
from confide.dp.rdp import DEFAULT_ORDERS, epsilon_from_rdp
from confide.v1 import common_pb2, federation_pb2
from confide.wire import encode_tensors
from tests.agent.conftest import (
    DATASET,
    MODEL_SHA,
    job_spec,
    make_runner,
    model_weights,
    signed_task,
)
from tests.agent.fakes import FakeAggregator, FakeTransport, FakeWorkerFactory

ARCHIVE = bundle.pack({"model.py": b"def build_model(spec): ...\n"})
DELTA = 1e-5
OPEN = math.inf


def _private(spec: common_pb2.JobSpec, *, sigma: float, target: float, z: float | None) -> None:
    """DP-SGD with σ (or a target ε), and update clip 1 with noise z when z is given."""
    spec.record_privacy.CopyFrom(
        common_pb2.RecordPrivacy(
            enabled=True,
            noise_multiplier=sigma,
            target_epsilon=target,
            max_grad_norm=1.0,
            delta=DELTA,
        )
    )
    if z is not None:
        spec.update_privacy.CopyFrom(
            common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=z, delta=DELTA)
        )


def _bundle_spec(*, sigma: float = 1.0, target: float = 0.0, z: float | None = None):
    """job_spec() as a bundle job (the logreg's parameters) with DP-SGD, and update noise z."""
    spec = job_spec()
    header, _ = encode_tensors(model_weights())
    spec.model.Clear()
    spec.model.kind = common_pb2.MODEL_KIND_BUNDLE
    spec.model.code_sha256 = bundle.digest(ARCHIVE)
    spec.model.parameters.extend(header.tensors)
    spec.model.initial_sha256 = header.sha256
    _private(spec, sigma=sigma, target=target, z=z)
    return spec


def _builtin_spec(*, sigma: float = 1.0, z: float | None = None) -> common_pb2.JobSpec:
    """The same privacy on the built-in logreg."""
    spec = job_spec()
    _private(spec, sigma=sigma, target=0.0, z=z)
    return spec


def _update_layer_epsilon(z: float, *, sensitivity: float) -> float:
    """ε at δ of one Gaussian release of noise multiplier z / sensitivity (computed here, not
    by confide.dp.budget): the update layer's record-level (2C) or site-level (C) bound."""
    curve = rdp_curve(SampledGaussian(1.0, z / sensitivity, 1))
    return epsilon_from_rdp(orders=DEFAULT_ORDERS, rdp=curve, delta=DELTA)[0]


class Site:
    """Site-1 with a real ledger, allowing any bundle of a trusted signer, trust as given."""

    def __init__(self, pki, dataset, path: Path, *, policy: DatasetPolicy, trust: bool) -> None:
        self.pki = pki
        self.workers = FakeWorkerFactory()
        self.aggregator = FakeAggregator()
        self.aggregator.models[("job-1", MODEL_SHA)] = model_weights()
        self.aggregator.bundles["job-1"] = ARCHIVE
        self.ledger = Ledger.open(path / "ledger.db")
        self.runner: TaskRunner = make_runner(
            pki, dataset, self.workers, privacy=PrivacyPlan(self.ledger), policy=policy
        )
        self.runner.site = dataclasses.replace(
            self.runner.site,
            allowed_bundles=frozenset({"trusted-signers"}),
            trust_bundle_dp=trust,
        )
        self.runner.bundles = SiteBundles(path / "bundles")

    def run(self, spec: common_pb2.JobSpec) -> TaskOutcome:
        task = signed_task(self.pki.alice, spec=spec)
        return self.runner.run(task, FakeTransport(self.aggregator))

    def header(self) -> federation_pb2.UpdateHeader:
        [up] = self.aggregator.uploads
        return federation_pb2.UpdateHeader.FromString(up.header.payload)

    def report(self) -> federation_pb2.TaskReport:
        return federation_pb2.TaskReport.FromString(self.aggregator.reports[-1].payload)

    def ended(self):
        return [e for e in self.runner.audit.entries() if e.event == "task_ended"][-1]


@pytest.fixture
def site(pki, dataset, tmp_path):
    """A factory: ``site(policy, trust=...)``, each in a folder of its own."""
    made: list[Site] = []

    def make(policy: DatasetPolicy, *, trust: bool = False) -> Site:
        folder = tmp_path / f"site{len(made)}"
        folder.mkdir()
        made.append(Site(pki, dataset, folder, policy=policy, trust=trust))
        return made[-1]

    yield make
    for s in made:
        s.ledger.close()


@pytest.mark.parametrize("max_epsilon", [8.0, None])
def test_a_bundles_dp_sgd_alone_is_refused_at_a_finite_cap_naming_the_rule(site, max_epsilon):
    """DP-SGD only, not trusted: ε = ∞ against the dataset's cap (set, or the default 10), so
    the task is refused budget_exceeded, rule policy.trust_bundle_dp, with what to do, in
    the report and the audit trail, before the bundle is fetched or a worker starts."""
    s = site(DatasetPolicy(max_epsilon=max_epsilon))
    assert s.run(_bundle_spec()) is TaskOutcome.REFUSED
    rep = s.report()
    assert rep.reason == "budget_exceeded"
    assert "(rule policy.trust_bundle_dp)" in rep.message
    assert "[privacy.update] noise" in rep.message and "trust_bundle_dp = true" in rep.message
    end = s.ended()
    assert (end.decision, end.reason, end.rule) == (
        "refused",
        "budget_exceeded",
        "policy.trust_bundle_dp",
    )
    assert not s.workers.started and s.aggregator.bundle_downloads == 0
    assert not s.ledger.entries(DATASET)


def test_an_untrusted_bundle_is_charged_its_update_layer_alone(site):
    """DP-SGD (σ 1) and update noise z = 2, not trusted: the worker still runs the DP-SGD, and
    the ledger, the report and the audit trail carry the update layer's ε, computed here from
    the Gaussian alone (record sensitivity 2C), with the note of what was not counted."""
    z = 2.0
    s = site(DatasetPolicy(max_epsilon=100.0))
    assert s.run(_bundle_spec(sigma=1.0, z=z)) is TaskOutcome.OK
    [dp] = s.workers.started[0].dp
    assert dp is not None and dp.noise_multiplier == 1.0  # DP-SGD runs as the job asks
    header = s.header()
    assert header.epsilon == pytest.approx(_update_layer_epsilon(z, sensitivity=2.0), rel=1e-9)
    assert header.update_epsilon == pytest.approx(
        _update_layer_epsilon(z, sensitivity=1.0), rel=1e-9
    )
    [entry] = s.ledger.entries(DATASET)
    assert entry.cost.record is None and entry.cost.epsilon == pytest.approx(header.epsilon)
    end = s.ended()
    assert end.detail == RECORD_NOT_COUNTED
    assert end.epsilon == pytest.approx(header.epsilon)
    assert end.job_epsilon == pytest.approx(header.epsilon)
    assert "train_loss" not in header.metrics  # the update layer's finite ε is a claim


def test_a_trusted_bundle_is_counted_like_a_built_in_model(site):
    """With trust_bundle_dp the bundle job costs what the same privacy costs a built-in
    model (which no setting changes): both layers, less than the update layer alone."""
    spec = dict(sigma=1.0, z=2.0)
    trusted = site(DatasetPolicy(max_epsilon=100.0), trust=True)
    builtin = site(DatasetPolicy(max_epsilon=100.0), trust=False)
    assert trusted.run(_bundle_spec(**spec)) is TaskOutcome.OK
    assert builtin.run(_builtin_spec(**spec)) is TaskOutcome.OK
    eps = trusted.header().epsilon
    assert eps == pytest.approx(builtin.header().epsilon, rel=1e-12)
    assert eps < _update_layer_epsilon(2.0, sensitivity=2.0)
    for s in (trusted, builtin):
        [entry] = s.ledger.entries(DATASET)
        assert entry.cost.record is not None
        assert s.ended().detail == ""


@pytest.mark.parametrize(("trust", "counted"), [(False, False), (True, True)])
def test_training_figures_follow_the_counted_epsilon(site, trust, counted):
    """At a site without a cap (max_epsilon = inf), a DP-SGD-only bundle job reports ε = ∞
    and its training figures when its DP-SGD is not counted, and a finite ε without them
    when it is: the figures leave only where the site claims no finite ε."""
    s = site(DatasetPolicy(max_epsilon=OPEN), trust=trust)
    assert s.run(_bundle_spec(sigma=1.0)) is TaskOutcome.OK
    header = s.header()
    assert math.isfinite(header.epsilon) is counted
    assert ("train_loss" in header.metrics) is not counted


def test_a_target_epsilon_bundle_is_held_to_its_target_on_the_counted_layer(site):
    """A target-ε bundle job, not trusted: σ is still the one planned for the target, and the
    target is checked against the counted ε. Little update noise is refused at the job's own
    rule (the site cannot vouch for the target); ample noise runs within the target."""
    weak = site(DatasetPolicy(max_epsilon=OPEN))
    assert weak.run(_bundle_spec(sigma=0.0, target=3.0, z=0.5)) is TaskOutcome.REFUSED
    assert weak.report().reason == "budget_exceeded"
    assert weak.ended().rule == "job.privacy.sample.target_epsilon"
    assert not weak.ledger.entries(DATASET)

    strong = site(DatasetPolicy(max_epsilon=OPEN))
    assert strong.run(_bundle_spec(sigma=0.0, target=3.0, z=20.0)) is TaskOutcome.OK
    trusted = site(DatasetPolicy(max_epsilon=OPEN), trust=True)
    assert trusted.run(_bundle_spec(sigma=0.0, target=3.0, z=20.0)) is TaskOutcome.OK
    [untrusted_dp], [trusted_dp] = strong.workers.started[0].dp, trusted.workers.started[0].dp
    assert untrusted_dp == trusted_dp  # the worker runs the same DP-SGD either way
    eps = strong.header().epsilon
    assert eps == pytest.approx(_update_layer_epsilon(20.0, sensitivity=2.0), rel=1e-9)
    assert eps <= 3.0


def test_the_planned_privacy_an_operator_approves_says_what_is_not_counted(pki, tmp_path):
    """`confide-agent jobs` lists a bundle's DP-SGD as not counted unless the site trusts it;
    a built-in model's is counted."""
    approvals = Approvals(tmp_path / "approvals.db", audit=SiteAudit(":memory:"))
    spec = _bundle_spec(z=2.0)
    with pytest.raises(RuleRefusal):  # approval pending: the request is filed
        approvals.check(signed_task(pki.alice, spec=spec), spec, signer="alice", now=0.0)
    [req] = approvals.requests()
    assert req.privacy == (
        f"record noise sigma 1 at delta 1e-05; update clip 1, noise z 2; {RECORD_NOT_COUNTED}"
    )
    assert RECORD_NOT_COUNTED in planned_privacy(_bundle_spec(), trust_bundle_dp=False)
    assert RECORD_NOT_COUNTED not in planned_privacy(_bundle_spec(), trust_bundle_dp=True)
    assert RECORD_NOT_COUNTED not in planned_privacy(_builtin_spec(), trust_bundle_dp=False)
