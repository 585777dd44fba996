"""``confide model download JOB [--version N] --out model.safetensors``: the trained model out.

The operator's certificate fetches one global model version from the aggregator (checked
against its SHA-256 as it arrives) and writes it as safetensors, with the job's spec in the
file's metadata so a site can rebuild the built-in model around it
(``confide_worker.training.saved.load_model``, README "Using the trained model").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from confide.errors import ConfigError, PeerError, Reason
from confide.v1 import admin_pb2, federation_pb2
from confide.wire.blob import BlobAssembler, NamedArrays
from confide.wire.safetensors import write_safetensors

from .operator import connect, load_operator_config

__all__ = ["FORMAT", "MAX_MODEL_BYTES", "pick_version", "register"]

FORMAT = "confide-model/1"
"""The ``format`` metadata of a downloaded model file."""

MAX_MODEL_BYTES = 2 * 1024**3
"""The largest model downloaded (2 GiB, as sites accept)."""


def register(subparsers: Any) -> None:
    """Add the ``model`` command."""
    model = subparsers.add_parser("model", help="download trained model versions")
    msub = model.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("download", help="write one model version of a job as safetensors")
    p.add_argument("job_id")
    p.add_argument(
        "--version",
        type=int,
        default=None,
        help="version number as `confide job status` lists it (default: the latest)",
    )
    p.add_argument("--out", type=Path, required=True, help="file to write, e.g. model.safetensors")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=_download)


def pick_version(status: admin_pb2.JobStatus, version: int | None) -> admin_pb2.ModelVersion:
    """The job's version ``version`` (None: its latest).

    Raises:
        PeerError: the job has no such version (reason UNKNOWN_JOB).
    """
    if not status.versions:
        raise PeerError(f"job {status.job_id} has no model version yet", reason=Reason.UNKNOWN_JOB)
    if version is None:
        return status.versions[-1]
    for v in status.versions:
        if v.version == version:
            return v
    last = status.versions[-1].version
    raise PeerError(
        f"job {status.job_id} has versions 0 to {last}, not {version}", reason=Reason.UNKNOWN_JOB
    )


def _download(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise ConfigError(str(out), "already exists; pass --force to overwrite it")
    cfg = load_operator_config(args.config)
    channel, stub = connect(cfg)
    with channel:
        status = stub.GetJob(admin_pb2.JobRef(job_id=args.job_id), timeout=30)
        chosen = pick_version(status, args.version)
        parts = stub.DownloadModel(
            federation_pb2.DownloadRequest(job_id=status.job_id, model_version=chosen.sha256),
            timeout=600,
        )
        arrays = _assemble(parts)
    metadata = {
        "format": FORMAT,
        "job_id": status.job_id,
        "job_name": status.spec.name,
        "version": str(chosen.version),
        "sha256": chosen.sha256,
        "job_spec": json_format.MessageToJson(status.spec, indent=None),
    }
    tmp = out.with_name(f".{out.name}.part")
    try:
        write_safetensors(tmp, arrays, metadata=metadata)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(str(out), f"cannot write: {exc.strerror}") from exc
    evaluated = (
        f"hold-out accuracy {chosen.accuracy:.4f}, loss {chosen.loss:.4f}"
        if chosen.eval_samples
        else "not evaluated"
    )
    print(
        f"wrote {out}: job {status.job_id} version {chosen.version} "
        f"({chosen.sha256[:12]}), {evaluated}",
        file=sys.stderr,
    )
    return 0


def _assemble(parts: Any) -> NamedArrays:
    """Reassemble a streamed blob, checking its length and SHA-256 against its header."""
    first = next(parts, None)
    if first is None or first.WhichOneof("part") != "header":
        raise PeerError("the download did not start with its header")
    asm = BlobAssembler(first.header, max_bytes=MAX_MODEL_BYTES)
    for part in parts:
        if part.WhichOneof("part") != "chunk":
            raise PeerError("the download sent a second header")
        asm.add(part.chunk)
    return asm.finish()
