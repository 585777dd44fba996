"""The worker process: ``python -m agent.worker.main``, one per job, serving framed ops.

It reads frames from stdin and writes one reply frame per request to stdout (see
``agent.worker.protocol``). stdout is reserved for frames: file descriptor 1 is pointed at
stderr at start, so prints and C-level output from libraries cannot corrupt the stream. A
failed op answers an error frame and the worker keeps serving; it exits when stdin closes, on
``shutdown``, or when the stream itself is broken (a frame it cannot parse).

Fixed-delta (benchmark) jobs never import torch: ``train`` answers one preallocated float32
vector of ``1e-3`` written straight from its memory, so the figure measures the federation.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import IO, Any

import numpy as np

from agent.data.datasets import config_from_json
from agent.worker.frames import pack_arrays, read_frame, unpack_arrays, write_frame
from agent.worker.protocol import DpSgdParams
from confide.errors import ConfideError, MalformedMessage, Reason
from confide.models import parameter_shapes
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays

__all__ = ["FIXED_DELTA_VALUE", "main", "serve"]

FIXED_DELTA_VALUE = 1e-3
"""Every element of a fixed_delta job's update."""

Reply = tuple[dict[str, Any], list[memoryview]]


class _FixedDeltaJob:
    """The benchmark job: no data, no torch, one constant update."""

    def __init__(self, job: common_pb2.JobSpec) -> None:
        ((name, shape),) = parameter_shapes(job.model, job.dataset)
        self.delta: NamedArrays = [(name, np.full(shape, FIXED_DELTA_VALUE, dtype=np.float32))]
        self.specs, self.buffers = pack_arrays(self.delta)

    def init_reply(self) -> dict[str, Any]:
        return {"num_train": 0, "num_holdout": 0, "num_features": 0, "device": "cpu"}


class _Server:
    """Holds the job's state between ops; one instance per process."""

    def __init__(self) -> None:
        self.fixed: _FixedDeltaJob | None = None
        self.torch_job: Any = None  # agent.training.job.TorchJob, imported lazily
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def handle(self, header: dict[str, Any], body: Any) -> tuple[Reply, bool]:
        op = header.get("op")
        if op == "ping":
            return ({"pid": os.getpid(), "torch_loaded": "torch" in sys.modules}, []), False
        if op == "shutdown":
            return ({}, []), True
        if op == "init":
            return self._init(header, body), False
        if self.fixed is None and self.torch_job is None:
            raise MalformedMessage(f"op {op!r} before init")
        if op == "evaluate":
            return self._evaluate(header, body), False
        if op == "train":
            return self._train(header, body), False
        raise MalformedMessage(f"unknown op {op!r}")

    def _init(self, header: dict[str, Any], body: Any) -> Reply:
        if self.fixed is not None or self.torch_job is not None:
            raise MalformedMessage("init sent twice")
        job = common_pb2.JobSpec()
        try:
            job.ParseFromString(body.tobytes())
        except Exception as exc:  # protobuf's DecodeError
            raise MalformedMessage(f"job spec does not parse: {exc}") from None
        self.shapes = parameter_shapes(job.model, job.dataset)
        if job.model.kind == common_pb2.MODEL_KIND_FIXED_DELTA:
            self.fixed = _FixedDeltaJob(job)
            info = self.fixed.init_reply()
        else:
            from agent.training.job import TorchJob  # torch is paid for here, once per job

            dataset = config_from_json(header.get("dataset") or {})
            self.torch_job = TorchJob(job, dataset, str(header.get("device") or "auto"))
            tj = self.torch_job
            info = {
                "num_train": tj.num_train,
                "num_holdout": tj.num_holdout,
                "num_features": tj.num_features,
                "device": str(tj.device),
            }
        info.update(pid=os.getpid(), torch_loaded="torch" in sys.modules)
        return info, []

    def _weights(self, header: dict[str, Any], body: Any) -> NamedArrays:
        weights = unpack_arrays(header.get("tensors"), body)
        got = [(n, tuple(a.shape), a.dtype.name) for n, a in weights]
        want = [(n, s, "float32") for n, s in self.shapes]
        if got != want:
            raise MalformedMessage("weights do not match the model's parameter names/shapes")
        return weights

    def _evaluate(self, header: dict[str, Any], body: Any) -> Reply:
        weights = self._weights(header, body)
        if self.fixed is not None:
            return {"accuracy": 0.0, "loss": 0.0, "num_samples": 0}, []
        clip = header.get("loss_clip")
        if clip is not None and (
            isinstance(clip, bool) or not isinstance(clip, int | float) or not clip > 0
        ):
            raise MalformedMessage("'loss_clip' must be a number > 0 or null")
        acc, loss, n = self.torch_job.evaluate(weights, loss_clip=clip)
        return {"accuracy": acc, "loss": loss, "num_samples": n}, []

    def _train(self, header: dict[str, Any], body: Any) -> Reply:
        if self.fixed is not None:
            # No weight check, no copy: the benchmark measures the federation, not this.
            return {
                "tensors": self.fixed.specs,
                "num_samples": 1,
                "steps": 0,
                "metrics": {"train_loss": 0.0, "train_accuracy": 0.0},
            }, self.fixed.buffers
        weights = self._weights(header, body)
        dp_raw = header.get("dp")
        dp = None if dp_raw is None else DpSgdParams.from_json(dp_raw)
        round_no = int(header.get("round") or 0)
        delta, steps, metrics = self.torch_job.train(weights, dp=dp, round_no=round_no)
        specs, buffers = pack_arrays(delta)
        return {
            "tensors": specs,
            "num_samples": self.torch_job.num_train,
            "steps": steps,
            "metrics": metrics,
        }, buffers


def serve(inp: IO[bytes], out: IO[bytes], *, max_body_bytes: int) -> int:
    """Answer frames from ``inp`` on ``out`` until ``inp`` ends or ``shutdown``; exit status."""
    server = _Server()
    while True:
        try:
            frame = read_frame(inp, max_body_bytes=max_body_bytes)
        except ConfideError as exc:
            # The stream is out of step; say why once, then leave.
            print(f"worker: broken input stream: {exc}", file=sys.stderr)
            _reply_error(out, exc.reason, exc.message)
            return 1
        if frame is None:
            return 0
        header, body = frame
        try:
            (reply, buffers), stop = server.handle(header, body)
        except ConfideError as exc:
            print(f"worker: op {header.get('op')!r} failed: {exc}", file=sys.stderr)
            _reply_error(out, exc.reason, exc.message)
            continue
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            _reply_error(out, Reason.TRAINING_FAILED, f"{type(exc).__name__}: {exc}")
            continue
        reply["ok"] = True
        write_frame(out, reply, buffers)
        if stop:
            return 0


def _reply_error(out: IO[bytes], reason: Reason, message: str) -> None:
    write_frame(out, {"ok": False, "reason": reason.value, "message": message[:4000]})


def main() -> int:
    """Process entry: move stdout aside for frames, point fd 1 at stderr, and serve stdin."""
    frame_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    max_body = int(os.environ.get("CONFIDE_WORKER_MAX_BODY", str(2 * 1024**3)))
    with os.fdopen(frame_fd, "wb") as out:
        try:
            return serve(sys.stdin.buffer, out, max_body_bytes=max_body)
        except BrokenPipeError:
            return 1


if __name__ == "__main__":
    sys.exit(main())
