"""The worker process: ``python -m confide_worker``, one per job, serving framed ops.

It reads frames from stdin and writes one reply frame per request to stdout (see
``confide.wire.worker_ops``). stdout is reserved for frames: file descriptor 1 is pointed at
stderr at start, so prints and C-level output from libraries cannot corrupt the stream. A
failed op answers an error frame and the worker keeps serving; it exits when stdin closes, on
``shutdown``, or when the stream itself is broken (a frame it cannot parse).

This module only decodes, calls ``confide_worker.runtime.Runtime`` through
``WorkerContract``, and encodes; the job's work is the runtime's.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import IO, Any

from confide.errors import ConfideError, MalformedMessage, Reason
from confide.wire.frames import Buffer, read_frame, write_frame
from confide.wire.worker import WorkerContract
from confide.wire.worker_ops import (
    Body,
    EvaluateRequest,
    InitRequest,
    Op,
    TrainRequest,
    encode_reply,
)
from confide_worker.runtime import Runtime

__all__ = ["main", "serve"]

Reply = tuple[dict[str, Any], list[Buffer]]


class _Server:
    """Turns request frames into calls on one ``Runtime``; one instance per process."""

    def __init__(self) -> None:
        self.runtime = Runtime()

    def handle(self, header: dict[str, Any], body: Body) -> tuple[Reply, bool]:
        raw = header.get("op")
        try:
            op = Op(raw)
        except ValueError:
            raise MalformedMessage(f"unknown op {raw!r}") from None
        if op is Op.PING:
            return ({"pid": os.getpid(), "torch_loaded": "torch" in sys.modules}, []), False
        if op is Op.SHUTDOWN:
            return ({}, []), True
        contract: WorkerContract = self.runtime
        if op is Op.INIT:
            init = InitRequest.from_frame(header, body)
            info = contract.init(
                init.job,
                job_id=init.job_id,
                dataset=init.dataset,
                device=init.device,
                bundle=init.bundle,
            )
            reply, buffers = encode_reply(info)
            reply["torch_loaded"] = "torch" in sys.modules
            return (reply, buffers), False
        if not self.runtime.ready:
            raise MalformedMessage(f"op {op.value!r} before init")
        if op is Op.EVALUATE:
            evaluate = EvaluateRequest.from_frame(header, body)
            result = contract.evaluate(evaluate.weights, loss_clip=evaluate.loss_clip)
            return encode_reply(result), False
        train = TrainRequest.from_frame(header, body)
        trained = contract.train(train.weights, dp=train.dp, round=train.round)
        return encode_reply(trained), False


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
