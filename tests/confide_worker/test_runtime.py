"""The worker's side of the contract in-process: the runtime and the frame loop that drives it."""

from __future__ import annotations

import io

import numpy as np
import pytest

from confide.errors import MalformedMessage, Reason
from confide.models import initial_weights
from confide.v1 import common_pb2
from confide.wire.frames import read_frame, write_frame
from confide.wire.worker import EvalResult, WorkerContract
from confide.wire.worker_ops import InitRequest, TrainRequest, decode_info, decode_train_result
from confide_worker.main import serve
from confide_worker.runtime import FIXED_DELTA_VALUE, Runtime
from tests.confide_worker.conftest import make_job


@pytest.fixture
def fixed_job() -> common_pb2.JobSpec:
    """The benchmark job: 1000 parameters, no data, no torch."""
    return make_job(common_pb2.MODEL_KIND_FIXED_DELTA)


def test_runtime_serves_a_fixed_delta_job_through_the_contract(fixed_job, bc_dataset):
    """Through WorkerContract alone: init reports no data, train answers 1e-3 everywhere."""
    runtime: WorkerContract = Runtime()
    info = runtime.init(fixed_job, job_id="j", dataset=bc_dataset, device="cpu")
    assert (info.num_train, info.num_holdout, info.device) == (0, 0, "cpu")
    weights = initial_weights(fixed_job.model, fixed_job.dataset, seed=1)
    result = runtime.train(weights, dp=None, round=1)
    ((name, delta),) = result.delta
    assert name == "delta" and delta.shape == (1000,) and np.all(delta == np.float32(1e-3))
    assert FIXED_DELTA_VALUE == 1e-3 and result.num_samples == 1
    assert runtime.evaluate(weights) == EvalResult(accuracy=0.0, loss=0.0, num_samples=0)


def test_runtime_refuses_ops_out_of_order_and_wrong_weights(fixed_job, bc_dataset):
    """Ops before init, a second init, and weights of the wrong shape are malformed."""
    runtime = Runtime()
    weights = initial_weights(fixed_job.model, fixed_job.dataset, seed=1)
    with pytest.raises(MalformedMessage, match="before init"):
        runtime.train(weights, dp=None, round=1)
    runtime.init(fixed_job, job_id="j", dataset=bc_dataset, device="cpu")
    with pytest.raises(MalformedMessage, match="twice"):
        runtime.init(fixed_job, job_id="j", dataset=bc_dataset, device="cpu")
    with pytest.raises(MalformedMessage, match="shapes"):
        runtime.evaluate([("delta", np.zeros(3, np.float32))])


def test_the_frame_loop_answers_each_request_and_survives_a_bad_one(fixed_job, bc_dataset):
    """serve answers init and train, an error frame for an unknown op, then exits on shutdown."""
    weights = initial_weights(fixed_job.model, fixed_job.dataset, seed=1)
    inp = io.BytesIO()
    write_frame(inp, *InitRequest(fixed_job, "j", bc_dataset, "cpu").to_frame())
    write_frame(inp, {"op": "export"})
    write_frame(inp, *TrainRequest(weights=weights, dp=None, round=2).to_frame())
    write_frame(inp, {"op": "shutdown"})
    write_frame(inp, {"op": "ping"})  # after shutdown: never read
    inp.seek(0)
    out = io.BytesIO()
    assert serve(inp, out, max_body_bytes=1 << 20) == 0
    out.seek(0)
    replies = [read_frame(out) for _ in range(4)]
    assert read_frame(out) is None
    (init, init_body), (bad, _), (train, train_body), (stop, _) = replies
    assert init["ok"] is True and decode_info(init, init_body).num_train == 0
    assert bad["ok"] is False and bad["reason"] == Reason.MALFORMED.value
    assert "export" in bad["message"]
    result = decode_train_result(train, train_body)
    assert train["ok"] is True and np.all(result.delta[0][1] == np.float32(1e-3))
    assert stop == {"ok": True}
