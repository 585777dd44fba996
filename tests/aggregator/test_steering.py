"""One hostile site among five cannot steer the plaintext model or the reported accuracy.

Five fake sites over real mTLS; site-5 has a valid certificate and lies. Each test states the
bound from ``aggregator.admission`` / ``aggregator.robust`` and checks the aggregate against
it and against its exact value.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import numpy as np
import pytest

from confide.v1 import admin_pb2, common_pb2, federation_pb2
from tests.aggregator.fakes import ACK, delta_like, tiny_spec

NAMES = ("site-1", "site-2", "site-3", "site-4", "site-5")
TRAIN = federation_pb2.TASK_KIND_TRAIN
EVALUATE = federation_pb2.TASK_KIND_EVALUATE


def _five(clients: Any, sizes: Any = None, **spec: Any) -> tuple[Any, str, list, list, Any]:
    """A one-round job for five connected sites, each holding its TRAIN task.

    Returns (operator, job id, sites, tasks, the round's input model).
    """
    site, operator = clients
    op = operator()
    sites = [site(n) for n in NAMES]
    for s in sites:
        s.connect(sizes=sizes)
    job = op.submit(tiny_spec(rounds=1, min_sites=5, round_timeout_s=30.0, **spec))
    tasks = [s.next_task(TRAIN) for s in sites]
    return op, job, sites, tasks, sites[0].download(job, tasks[0].model_version)


def _delta(op: Any, site: Any, job: str, model: Any) -> tuple[np.ndarray, Any]:
    """The round's aggregate delta (new model minus input model, flat) and the job status."""
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=job))
    new = site.download(job, st.rounds[0].model_version)
    flat = np.concatenate(
        [
            (b.astype(np.float64) - a.astype(np.float64)).ravel()
            for (_, a), (_, b) in zip(model, new, strict=True)
        ]
    )
    return flat, st


def _refused(call: Any, reason: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.details() == reason


def test_capped_fedavg_and_norm_clip_bound_a_hostile_site(clients):
    """A hostile site claiming 2^40 samples with a huge update moves FedAvg by <= 2·B·W/ΣW."""
    clip = common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=0.0, delta=1e-5)
    op, job, sites, tasks, model = _five(
        clients, aggregation=common_pb2.AggregationSpec(max_sample_weight=100), update_privacy=clip
    )
    hostile, task = sites[-1], tasks[-1]
    # The attack of issue 9.3: 2^63 - 1 samples. Refused at the wire; nothing enters the sum.
    _refused(
        lambda: hostile.upload(task, delta_like(model, 1000.0), num_samples=2**63 - 1), "oversized"
    )
    assert hostile.upload(task, delta_like(model, 1000.0), num_samples=2**40) == ACK
    for s, t in zip(sites[:-1], tasks[:-1], strict=True):
        assert s.upload(t, delta_like(model, 0.1), num_samples=100) == ACK
    got, st = _delta(op, sites[0], job, model)
    d = got.size
    # Hostile: weight capped at W = 100, update scaled from norm 1000·√d to B = C = 1.
    expected = (4 * 100 * 0.1 + 100 / math.sqrt(d)) / 500
    np.testing.assert_allclose(got, expected, atol=1e-6)
    bound = 2 * 1.0 * 100 / (100 + 4 * 100)  # 2·B·w_h / (w_h + Σ honest w)
    assert np.linalg.norm(got - 0.1) <= bound
    rows = {r.site_id: r for r in st.rounds[0].sites}
    assert rows["site-5"].clipped and rows["site-5"].weight == 100
    assert rows["site-5"].update_norm == pytest.approx(1000 * math.sqrt(d), rel=1e-6)
    assert not rows["site-1"].clipped and rows["site-1"].weight == 100


@pytest.mark.parametrize(
    ("rule", "hostile", "expected"),
    [
        (common_pb2.AGGREGATION_RULE_TRIMMED_MEAN, 1e30, (0.2 + 0.3 + 0.4) / 3),
        (common_pb2.AGGREGATION_RULE_TRIMMED_MEAN, -1e30, (0.1 + 0.2 + 0.3) / 3),
        (common_pb2.AGGREGATION_RULE_MEDIAN, 1e30, 0.3),
        (common_pb2.AGGREGATION_RULE_MEDIAN, -1e30, 0.2),
    ],
)
def test_robust_rules_keep_the_model_within_the_honest_range(clients, rule, hostile, expected):
    """Trimmed mean (β = 0.2, k = 1) and median stay within the honest values per coordinate."""
    trim = 0.2 if rule == common_pb2.AGGREGATION_RULE_TRIMMED_MEAN else 0.0
    op, job, sites, tasks, model = _five(
        clients, aggregation=common_pb2.AggregationSpec(rule=rule, trim_fraction=trim)
    )
    honest = (0.1, 0.2, 0.3, 0.4)
    assert sites[-1].upload(tasks[-1], delta_like(model, hostile), num_samples=2**40) == ACK
    for s, t, v in zip(sites[:-1], tasks[:-1], honest, strict=True):
        assert s.upload(t, delta_like(model, v), num_samples=1) == ACK
    got, _ = _delta(op, sites[0], job, model)
    assert np.all(got >= min(honest) - 1e-6) and np.all(got <= max(honest) + 1e-6)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_forged_evaluation_counts_move_reported_accuracy_by_at_most_one_site_share(clients):
    """Uniform metric weights: a hostile 2^40-sample evaluation moves accuracy by <= 1/n."""
    op, job, sites, tasks, model = _five(clients)
    hostile = sites[-1]
    lie = {"eval_accuracy": 1.0, "eval_loss": 0.0, "eval_samples": float(2**40)}
    _refused(
        lambda: hostile.upload(
            tasks[-1], delta_like(model, 0.1), metrics={**lie, "eval_accuracy": 1.5}
        ),
        "malformed",
    )
    assert hostile.upload(tasks[-1], delta_like(model, 0.1), metrics=lie) == ACK
    truth = {"eval_accuracy": 0.45, "eval_loss": 1.0, "eval_samples": 50.0}
    for s, t in zip(sites[:-1], tasks[:-1], strict=True):
        assert s.upload(t, delta_like(model, 0.1), metrics=truth) == ACK
    evals = [s.next_task(EVALUATE) for s in sites]
    hostile.report(evals[-1], metrics={"accuracy": 1.0, "loss": 0.0}, num_samples=2**40)
    for s, t in zip(sites[:-1], evals[:-1], strict=True):
        s.report(t, metrics={"accuracy": 0.45, "loss": 1.0}, num_samples=50)
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=job))
    bound = 0.45 + (1.0 - 0.45) / 5  # one site's share of a uniform mean
    assert st.rounds[0].accuracy == pytest.approx(bound)
    assert st.final_accuracy == pytest.approx(bound)


def test_counts_beyond_the_declared_dataset_are_refused(clients):
    """A site may claim no more training or hold-out records than it declared at register."""
    op, _job, sites, tasks, model = _five(clients, sizes={"tab": (100, 20)})
    s, t = sites[0], tasks[0]
    _refused(lambda: s.upload(t, delta_like(model, 0.1), num_samples=101), "oversized")
    _refused(
        lambda: s.upload(t, delta_like(model, 0.1), metrics={"eval_samples": 21.0}), "oversized"
    )
    for s, t in zip(sites, tasks, strict=True):
        assert (
            s.upload(t, delta_like(model, 0.1), num_samples=100, metrics={"eval_samples": 20.0})
            == ACK
        )
    e = sites[0].next_task(EVALUATE)
    _refused(lambda: sites[0].report(e, metrics={"accuracy": 0.5}, num_samples=21), "oversized")
    sites[0].report(e, metrics={"accuracy": 0.5}, num_samples=20)
    listed = op.admin.ListSites(admin_pb2.ListSitesRequest()).sites[0]
    assert [(d.name, d.train_records, d.holdout_records) for d in listed.dataset_sizes] == [
        ("tab", 100, 20)
    ]
