"""``confide job init-weights``: a bundle job's initial weights, made on the operator's machine.

The aggregator never runs job code, so version 0 of a bundle job comes from here: the job's
code folder is packed as ``submit`` packs it, unpacked into a scratch folder (so exactly the
archive's files run), its ``build_model`` is called under ``torch.manual_seed(training.seed)``,
and the parameters are written to the job's ``model.initial_weights`` as safetensors, with the
archive's hash in the metadata (``confide.jobfile.INIT_METADATA_KEY``). It needs torch (the
``agent`` extra); the rest of the operator's commands do not.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from confide.bundle import digest, pack_folder, unpack, write_folder
from confide.config import load_toml
from confide.errors import ConfideError, ConfigError
from confide.jobfile import INIT_METADATA_KEY, code_folder, with_initial_weights
from confide.jobspec import read_job
from confide.models import BundleSpec
from confide.wire.safetensors import write_safetensors

__all__ = ["write_initial_weights"]


def write_initial_weights(job_file: Path, *, out: Path | None = None) -> Path:
    """Run the job's ``build_model`` and write its initial weights; returns the file written.

    Args:
        job_file: a bundle job file.
        out: where to write (default: the job's ``model.initial_weights``).

    Raises:
        ConfigError: naming ``model.code`` (not a bundle job, a folder that does not pack,
            code that fails to build, torch missing) or ``model.initial_weights``.
    """
    job = read_job(load_toml(job_file))
    folder = code_folder(job_file, job)
    archive = pack_folder(folder)
    try:
        from confide_worker.bundle import initial_weights
    except ImportError as exc:
        raise ConfigError(
            "model.code", f"init-weights runs the job's code and needs torch ({exc})"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="confide-init-") as scratch:
        copy = Path(scratch) / "bundle"
        write_folder(unpack(archive), copy)
        try:
            arrays = initial_weights(
                copy,
                BundleSpec.of(job.spec),
                dp=job.spec.record_privacy.enabled,
                fix_unsupported_layers=job.spec.training.fix_unsupported_layers,
            )
        except ConfideError as exc:
            raise ConfigError("model.code", exc.message, reason=exc.reason) from exc
        finally:
            for d in [copy, *(p for p in copy.rglob("*") if p.is_dir())]:
                d.chmod(0o700)
    with_initial_weights(job.spec, archive=archive, initial=arrays)  # a job that validates
    assert job.initial_weights is not None
    target = out if out is not None else (job_file.parent / job.initial_weights)
    write_safetensors(target, arrays, metadata={INIT_METADATA_KEY: digest(archive).hex()})
    return target
