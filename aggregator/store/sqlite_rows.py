"""The SQLite store's rows by column name: each table's columns, and each row to its named
parameters and back (JSON text for lists and maps, 0/1 for booleans).

Statements name these columns and rows are read by name (``sqlite3.Row``), never by
position, so a column's place in its table (which differs between a fresh and an upgraded
file) never matters.
"""

from __future__ import annotations

import json
import sqlite3

from aggregator.audit import AuditEntry
from aggregator.store.rows import (
    FailureRow,
    JobRow,
    ModelRow,
    RoundRow,
    SiteRoundRow,
    SiteRow,
)

__all__ = [
    "AUDIT",
    "FAILURES",
    "JOBS",
    "MODELS",
    "ROUNDS",
    "ROUND_SITES",
    "SITES",
    "Params",
    "audit_entry",
    "audit_params",
    "failure_params",
    "failure_row",
    "job_params",
    "job_row",
    "model_params",
    "model_row",
    "round_params",
    "round_row",
    "site_params",
    "site_round_params",
    "site_round_row",
    "site_row",
]

Params = dict[str, object]
"""A statement's named parameters (``:column``)."""

SITES = ("id", "datasets", "device", "agent_version", "last_heartbeat", "sizes")
JOBS = (
    "id",
    "spec",
    "signed_job",
    "signer_cert",
    "state",
    "error",
    "submitted_by",
    "created",
    "final_metrics",
)
ROUNDS = (
    "job",
    "round",
    "state",
    "attempt",
    "model_version_in",
    "model_version_out",
    "metrics",
    "started",
    "finished",
)
ROUND_SITES = (
    "job",
    "round",
    "site",
    "outcome",
    "reason",
    "num_samples",
    "epsilon",
    "update_epsilon",
    "metrics",
    "weight",
    "update_norm",
    "clipped",
)
MODELS = ("job", "version_no", "sha256", "optimizer_state", "created")
AUDIT = (
    "seq",
    "at",
    "event",
    "actor",
    "job",
    "round",
    "reason",
    "detail",
    "prev_hash",
    "hash",
)
FAILURES = ("job", "round", "site", "attempt", "outcome", "reason", "detail", "at")


def site_params(row: SiteRow) -> Params:
    return {
        "id": row.id,
        "datasets": json.dumps(row.datasets),
        "device": row.device,
        "agent_version": row.agent_version,
        "last_heartbeat": row.last_heartbeat,
        "sizes": json.dumps(row.sizes),
    }


def site_row(r: sqlite3.Row) -> SiteRow:
    sizes = json.loads(str(r["sizes"]))
    return SiteRow(
        id=str(r["id"]),
        datasets=[str(d) for d in json.loads(str(r["datasets"]))],
        device=str(r["device"]),
        agent_version=str(r["agent_version"]),
        last_heartbeat=float(r["last_heartbeat"]),
        sizes={str(k): (int(v[0]), int(v[1])) for k, v in sizes.items()},
    )


def job_params(row: JobRow) -> Params:
    return {
        "id": row.id,
        "spec": row.spec,
        "signed_job": row.signed_job,
        "signer_cert": row.signer_cert,
        "state": row.state,
        "error": row.error,
        "submitted_by": row.submitted_by,
        "created": row.created,
        "final_metrics": json.dumps(row.final_metrics),
    }


def job_row(r: sqlite3.Row) -> JobRow:
    return JobRow(
        id=str(r["id"]),
        spec=bytes(r["spec"]),
        signed_job=bytes(r["signed_job"]),
        signer_cert=bytes(r["signer_cert"]),
        state=str(r["state"]),
        error=str(r["error"]),
        submitted_by=str(r["submitted_by"]),
        created=float(r["created"]),
        final_metrics=json.loads(str(r["final_metrics"])),
    )


def round_params(row: RoundRow) -> Params:
    return {
        "job": row.job,
        "round": row.round,
        "state": row.state,
        "attempt": row.attempt,
        "model_version_in": row.model_version_in,
        "model_version_out": row.model_version_out,
        "metrics": json.dumps(row.metrics),
        "started": row.started,
        "finished": row.finished,
    }


def round_row(r: sqlite3.Row) -> RoundRow:
    return RoundRow(
        job=str(r["job"]),
        round=int(r["round"]),
        state=str(r["state"]),
        attempt=int(r["attempt"]),
        model_version_in=str(r["model_version_in"]),
        model_version_out=str(r["model_version_out"]),
        metrics=json.loads(str(r["metrics"])),
        started=float(r["started"]),
        finished=float(r["finished"]),
    )


def site_round_params(row: SiteRoundRow) -> Params:
    return {
        "job": row.job,
        "round": row.round,
        "site": row.site,
        "outcome": row.outcome,
        "reason": row.reason,
        "num_samples": row.num_samples,
        "epsilon": row.epsilon,
        "update_epsilon": row.update_epsilon,
        "metrics": json.dumps(row.metrics),
        "weight": row.weight,
        "update_norm": row.update_norm,
        "clipped": int(row.clipped),
    }


def site_round_row(r: sqlite3.Row) -> SiteRoundRow:
    return SiteRoundRow(
        job=str(r["job"]),
        round=int(r["round"]),
        site=str(r["site"]),
        outcome=str(r["outcome"]),
        reason=str(r["reason"]),
        num_samples=int(r["num_samples"]),
        epsilon=float(r["epsilon"]),
        update_epsilon=float(r["update_epsilon"]),
        metrics=json.loads(str(r["metrics"])),
        weight=float(r["weight"]),
        update_norm=float(r["update_norm"]),
        clipped=bool(r["clipped"]),
    )


def model_params(row: ModelRow) -> Params:
    return {
        "job": row.job,
        "version_no": row.version_no,
        "sha256": row.sha256,
        "optimizer_state": row.optimizer_state,
        "created": row.created,
    }


def model_row(r: sqlite3.Row) -> ModelRow:
    return ModelRow(
        job=str(r["job"]),
        version_no=int(r["version_no"]),
        sha256=str(r["sha256"]),
        optimizer_state=str(r["optimizer_state"]),
        created=float(r["created"]),
    )


def audit_params(e: AuditEntry) -> Params:
    return {
        "seq": e.seq,
        "at": e.at,
        "event": e.event,
        "actor": e.actor,
        "job": e.job,
        "round": e.round,
        "reason": e.reason,
        "detail": e.detail,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


def audit_entry(r: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        seq=int(r["seq"]),
        at=float(r["at"]),
        event=str(r["event"]),
        actor=str(r["actor"]),
        job=str(r["job"]),
        round=int(r["round"]),
        reason=str(r["reason"]),
        detail=str(r["detail"]),
        prev_hash=bytes(r["prev_hash"]),
        hash=bytes(r["hash"]),
    )


def failure_params(row: FailureRow) -> Params:
    return {
        "job": row.job,
        "round": row.round,
        "site": row.site,
        "attempt": row.attempt,
        "outcome": row.outcome,
        "reason": row.reason,
        "detail": row.detail,
        "at": row.at,
    }


def failure_row(r: sqlite3.Row) -> FailureRow:
    return FailureRow(
        job=str(r["job"]),
        round=int(r["round"]),
        site=str(r["site"]),
        attempt=int(r["attempt"]),
        outcome=str(r["outcome"]),
        reason=str(r["reason"]),
        detail=str(r["detail"]),
        at=float(r["at"]),
    )
