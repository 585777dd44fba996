"""The issue's hold-out read-out through crafted models, against real site code and a real
worker: exact figures (only where a policy allows them) give the attack its precision; the
default noised, charged figures do not."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from agent.admission.site_policy import DatasetPolicy
from agent.privacy.ledger import Ledger
from agent.privacy.plan import PrivacyPlan
from agent.tasks.runner import SiteContext, TaskOutcome, TaskRunner
from confide.data.datasets import DatasetDescription, load_arrays
from confide.lineage import chain_of
from confide.models import initial_weights
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, open_envelope
from tests.agent.conftest import FEDERATION, Pki, report_of, sha_of, signed_task
from tests.agent.fakes import FakeAggregator, FakeTransport
from tests.confide_worker.conftest import FEATURES, make_job, write_breast_cancer_csv

pytestmark = pytest.mark.slow

SCALE = 1e-3
"""s: the probe model for feature j has logit s·x_j for class 1, so its mean cross-entropy is
ln 2 + (s/2)·m_j + O(s²), m_j = (Σ_{y=0} x_j - Σ_{y=1} x_j) / n: a label-weighted mean."""


def _weights(w1: np.ndarray, bias: tuple[float, float]) -> list[tuple[str, np.ndarray]]:
    w = np.zeros((2, len(FEATURES)), dtype=np.float32)
    w[1] = w1
    return [("net.0.weight", w), ("net.0.bias", np.asarray(bias, dtype=np.float32))]


@pytest.fixture(scope="module")
def bc_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetDescription:
    """The breast_cancer CSV the worker tests use, written once for this module."""
    return write_breast_cancer_csv(tmp_path_factory.mktemp("bc") / "bc.csv")


@pytest.fixture(scope="module")
def workers():
    """One worker pool for both runs, so the (slow) worker process starts once: it only
    evaluates and trains; what may leave is decided in the daemon, per run."""
    pool: dict[str, TaskRunner] = {}
    yield pool
    for runner in pool.values():
        runner.stop_workers()


def _attack(
    pki: Pki,
    dataset: DatasetDescription,
    tmp_path,
    workers: dict[str, TaskRunner],
    *,
    z: float,
    policy: DatasetPolicy,
):
    """A lying aggregator with a genuinely signed 31-round job: version 0 is the initial model
    (it must be), versions 1..30 probe one feature each, the final version 31 counts class 1.
    The chain is consistent, so the site trains on each probe and reports its figures."""
    spec = make_job(common_pb2.MODEL_KIND_LOGREG, local_epochs=1, batch_size=256)
    spec.rounds, spec.min_sites, spec.round_timeout_s = 31, 1, 60.0
    spec.training.server_learning_rate = 1.0
    spec.evaluation.CopyFrom(
        common_pb2.EvaluationSpec(max_evaluations=32, noise_multiplier=z, loss_clip=5.0)
    )
    probes = [_weights(SCALE * np.eye(len(FEATURES))[j], (0.0, 0.0)) for j in range(30)]
    models = [
        list(initial_weights(spec.model, spec.dataset, seed=int(spec.training.seed))),
        *probes,
        _weights(np.zeros(len(FEATURES)), (0.0, 10.0)),  # predicts class 1 for every record
    ]
    shas = [sha_of(m) for m in models]
    agg = FakeAggregator()
    for sha, m in zip(shas, models, strict=True):
        agg.models[("job-1", sha)] = m
    env = signed_task(pki.alice, spec=spec).signed_job
    chain = chain_of(job_id="job-1", signed_job=env, shas=shas)
    ledger = Ledger.open(tmp_path / f"ledger-{z}.db")
    site = SiteContext(
        federation=FEDERATION,
        site=pki.site.info.name,
        signing_key=pki.site.signing_key,
        ca_pem=pki.site.ca_pem,
        crl_pem=None,
        trusted_signers=("alice",),
        datasets={dataset.name: dataset},
        device="cpu",
        policies={dataset.name: policy},
    )
    privacy = PrivacyPlan(ledger)
    runner = TaskRunner(site, privacy=privacy)
    if "shared" in workers:  # a fresh site (state, policy) around the running worker process
        runner.workers = workers["shared"].workers
    workers["shared"] = runner
    t = FakeTransport(agg)

    def task(k: int, **kw) -> federation_pb2.Task:
        parent = chain[k - 1] if k else b""
        return signed_task(
            pki.alice, spec=spec, model_version=shas[k], version=k, parent_chain=parent, **kw
        )

    for r in range(1, 32):
        assert runner.run(task(r - 1, task_id=f"t{r}", round=r), t) is TaskOutcome.OK
    final = task(31, kind=federation_pb2.TASK_KIND_EVALUATE, task_id="final", round=31)
    assert runner.run(final, t) is TaskOutcome.OK
    losses = []
    for up in agg.uploads[1:]:
        payload = open_envelope(
            up.header,
            verify_key=pki.site.info.signing_public_key,
            now=time.time(),
            expect=Binding(FEDERATION, "site-1", common_pb2.STAGE_UPDATE, job_id="job-1"),
        )
        losses.append(federation_pb2.UpdateHeader.FromString(payload).metrics["eval_loss"])
    means = 2.0 * (np.asarray(losses) - math.log(2.0)) / SCALE
    rep = report_of(pki, agg.reports[-1])
    count = rep.metrics["accuracy"] * rep.num_samples
    charged = [e for e in ledger.entries(dataset.name) if e.cost.evaluation]
    ledger.close()
    return means, count, charged


def _truth(dataset: DatasetDescription) -> tuple[np.ndarray, int]:
    data = load_arrays(dataset)
    x, y = data.x_holdout.astype(np.float64), data.y_holdout
    return (x[y == 0].sum(0) - x[y == 1].sum(0)) / len(y), int((y == 1).sum())


def test_exact_figures_read_out_the_hold_out_as_the_issue_found(pki, bc_dataset, tmp_path, workers):
    """Control: where a policy allows exact figures, the 30 means come out to ~1e-4 and the
    class count exactly; that is what exact_evaluation = true gives a lying aggregator."""
    policy = DatasetPolicy(max_epsilon=float("inf"), exact_evaluation=True)
    means, count, charged = _attack(pki, bc_dataset, tmp_path, workers, z=0.0, policy=policy)
    true_means, true_count = _truth(bc_dataset)
    assert np.max(np.abs(means - true_means)) < 1e-3
    assert round(count) == true_count and not charged


def test_noised_figures_defeat_the_read_out_and_are_charged(pki, bc_dataset, tmp_path, workers):
    """Under the default policy (noised figures, z = 10): the same 32 answers recover the
    means no better than noise (median error > 0.1, on standardized features), and each
    answer is a ledger entry."""
    policy = DatasetPolicy(max_epsilon=float("inf"))
    means, _, charged = _attack(pki, bc_dataset, tmp_path, workers, z=10.0, policy=policy)
    true_means, _ = _truth(bc_dataset)
    assert np.median(np.abs(means - true_means)) > 0.1
    assert len(charged) == 32 and all(e.cost.record.noise_multiplier == 10.0 for e in charged)
