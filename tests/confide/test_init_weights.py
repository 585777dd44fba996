"""`confide job init-weights`: a bundle's initial weights made locally, and its mistakes named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from confide.cli.init_weights import write_initial_weights
from confide.errors import ConfigError, Reason
from confide.jobfile import load_job
from confide.wire.safetensors import read_safetensors

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "bundles"

_BN = """
from torch import nn

def build_model(spec):
    (n,) = spec.input_shape
    return nn.Sequential(nn.Linear(n, 4), nn.BatchNorm1d(4), nn.Linear(4, spec.num_classes))
"""

_JOB = """
name = "bn"
rounds = 1
[model]
code = "code"
initial_weights = "init.safetensors"
[dataset]
name = "tab"
features = ["a", "b"]
label = "y"
num_classes = 2
[training]
learning_rate = 0.1
{training}
[privacy.sample]
noise_multiplier = 1.0
"""


@pytest.mark.parametrize("name", ["digits_cnn", "tabular_net"])
def test_the_example_bundles_make_weights_that_submit_accepts(tmp_path, name):
    """Each shipped example builds; its weights are reproducible and load_job signs them."""
    shutil.copytree(EXAMPLES / name, tmp_path / name)
    shutil.copy(EXAMPLES / f"{name}.toml", tmp_path / f"{name}.toml")
    job_file = tmp_path / f"{name}.toml"
    out = write_initial_weights(job_file)
    first = out.read_bytes()
    job = load_job(job_file)
    arrays, _ = read_safetensors(out)
    assert [p.name for p in job.spec.model.parameters] == [n for n, _ in arrays]
    write_initial_weights(job_file)
    assert out.read_bytes() == first  # same code, same seed: the same weights


def _bn_job(tmp_path: Path, training: str = "") -> Path:
    (tmp_path / "code").mkdir(parents=True)
    (tmp_path / "code" / "model.py").write_text(_BN)
    (tmp_path / "job.toml").write_text(_JOB.format(training=training))
    return tmp_path / "job.toml"


def test_batch_norm_under_dp_sgd_is_refused_naming_the_layer_unless_fixed(tmp_path):
    """DP-SGD cannot train BatchNorm per record: named here, or replaced when the job asks."""
    with pytest.raises(ConfigError) as exc:
        write_initial_weights(_bn_job(tmp_path / "plain"))
    assert exc.value.reason is Reason.MODEL_UNSUPPORTED and "1 (BatchNorm1d)" in exc.value.problem
    job_file = _bn_job(tmp_path / "fixed", "fix_unsupported_layers = true")
    write_initial_weights(job_file)
    assert [p.name for p in load_job(job_file).spec.model.parameters] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
    ]


@pytest.mark.parametrize(
    "source",
    [
        "import sklearn_is_not_here\n",
        "def build_model(spec):\n    return 3\n",
        "build_model = 1\n",
        "def build_model(spec):\n    raise RuntimeError('no')\n",
    ],
    ids=["missing-import", "not-a-module", "not-callable", "raises"],
)
def test_code_that_does_not_build_is_named_by_key(tmp_path, source):
    """Import errors, a missing or failing build_model: a config error on model.code."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "model.py").write_text(source)
    (tmp_path / "job.toml").write_text(_JOB.format(training=""))
    with pytest.raises(ConfigError) as exc:
        write_initial_weights(tmp_path / "job.toml")
    assert exc.value.key == "model.code" and exc.value.reason is Reason.INVALID_JOB


def test_the_commands_make_weights_then_check_names_the_code_hash(tmp_path, capsys):
    """`confide job init-weights` then `job check`: exit 0 with the code's SHA-256; check
    without the weights exits 2 naming model.initial_weights."""
    from confide.cli.main import main

    shutil.copytree(EXAMPLES / "tabular_net", tmp_path / "tabular_net")
    shutil.copy(EXAMPLES / "tabular_net.toml", tmp_path / "tabular_net.toml")
    job_file = str(tmp_path / "tabular_net.toml")
    assert main(["job", "check", job_file]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("confide: config key 'model.initial_weights'")
    assert main(["job", "init-weights", job_file]) == 0
    capsys.readouterr()
    assert main(["job", "check", job_file]) == 0
    sha = load_job(tmp_path / "tabular_net.toml").spec.model.code_sha256.hex()
    assert f"code bundle sha256 {sha}" in capsys.readouterr().out
