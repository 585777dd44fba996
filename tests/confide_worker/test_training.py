"""Torch modules match the model contract; DP-SGD modes run and clip as promised."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from confide.models import initial_weights, parameter_shapes
from confide.v1 import common_pb2
from confide_worker.training.dpsgd import DpTrainer, GradSampleMode
from confide_worker.training.models import build_model, load_weights, weights_delta


def _specs(kind):
    model = common_pb2.ModelSpec(kind=kind)
    dataset = common_pb2.DatasetSpec(name="d", features=[f"f{i}" for i in range(5)], num_classes=3)
    if kind == common_pb2.MODEL_KIND_MLP:
        model.hidden.extend([8, 4])
    if kind == common_pb2.MODEL_KIND_CNN:
        dataset.input_shape.extend([1, 8, 8])
    return model, dataset


@pytest.mark.parametrize(
    "kind",
    [common_pb2.MODEL_KIND_LOGREG, common_pb2.MODEL_KIND_MLP, common_pb2.MODEL_KIND_CNN],
)
def test_state_dict_matches_parameter_shapes(kind):
    """Each built-in module's state_dict keys, shapes and order equal parameter_shapes."""
    model, dataset = _specs(kind)
    module = build_model(model, dataset)
    got = [(k, tuple(v.shape)) for k, v in module.state_dict().items()]
    assert got == parameter_shapes(model, dataset)


def test_load_weights_then_delta_is_zero():
    """Weights loaded into a module give a zero delta against themselves."""
    model, dataset = _specs(common_pb2.MODEL_KIND_CNN)
    module = build_model(model, dataset)
    weights = initial_weights(model, dataset, seed=5)
    load_weights(module, weights)
    assert all(float(abs(d).max()) == 0.0 for _, d in weights_delta(module, weights))


@pytest.mark.parametrize("mode", list(GradSampleMode))
def test_every_mode_clips_to_c_without_noise(mode):
    """With sigma = 0 and q = 1, one step moves weights by at most lr * C (clipped mean)."""
    model, dataset = _specs(common_pb2.MODEL_KIND_MLP)
    torch.manual_seed(0)
    module = build_model(model, dataset)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = DpTrainer(module, mode=mode, lr=1.0)
    x = torch.randn(16, 5) * 100.0
    y = torch.randint(0, 3, (16,))
    stats = trainer.run(
        x,
        y,
        noise_multiplier=0.0,
        max_grad_norm=0.01,
        sample_rate=1.0,
        steps=1,
        sample_generator=torch.Generator().manual_seed(1),
        noise_generator=torch.Generator().manual_seed(2),
    )
    assert stats.steps == 1 and stats.seen == 16
    moved = torch.sqrt(
        sum(((p.detach() - b) ** 2).sum() for p, b in zip(module.parameters(), before, strict=True))
    )
    assert 0.0 < float(moved) <= 0.01 + 1e-6


def test_empty_poisson_sample_still_takes_a_noise_step():
    """A step whose Poisson sample is empty still counts and adds noise only."""
    model, dataset = _specs(common_pb2.MODEL_KIND_LOGREG)
    module = build_model(model, dataset)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = DpTrainer(module, mode=GradSampleMode.HOOKS, lr=0.1)
    stats = trainer.run(
        torch.randn(4, 5),
        torch.zeros(4, dtype=torch.int64),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=1e-9,
        steps=3,
        sample_generator=torch.Generator().manual_seed(1),
        noise_generator=torch.Generator().manual_seed(2),
    )
    assert stats.steps == 3 and stats.seen == 0
    assert any(not torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))


def _assert_fused_matches_hooks(
    make_module: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor
) -> None:
    """Two noiseless DP-SGD steps from the same start: fused and Opacus hooks agree, and move."""
    start = {k: v.detach().clone() for k, v in make_module().state_dict().items()}
    out = {}
    for mode in (GradSampleMode.HOOKS, GradSampleMode.FUSED):
        module = make_module()
        DpTrainer(module, mode=mode, lr=0.5).run(
            x,
            y,
            noise_multiplier=0.0,
            max_grad_norm=0.3,
            sample_rate=1.0,
            steps=2,
            sample_generator=torch.Generator().manual_seed(1),
            noise_generator=torch.Generator().manual_seed(2),
        )
        out[mode] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for name, before in start.items():
        ref, fast = out[GradSampleMode.HOOKS][name], out[GradSampleMode.FUSED][name]
        assert float((ref - before).abs().max()) > 0, name
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kind",
    [common_pb2.MODEL_KIND_LOGREG, common_pb2.MODEL_KIND_MLP, common_pb2.MODEL_KIND_CNN],
)
def test_fused_step_matches_opacus_hooks(kind):
    """Without noise, the fused step gives the same clipped update as Opacus's hooks mode."""
    model, dataset = _specs(kind)
    weights = initial_weights(model, dataset, seed=11)
    shape = (24, 1, 8, 8) if kind == common_pb2.MODEL_KIND_CNN else (24, 5)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 3.0
    y = torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(4))

    def make() -> nn.Module:
        module = build_model(model, dataset)
        load_weights(module, weights)
        return module

    _assert_fused_matches_hooks(make, x, y)


def test_fused_conv_with_stride_padding_and_dilation_matches_opacus_hooks():
    """The fused step's patch extraction holds for any stride, padding, dilation and kernel."""
    torch.manual_seed(5)
    ref_module = nn.Sequential(
        nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.ReLU(),
        nn.Conv2d(3, 4, 2, stride=2, padding=1),
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    x = torch.randn(10, 2, 9, 7, generator=torch.Generator().manual_seed(3)) * 3.0
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(4))
    ref_module(x)  # materialise the lazy layer
    _assert_fused_matches_hooks(lambda: copy.deepcopy(ref_module), x, y)
