"""Daemon side of the worker: start it once per job, send ops, stop it (never imports torch).

A ``Worker`` owns one ``python -m confide_worker`` child (the worker runtime, its own
package: the daemon locates it but never imports it) with a minimal environment, and offers
``confide.wire.worker.WorkerContract`` by sending each call as a frame
(``confide.wire.worker_ops``). Ops run one at a time (a lock) under a timeout; a timed-out op
kills the child. Every failure of the child (death, timeout, broken protocol, an op that
failed inside it) surfaces as a ``ConfideError`` with a reason, never as a traceback, and the
daemon stays up:

- ``PolicyRefusal`` when the worker refused for a policy reason (``schema_mismatch``, ...);
- ``WorkerFailed`` (an ``InternalError``) otherwise, carrying the worker's reason
  (``training_failed``, ``unavailable``, ``malformed``, ...) or ``worker_failed`` when the
  process died or timed out, with the tail of its stderr in the message;
- ``WorkerFailed`` with reason ``malformed`` when a reply lacks a field or holds one of the
  wrong type, a non-finite number or a negative count; the worker is then unusable.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.util
import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import confide
from agent.workers.sandbox import Limits, SandboxSpec, runtime_paths
from agent.workers.sandbox import start as start_sandbox
from confide.data.datasets import DatasetDescription
from confide.errors import ConfideError, InternalError, MalformedMessage, PolicyRefusal, Reason
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays
from confide.wire.frames import DEFAULT_MAX_BODY_BYTES, Buffer, Frame, read_frame, write_frame
from confide.wire.worker import DpSgdParams, EvalResult, TrainResult, WorkerInfo
from confide.wire.worker_ops import (
    EvaluateRequest,
    InitRequest,
    Op,
    TrainRequest,
    decode_eval_result,
    decode_info,
    decode_train_result,
)

__all__ = ["WORKER_PACKAGE", "Sandboxing", "Worker", "WorkerFailed", "worker_package_dir"]

WORKER_PACKAGE = "confide_worker"
"""The worker runtime's package, run as ``python -m confide_worker``."""

_POLICY_REASONS = {
    Reason.SCHEMA_MISMATCH,
    Reason.UNKNOWN_DATASET,
    Reason.INVALID_JOB,
    Reason.UNSAFE_REQUEST,
    Reason.MODEL_UNSUPPORTED,
}
_STDERR_TAIL = 8192
_PASS_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TMPDIR", "LANG")


class WorkerFailed(InternalError):
    """The worker process died, timed out, broke the protocol or failed an op.

    The message carries the tail of the worker's stderr when the process died.
    """

    default_reason = Reason.WORKER_FAILED


def worker_package_dir() -> Path:
    """Where the worker runtime's package is, found the way the worker's interpreter finds it.

    A lookup (``importlib.util.find_spec``), not an import: the daemon never loads the worker's
    code. Its parent goes on the worker's ``PYTHONPATH``; inside the sandbox, it and
    ``confide`` are the only code bound besides the interpreter's own packages.

    Raises:
        WorkerFailed: the package is not installed next to the daemon.
    """
    spec = importlib.util.find_spec(WORKER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WorkerFailed(f"the worker runtime ({WORKER_PACKAGE}) is not installed here")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


@dataclasses.dataclass(frozen=True, slots=True)
class Sandboxing:
    """How the daemon sandboxes its workers: the bwrap executable, limits and allowed GPUs."""

    bwrap: str
    limits: Limits = dataclasses.field(default_factory=Limits)
    gpus: tuple[int, ...] = ()


def _start_sandboxed(
    command: list[str],
    sandbox: Sandboxing,
    job_id: str,
    dataset: DatasetDescription,
    env: Mapping[str, str],
    bundle: Path | None,
) -> tuple[subprocess.Popen[bytes], Callable[[], None]]:
    """Start the worker in bubblewrap, seeing only its runtime, its code, its dataset and its
    job's unpacked code bundle (read-only)."""
    roots = (worker_package_dir(), Path(confide.__file__).resolve().parent)
    spec = SandboxSpec(
        interpreter=Path(command[0]),
        runtime=runtime_paths(roots),
        dataset=Path(dataset.path).absolute(),
        bundle=bundle,
        gpus=sandbox.gpus,
        env={k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"},
        limits=sandbox.limits,
    )
    name = f"{job_id}-{next(_WORKER_SEQ)}-{os.getpid()}"
    return start_sandbox(spec, bwrap=sandbox.bwrap, command=command, name=name)


_WORKER_SEQ = itertools.count(1)


class Worker:
    """A running worker process for one job; use ``Worker.start``.

    Args:
        proc: the child process (stdin/stdout pipes).
        job_id: the job it serves, for messages.
        timeout: seconds an op may take before the worker is killed.
        init_timeout: seconds ``init`` may take (torch import, data load).
        max_body_bytes: largest reply body accepted.
        cleanup: called once the child has exited (removes a sandboxed worker's cgroup).
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        job_id: str,
        timeout: float,
        init_timeout: float = 180.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self._proc = proc
        self._cleanup = cleanup
        self.job_id = job_id
        self.timeout = timeout
        self.init_timeout = init_timeout
        self.max_body_bytes = max_body_bytes
        self.info: WorkerInfo | None = None
        self._lock = threading.Lock()
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_len = 0
        self._broken: str | None = None
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self._in: IO[bytes] = proc.stdin
        self._out: IO[bytes] = proc.stdout
        self._drain = threading.Thread(
            target=self._drain_stderr,
            args=(proc.stderr,),
            name=f"worker-stderr-{proc.pid}",
            daemon=True,
        )
        self._drain.start()

    @classmethod
    def start(
        cls,
        *,
        job: common_pb2.JobSpec,
        job_id: str,
        dataset: DatasetDescription,
        device: str = "auto",
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        init_timeout: float = 180.0,
        sandbox: Sandboxing | None = None,
        bundle: Path | None = None,
    ) -> Worker:
        """Spawn a worker for a job and wait until it has built the model and loaded the data.

        Args:
            job: the job spec (model, dataset schema, training parameters).
            job_id: the job's id, for messages.
            dataset: the site's dataset config, already checked with ``check_schema``.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            python: the interpreter that runs the worker.
            env: extra environment variables for the child (on top of a minimal one).
            timeout: seconds each later op may take.
            init_timeout: seconds ``init`` may take (torch import, data load).
            sandbox: run the worker inside bubblewrap with these limits (``agent.workers.sandbox``);
                None runs it as a plain child process.
            bundle: a bundle job's checked, unpacked code (``agent.workers.bundles``), bound
                read-only into the sandbox; the caller removes it after ``stop``.

        Raises:
            PolicyRefusal: the data does not match the declared schema.
            WorkerFailed: the worker could not start, or init failed (reason from the worker,
                e.g. ``unavailable`` for a missing dataset file).
        """
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(worker_package_dir().parent),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        for key in _PASS_ENV:
            if key in os.environ:
                child_env[key] = os.environ[key]
        child_env.update(env or {})
        command = [python, "-m", WORKER_PACKAGE]
        cleanup: Callable[[], None] | None = None
        try:
            if sandbox is None:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=child_env,
                    close_fds=True,
                )
            else:
                proc, cleanup = _start_sandboxed(
                    command, sandbox, job_id, dataset, child_env, bundle
                )
        except OSError as exc:
            raise WorkerFailed(f"job {job_id}: cannot start worker: {exc}") from exc
        worker = cls(
            proc, job_id=job_id, timeout=timeout, init_timeout=init_timeout, cleanup=cleanup
        )
        try:
            worker.init(
                job,
                job_id=job_id,
                dataset=dataset,
                device=device,
                bundle=None if bundle is None else str(bundle.absolute()),
            )
        except ConfideError:
            worker.stop()
            raise
        return worker

    def init(
        self,
        job: common_pb2.JobSpec,
        *,
        job_id: str,
        dataset: DatasetDescription,
        device: str,
        bundle: str | None = None,
    ) -> WorkerInfo:
        """Have the worker build the job's model and load its data; sets ``info``.

        Args:
            job: the job spec (model, dataset schema, training parameters).
            job_id: the job's id, for the worker's messages.
            dataset: the dataset to read, already checked with ``check_schema``.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            bundle: a bundle job's unpacked code folder, or None.

        Raises:
            PolicyRefusal: the data does not match the declared schema.
            WorkerFailed: init failed (reason from the worker, e.g. ``unavailable`` for a
                missing dataset file), timed out, or its reply is malformed.
        """
        request = InitRequest(job=job, job_id=job_id, dataset=dataset, device=device, bundle=bundle)
        reply, body = self._call(*request.to_frame(), timeout=self.init_timeout)
        with self._parsing(Op.INIT):
            self.info = decode_info(reply, body)
        return self.info

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the child is running and its stream is in step."""
        return self._broken is None and self._proc.poll() is None

    def evaluate(self, weights: NamedArrays, *, loss_clip: float | None = None) -> EvalResult:
        """Evaluate weights on the site's hold-out data.

        Args:
            weights: the model, in ``parameter_shapes`` order.
            loss_clip: L: each record's loss is clipped to L before the mean (None: unclipped),
                so one record moves the loss sum by at most L (``confide.dp.evaluation``).

        Raises:
            WorkerFailed: the worker died, timed out or failed the op.
        """
        request = EvaluateRequest(weights=weights, loss_clip=loss_clip)
        reply, body = self._call(*request.to_frame())
        with self._parsing(Op.EVALUATE):
            return decode_eval_result(reply, body)

    def train(self, weights: NamedArrays, *, dp: DpSgdParams | None, round: int) -> TrainResult:
        """Train one round from ``weights``; the delta's arrays are views of one fresh buffer.

        Args:
            weights: the global model in ``confide.models.parameter_shapes`` order.
            dp: DP-SGD parameters the daemon accounts for, or None for plain SGD.
            round: the round number (seeds plain SGD's shuffles).

        Raises:
            WorkerFailed: the worker died, timed out or failed the op (e.g. training_failed).
        """
        request = TrainRequest(weights=weights, dp=dp, round=round)
        reply, body = self._call(*request.to_frame())
        with self._parsing(Op.TRAIN):
            return decode_train_result(reply, body)

    def ping(self) -> dict[str, Any]:
        """The worker's ``pid`` and whether it has imported torch (``torch_loaded``)."""
        reply, _ = self._call({"op": Op.PING.value}, [])
        return reply

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit, then terminate, then kill it; safe to call twice."""
        proc = self._proc
        if proc.poll() is None and self._broken is None:
            acquired = self._lock.acquire(timeout=timeout)
            try:
                if acquired:
                    write_frame(self._in, {"op": Op.SHUTDOWN.value})
            except (OSError, ValueError):
                pass
            finally:
                if acquired:
                    self._lock.release()
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._out.close()
        self._drain.join(timeout=1.0)
        self._release()

    def _release(self) -> None:
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()

    def stderr_tail(self) -> str:
        """The last few KiB the worker wrote to stderr."""
        return b"".join(self._stderr).decode("utf-8", "replace")[-_STDERR_TAIL:]

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._stderr.append(line)
            self._stderr_len += len(line)
            while self._stderr_len > _STDERR_TAIL and len(self._stderr) > 1:
                self._stderr_len -= len(self._stderr.popleft())
        stream.close()

    @contextlib.contextmanager
    def _parsing(self, op: Op) -> Iterator[None]:
        """Turn a malformed ``op`` reply into ``WorkerFailed(malformed)``; the worker is broken.

        A worker that answers out of protocol cannot be trusted with the next op either, so
        ``alive`` turns False and the daemon drops it.
        """
        try:
            yield
        except MalformedMessage as exc:
            self._broken = self._broken or f"malformed {op.value} reply"
            raise WorkerFailed(
                f"job {self.job_id}: worker sent a malformed {op.value} reply: {exc}",
                reason=Reason.MALFORMED,
            ) from exc

    def _failed(self, what: str) -> WorkerFailed:
        self._broken = self._broken or what
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5.0)
        self._drain.join(timeout=1.0)
        self._release()
        tail = self.stderr_tail().strip()
        code = self._proc.returncode
        msg = f"job {self.job_id}: worker {what} (exit status {code})"
        return WorkerFailed(msg + (f"; stderr tail:\n{tail}" if tail else ""))

    def _call(
        self, header: dict[str, Any], buffers: list[Buffer], *, timeout: float | None = None
    ) -> Frame:
        with self._lock:
            if self._broken is not None:
                raise WorkerFailed(f"job {self.job_id}: worker unusable: {self._broken}")
            if self._proc.poll() is not None:
                raise self._failed("is not running")
            limit = self.timeout if timeout is None else timeout
            timed_out = threading.Event()

            def _kill() -> None:
                timed_out.set()
                self._proc.kill()

            timer = threading.Timer(limit, _kill)
            timer.daemon = True
            timer.start()
            try:
                write_frame(self._in, header, buffers)
                frame: Frame | None = read_frame(self._out, max_body_bytes=self.max_body_bytes)
            except (OSError, ValueError, ConfideError) as exc:
                if timed_out.is_set():
                    raise self._failed(f"timed out after {limit:g}s in {header['op']}") from exc
                raise self._failed(f"broke the stream in {header['op']}: {exc}") from exc
            finally:
                timer.cancel()
            if frame is None:
                if timed_out.is_set():
                    raise self._failed(f"timed out after {limit:g}s in {header['op']}")
                raise self._failed(f"exited during {header['op']}")
            reply, body = frame
            if reply.get("ok") is True:
                return reply, body
            try:
                reason = Reason(reply.get("reason"))
            except ValueError:
                reason = Reason.WORKER_FAILED
            message = f"job {self.job_id}: {header['op']} failed: {reply.get('message', '')}"
            if reason in _POLICY_REASONS:
                raise PolicyRefusal(message, reason=reason)
            raise WorkerFailed(message, reason=reason)
