"""``confide job check|submit|init-weights|status|list|cancel`` and ``confide sites``.

A job that names its own code (``[model] code``, ``confide.bundle``) is submitted in three
calls: the code archive and the initial weights are uploaded first (``UploadBlob``, stored by
hash), then the signed job names both by SHA-256. ``init-weights`` makes the initial weights
on the operator's machine by running the bundle's ``build_model`` (it needs torch; the
aggregator never runs job code).

Listings are paged by the aggregator (each reply stays far below the gRPC message limit
whatever sites sent); these commands follow ``next_page_token`` until the listing ends, so
they print every job, site and round.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from confide.jobfile import LoadedJob, load_job
from confide.jobspec import attempt_limits, validate_job
from confide.v1 import admin_pb2, common_pb2
from confide.wire.blob import encode_tensors, iter_chunks
from confide.wire.envelope import seal

from .operator import connect, load_operator_config

__all__ = [
    "all_pages",
    "format_job",
    "job_summary",
    "register",
    "upload_bundle_files",
    "with_all_rounds",
]

_TIMEOUT_S = 30
_UPLOAD_TIMEOUT_S = 600


def register(subparsers: Any) -> None:
    """Add the ``job`` and ``sites`` commands."""
    job = subparsers.add_parser("job", help="submit and watch jobs")
    jsub = job.add_subparsers(dest="job_command", required=True)
    p = jsub.add_parser(
        "check", help="validate a job file locally with the aggregator's rules (exit 2 if bad)"
    )
    p.add_argument("job_file", type=Path)
    p.set_defaults(func=_check)
    p = jsub.add_parser("submit", help="sign and submit a job file (uploading its code bundle)")
    p.add_argument("job_file", type=Path)
    p.set_defaults(func=_submit)
    p = jsub.add_parser(
        "init-weights",
        help="run a code bundle's build_model here (needs torch) and write its initial weights",
    )
    p.add_argument("job_file", type=Path)
    p.add_argument(
        "--out", type=Path, help="where to write them (default: the job's model.initial_weights)"
    )
    p.set_defaults(func=_init_weights)
    p = jsub.add_parser("status", help="rounds so far with metrics and epsilon")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=_status)
    p = jsub.add_parser("list", help="all jobs")
    p.set_defaults(func=_list)
    p = jsub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=_cancel)
    s = subparsers.add_parser("sites", help="sites, connection and last heartbeat")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_sites)


def _check(args: argparse.Namespace) -> int:
    """Validate a job file offline; no operator config, no connection.

    The file is read as ``job submit`` reads it, then its wire form is checked by
    ``validate_job``, the very function the aggregator runs at SubmitJob: a file that passes
    here is not refused there for its content. A bad key exits 2 (``confide.cli.main``).
    """
    job = load_job(args.job_file)
    spec = job.spec
    validate_job(common_pb2.JobSpec.FromString(spec.SerializeToString()))
    per_round, retries = attempt_limits(spec)
    code = f"; code bundle sha256 {spec.model.code_sha256.hex()}" if job.bundle else ""
    print(
        f"{args.job_file}: ok: job {spec.name!r}, {spec.rounds} rounds, min_sites "
        f"{spec.min_sites}; a site pays for at most {per_round} attempts of a round and "
        f"{spec.rounds + retries} in the job{code}"
    )
    return 0


def _init_weights(args: argparse.Namespace) -> int:
    """Build the bundle's model here and write its initial weights (``confide.jobfile``)."""
    from confide.cli.init_weights import write_initial_weights

    out = write_initial_weights(args.job_file, out=args.out)
    print(f"{out}: initial weights written; confide job submit uploads them")
    return 0


def upload_bundle_files(stub: Any, job: LoadedJob) -> None:
    """Upload a bundle job's code archive and initial weights before the job names them."""
    if job.bundle is None or job.initial is None:
        return
    archive = memoryview(job.bundle)
    header = common_pb2.BlobHeader(total_bytes=len(job.bundle), sha256=job.spec.model.code_sha256)
    _upload(stub, admin_pb2.BLOB_KIND_CODE_BUNDLE, header, [archive])
    blob, buffers = encode_tensors(job.initial)
    _upload(stub, admin_pb2.BLOB_KIND_MODEL, blob, buffers)


def _upload(
    stub: Any,
    kind: Any,
    header: common_pb2.BlobHeader,
    buffers: list[memoryview],
) -> None:
    def parts() -> Iterator[admin_pb2.BlobUpload]:
        yield admin_pb2.BlobUpload(header=admin_pb2.BlobUploadHeader(kind=kind, blob=header))
        for chunk in iter_chunks(buffers):
            yield admin_pb2.BlobUpload(chunk=chunk)

    stub.UploadBlob(parts(), timeout=_UPLOAD_TIMEOUT_S)


def _submit(args: argparse.Namespace) -> int:
    cfg = load_operator_config(args.config)
    job = load_job(args.job_file)
    spec = job.spec
    env = seal(
        signing_key=cfg.identity.signing_key,
        federation=cfg.federation,
        sender=cfg.identity.info.name,
        stage=common_pb2.STAGE_JOB,
        payload=spec.SerializeToString(),
        now=time.time(),
    )
    channel, stub = connect(cfg)
    with channel:
        upload_bundle_files(stub, job)
        reply = stub.SubmitJob(env, timeout=30)
    print(reply.job_id)
    return 0


def _status(args: argparse.Namespace) -> int:
    cfg = load_operator_config(args.config)
    channel, stub = connect(cfg)
    with channel:
        status = with_all_rounds(
            stub, stub.GetJob(admin_pb2.JobRef(job_id=args.job_id), timeout=30)
        )
    if args.json:
        print(json.dumps(job_summary(status)))
    else:
        print(format_job(status))
    return 0


def _list(args: argparse.Namespace) -> int:
    cfg = load_operator_config(args.config)
    channel, stub = connect(cfg)
    with channel:
        for j in all_pages(
            lambda token: stub.ListJobs(
                admin_pb2.ListJobsRequest(page_token=token), timeout=_TIMEOUT_S
            ),
            lambda reply: reply.jobs,
        ):
            state = admin_pb2.JobState.Name(j.state).removeprefix("JOB_STATE_").lower()
            print(
                f"{j.job_id}  {state:<9}  {j.rounds_total:>3}/{j.spec.rounds} rounds  {j.spec.name}"
            )
    return 0


def _cancel(args: argparse.Namespace) -> int:
    cfg = load_operator_config(args.config)
    channel, stub = connect(cfg)
    with channel:
        status = with_all_rounds(
            stub, stub.CancelJob(admin_pb2.JobRef(job_id=args.job_id), timeout=_TIMEOUT_S)
        )
    print(format_job(status))
    return 0


def _sites(args: argparse.Namespace) -> int:
    cfg = load_operator_config(args.config)
    channel, stub = connect(cfg)
    with channel:
        sites = list(
            all_pages(
                lambda token: stub.ListSites(
                    admin_pb2.ListSitesRequest(page_token=token), timeout=_TIMEOUT_S
                ),
                lambda reply: reply.sites,
            )
        )
    if args.json:
        print(json.dumps([json_format.MessageToDict(s) for s in sites]))
        return 0
    now = time.time()
    print(f"{'site':<16} {'connected':<9} {'last heartbeat':>14}  datasets")
    for s in sites:
        ago = f"{now - s.last_heartbeat:.0f}s ago" if s.last_heartbeat else "never"
        print(
            f"{s.site_id:<16} {'yes' if s.connected else 'no':<9} {ago:>14}  {','.join(s.datasets)}"
        )
        for p in s.unusable:
            print(f"{'':<16} unusable dataset {p.dataset}: ({p.reason}) {p.detail}")
    return 0


def all_pages(fetch: Callable[[str], Any], items: Callable[[Any], Any]) -> Iterator[Any]:
    """Every item of a paged listing: ``fetch(token)`` one page, ``items(reply)`` its items.

    Stops when a reply has no ``next_page_token``, or repeats the token it was asked with
    (a server that would loop for ever).
    """
    token = ""
    while True:
        reply = fetch(token)
        yield from items(reply)
        nxt = str(reply.next_page_token)
        if not nxt or nxt == token:
            return
        token = nxt


def with_all_rounds(stub: Any, status: admin_pb2.JobStatus) -> admin_pb2.JobStatus:
    """``status`` with every round, paged in through ListRounds when GetJob held only the latest."""
    if status.rounds_total <= len(status.rounds):
        return status
    rounds = list(
        all_pages(
            lambda token: stub.ListRounds(
                admin_pb2.ListRoundsRequest(job_id=status.job_id, page_token=token),
                timeout=_TIMEOUT_S,
            ),
            lambda reply: reply.rounds,
        )
    )
    del status.rounds[:]
    status.rounds.extend(rounds)
    return status


def job_summary(status: admin_pb2.JobStatus) -> dict[str, Any]:
    """A JSON-ready summary of a job: state, per-round metrics, epsilon per site."""
    return {
        "job_id": status.job_id,
        "state": admin_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_").lower(),
        "error": status.error,
        "waiting": status.waiting,
        "rounds": [
            {
                "round": r.round,
                "state": r.state,
                "aggregated": r.aggregated,
                "accuracy": r.accuracy,
                "loss": r.loss,
                "seconds": r.seconds,
                "epsilon": {s.site_id: s.epsilon for s in r.sites},
                # Sites that answered but are not in the round's sum, with why (a refusal,
                # a failure, or rejected secure-aggregation shares: bad_signature, ...).
                "failed": {
                    s.site_id: s.reason or "failed"
                    for s in r.sites
                    if s.outcome not in (common_pb2.OUTCOME_OK, common_pb2.OUTCOME_UNSPECIFIED)
                },
                "failures": [
                    {
                        "site": s.site_id,
                        "outcome": _outcome(s.outcome),
                        "reason": s.reason,
                        "detail": s.detail,
                    }
                    for s in r.sites
                    if s.outcome != common_pb2.OUTCOME_OK
                ],
            }
            for r in status.rounds
        ],
        "final_accuracy": status.final_accuracy,
        "final_loss": status.final_loss,
        "epsilon_by_site": dict(status.epsilon_by_site),
        "model_version": status.model_version,
        "versions": [
            {
                "version": v.version,
                "sha256": v.sha256,
                "accuracy": v.accuracy,
                "loss": v.loss,
                "eval_samples": v.eval_samples,
            }
            for v in status.versions
        ],
        "best_version": _best(status),
    }


def _best(status: admin_pb2.JobStatus) -> int | None:
    """The evaluated version with the highest hold-out accuracy (the latest among equals)."""
    evaluated = [v for v in status.versions if v.eval_samples]
    if not evaluated:
        return None
    return max(evaluated, key=lambda v: (v.accuracy, v.version)).version


def _versions(status: admin_pb2.JobStatus, best: int | None) -> list[str]:
    """The model versions table, and how to download the best one."""
    if not status.versions:
        return []
    lines = [f"{'version':>7} {'sha256':<12} {'accuracy':>8} {'loss':>8} {'records':>8}"]
    for v in status.versions:
        if v.eval_samples:
            scores = f"{v.accuracy:>8.4f} {v.loss:>8.4f} {v.eval_samples:>8}"
        else:
            scores = f"{'-':>8} {'-':>8} {'-':>8}"
        mark = "  <- best" if v.version == best else ""
        lines.append(f"{v.version:>7} {v.sha256[:12]:<12} {scores}{mark}")
    pick = best if best is not None else status.versions[-1].version
    lines.append(
        f"download: confide model download {status.job_id} --version {pick} --out model.safetensors"
    )
    return lines


def _outcome(value: int) -> str:
    return common_pb2.Outcome.Name(value).removeprefix("OUTCOME_").lower()


def format_job(status: admin_pb2.JobStatus) -> str:
    """A human table of a job's rounds."""
    s = job_summary(status)
    lines = [
        f"job {s['job_id']} ({status.spec.name}): {s['state']}"
        + (f" - {s['error']}" if s["error"] else "")
        + (f" - {status.waiting}" if status.waiting else ""),
        f"{'round':>5} {'state':<10} {'sites':>5} {'accuracy':>8} {'loss':>8} {'seconds':>7}"
        f"  epsilon (max over sites)",
    ]
    for r in s["rounds"]:
        eps = max(r["epsilon"].values(), default=0.0)
        lines.append(
            f"{r['round']:>5} {r['state']:<10} {r['aggregated']:>5} {r['accuracy']:>8.4f}"
            f" {r['loss']:>8.4f} {r['seconds']:>7.2f}  {eps:.3f}"
        )
        for f in r["failures"]:
            detail = f" {f['detail']}" if f["detail"] else ""
            lines.append(f"{'':>6}{f['site']}: {f['reason'] or 'failed'} ({f['outcome']}){detail}")
    if status.state == admin_pb2.JOB_STATE_DONE:
        lines.append(f"final accuracy {status.final_accuracy:.4f}, loss {status.final_loss:.4f}")
    lines += _versions(status, s["best_version"])
    for site, eps in sorted(s["epsilon_by_site"].items()):
        lines.append(f"  {site}: epsilon spent {eps:.3f}")
    return "\n".join(lines)
