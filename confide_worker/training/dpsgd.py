"""DP-SGD with Opacus, with exactly the steps the daemon accounts for.

Algorithm (Abadi et al. 2016, "Deep Learning with Differential Privacy", Alg. 1): each of
``steps`` steps draws a Poisson sample B of the N local records (each kept independently with
probability q = ``sample_rate``), computes per-record gradients g_i, clips each to L2 norm C
(``max_grad_norm``): g_i * min(1, C / ||g_i||), sums them, adds Gaussian noise N(0, (sigma*C)^2 I)
(sigma = ``noise_multiplier``) and divides by the expected batch size q*N. The daemon's RDP
accountant charges ``steps`` compositions of the sampled Gaussian mechanism (q, sigma)
(Mironov et al. 2019, "Renyi Differential Privacy of the Sampled Gaussian Mechanism"); this
module therefore does its own Poisson sampling (``torch.rand(N) < q`` per step, the same
scheme as Opacus's ``UniformWithReplacementSampler``) instead of a DPDataLoader whose length
would decide the step count. An empty sample still takes a step (noise only), as in Opacus.
Opacus's own accountant is not used; ``secure_mode`` (torchcsprng) is not available, so
sampling and noise come from torch generators seeded from ``os.urandom`` each round.

Per-sample-gradient mode per model, chosen by measurement: ``python -m bench.dp_training``
(CPU, 2 shared cores, torch threads 1, batch 64, sigma 1, C 1; DP samples/s, best of 8):

=========  =======  =========  =======  =======  =======  ======  =============
model      hooks    functorch  ew       ghost    fused    plain   chosen (ratio)
=========  =======  =========  =======  =======  =======  ======  =============
logreg      94,603     53,777  105,362   71,867  238,562  268,454  fused (1.13)
mlp         60,331     29,841   71,831   48,417  168,796  214,174  fused (1.27)
cnn         15,590     10,278   20,397   12,927   29,488   42,081  fused (1.43)
=========  =======  =========  =======  =======  =======  ======  =============

Of Opacus's own modes ``ew`` is fastest here, but every Opacus mode costs 2.1-3.5x plain SGD
on these small models: its per-step Python (hooks, per-parameter clip/noise loops) dominates.
``fused`` (``confide_worker.training.fused``) computes the same clipped sum (tests check it
against ``hooks``) with one backward and a few batched products, so it is the default for all three.

A code bundle's model (``confide_worker.bundle``) is any module, with its own loss: it trains
in ``hooks`` mode, Opacus's ``GradSampleModule``, which computes per-record gradients for
every layer Opacus knows (and through functorch for others); layers that mix records
(BatchNorm, ...) are refused or fixed before (``confide_worker.bundle.dp_ready``).
"""

from __future__ import annotations

import enum
import warnings
from typing import Any

import torch
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import get_optimizer_class
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from confide.v1 import common_pb2
from confide_worker.training.fused import FusedDpSgd
from confide_worker.training.train import Loss, RoundStats

__all__ = ["DEFAULT_MODES", "DpTrainer", "GradSampleMode"]


class GradSampleMode(enum.Enum):
    """How Opacus computes per-sample gradients (or, for ghost, only their norms)."""

    HOOKS = "hooks"
    FUNCTORCH = "functorch"
    EW = "ew"
    GHOST = "ghost"
    FUSED = "fused"
    """Not Opacus: ``confide_worker.training.fused`` (ghost norms, one backward), checked
    against hooks."""


DEFAULT_MODES: dict[int, GradSampleMode] = {
    common_pb2.MODEL_KIND_LOGREG: GradSampleMode.FUSED,
    common_pb2.MODEL_KIND_MLP: GradSampleMode.FUSED,
    common_pb2.MODEL_KIND_CNN: GradSampleMode.FUSED,
}
"""The measured-fastest mode per built-in model kind (see the module docstring)."""


class DpTrainer:
    """Keeps one Opacus-wrapped copy of a model for a job and runs DP-SGD rounds on it.

    The wrapper is built once; each round the caller loads new weights into ``module`` (the
    unwrapped module, whose parameter names are the contract's), and ``run`` builds the cheap
    optimizer/criterion for the round's parameters.

    Args:
        module: a fresh model on its device, used only for DP training.
        mode: the per-sample-gradient mode.
        lr: SGD learning rate.
        loss: a code bundle's batch-mean loss (cross-entropy when None); not with ``fused``
            or ``ghost``, which are built for cross-entropy.

    Raises:
        ValueError: a loss with the fused or ghost mode.
    """

    def __init__(
        self, module: nn.Module, *, mode: GradSampleMode, lr: float, loss: Loss | None = None
    ) -> None:
        self.module = module
        self.mode = mode
        self.lr = lr
        self.loss = loss
        self._fused: FusedDpSgd | None = None
        if loss is not None and mode in (GradSampleMode.FUSED, GradSampleMode.GHOST):
            raise ValueError(f"the {mode.value} mode trains cross-entropy only")
        if mode is GradSampleMode.FUSED:
            self._fused = FusedDpSgd(module, lr=lr)
            return
        kwargs: dict[str, Any] = {"batch_first": True, "loss_reduction": "mean"}
        if mode is GradSampleMode.GHOST:
            kwargs["max_grad_norm"] = 1.0
        self._gsm: Any = prepare_module(module, mode.value, True, **kwargs)

    def run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        sample_rate: float,
        steps: int,
        sample_generator: torch.Generator,
        noise_generator: torch.Generator,
    ) -> RoundStats:
        """Run exactly ``steps`` Poisson-sampled DP-SGD steps on (x, y).

        Args:
            x: training features on the module's device.
            y: training labels (int64) on the same device.
            noise_multiplier: sigma.
            max_grad_norm: C.
            sample_rate: q.
            steps: the number of steps the daemon accounts for.
            sample_generator: CPU generator for the Poisson masks.
            noise_generator: generator on the module's device for the Gaussian noise.
        """
        n = int(x.shape[0])
        expected = sample_rate * n
        if self._fused is not None:
            return self._run_fused(
                x,
                y,
                max_grad_norm,
                noise_multiplier,
                sample_rate,
                steps,
                sample_generator,
                noise_generator,
            )
        ghost = self.mode is GradSampleMode.GHOST
        if ghost:
            self._gsm.max_grad_norm = max_grad_norm
        sgd = torch.optim.SGD(self.module.parameters(), lr=self.lr)
        opt_cls = get_optimizer_class(
            clipping="flat", distributed=False, grad_sample_mode=self.mode.value
        )
        opt = opt_cls(
            sgd,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected,
            loss_reduction="mean",
            generator=noise_generator,
        )
        base_loss: Any = self.loss or nn.CrossEntropyLoss(reduction="mean")
        criterion: Any = (
            DPLossFastGradientClipping(self._gsm, opt, base_loss, "mean") if ghost else base_loss
        )
        self._gsm.train()
        stats = RoundStats()
        with warnings.catch_warnings():
            # Opacus's hooks fire on the first layer, whose input needs no gradient; torch
            # warns about exactly that on every step. Harmless, and noisy in the worker's log.
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            self._steps(
                x,
                y,
                criterion,
                opt,
                sgd,
                steps,
                sample_rate,
                expected,
                stats,
                sample_generator,
                noise_generator,
                noise_multiplier * max_grad_norm,
            )
        opt.zero_grad(set_to_none=True)
        return stats

    def _run_fused(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        max_grad_norm: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        sample_generator: torch.Generator,
        noise_generator: torch.Generator,
    ) -> RoundStats:
        assert self._fused is not None
        n = int(x.shape[0])
        expected = sample_rate * n
        std = noise_multiplier * max_grad_norm
        params = list(self.module.parameters())
        sgd = torch.optim.SGD(params, lr=self.lr)
        stats = RoundStats()
        self.module.train()
        for _ in range(steps):
            idx = _poisson_sample(n, sample_rate, sample_generator, x.device)
            if idx.numel() == 0:
                _noise_only_step(params, sgd, std=std, expected=expected, gen=noise_generator)
            else:
                xb, yb = x[idx], y[idx]
                logits, loss_sum = self._fused.step(
                    xb,
                    yb,
                    max_grad_norm=max_grad_norm,
                    noise_std=std,
                    expected_batch=expected,
                    generator=noise_generator,
                )
                stats.add(logits, yb, loss_sum)
            stats.steps += 1
        return stats

    def _steps(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        criterion: Any,
        opt: Any,
        sgd: torch.optim.Optimizer,
        steps: int,
        sample_rate: float,
        expected: float,
        stats: RoundStats,
        sample_generator: torch.Generator,
        noise_generator: torch.Generator,
        std: float,
    ) -> None:
        n = int(x.shape[0])
        params = [p for p in self.module.parameters() if p.requires_grad]
        for _ in range(steps):
            idx = _poisson_sample(n, sample_rate, sample_generator, x.device)
            if idx.numel() == 0:
                _noise_only_step(params, sgd, std=std, expected=expected, gen=noise_generator)
            else:
                xb, yb = x[idx], y[idx]
                opt.zero_grad(set_to_none=True)
                logits = self._gsm(xb)
                loss = criterion(logits, yb)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    batch_loss = (self.loss or nn.functional.cross_entropy)(logits.detach(), yb)
                stats.add(logits.detach(), yb, batch_loss * yb.shape[0])
            stats.steps += 1


def _poisson_sample(
    n: int, sample_rate: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Indices of one Poisson sample of n records: each kept with probability q, independently.

    The accountant's sampled Gaussian mechanism assumes exactly this scheme, so every mode
    draws its batches here.
    """
    mask = torch.rand(n, generator=generator) < sample_rate
    return mask.nonzero().squeeze(1).to(device)


def _noise_only_step(
    params: list[nn.Parameter],
    sgd: torch.optim.Optimizer,
    *,
    std: float,
    expected: float,
    gen: torch.Generator,
) -> None:
    """The DP-SGD step on an empty sample: the update is noise N(0, std^2) / (q*N) only."""
    for p in params:
        p.grad = torch.normal(0.0, std, p.shape, device=p.device, generator=gen) / expected
    sgd.step()
    for p in params:
        p.grad = None
