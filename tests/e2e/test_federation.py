"""A real federation end to end: an aggregator and agents as processes over mTLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from confide.v1 import admin_pb2, common_pb2
from confide_dev.demo import demo_job
from confide_dev.localfed import SiteSetup

from .conftest import download_model, site_setup, start_sites

pytestmark = pytest.mark.e2e


def _plain_job(data, rounds=3, sites=3):
    return demo_job(
        sites=sites, rounds=rounds, features=data.features, secure=False, private=False, seed=0
    )


def test_three_sites_train_to_good_accuracy_and_exit_cleanly(federation, bc3):
    """Three agents on non-IID partitions reach >= 0.9 held-out accuracy; every process exits 0."""
    start_sites(federation, bc3, 3)
    status = federation.wait_job(federation.submit(_plain_job(bc3)), timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    done = [r for r in status.rounds if r.state == "done"]
    assert len(done) == 3 and all(r.aggregated == 3 for r in done)
    assert status.final_accuracy >= 0.9
    assert status.final_eval_samples > 0
    assert len({r.model_version for r in done}) == 3
    codes = federation.stop()
    assert codes == {"site-1": 0, "site-2": 0, "site-3": 0, "aggregator": 0}


def test_unknown_dataset_fails_the_task_with_a_reason_and_the_agent_stays_up(federation, bc3):
    """A site without the job's dataset refuses with unknown_dataset; the job goes on without it."""
    names = ["site-1", "site-2", "site-3"]
    federation.make_pki(names)
    federation.start_aggregator()
    for i, n in enumerate(names[:2]):
        federation.start_agent(site_setup(n, bc3, i))
    other = {"path": str(bc3.paths[2]), "features": bc3.features, "label": "target"}
    federation.start_agent(SiteSetup(name="site-3", datasets={"other": other}))
    federation.wait_for_sites(3)
    spec = _plain_job(bc3, rounds=1, sites=2)
    status = federation.wait_job(federation.submit(spec), timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    assert federation.agents["site-3"].poll() is None


def test_schema_mismatch_is_refused_and_recorded(federation, bc3):
    """A job whose features differ from a site's declared schema is refused, reason recorded."""
    names = start_sites(federation, bc3, 2)
    spec = _plain_job(bc3, rounds=1, sites=2)
    spec.dataset.features[0] = "not_a_column"
    spec.round_timeout_s = 20
    job_id = federation.submit(spec)

    def refused() -> bool:
        status = federation.job(job_id)
        return "schema_mismatch" in {s.reason for r in status.rounds for s in r.sites}

    federation.wait_for(refused, timeout=120, what="a schema_mismatch refusal")
    for n in names:
        assert federation.agents[n].poll() is None


def test_sigterm_stops_an_agent_with_exit_code_0(federation, bc3):
    """SIGTERM makes a connected agent shut down cleanly with exit code 0."""
    federation.make_pki(["site-1"])
    federation.start_aggregator()
    proc = federation.start_agent(site_setup("site-1", bc3, 0))
    federation.wait_for_sites(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_agents_reconnect_after_the_aggregator_restarts_and_no_round_is_lost(federation, bc3):
    """A killed aggregator restarts from its state; agents reconnect; no completed round is lost."""
    start_sites(federation, bc3, 2)
    job_id = federation.submit(_plain_job(bc3, rounds=2, sites=2))
    status = federation.wait_job(job_id, timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE
    before = [(r.round, r.model_version) for r in status.rounds if r.state == "done"]
    assert federation.aggregator is not None
    federation.aggregator.send_signal(signal.SIGKILL)
    federation.aggregator.wait()
    federation.close_admin()
    federation.start_aggregator(listen=federation.address)
    federation.wait_for_sites(2, timeout=90)
    after = federation.job(job_id)
    assert [(r.round, r.model_version) for r in after.rounds if r.state == "done"] == before
    status2 = federation.wait_job(
        federation.submit(_plain_job(bc3, rounds=1, sites=2)), timeout=300
    )
    assert status2.state == admin_pb2.JOB_STATE_DONE


def test_a_200mb_model_passes_through_chunked_streams(federation, bc3):
    """A 200 MB model goes down to a site and its update comes back; gRPC limits do not cap size."""
    federation.make_pki(["site-1"])
    federation.start_aggregator()
    federation.start_agent(site_setup("site-1", bc3, 0))
    federation.wait_for_sites(1)
    params = 50_000_000  # float32: 200 MB
    spec = common_pb2.JobSpec(
        name="big",
        rounds=1,
        min_sites=1,
        round_timeout_s=300,
        model=common_pb2.ModelSpec(
            kind=common_pb2.MODEL_KIND_FIXED_DELTA, fixed_delta_params=params
        ),
        dataset=common_pb2.DatasetSpec(
            name="breast_cancer", features=bc3.features, label="target", num_classes=2
        ),
        training=common_pb2.TrainingSpec(
            local_epochs=1, batch_size=8, learning_rate=0.1, server_learning_rate=1.0
        ),
    )
    status = federation.wait_job(federation.submit(spec), timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    ((name, delta),) = download_model(
        federation, status.job_id, status.model_version, max_bytes=params * 4, timeout=120
    )
    assert name == "delta" and delta.shape == (params,)
    assert np.all(delta == delta[0]) and delta[0] != 0.0


def test_confide_demo_json_summary():
    """`confide demo --rounds 2 --json` (SecAgg+ and privacy on) ends with its JSON summary."""
    out = subprocess.run(
        [sys.executable, "-m", "confide.cli.main", "demo", "--rounds", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 2 and summary["sites"] == 3
    assert summary["secure_aggregation"] is True
    assert {"final_accuracy", "final_loss", "wall_seconds", "epsilon"} <= summary.keys()
    assert 0 < summary["epsilon"] <= 3.0
    assert summary["final_accuracy"] >= 0.85
