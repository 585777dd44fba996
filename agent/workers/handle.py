"""Daemon side of the worker: start it once per job, send ops, stop it (never imports torch).

A ``Worker`` owns one ``python -m confide_worker`` child (the worker runtime, its own
package: the daemon locates it but never imports it) with a minimal environment, and offers
``confide.wire.worker.WorkerContract`` by sending each call as a frame
(``confide.wire.worker_ops``). Ops run one at a time (a lock) under a timeout; a timed-out op
kills the child. Every failure of the child (death, timeout, broken protocol, an op that
failed inside it) surfaces as a ``ConfideError`` with a reason, never as a traceback, and the
daemon stays up:

- ``PolicyRefusal`` when the worker refused for a policy reason (``schema_mismatch``, ...);
- ``WorkerFailed`` with reason ``resource_limit`` when the worker was stopped at one of the
  site's limits: wall time (the op's timeout), output (``Limits.output_bytes`` of stdout and
  stderr), memory or processes (the cgroup's event counters say which); its one-line detail
  names the limit and quotes nothing the worker wrote, so it may reach the aggregator;
- ``WorkerFailed`` (an ``InternalError``) otherwise, carrying the worker's reason
  (``training_failed``, ``unavailable``, ``malformed``, ...: only reasons a worker may give;
  any other becomes ``worker_failed``, so job code cannot pass as, say, a budget refusal) or
  ``worker_failed`` when the process died;
- ``WorkerFailed`` with reason ``malformed`` when a reply lacks a field or holds one of the
  wrong type, a non-finite number or a negative count; the worker is then unusable.

What the worker writes to stderr (job code can write anything there, records included) is
read in chunks, never by line, so a flood without a newline costs the daemon no memory. With
``stderr_file`` set (the daemon sets it), it goes to that file (0600, its first MiB and last
8 KiB) and the daemon's log names the file rather than quoting it; without, the failure
message quotes its last 8 KiB (tests and tools). A bundle job's worker's error messages are
job code's text too: with ``stderr_file``, they stay in that file (the worker prints each
there) and the exception names the file.
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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import confide
from agent.workers.sandbox import BUNDLE_MOUNT, Confinement, Limits, SandboxSpec, runtime_paths
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
_WORKER_REASONS = _POLICY_REASONS | {
    Reason.TRAINING_FAILED,
    Reason.UNAVAILABLE,
    Reason.MALFORMED,
    Reason.NON_FINITE,
    Reason.OVERSIZED,
}
"""The reasons a worker's error frame may give; any other is recorded as ``worker_failed``."""
_STDERR_TAIL = 8192
_SMALL_REPLY_BYTES = 1024 * 1024
"""The largest body of a reply that carries no tensors (init, evaluate, ping): none does."""
_STDERR_FILE_HEAD = 1024 * 1024
_MiB = 1024 * 1024
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
) -> tuple[subprocess.Popen[bytes], Confinement]:
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


def _bundle_path(bundle: Path | None, *, sandboxed: bool) -> str | None:
    """Where the worker finds its bundle: the sandbox's fixed mount, or the folder itself."""
    if bundle is None:
        return None
    return BUNDLE_MOUNT if sandboxed else str(bundle.absolute())


class Worker:
    """A running worker process for one job; use ``Worker.start``.

    Args:
        proc: the child process (stdin/stdout pipes).
        job_id: the job it serves, for messages.
        timeout: seconds an op may take before the worker is killed.
        init_timeout: seconds ``init`` may take (torch import, data load).
        max_body_bytes: largest reply body accepted.
        confinement: a sandboxed worker's cgroup (which caps it hit; closed once the child
            has exited).
        limits: the limits it runs under (output bytes enforced here; all named in messages).
        stderr_file: where its stderr goes (see the module docstring); None keeps a tail in
            memory for messages.
        runs_job_code: it has a job's code bundle loaded; with ``stderr_file``, its error
            messages (job code's text) are left in that file, not put in exceptions.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        job_id: str,
        timeout: float,
        init_timeout: float = 180.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        confinement: Confinement | None = None,
        limits: Limits | None = None,
        stderr_file: Path | None = None,
        runs_job_code: bool = False,
    ) -> None:
        self._proc = proc
        self.runs_job_code = runs_job_code
        self._confinement = confinement
        self.limits = limits if limits is not None else Limits()
        self.stderr_file = stderr_file
        self.job_id = job_id
        self.timeout = timeout
        self.init_timeout = init_timeout
        self.max_body_bytes = max_body_bytes
        self.info: WorkerInfo | None = None
        self._lock = threading.Lock()
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_len = 0
        self._output_seen = 0
        self._output_flood = threading.Event()
        self._timed_out = False
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
        stderr_file: Path | None = None,
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
            stderr_file: where the worker's stderr goes (module docstring); None: a tail in
                memory, quoted in failure messages.

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
        confinement: Confinement | None = None
        limits = sandbox.limits if sandbox is not None else Limits()
        if limits.wall_seconds is not None:
            timeout = min(timeout, limits.wall_seconds)
            init_timeout = min(init_timeout, limits.wall_seconds)
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
                proc, confinement = _start_sandboxed(
                    command, sandbox, job_id, dataset, child_env, bundle
                )
        except OSError as exc:
            raise WorkerFailed(f"job {job_id}: cannot start worker: {exc}") from exc
        worker = cls(
            proc,
            job_id=job_id,
            timeout=timeout,
            init_timeout=init_timeout,
            confinement=confinement,
            limits=limits,
            stderr_file=stderr_file,
            runs_job_code=bundle is not None,
        )
        try:
            worker.init(
                job,
                job_id=job_id,
                dataset=dataset,
                device=device,
                bundle=_bundle_path(bundle, sandboxed=sandbox is not None),
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
        # A delta is the model's size in float32: a larger body is refused as it is announced,
        # so a worker cannot make the daemon hold more than one model's worth of its bytes.
        expected = sum(int(a.size) * 4 for _, a in weights)
        reply, body = self._call(*request.to_frame(), max_body=expected)
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
        confinement, self._confinement = self._confinement, None
        if confinement is not None:
            confinement.close()

    def stderr_tail(self) -> str:
        """The last few KiB the worker wrote to stderr."""
        return b"".join(self._stderr).decode("utf-8", "replace")[-_STDERR_TAIL:]

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        """Read stderr in chunks to its end: keep a tail, copy to ``stderr_file``, and kill
        the worker once it has written more than ``limits.output_bytes``."""
        sink = self._open_stderr_file()
        written = 0
        try:
            fd = stream.fileno()
            while chunk := os.read(fd, 65536):
                self._output_seen += len(chunk)
                if self._output_seen > self.limits.output_bytes and not self._output_flood.is_set():
                    self._output_flood.set()
                    with contextlib.suppress(OSError):
                        self._proc.kill()
                self._stderr.append(chunk)
                self._stderr_len += len(chunk)
                while self._stderr_len - len(self._stderr[0]) >= _STDERR_TAIL:
                    self._stderr_len -= len(self._stderr.popleft())
                if sink is not None and written < _STDERR_FILE_HEAD:
                    part = chunk[: _STDERR_FILE_HEAD - written]
                    with contextlib.suppress(OSError):
                        sink.write(part)
                    written += len(part)
        except OSError:
            pass
        finally:
            stream.close()
            if sink is not None:
                with contextlib.suppress(OSError):
                    if self._output_seen > written:
                        sink.write(
                            f"\n[... {self._output_seen - written} bytes not kept; "
                            "the last of them:]\n".encode()
                        )
                        sink.write(b"".join(self._stderr)[-_STDERR_TAIL:])
                    sink.close()

    def _open_stderr_file(self) -> IO[bytes] | None:
        if self.stderr_file is None:
            return None
        try:
            self.stderr_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.stderr_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError:
            return None
        return os.fdopen(fd, "wb")

    def _limit_hit(self) -> str | None:
        """The site limit that stopped the worker, as a sentence quoting nothing it wrote."""
        lim = self.limits
        if self._output_flood.is_set():
            return f"wrote more than {lim.output_bytes / _MiB:g} MiB to its output"
        hit = () if self._confinement is None else self._confinement.limits_hit()
        if "memory" in hit:
            mib = "" if lim.memory_bytes is None else f" ({lim.memory_bytes / _MiB:g} MiB)"
            return f"passed the site's memory limit{mib}"
        if "processes" in hit:
            return f"reached the site's process limit ({lim.processes})"
        if self._proc.returncode == -24:  # SIGXCPU: RLIMIT_CPU
            return f"passed the site's CPU time limit ({lim.cpu_seconds} s)"
        return None

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
        limit = self._limit_hit()  # before the cgroup and its counters go
        self._release()
        code = self._proc.returncode
        if limit is None and self._timed_out:
            limit = what
        if self.stderr_file is not None:
            where = f"; its stderr is in {self.stderr_file}"
        else:
            tail = self.stderr_tail().strip()
            where = f"; stderr tail:\n{tail}" if tail else ""
        if limit is not None:
            return WorkerFailed(
                f"job {self.job_id}: worker {limit} and was killed (exit status {code}){where}",
                reason=Reason.RESOURCE_LIMIT,
                public=f"the worker {limit} and was killed",
            )
        return WorkerFailed(f"job {self.job_id}: worker {what} (exit status {code}){where}")

    def _call(
        self,
        header: dict[str, Any],
        buffers: list[Buffer],
        *,
        timeout: float | None = None,
        max_body: int = _SMALL_REPLY_BYTES,
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
                self._timed_out = True
                self._proc.kill()

            timer = threading.Timer(limit, _kill)
            timer.daemon = True
            timer.start()
            try:
                write_frame(self._in, header, buffers)
                frame: Frame | None = read_frame(
                    self._out, max_body_bytes=min(self.max_body_bytes, max_body)
                )
            except (OSError, ValueError, ConfideError) as exc:
                if timed_out.is_set():
                    what = f"ran past its wall time ({limit:g} s in {header['op']})"
                    raise self._failed(what) from exc
                raise self._failed(f"broke the stream in {header['op']}: {exc}") from exc
            finally:
                timer.cancel()
            if frame is None:
                if timed_out.is_set():
                    raise self._failed(f"ran past its wall time ({limit:g} s in {header['op']})")
                raise self._failed(f"exited during {header['op']}")
            reply, body = frame
            if reply.get("ok") is True:
                return reply, body
            try:
                reason = Reason(reply.get("reason"))
            except ValueError:
                reason = Reason.WORKER_FAILED
            if reason not in _WORKER_REASONS:
                reason = Reason.WORKER_FAILED
            message = f"job {self.job_id}: {header['op']} failed: {reply.get('message', '')}"
            if self.runs_job_code and self.stderr_file is not None:
                # Job code wrote it and may have put records in it: the worker printed it to
                # its stderr file, and the daemon's log names the file instead.
                message = (
                    f"job {self.job_id}: {header['op']} failed ({reason.value}); "
                    f"the worker's message is in {self.stderr_file}"
                )
            hit = self._limit_hit()
            if hit is not None:
                # E.g. a fork refused at the process cap, answered as an ordinary error: the
                # limit is the reason, and a worker that met one is not used again.
                self._broken = self._broken or hit
                raise WorkerFailed(
                    f"{message} (the worker {hit})",
                    reason=Reason.RESOURCE_LIMIT,
                    public=f"the worker {hit}",
                )
            if reason in _POLICY_REASONS:
                raise PolicyRefusal(message, reason=reason)
            raise WorkerFailed(message, reason=reason)
