"""A code bundle in the worker: its model, loss and transform train; its mistakes are named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.workers.handle import Worker
from confide import bundle
from confide.errors import PolicyRefusal, Reason
from confide.jobfile import with_initial_weights
from confide.models import BundleSpec
from confide.v1 import common_pb2
from confide.wire.worker import DpSgdParams
from confide_worker.bundle import initial_weights as bundle_weights
from confide_worker.training.job import TorchJob

from .conftest import add, make_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "bundles"

_BN = """
from torch import nn

def build_model(spec):
    (n,) = spec.input_shape
    return nn.Sequential(nn.Linear(n, 4), nn.BatchNorm1d(4), nn.Linear(4, spec.num_classes))
"""


def _folder(tmp_path: Path, source: str | None = None, *, example: str = "tabular_net") -> Path:
    """A checked, unpacked copy of a bundle (an example, or one ``model.py``)."""
    src = tmp_path / "src"
    if source is None:
        shutil.copytree(EXAMPLES / example, src)
    else:
        src.mkdir(parents=True)
        (src / "model.py").write_text(source)
    archive = bundle.pack_folder(src)
    dest = tmp_path / "bundle"
    bundle.write_folder(bundle.unpack(archive), dest)
    return dest


def _job(folder: Path, *, dp: bool = False, fix: bool = False, **training: float):
    """A breast_cancer bundle job whose signed parameters are the bundle's own."""
    job = make_job(**training)
    job.rounds, job.min_sites, job.round_timeout_s = 1, 1, 60.0
    job.training.server_learning_rate = 1.0
    job.model.Clear()
    job.model.kind = common_pb2.MODEL_KIND_BUNDLE
    if dp:
        job.record_privacy.enabled = True
        job.record_privacy.noise_multiplier = 1.0
        job.record_privacy.delta = 1e-5
    job.training.fix_unsupported_layers = fix
    weights = bundle_weights(folder, BundleSpec.of(job), dp=dp, fix_unsupported_layers=fix)
    archive = bundle.pack(bundle.read_folder(folder))
    return with_initial_weights(job, archive=archive, initial=weights), weights


def test_a_bundle_trains_with_its_own_loss_and_the_delta_fits_the_signed_parameters(
    tmp_path, bc_dataset
):
    """The tabular example trains plain and under DP-SGD (Opacus hooks) from the same weights."""
    folder = _folder(tmp_path)
    job, weights = _job(folder, dp=True, local_epochs=3)
    tj = TorchJob(job, bc_dataset, "cpu", bundle=folder)
    assert tj.loss is not None
    before = tj.evaluate(weights)
    delta, _, metrics = tj.train(weights, dp=None, round_no=1)
    assert [(n, d.shape) for n, d in delta] == [(n, w.shape) for n, w in weights]
    assert tj.evaluate(add(weights, delta))[1] < before[1]
    assert metrics["train_loss"] > 0
    dp = DpSgdParams(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1, steps=3)
    dp_delta, steps, _ = tj.train(weights, dp=dp, round_no=1)
    assert steps == 3 and tj._dp is not None and tj._dp.mode.value == "hooks"
    assert all(np.isfinite(d).all() for _, d in dp_delta)


def test_batch_norm_under_dp_sgd_is_refused_naming_it_unless_the_job_fixes_it(tmp_path, bc_dataset):
    """BatchNorm mixes records: refused model_unsupported with its name, or GroupNorm'd."""
    folder = _folder(tmp_path, _BN)
    job, _ = _job(folder)
    job.record_privacy.enabled = True
    with pytest.raises(PolicyRefusal) as exc:
        TorchJob(job, bc_dataset, "cpu", bundle=folder)
    assert exc.value.reason is Reason.MODEL_UNSUPPORTED and "1 (BatchNorm1d)" in exc.value.message
    fixed, weights = _job(folder, dp=True, fix=True)
    tj = TorchJob(fixed, bc_dataset, "cpu", bundle=folder)
    dp = DpSgdParams(noise_multiplier=0.5, max_grad_norm=1.0, sample_rate=0.2, steps=2)
    delta, _, _ = tj.train(weights, dp=dp, round_no=1)
    assert [n for n, _ in delta] == [n for n, _ in weights]


@pytest.mark.parametrize(
    "source",
    [
        "from torch import nn\ndef build_model(spec):\n    return nn.Linear(3, 2)\n",
        "from torch import nn\nimport torch\ndef build_model(spec):\n"
        "    return nn.Linear(30, 2).to(torch.float64)\n",
        "from torch import nn\ndef build_model(spec):\n    return nn.Linear(30, 2)\n"
        "def transform(x):\n    return x[:3]\n",
        "from torch import nn\ndef build_model(spec):\n    return nn.Linear(30, 2)\n"
        "def transform(x):\n    return 'x'\n",
        "loss = 3\ndef build_model(spec):\n    pass\n",
    ],
    ids=["other-shapes", "float64", "transform-drops-records", "transform-not-a-tensor", "loss"],
)
def test_a_bundle_that_breaks_its_promises_is_refused_invalid_job(tmp_path, bc_dataset, source):
    """Parameters other than the signed ones, a bad transform or loss: invalid_job."""
    folder = _folder(tmp_path, source)
    job, _ = _job(_folder(tmp_path / "signed", example="tabular_net"))
    with pytest.raises(PolicyRefusal) as exc:
        TorchJob(job, bc_dataset, "cpu", bundle=folder)
    assert exc.value.reason is Reason.INVALID_JOB


def test_the_worker_process_loads_the_bundle_and_refuses_what_it_cannot_train(tmp_path, bc_dataset):
    """Through the real worker: a bundle job trains; its refusals arrive as PolicyRefusal."""
    folder = _folder(tmp_path)
    job, weights = _job(folder)
    worker = Worker.start(job=job, job_id="b", dataset=bc_dataset, timeout=120, bundle=folder)
    try:
        result = worker.train(weights, dp=None, round=1)
        assert [n for n, _ in result.delta] == [n for n, _ in weights]
    finally:
        worker.stop()
    bn = _folder(tmp_path / "bn", _BN)
    bn_job, _ = _job(bn)
    bn_job.record_privacy.enabled = True
    with pytest.raises(PolicyRefusal) as exc:
        Worker.start(job=bn_job, job_id="bn", dataset=bc_dataset, timeout=120, bundle=bn)
    assert exc.value.reason is Reason.MODEL_UNSUPPORTED
