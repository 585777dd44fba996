"""SecAgg+ end to end: real aggregator and agent processes over mTLS, with SIGKILLed sites."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from agent.data.declared import dataset_from_config
from agent.workers.handle import Worker
from confide.config import Section
from confide.models import initial_weights
from confide.secagg.quantize import quantization_step
from confide.v1 import admin_pb2, common_pb2
from confide.wire.blob import NamedArrays
from confide_dev.demo import demo_job
from confide_dev.localfed import partition_breast_cancer

from .conftest import download_model, site_setup

pytestmark = pytest.mark.e2e

KILL_KINDS = [
    "TASK_KIND_TRAIN",
    "TASK_KIND_SHARE_KEYS",
    "TASK_KIND_MASKED_INPUT",
    "TASK_KIND_UNMASK",
]
"""The task on whose arrival round r's victim dies: SecAgg+ stages advertise..unmask."""


def test_secure_job_with_three_sites_reaches_good_accuracy(federation, bc3):
    """Three agents run a SecAgg+ job on breast_cancer to >= 0.9 accuracy, 3 sites per sum."""
    names = ["site-1", "site-2", "site-3"]
    federation.make_pki(names)
    federation.start_aggregator()
    for i, n in enumerate(names):
        federation.start_agent(site_setup(n, bc3, i))
    federation.wait_for_sites(3)
    spec = demo_job(sites=3, rounds=3, features=bc3.features, secure=True, private=False, seed=0)
    status = federation.wait_job(federation.submit(spec), timeout=240)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    done = [r for r in status.rounds if r.state == "done"]
    assert len(done) == 3 and all(r.aggregated == 3 for r in done)
    assert status.final_accuracy >= 0.9
    events = {e.event for e in federation.admin().ListAudit(admin_pb2.AuditRequest()).entries}
    assert {"secagg_advertise", "secagg_share_keys", "masked_input_accepted"} <= events


def test_ten_sites_survive_a_sigkill_at_each_secagg_stage(federation, tmp_path):
    """In round r one agent SIGKILLs itself on receiving stage r's task; every round completes
    with the aggregate of a plaintext run of the survivors.

    Victims: round 1 on TRAIN (advertise), round 2 on SHARE_KEYS, round 3 on MASKED_INPUT,
    round 4 on UNMASK (its masked input is already in the sum, so its self mask is recovered
    from the others' shares). The kill point (confide_dev.faulty_agent) makes the stage exact
    instead of racing it from outside. The plaintext run: each survivor's real worker process trains
    the round's input model on the site's data (plain SGD is seeded by job and round, so it
    repeats the agent's training exactly); the unmasked mean must equal the survivors' mean
    within the quantization step, and be far from the mean with the victim put back (or, in
    round 4, left out).
    """
    names = [f"site-{i}" for i in range(1, 11)]
    data = partition_breast_cancer(tmp_path / "data10", sites=10, seed=2)
    victims = {r: names[-r] for r in range(1, 5)}  # round -> site killed in it
    federation.make_pki(names)
    federation.start_aggregator()
    for i, n in enumerate(names):
        rounds = [r for r, v in victims.items() if v == n]
        kill_on = f"{KILL_KINDS[rounds[0] - 1]}:{rounds[0]}" if rounds else None
        federation.start_agent(site_setup(n, data, i), kill_on=kill_on)
    federation.wait_for_sites(10, timeout=180)
    spec = demo_job(sites=6, rounds=4, features=data.features, secure=True, private=False, seed=0)
    spec.round_timeout_s = 90.0
    # The MLP on per-site partitions: every site's delta differs, so the sum means something.
    spec.model.CopyFrom(common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_MLP, hidden=[16]))
    job_id = federation.submit(spec)
    status = federation.wait_job(job_id, timeout=240)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    for v in victims.values():
        assert federation.agents[v].wait(timeout=30) == -signal.SIGKILL

    # Who is in each round's sum: everyone not yet dead, less a victim killed before it sent
    # its masked input (advertise, share keys, masked input); the unmask victim is in it.
    in_sum = {
        r: [n for n in names if n not in list(victims.values())[: min(r, 3)]] for r in range(1, 5)
    }
    done = [r for r in status.rounds if r.state == "done"]
    assert [r.round for r in done] == [1, 2, 3, 4]
    assert [r.aggregated for r in done] == [len(in_sum[r]) for r in range(1, 5)] == [9, 8, 7, 7]

    models = [initial_weights(spec.model, spec.dataset, seed=int(spec.training.seed))]
    models += [
        download_model(federation, job_id, r.model_version, max_bytes=1 << 24, timeout=60)
        for r in done
    ]
    sa = spec.secure_aggregation
    step = quantization_step(clip_range=sa.clip_range, bits=sa.bits)
    deltas = _plaintext_deltas(spec, data, names, models[:4])
    for r in range(1, 5):
        got = _flat(models[r]).astype(np.float64) - _flat(models[r - 1]).astype(np.float64)
        expected = _survivor_mean(deltas[r], in_sum[r], sa.clip_range)
        assert np.max(np.abs(got - expected)) < step + 1e-6, f"round {r}"
        v = victims[r]
        other = [n for n in in_sum[r] if n != v] if v in in_sum[r] else [*in_sum[r], v]
        wrong = _survivor_mean(deltas[r], other, sa.clip_range)
        assert np.max(np.abs(got - wrong)) > 20 * step, f"round {r}: victim not told apart"
        print(
            f"round {r}: |got-expected| {np.max(np.abs(got - expected)):.2e}, "
            f"|got-wrong| {np.max(np.abs(got - wrong)):.2e}, step {step:.2e}"
        )


def _flat(arrays: NamedArrays) -> np.ndarray:
    return np.concatenate([np.asarray(a).ravel() for _, a in arrays])


def _survivor_mean(deltas: dict[str, np.ndarray], sites: list[str], r: float) -> np.ndarray:
    return np.mean([np.clip(deltas[s], -r, r) for s in sites], axis=0)


def _plaintext_deltas(
    spec: common_pb2.JobSpec, data, names: list[str], inputs: list[NamedArrays]
) -> dict[int, dict[str, np.ndarray]]:
    """round -> site -> the float64 delta a real worker trains from that round's input model."""

    def one_site(i: int) -> dict[int, np.ndarray]:
        table = site_setup(names[i], data, i).datasets[data.name]
        worker = Worker.start(
            job=spec,
            job_id="plaintext",
            dataset=dataset_from_config(data.name, Section(table, f"datasets.{data.name}.")),
            device="cpu",
        )
        try:
            return {
                r: _flat(worker.train(inputs[r - 1], dp=None, round=r).delta).astype(np.float64)
                for r in range(1, len(inputs) + 1)
            }
        finally:
            worker.stop()

    with ThreadPoolExecutor(max_workers=2) as pool:
        per_site = list(pool.map(one_site, range(len(names))))
    return {
        r: {names[i]: per_site[i][r] for i in range(len(names))} for r in range(1, len(inputs) + 1)
    }
