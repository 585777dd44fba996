"""Active jobs built from the store: a new job, a running job resumed at startup, or a failed one.

A new job is eligible to the connected sites holding its dataset. At startup each running job
is rebuilt from its last stored model and optimizer state and resumes where
``jobs.resume_point`` says; a job that cannot be rebuilt is marked failed in the store, so one
bad job never keeps the aggregator down.

These functions read the store and build ``Job`` objects; they hold no lock and keep no
state. The round engine (``aggregator.coordinator``) calls them, passing a snapshot of the
connected sites, and is the only owner of the jobs they return.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import structlog

from aggregator import rounds as r
from aggregator.jobs import Job, new_job, resume_point
from aggregator.store import AuditNote, BlobStore, JobRow, Store
from confide.errors import ConfideError, Reason
from confide.v1 import common_pb2

__all__ = ["build_job", "mark_failed", "rebuild_job"]

log = structlog.get_logger("aggregator.coordinator")


def build_job(
    connected: Mapping[str, frozenset[str]],
    job_id: str,
    spec: common_pb2.JobSpec,
    signed: common_pb2.Envelope,
    cert: bytes,
    *,
    model_version: str,
    version_no: int,
    max_retries: int,
    retry_backoff_s: float = 0.0,
    lineage: Sequence[str] = (),
) -> Job:
    """An active job, eligible to the connected sites that hold its dataset.

    Args:
        connected: each connected site's registered dataset names.

    Raises:
        ConfigError: the spec's model does not fit its dataset, or its optimizer is unknown.
    """
    eligible = frozenset(site for site, ds in connected.items() if spec.dataset.name in ds)
    return new_job(
        job_id,
        spec,
        signed,
        cert,
        model_version=model_version,
        version_no=version_no,
        max_retries=max_retries,
        eligible=eligible,
        retry_backoff_s=retry_backoff_s,
        lineage=lineage,
    )


def rebuild_job(
    store: Store,
    blobs: BlobStore,
    connected: Mapping[str, frozenset[str]],
    row: JobRow,
    *,
    max_retries: int,
    retry_backoff_s: float = 0.0,
) -> tuple[Job, r.Event]:
    """A stored running job rebuilt from its last model, and the event that resumes it.

    Args:
        connected: each connected site's registered dataset names.
    """
    spec = common_pb2.JobSpec.FromString(row.spec)
    models = store.models(row.id)
    last = models[-1]
    job = build_job(
        connected,
        row.id,
        spec,
        common_pb2.Envelope.FromString(row.signed_job),
        row.signer_cert,
        model_version=last.sha256,
        version_no=last.version_no,
        max_retries=max_retries,
        retry_backoff_s=retry_backoff_s,
        lineage=[m.sha256 for m in models],  # the chain is a function of them (confide.lineage)
    )
    if last.optimizer_state:
        job.optimizer.load_state(blobs.load(last.optimizer_state))
    attempts = {x.round: x.attempt for x in store.rounds(row.id)}
    job.state, event = resume_point(job, done=last.version_no, attempts=attempts)
    return job, event


def mark_failed(
    store: Store, job_id: str, exc: BaseException, *, clock: Callable[[], float]
) -> None:
    """Mark a stored job FAILED because it cannot run (logged with its traceback, audited).

    Args:
        job_id: the job, already in the store.
        exc: why it cannot run; a ``ConfideError`` gives its reason, anything else
            ``internal``.
        clock: unix seconds.
    """
    reason = exc.reason if isinstance(exc, ConfideError) else Reason.INTERNAL
    error = f"cannot run: {exc}"
    log.error("job_unrunnable", job=job_id, reason=reason.value, error=str(exc), exc_info=exc)
    now = clock()
    store.set_job_state(
        job_id,
        "failed",
        error=error,
        audit=AuditNote(
            event="job_failed",
            actor="aggregator",
            at=now,
            job=job_id,
            reason=reason.value,
            detail=error,
        ),
    )
