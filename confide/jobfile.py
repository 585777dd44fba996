"""A job file on the operator's disk: its spec, and for a bundle job its code and first model.

``confide.jobspec.read_job`` parses the TOML; this module reads the files a bundle job names
(``model.code``, ``model.initial_weights``, both relative to the job file), fills in what the
operator signs about them (the archive's SHA-256, the parameters' names and shapes, the initial
model's SHA-256) and validates the whole job. ``confide job check`` and ``submit`` use it, so
a job that passes ``check`` is the job ``submit`` signs.

The initial weights file is what ``confide job init-weights`` wrote: safetensors with the
metadata ``INIT_METADATA_KEY`` naming the code archive it was made from, so weights made from an
older version of the code are refused here rather than at every site.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from confide.bundle import digest, pack_folder
from confide.config import load_toml
from confide.errors import ConfigError, MalformedMessage, PeerError
from confide.jobspec import JobFile, read_job, validate_job
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays, check_finite, encode_tensors
from confide.wire.safetensors import read_safetensors

__all__ = ["INIT_METADATA_KEY", "LoadedJob", "code_folder", "load_job", "with_initial_weights"]

INIT_METADATA_KEY = "confide.code_sha256"
"""safetensors metadata of an initial-weights file: the hex SHA-256 of the code it came from."""


@dataclass(frozen=True)
class LoadedJob:
    """A validated job, ready to sign, with the files a bundle job uploads before it.

    Args:
        spec: the job, validated (a bundle job's hashes and parameters filled in).
        bundle: the code archive (``confide.bundle``), or None for a built-in model.
        initial: the initial weights of a bundle job, or None.
    """

    spec: common_pb2.JobSpec
    bundle: bytes | None = None
    initial: NamedArrays | None = None


def code_folder(job_file: Path, job: JobFile) -> Path:
    """The bundle folder a job file names (relative paths from the job file's folder).

    Raises:
        ConfigError: the job names no code (key ``model.code``).
    """
    if job.code is None:
        raise ConfigError("model.code", "this job uses a built-in model, not a code bundle")
    return (job_file.parent / job.code).resolve()


def load_job(path: Path) -> LoadedJob:
    """Read and validate a job file with the files it names.

    Raises:
        ConfigError: naming the key at fault: the TOML, ``model.code`` (folder missing, over a
            bundle's limits, a link inside, no model.py), ``model.initial_weights`` (missing,
            unreadable, not float32, made from other code, not finite).
    """
    job = read_job(load_toml(path))
    if job.code is None:
        return LoadedJob(spec=job.spec)
    archive = pack_folder(code_folder(path, job))
    assert job.initial_weights is not None  # read_job requires it with code
    weights_path = (path.parent / job.initial_weights).resolve()
    try:
        arrays, metadata = read_safetensors(weights_path)
    except OSError as exc:
        raise ConfigError(
            "model.initial_weights",
            f"cannot read {weights_path}: {exc.strerror} (write it with confide job init-weights)",
        ) from exc
    except MalformedMessage as exc:
        raise ConfigError("model.initial_weights", f"{weights_path}: {exc}") from exc
    made_from = metadata.get(INIT_METADATA_KEY, "")
    if made_from != digest(archive).hex():
        raise ConfigError(
            "model.initial_weights",
            f"{weights_path} was not made from this code (the code changed since); run "
            "confide job init-weights again",
        )
    spec = with_initial_weights(job.spec, archive=archive, initial=arrays)
    return LoadedJob(spec=spec, bundle=archive, initial=arrays)


def with_initial_weights(
    spec: common_pb2.JobSpec, *, archive: bytes, initial: NamedArrays
) -> common_pb2.JobSpec:
    """A bundle job's spec with its code's SHA-256, parameters and first model's hash, validated.

    Raises:
        ConfigError: ``model.initial_weights`` holds a non-float32 or non-finite tensor, or
            the job is invalid.
    """
    out = common_pb2.JobSpec()
    out.CopyFrom(spec)
    m = out.model
    m.code_sha256 = digest(archive)
    del m.parameters[:]
    for name, arr in initial:
        if arr.dtype != np.float32:
            raise ConfigError(
                "model.initial_weights", f"tensor {name!r} is {arr.dtype}, not float32"
            )
    try:
        check_finite(initial)
        header, _ = encode_tensors(initial)
    except PeerError as exc:  # not finite, or a dtype with no wire form
        raise ConfigError("model.initial_weights", exc.message) from exc
    m.parameters.extend(header.tensors)
    m.initial_sha256 = header.sha256
    validate_job(out)
    return out
