"""The daemon's worker processes: what it needs from one, and one per running job.

A job's worker (``agent.workers.handle.Worker``) is started on the job's first task and reused
for all its rounds (starting one imports torch and loads the data: seconds). It is stopped on
JOB_DONE, on shutdown, or after it failed; the next task then starts a fresh one.

A bundle job's worker gets a fresh checked copy of its code (``agent.workers.bundles``) when it
starts; the pool removes that copy once the worker has stopped (or failed to start).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from agent.workers.bundles import remove_copy
from agent.workers.sandbox import Isolation, Limits
from confide.data.datasets import DatasetDescription
from confide.errors import PolicyRefusal, Reason
from confide.v1 import common_pb2
from confide.wire.worker import WorkerContract, WorkerInfo

__all__ = [
    "WorkerFactory",
    "WorkerHandle",
    "WorkerPool",
    "start_worker",
    "stderr_file",
    "worker_factory",
]

log = structlog.get_logger("confide.agent")


class WorkerHandle(WorkerContract, Protocol):
    """What the daemon needs from a job's worker process (``agent.workers.handle.Worker``).

    The worker's contract (``init``, ``evaluate``, ``train``; each raises ``WorkerFailed``
    when the process fails), plus what the daemon sees of the process itself. A factory
    hands it out already initialised.
    """

    @property
    def info(self) -> WorkerInfo | None:
        """What the worker reported after start-up (train/hold-out sizes, device)."""
        ...

    @property
    def alive(self) -> bool:
        """Whether the worker process is still running."""
        ...

    def stop(self) -> None:
        """End the worker process."""
        ...


class WorkerFactory(Protocol):
    """Starts a job's worker (``start_worker`` in the daemon, a fake in unit tests)."""

    def __call__(
        self,
        *,
        job: common_pb2.JobSpec,
        job_id: str,
        dataset: DatasetDescription,
        device: str,
        timeout: float,
        bundle: Path | None = None,
    ) -> WorkerHandle:
        """Start a worker for ``job`` on ``dataset`` (with its unpacked ``bundle``, if any).

        Raises ``WorkerFailed``."""
        ...


def start_worker(
    *,
    job: common_pb2.JobSpec,
    job_id: str,
    dataset: DatasetDescription,
    device: str,
    timeout: float,
    bundle: Path | None = None,
) -> WorkerHandle:
    """Start the real worker process for a job, without a sandbox (tests and trusted code).

    The daemon uses ``worker_factory``, which sandboxes it.

    Args:
        timeout: seconds one worker operation may take before the worker is killed.

    Raises:
        WorkerFailed: the worker could not start.
        PolicyRefusal: the data does not match the declared schema.
    """
    # Imported here so tests with a fake worker never load the worker package; the handle
    # itself imports no torch (tests/agent/test_imports.py checks it in a fresh process).
    from agent.workers.handle import Worker

    return Worker.start(
        job=job, job_id=job_id, dataset=dataset, device=device, timeout=timeout, bundle=bundle
    )


KEPT_STDERR_FILES = 64
"""How many jobs' worker stderr files a site keeps (the newest; each at most ~1 MiB)."""


def stderr_file(stderr_dir: Path, job_id: str) -> Path:
    """Where a job's worker writes its stderr: a name derived from the job id by hash, since
    the id comes from the aggregator and may hold any character. Older jobs' files past
    ``KEPT_STDERR_FILES`` are removed, so the folder stays bounded."""
    with contextlib.suppress(OSError):
        files = sorted(stderr_dir.glob("*.stderr"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - KEPT_STDERR_FILES + 1)]:
            old.unlink(missing_ok=True)
    return stderr_dir / f"{hashlib.sha256(job_id.encode()).hexdigest()[:24]}.stderr"


def worker_factory(
    isolation: Isolation,
    *,
    limits: Limits,
    gpus: tuple[int, ...],
    allow_unsandboxed: bool,
    stderr_dir: Path | None = None,
) -> WorkerFactory:
    """How the daemon starts workers on this host: in the sandbox, or as the policy allows.

    Args:
        isolation: what ``agent.workers.sandbox.probe`` found on this host.
        limits: resource limits per worker.
        gpus: GPU ids a worker may use.
        allow_unsandboxed: run workers unisolated where the sandbox cannot be built.
        stderr_dir: where workers' stderr goes, one file per job (``stderr_file``), so the
            daemon's log never quotes what job code wrote; None keeps it in memory.
    """
    from agent.workers.handle import Sandboxing, Worker

    sandbox: Sandboxing | None = None
    if isolation.sandboxed and isolation.bwrap is not None:
        sandbox = Sandboxing(bwrap=isolation.bwrap, limits=limits, gpus=gpus)
    if sandbox is not None or allow_unsandboxed:

        def start(
            *,
            job: common_pb2.JobSpec,
            job_id: str,
            dataset: DatasetDescription,
            device: str,
            timeout: float,
            bundle: Path | None = None,
        ) -> WorkerHandle:
            return Worker.start(
                job=job,
                job_id=job_id,
                dataset=dataset,
                device=device,
                timeout=timeout,
                sandbox=sandbox,
                bundle=bundle,
                stderr_file=None if stderr_dir is None else stderr_file(stderr_dir, job_id),
            )

        return start

    def refuse(
        *,
        job: common_pb2.JobSpec,
        job_id: str,
        dataset: DatasetDescription,
        device: str,
        timeout: float,
        bundle: Path | None = None,
    ) -> WorkerHandle:
        raise PolicyRefusal(
            f"job {job_id}: this site runs workers only in a sandbox and cannot build one: "
            f"{isolation.detail} (or set [sandbox] allow_unsandboxed = true)",
            reason=Reason.SANDBOX_UNAVAILABLE,
        )

    return refuse


class WorkerPool:
    """At most one running worker per job id; thread-safe.

    Args:
        start: starts a worker.
        device: where workers train (auto, cpu, cuda, cuda:N).
        timeout: seconds one worker operation may take.
        on_started: told how many seconds each worker took to start (the daemon's metrics).
    """

    def __init__(
        self,
        start: WorkerFactory,
        *,
        device: str,
        timeout: float,
        on_started: Callable[[float], None] | None = None,
    ) -> None:
        self._start = start
        self._on_started = on_started
        self._device = device
        self._timeout = timeout
        self._workers: dict[str, WorkerHandle] = {}
        self._bundles: dict[str, Path] = {}
        self._lock = threading.Lock()

    def get(
        self,
        job_id: str,
        job: common_pb2.JobSpec,
        dataset: DatasetDescription,
        *,
        bundle: Callable[[], Path] | None = None,
    ) -> WorkerHandle:
        """The job's running worker, started (or restarted after it died) when needed.

        Args:
            bundle: makes a fresh checked copy of a bundle job's code; called only when a
                worker starts, and the copy is removed when that worker stops.

        Raises:
            WorkerFailed: the worker could not start.
            PolicyRefusal: the bundle was refused (``agent.workers.bundles``).
        """
        with self._lock:
            worker = self._workers.get(job_id)
        if worker is not None and worker.alive:
            return worker
        if worker is not None:
            log.warning("worker_restart", reason="worker_not_alive")
            self.drop(job_id)
        copy = bundle() if bundle is not None else None
        began = time.monotonic()
        try:
            worker = self._start(
                job=job,
                job_id=job_id,
                dataset=dataset,
                device=self._device,
                timeout=self._timeout,
                bundle=copy,
            )
        except BaseException:
            if copy is not None:
                remove_copy(copy)
            raise
        seconds = time.monotonic() - began
        with self._lock:
            self._workers[job_id] = worker
            if copy is not None:
                self._bundles[job_id] = copy
        if self._on_started is not None:
            self._on_started(seconds)
        info = worker.info
        if info is not None:
            log.info(
                "worker_started",
                num_train=info.num_train,
                num_holdout=info.num_holdout,
                device=info.device,
                start_s=round(seconds, 3),
            )
        return worker

    def drop(self, job_id: str) -> None:
        """Stop and forget the job's worker, if any."""
        with self._lock:
            worker = self._workers.pop(job_id, None)
            copy = self._bundles.pop(job_id, None)
        if worker is not None:
            _stop_quietly(worker)
        if copy is not None:
            remove_copy(copy)

    def stop_all(self) -> None:
        """Stop every worker (idempotent)."""
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
            copies, self._bundles = list(self._bundles.values()), {}
        for w in workers:
            _stop_quietly(w)
        for copy in copies:
            remove_copy(copy)

    @property
    def jobs(self) -> list[str]:
        """Job ids with a worker."""
        with self._lock:
            return sorted(self._workers)


def _stop_quietly(worker: WorkerHandle) -> None:
    try:
        worker.stop()
    except Exception:  # a dying worker must not take the daemon's shutdown down with it
        log.warning("worker_stop_failed", exc_info=True)
