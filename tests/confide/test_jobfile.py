"""Bundle job files: the code and initial weights they name, and what a bundle spec must hold."""

from __future__ import annotations

import numpy as np
import pytest

from confide import bundle
from confide.config import parse_toml
from confide.errors import ConfigError
from confide.jobfile import INIT_METADATA_KEY, load_job, with_initial_weights
from confide.jobspec import job_from_toml, read_job, validate_job
from confide.lineage import initial_model_sha
from confide.models import BundleSpec, initial_weights, parameter_shapes
from confide.v1 import common_pb2
from confide.wire import encode_tensors
from confide.wire.safetensors import write_safetensors

_JOB = """
name = "bundled"
rounds = 2
[model]
code = "code"
initial_weights = "init.safetensors"
[dataset]
name = "tab"
features = ["a", "b", "c"]
label = "y"
num_classes = 2
[training]
learning_rate = 0.1
{training}
"""

_WEIGHTS = [("net.weight", np.ones((2, 3), np.float32)), ("net.bias", np.zeros(2, np.float32))]


def _folder(tmp_path, *, training: str = "", made_from: bytes | None = None):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "model.py").write_text("def build_model(spec): ...\n")
    archive = bundle.pack_folder(tmp_path / "code")
    sha = bundle.digest(archive if made_from is None else made_from).hex()
    write_safetensors(tmp_path / "init.safetensors", _WEIGHTS, metadata={INIT_METADATA_KEY: sha})
    (tmp_path / "job.toml").write_text(_JOB.format(training=training))
    return tmp_path / "job.toml", archive


def test_a_bundle_job_file_signs_the_code_hash_parameters_and_initial_model(tmp_path):
    """load_job packs the folder and fills in what the operator signs about both files."""
    path, archive = _folder(tmp_path)
    job = load_job(path)
    m = job.spec.model
    assert m.kind == common_pb2.MODEL_KIND_BUNDLE and job.bundle == archive
    assert m.code_sha256 == bundle.digest(archive)
    assert parameter_shapes(m, job.spec.dataset) == [("net.weight", (2, 3)), ("net.bias", (2,))]
    assert initial_model_sha(job.spec) == encode_tensors(_WEIGHTS)[0].sha256.hex()
    validate_job(job.spec)


def test_weights_made_from_other_code_or_missing_are_refused(tmp_path):
    """init-weights records the code it ran; other code, or no file, names the key."""
    path, _ = _folder(tmp_path, made_from=b"older code")
    with pytest.raises(ConfigError) as exc:
        load_job(path)
    assert exc.value.key == "model.initial_weights"
    (tmp_path / "init.safetensors").unlink()
    with pytest.raises(ConfigError) as exc:
        load_job(path)
    assert exc.value.key == "model.initial_weights"


def test_a_bundle_job_file_needs_its_files_and_no_kind(tmp_path):
    """job_from_toml (no files) refuses a bundle job; kind with code is refused by key."""
    path, _ = _folder(tmp_path)
    with pytest.raises(ConfigError) as exc:
        job_from_toml(parse_toml(path.read_text()))
    assert exc.value.key == "model.code"
    text = path.read_text().replace('code = "code"', 'code = "code"\nkind = "mlp"')
    with pytest.raises(ConfigError) as exc:
        read_job(parse_toml(text))
    assert exc.value.key == "model.kind"
    assert read_job(parse_toml(path.read_text())).code == "code"


def test_fix_unsupported_layers_is_read_and_refused_on_built_in_models(tmp_path):
    """The Opacus fix is a bundle DP option: set where it does nothing it is an error."""
    path, _ = _folder(
        tmp_path,
        training="fix_unsupported_layers = true\n[privacy.sample]\nnoise_multiplier = 1.0",
    )
    assert load_job(path).spec.training.fix_unsupported_layers
    without_dp = common_pb2.JobSpec()
    without_dp.CopyFrom(load_job(path).spec)
    without_dp.ClearField("record_privacy")
    with pytest.raises(ConfigError) as exc:
        validate_job(without_dp)
    assert exc.value.key == "training.fix_unsupported_layers"
    builtin = common_pb2.JobSpec()
    builtin.CopyFrom(load_job(path).spec)
    builtin.model.Clear()
    builtin.model.kind = common_pb2.MODEL_KIND_LOGREG
    with pytest.raises(ConfigError) as exc:
        validate_job(builtin)
    assert exc.value.key == "training.fix_unsupported_layers"
    builtin.training.fix_unsupported_layers = False
    validate_job(builtin)
    builtin.model.code_sha256 = b"\0" * 32
    with pytest.raises(ConfigError) as exc:
        validate_job(builtin)
    assert exc.value.key == "model.code"


@pytest.mark.parametrize(
    "arrays",
    [
        [],
        [("w", np.zeros((2, 0), np.float32))],
        [("w", np.zeros(2, np.float32)), ("w", np.zeros(2, np.float32))],
        [("", np.zeros(2, np.float32))],
        [("w", np.zeros((1,) * 9, np.float32))],
    ],
    ids=["none", "empty-dim", "repeated", "unnamed", "rank-9"],
)
def test_a_bundle_spec_with_unusable_parameters_is_refused(tmp_path, arrays):
    """Parameters are named, unique, bounded in rank, with no empty dimension, at least one."""
    path, archive = _folder(tmp_path)
    spec = load_job(path).spec
    with pytest.raises(ConfigError) as exc:
        with_initial_weights(spec, archive=archive, initial=arrays)
    assert exc.value.key == "model.initial_weights"


def test_non_float32_or_unfinite_weights_and_missing_hashes_are_refused(tmp_path):
    """Weights must be finite float32; a bundle spec must name its code and first model."""
    path, archive = _folder(tmp_path)
    spec = load_job(path).spec
    for arrays in ([("w", np.zeros(2, np.float64))], [("w", np.full(2, np.inf, np.float32))]):
        with pytest.raises(ConfigError):
            with_initial_weights(spec, archive=archive, initial=arrays)
    for field, key in (("code_sha256", "model.code"), ("initial_sha256", "model.initial_weights")):
        bad = common_pb2.JobSpec()
        bad.CopyFrom(spec)
        setattr(bad.model, field, b"\1" * 31)
        with pytest.raises(ConfigError) as exc:
            validate_job(bad)
        assert exc.value.key == key
    with pytest.raises(ConfigError):
        initial_weights(spec.model, spec.dataset, seed=0)


def test_bundle_spec_tells_build_model_the_dataset_shape():
    """BundleSpec gives flat features their count as shape, images their input_shape."""
    spec = common_pb2.JobSpec(
        dataset=common_pb2.DatasetSpec(features=["a", "b"], label="y", num_classes=3),
        training=common_pb2.TrainingSpec(seed=4),
    )
    assert BundleSpec.of(spec) == BundleSpec(
        features=("a", "b"), label="y", num_classes=3, input_shape=(2,), seed=4
    )
    spec.dataset.input_shape.extend([1, 1, 2])
    assert BundleSpec.of(spec).input_shape == (1, 1, 2)
