"""A hostile aggregator driving real site code gets hold-out figures only within the rules."""

from __future__ import annotations

import time

import pytest

from agent.admission.lineage import PinnedModel
from agent.admission.rules import RuleRefusal
from agent.admission.site_policy import DatasetPolicy
from agent.privacy.ledger import Ledger
from agent.privacy.plan import PrivacyPlan
from agent.tasks.evaluation import Evaluations
from agent.tasks.runner import TaskOutcome
from confide.dp.budget import cumulative_epsilon
from confide.dp.evaluation import evaluation_cost
from confide.errors import Reason
from confide.lineage import chain_of
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, open_envelope
from confide.wire.worker import EvalResult
from tests.agent.conftest import (
    DATASET,
    FEDERATION,
    job_spec,
    make_runner,
    model_weights,
    report_of,
    sha_of,
    signed_task,
)
from tests.agent.fakes import FakeTransport

EVALUATE = federation_pb2.TASK_KIND_EVALUATE
OPEN = float("inf")


class Site:
    """Site-1 with a real ledger, model versions and evaluation log in one state file."""

    def __init__(self, pki, dataset, workers, aggregator, path, policy):
        self.pki, self.aggregator = pki, aggregator
        self.ledger = Ledger.open(path)
        privacy = PrivacyPlan(self.ledger)
        self.runner = make_runner(pki, dataset, workers, privacy=privacy, policy=policy)
        self.evals = Evaluations(path, privacy=privacy, audit=self.runner.audit)
        self.runner.evaluations = self.evals
        self.t = FakeTransport(aggregator)

    def run(self, task: federation_pb2.Task) -> TaskOutcome:
        return self.runner.run(task, self.t)

    def report(self) -> federation_pb2.TaskReport:
        return report_of(self.pki, self.aggregator.reports[-1])

    def header(self, i: int) -> federation_pb2.UpdateHeader:
        payload = open_envelope(
            self.aggregator.uploads[i].header,
            verify_key=self.pki.site.info.signing_public_key,
            now=time.time(),
            expect=Binding(FEDERATION, "site-1", common_pb2.STAGE_UPDATE, job_id="job-1"),
        )
        return federation_pb2.UpdateHeader.FromString(payload)

    def charged(self) -> list:
        return [e for e in self.ledger.entries(DATASET) if e.cost.evaluation]

    def outcomes(self) -> list[tuple[str, str]]:
        return [(e.outcome, e.reason) for e in self.evals.history("job-1")]

    def audited(self, event: str) -> list:
        return [e for e in self.runner.audit.entries() if e.event == event]


class History:
    """What an aggregator shows for job-1: versions 0..rounds, each a distinct model, chained
    as an honest aggregator would (the site cannot tell the models are not aggregates)."""

    def __init__(self, pki, aggregator, spec: common_pb2.JobSpec) -> None:
        self.pki, self.spec = pki, spec
        models = [[(n, a + k) for n, a in model_weights()] for k in range(int(spec.rounds) + 1)]
        self.shas = [sha_of(m) for m in models]
        for sha, m in zip(self.shas, models, strict=True):
            aggregator.models[("job-1", sha)] = m
        env = signed_task(pki.alice, spec=spec).signed_job  # the one envelope of this job
        self.chain = chain_of(job_id="job-1", signed_job=env, shas=self.shas)

    def train(self, r: int) -> federation_pb2.Task:
        """Round r's TRAIN task (version r - 1)."""
        return self._task(r - 1, kind=federation_pb2.TASK_KIND_TRAIN, round=r, task_id=f"t{r}")

    def evaluate(self, k: int, task_id: str) -> federation_pb2.Task:
        """An EVALUATE of version k (k = rounds: the final model)."""
        return self._task(k, kind=EVALUATE, round=int(self.spec.rounds), task_id=task_id)

    def _task(self, k: int, **kw) -> federation_pb2.Task:
        parent = self.chain[k - 1] if k > 0 else b""
        return signed_task(
            self.pki.alice,
            spec=self.spec,
            model_version=self.shas[k],
            version=k,
            parent_chain=parent,
            **kw,
        )


@pytest.fixture
def site_with(pki, dataset, workers, aggregator, tmp_path):
    def make(policy: DatasetPolicy) -> Site:
        return Site(pki, dataset, workers, aggregator, tmp_path / "state.db", policy)

    return make


def _spec(*, z: float, max_evaluations: int = 4, private: bool = False) -> common_pb2.JobSpec:
    spec = job_spec()
    spec.evaluation.max_evaluations = max_evaluations
    spec.evaluation.noise_multiplier = z
    if private:
        spec.record_privacy.CopyFrom(
            common_pb2.RecordPrivacy(
                enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5
            )
        )
    return spec


def test_31_evaluate_tasks_on_crafted_models_are_all_refused(pki, site_with, workers):
    """The issue's attack: 31 EVALUATE tasks on crafted models (any version, any parent) are
    refused untied_model; no worker runs, the ledger is untouched, the log holds all 31."""
    site = site_with(DatasetPolicy(max_epsilon=OPEN, exact_evaluation=True))
    spec = _spec(z=0.0, max_evaluations=40)
    spec.rounds = 40
    for i in range(31):
        crafted = f"{i + 1:064x}"
        site.aggregator.models[("job-1", crafted)] = model_weights()
        task = signed_task(
            pki.alice,
            kind=EVALUATE,
            spec=spec,
            task_id=f"e{i}",
            round=40,
            model_version=crafted,
            version=(i * 7) % 41,
            parent_chain=bytes([i]) * 32,
        )
        assert site.run(task) is TaskOutcome.REFUSED
        assert site.report().reason == "untied_model"
    assert not workers.started and not site.ledger.entries(DATASET)
    assert site.outcomes() == [("refused", "untied_model")] * 31
    assert [e.reason for e in site.audited("evaluation_refused")] == ["untied_model"] * 31
    ended = site.audited("task_ended")
    assert [(e.decision, e.reason) for e in ended] == [("refused", "untied_model")] * 31
    assert site.runner.audit.verify() == 31 * 3


def test_noised_figures_are_charged_once_per_model_and_count_in_the_jobs_epsilon(
    pki, site_with, aggregator
):
    """Each round's input and the final model are noised and charged once; the ε sent with an
    update includes the evaluations so far; asking again repeats the figures for free."""
    site = site_with(DatasetPolicy(max_epsilon=OPEN))
    spec = _spec(z=10.0, private=True)
    h = History(pki, aggregator, spec)
    for r in (1, 2, 3):
        assert site.run(h.train(r)) is TaskOutcome.OK
    headers = [site.header(i) for i in range(3)]
    assert all(set(x.metrics) == {"eval_accuracy", "eval_loss", "eval_samples"} for x in headers)
    # Never more hold-out records than the site declares at register (10 of its 50).
    assert all(1 <= x.metrics["eval_samples"] <= 10 for x in headers)
    rounds = [e.cost for e in site.ledger.entries(DATASET) if not e.cost.evaluation]
    one_eval = evaluation_cost(noise_multiplier=10.0, delta=1e-5)
    assert headers[2].epsilon == pytest.approx(
        cumulative_epsilon([*rounds, one_eval, one_eval, one_eval], delta=1e-5)[0]
    )
    assert headers[2].epsilon > cumulative_epsilon(rounds, delta=1e-5)[0]
    assert site.run(h.evaluate(3, "final")) is TaskOutcome.OK
    first = site.report()
    assert site.run(h.evaluate(3, "final-again")) is TaskOutcome.OK
    assert site.run(h.evaluate(1, "round-2-input")) is TaskOutcome.OK
    assert (dict(site.report().metrics), site.report().num_samples) == (
        {"accuracy": headers[1].metrics["eval_accuracy"], "loss": headers[1].metrics["eval_loss"]},
        int(headers[1].metrics["eval_samples"]),
    )
    assert report_of(pki, aggregator.reports[-2]).metrics == first.metrics
    charged = site.charged()
    assert [(e.job_id, e.task_id) for e in charged] == [("job-1", s) for s in h.shas]
    assert all(e.state == "sent" and e.cost.record.noise_multiplier == 10.0 for e in charged)
    assert site.outcomes() == [("released", "")] * 4 + [("repeated", "")] * 2
    released = site.audited("evaluation_released")
    assert [e.model_hash for e in released] == h.shas
    assert all(e.epsilon == pytest.approx(one_eval.epsilon) for e in released)


def test_the_cap_keeps_a_slot_for_the_final_model_then_refuses(pki, site_with, aggregator):
    """With a policy cap of 2: round 1's input is evaluated, later inputs are withheld while
    training goes on, the final model gets the kept slot, and a further model is refused
    evaluation_cap; a model already evaluated is still repeated."""
    policy = DatasetPolicy(max_epsilon=OPEN, exact_evaluation=True, max_evaluations=2)
    site = site_with(policy)
    h = History(pki, aggregator, _spec(z=0.0, max_evaluations=10))
    for r in (1, 2, 3):
        assert site.run(h.train(r)) is TaskOutcome.OK
    assert ["eval_accuracy" in site.header(i).metrics for i in range(3)] == [True, False, False]
    assert site.run(h.evaluate(3, "final")) is TaskOutcome.OK
    assert site.run(h.evaluate(1, "v1")) is TaskOutcome.REFUSED
    assert site.report().reason == "evaluation_cap"
    assert site.run(h.evaluate(0, "v0")) is TaskOutcome.OK
    assert site.outcomes() == [
        ("released", ""),
        ("refused", "evaluation_cap"),
        ("refused", "evaluation_cap"),
        ("released", ""),
        ("refused", "evaluation_cap"),
        ("repeated", ""),
    ]


def test_the_signed_cap_binds_below_the_policys(pki, site_with, aggregator):
    """A job that signed max_evaluations = 1 gets only the final model evaluated."""
    site = site_with(DatasetPolicy(max_epsilon=OPEN, exact_evaluation=True))
    h = History(pki, aggregator, _spec(z=0.0, max_evaluations=1))
    assert site.run(h.train(1)) is TaskOutcome.OK and site.run(h.train(3)) is TaskOutcome.OK
    assert "eval_accuracy" not in site.header(0).metrics
    assert site.run(h.evaluate(3, "final")) is TaskOutcome.OK
    assert site.run(h.evaluate(0, "v0")) is TaskOutcome.REFUSED
    assert site.report().reason == "evaluation_cap"


def test_exact_figures_need_the_policy(pki, site_with, aggregator):
    """Exact figures (z = 0) under the default policy: withheld from the update, and the
    EVALUATE is refused unsafe_request; nothing is charged."""
    site = site_with(DatasetPolicy(max_epsilon=OPEN))
    h = History(pki, aggregator, _spec(z=0.0))
    assert site.run(h.train(3)) is TaskOutcome.OK
    assert "eval_accuracy" not in site.header(0).metrics and site.header(0).num_samples == 40
    assert site.run(h.evaluate(3, "final")) is TaskOutcome.REFUSED
    assert site.report().reason == "unsafe_request"
    assert not site.charged()


def test_an_evaluation_over_the_budget_is_refused_and_releases_nothing(pki, site_with, aggregator):
    """A job signing little noise (z = 0.05) cannot buy figures past the dataset's cap; the
    refusal names the cap's rule in the aggregator's report and the site's audit trail."""
    site = site_with(DatasetPolicy(max_epsilon=10.0))
    h = History(pki, aggregator, _spec(z=0.05, private=True))
    assert site.run(h.train(3)) is TaskOutcome.OK
    assert "eval_accuracy" not in site.header(0).metrics
    assert site.run(h.evaluate(3, "final")) is TaskOutcome.REFUSED
    rule = f"policy.datasets.{DATASET}.max_epsilon"
    assert site.report().reason == "budget_exceeded"
    assert site.report().message.endswith(f"(rule {rule})")
    ended = site.audited("task_ended")[-1]
    assert (ended.outcome, ended.reason, ended.rule) == ("refused", "budget_exceeded", rule)
    assert not site.charged() and not site.evals.released("job-1")


def test_released_figures_and_the_cap_survive_a_restart(
    pki, dataset, workers, aggregator, tmp_path
):
    """After a restart the site repeats the figures it released and still counts them."""
    policy = DatasetPolicy(max_epsilon=OPEN, max_evaluations=2)
    h = History(pki, aggregator, _spec(z=10.0))
    first = Site(pki, dataset, workers, aggregator, tmp_path / "s.db", policy)
    assert first.run(h.train(3)) is TaskOutcome.OK
    assert first.run(h.evaluate(3, "final")) is TaskOutcome.OK
    released = first.report()
    first.ledger.close()
    second = Site(pki, dataset, workers, aggregator, tmp_path / "s.db", policy)
    assert second.run(h.evaluate(3, "again")) is TaskOutcome.OK
    assert second.report().metrics == released.metrics
    assert second.run(h.evaluate(2, "v2")) is TaskOutcome.OK  # released before the restart
    assert second.run(h.train(2)) is TaskOutcome.OK
    assert "eval_accuracy" not in second.header(-1).metrics  # cap 2 spent
    assert len(second.charged()) == 2


def test_a_charge_left_by_a_crash_is_not_charged_twice(pki, site_with, aggregator):
    """A reservation whose figures never left (crash before they were stored) covers the
    release that follows: one ledger entry, marked sent."""
    site = site_with(DatasetPolicy(max_epsilon=OPEN))
    h = History(pki, aggregator, _spec(z=10.0))
    site.ledger.reserve(
        dataset=DATASET,
        job_id="job-1",
        task_id=h.shas[2],
        round=2,
        layer_costs=evaluation_cost(noise_multiplier=10.0, delta=1e-5),
    )
    assert site.run(h.train(3)) is TaskOutcome.OK
    [entry] = site.charged()
    assert entry.state == "sent" and "eval_accuracy" in site.header(0).metrics


def _bundle(spec: common_pb2.JobSpec) -> common_pb2.JobSpec:
    spec.model.kind = common_pb2.MODEL_KIND_BUNDLE
    spec.model.code_sha256 = bytes(32)
    return spec


@pytest.mark.parametrize("trusted", [False, True])
def test_a_bundles_noised_figures_need_the_site_to_trust_bundle_code(dataset, tmp_path, trusted):
    """A bundle's code runs next to the counting, so its noised figures are refused (rule
    named, nothing evaluated or charged) unless the policy trusts bundle code's privacy."""
    ledger = Ledger.open(tmp_path / "state.db")
    evals = Evaluations(tmp_path / "state.db", privacy=PrivacyPlan(ledger))
    model = PinnedModel(job_id="job-1", version=0, sha256="ab" * 32, chain=b"", final=False)
    asked: list[float] = []

    def evaluate(clip: float) -> EvalResult:
        asked.append(clip)
        return EvalResult(accuracy=0.5, loss=0.7, num_samples=10)

    def release() -> object:
        return evals.release(
            spec=_bundle(_spec(z=1.0)),
            dataset=dataset,
            policy=DatasetPolicy(max_epsilon=OPEN),
            model=model,
            evaluate=evaluate,
            trust_bundle_dp=trusted,
        )

    if trusted:
        assert release() is not None and len(asked) == 1
        assert [e for e in ledger.entries(DATASET) if e.cost.evaluation]
        return
    with pytest.raises(RuleRefusal) as info:
        release()
    assert (info.value.rule, info.value.reason) == ("policy.trust_bundle_dp", Reason.UNSAFE_REQUEST)
    assert asked == [] and not ledger.entries(DATASET)


def test_a_bundles_exact_figures_follow_the_exact_evaluation_policy_alone(dataset, tmp_path):
    """Exact figures claim no ε, so a bundle gets them where the policy allows exact ones."""
    evals = Evaluations(tmp_path / "state.db", privacy=PrivacyPlan(Ledger.open(tmp_path / "l.db")))
    model = PinnedModel(job_id="job-1", version=0, sha256="cd" * 32, chain=b"", final=False)
    released = evals.release(
        spec=_bundle(_spec(z=0.0)),
        dataset=dataset,
        policy=DatasetPolicy(max_epsilon=OPEN, exact_evaluation=True),
        model=model,
        evaluate=lambda clip: EvalResult(accuracy=0.5, loss=0.7, num_samples=10),
    )
    assert released.noise_multiplier == 0.0 and released.accuracy == 0.5
