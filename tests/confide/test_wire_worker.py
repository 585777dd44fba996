"""The daemon<->worker messages: each round-trips through a real frame; bad fields are refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from confide.data.datasets import DataFormat, DatasetDescription
from confide.errors import ConfigError, MalformedMessage
from confide.v1 import common_pb2
from confide.wire.frames import read_frame, write_frame
from confide.wire.worker import DpSgdParams, EvalResult, TrainResult, WorkerInfo
from confide.wire.worker_ops import (
    EvaluateRequest,
    InitRequest,
    Op,
    TrainRequest,
    decode_eval_result,
    decode_info,
    decode_train_result,
    encode_reply,
)

DATASET = DatasetDescription(
    name="bc",
    path=Path("/data/bc.npz"),
    format=DataFormat.NPZ,
    features=("x",),
    label="y",
    feature_type="float64",
    holdout_fraction=0.25,
    input_shape=(1, 8, 8),
    standardize=True,
)
WEIGHTS = [
    ("net.0.weight", np.arange(6, dtype=np.float32).reshape(2, 3)),
    ("net.0.bias", np.array([0.5, -1.0], dtype=np.float32)),
]


def _through_a_pipe(encoded):
    """Write an encoded frame and read it back, as the other process would."""
    header, buffers = encoded
    buf = io.BytesIO()
    write_frame(buf, header, buffers)
    buf.seek(0)
    frame = read_frame(buf)
    assert frame is not None
    return frame


def _same_arrays(a, b) -> bool:
    return [n for n, _ in a] == [n for n, _ in b] and all(
        x.dtype == y.dtype and np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True)
    )


def test_requests_round_trip_with_their_op():
    """init, evaluate and train requests decode to what was encoded, and name their op."""
    job = common_pb2.JobSpec(name="j")
    job.model.kind = common_pb2.MODEL_KIND_CNN
    init = InitRequest(job=job, job_id="job-1", dataset=DATASET, device="cuda:1")
    header, body = _through_a_pipe(init.to_frame())
    assert Op(header["op"]) is Op.INIT and InitRequest.from_frame(header, body) == init

    evaluate = EvaluateRequest(weights=WEIGHTS, loss_clip=2.5)
    header, body = _through_a_pipe(evaluate.to_frame())
    got = EvaluateRequest.from_frame(header, body)
    assert Op(header["op"]) is Op.EVALUATE and got.loss_clip == 2.5
    assert _same_arrays(got.weights, WEIGHTS)

    dp = DpSgdParams(noise_multiplier=1.1, max_grad_norm=0.5, sample_rate=0.1, steps=20)
    for train in (
        TrainRequest(weights=WEIGHTS, dp=dp, round=7),
        TrainRequest(weights=WEIGHTS, dp=None, round=0),
    ):
        header, body = _through_a_pipe(train.to_frame())
        got_train = TrainRequest.from_frame(header, body)
        assert Op(header["op"]) is Op.TRAIN
        assert (got_train.dp, got_train.round) == (train.dp, train.round)
        assert _same_arrays(got_train.weights, WEIGHTS)


def test_replies_round_trip():
    """WorkerInfo, EvalResult and TrainResult decode to what the worker encoded."""
    info = WorkerInfo(pid=3, num_train=455, num_holdout=114, num_features=30, device="cpu")
    assert decode_info(*_through_a_pipe(encode_reply(info))) == info
    result = EvalResult(accuracy=0.75, loss=0.5, num_samples=114)
    assert decode_eval_result(*_through_a_pipe(encode_reply(result))) == result
    train = TrainResult(delta=WEIGHTS, num_samples=455, steps=30, metrics={"train_loss": 0.25})
    got = decode_train_result(*_through_a_pipe(encode_reply(train)))
    assert (got.num_samples, got.steps, got.metrics) == (455, 30, {"train_loss": 0.25})
    assert _same_arrays(got.delta, WEIGHTS)


@pytest.mark.parametrize("value", [-1, "3", True, 2.0, None])
def test_a_train_request_needs_a_whole_non_negative_round(value):
    """A round that is negative, text, a bool, a float or null is malformed, not coerced."""
    header, body = _through_a_pipe(TrainRequest(weights=[], dp=None, round=1).to_frame())
    header["round"] = value
    with pytest.raises(MalformedMessage):
        TrainRequest.from_frame(header, body)


@pytest.mark.parametrize("clip", [0, -1.0, "5", True])
def test_an_evaluate_request_needs_a_positive_loss_clip_or_null(clip):
    """loss_clip 0, negative, text or a bool is malformed."""
    header, body = _through_a_pipe(EvaluateRequest(weights=[]).to_frame())
    header["loss_clip"] = clip
    with pytest.raises(MalformedMessage, match="loss_clip"):
        EvaluateRequest.from_frame(header, body)


def test_an_init_request_with_a_broken_job_or_dataset_is_refused():
    """Bytes that are no JobSpec are malformed; a dataset missing a field names its key."""
    init = InitRequest(job=common_pb2.JobSpec(), job_id="j", dataset=DATASET, device="cpu")
    header, _ = _through_a_pipe(init.to_frame())
    with pytest.raises(MalformedMessage, match="job spec"):
        InitRequest.from_frame(header, np.frombuffer(b"\xff\xff\xff", dtype=np.uint8))
    header["dataset"] = {k: v for k, v in DATASET.to_json().items() if k != "path"}
    with pytest.raises(ConfigError) as err:
        InitRequest.from_frame(header, np.empty(0, dtype=np.uint8))
    assert err.value.key == "dataset.path"
    header["dataset"] = ["not", "an", "object"]
    with pytest.raises(ConfigError):
        InitRequest.from_frame(header, np.empty(0, dtype=np.uint8))


def test_a_tensor_spec_that_overruns_the_body_is_malformed():
    """A reply whose tensor specs claim more bytes than its body carries is refused."""
    header, body = _through_a_pipe(
        encode_reply(TrainResult(delta=WEIGHTS, num_samples=1, steps=1, metrics={}))
    )
    with pytest.raises(MalformedMessage):
        decode_train_result(header, body[:-4])
