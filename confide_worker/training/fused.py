"""Fused DP-SGD step for the built-in models: per-record norms without Opacus's per-step cost.

Same mathematics as Opacus's flat clipping (Abadi et al. 2016, Alg. 1): for a batch B, with
per-record loss l_i and parameters theta, g_i = grad l_i, clip factor
c_i = min(1, C / (||g_i||_2 + 1e-6)) (Opacus's constant), update direction
(sum_i c_i g_i + N(0, sigma^2 C^2 I)) / (q N). What differs is how g_i is obtained:

- Linear layer y = W a + b: the per-record gradient is the outer product b'_i a_i^T (b'_i =
  dl_i/dy_i), so ||g_i||^2 = ||b'_i||^2 ||a_i||^2 + ||b'_i||^2 and sum_i c_i g_i = (c * B')^T A
  without materialising any g_i ("ghost norm", Goodfellow 2015, "Efficient Per-Example Gradient
  Computations"; Li et al. 2022, "Large Language Models Can Be Strong Differentially Private
  Learners", sec. 4).
- Conv2d: with unfolded inputs U_i (d x T) and output gradients B'_i (o x T), g_i = B'_i U_i^T
  (o x d), materialised (small for the built-in CNN), as Opacus's ``conv`` grad sampler does.
  U is extracted by a convolution with one-hot kernels rather than ``F.unfold``, whose CPU
  im2col loops over records (``FusedDpSgd._unfold``).

One forward, one ``autograd.grad`` for the layer outputs, then a few batched matrix products:
the step costs about what a plain SGD step costs. Tests compare it with Opacus's ``hooks`` mode
(the slow reference) on the same batch with sigma = 0.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FusedDpSgd"]


class FusedDpSgd:
    """DP-SGD on a module made of Linear and Conv2d layers (plus parameter-free layers).

    Args:
        module: the model; every parameter must belong to a Linear or Conv2d layer.
        lr: SGD learning rate.

    Raises:
        ValueError: the module has a parameterised layer of another type.
    """

    def __init__(self, module: nn.Module, *, lr: float) -> None:
        self.module = module
        self.lr = lr
        self.layers: list[nn.Linear | nn.Conv2d] = []
        for sub in module.modules():
            if isinstance(sub, nn.Conv2d) and (isinstance(sub.padding, str) or sub.groups != 1):
                raise ValueError("fused DP-SGD needs Conv2d with numeric padding and groups=1")
            if isinstance(sub, (nn.Linear, nn.Conv2d)):
                self.layers.append(sub)
            elif any(True for _ in sub.parameters(recurse=False)):
                raise ValueError(f"fused DP-SGD cannot handle {type(sub).__name__}")
        self._inputs: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []
        self._patch_kernels: dict[int, torch.Tensor] = {}
        for layer in self.layers:
            layer.register_forward_hook(self._capture)

    def _capture(self, _m: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._inputs.append(inputs[0].detach())
        self._outputs.append(output)

    def _unfold(self, i: int, layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
        """``F.unfold`` of the layer's input (records x C*kh*kw x positions), as a convolution.

        Each input channel is convolved alone with one-hot kernels, one per kernel position,
        using the layer's own stride, padding and dilation: the result is exactly F.unfold's,
        in the same (channel, row, column) order, but through the fast convolution kernel
        instead of the per-record im2col loop (about 1.5x faster for the built-in CNN on CPU).
        """
        kh, kw = layer.kernel_size
        eye = self._patch_kernels.get(i)
        if eye is None or eye.device != a.device or eye.dtype != a.dtype:
            eye = torch.eye(kh * kw, device=a.device, dtype=a.dtype).reshape(kh * kw, 1, kh, kw)
            self._patch_kernels[i] = eye
        n, c, h, w = a.shape
        pad = cast(tuple[int, ...], layer.padding)  # __init__ refused string padding
        cols = F.conv2d(a.reshape(n * c, 1, h, w), eye, None, layer.stride, pad, layer.dilation)
        return cols.reshape(n, c * kh * kw, -1)

    def step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        max_grad_norm: float,
        noise_std: float,
        expected_batch: float,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DP-SGD step on the batch (x, y); returns the detached logits and summed loss.

        Args:
            x: the Poisson-sampled batch (non-empty).
            y: its labels.
            max_grad_norm: C.
            noise_std: sigma * C.
            expected_batch: q * N, the divisor of the noised sum.
            generator: generator on the module's device for the noise.
        """
        self._inputs.clear()
        self._outputs.clear()
        logits = self.module(x)
        loss = F.cross_entropy(logits, y, reduction="sum")
        backs = torch.autograd.grad(loss, self._outputs)
        n = x.shape[0]
        sq = torch.zeros(n, device=x.device, dtype=logits.dtype)
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        with torch.no_grad():
            for i, (layer, a, b) in enumerate(zip(self.layers, self._inputs, backs, strict=True)):
                if isinstance(layer, nn.Linear):
                    a2 = a.reshape(n, -1)
                    b2 = b.reshape(n, -1)
                    bn = _row_sq_norms(b2)
                    sq += _row_sq_norms(a2) * bn + bn
                    parts.append((a2, b2, None))
                else:
                    u = self._unfold(i, layer, a)
                    bm = b.reshape(n, b.shape[1], -1)
                    g = torch.bmm(bm, u.transpose(1, 2))  # per-record weight gradients
                    gb = bm.sum(2)
                    sq += _row_sq_norms(g.reshape(n, -1)) + _row_sq_norms(gb)
                    parts.append((g, gb, u))
            clip = (max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            scale = -self.lr / expected_batch
            for layer, (p1, p2, conv) in zip(self.layers, parts, strict=True):
                if conv is None:
                    cb = p2 * clip[:, None]
                    gw = cb.T @ p1
                    gbias = cb.sum(0)
                else:
                    gw = (clip @ p1.reshape(n, -1)).view_as(layer.weight)
                    gbias = clip @ p2
                _noisy_update(layer.weight, gw, noise_std, scale, generator)
                if layer.bias is not None:
                    _noisy_update(layer.bias, gbias, noise_std, scale, generator)
        self._inputs.clear()
        self._outputs.clear()
        return logits.detach(), loss.detach()


def _row_sq_norms(m: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row of a 2-D tensor."""
    norms: torch.Tensor = torch.linalg.vector_norm(m, dim=1)
    return norms.square()


def _noisy_update(
    p: torch.Tensor, g: torch.Tensor, std: float, scale: float, gen: torch.Generator
) -> None:
    """p += scale * (g + N(0, std^2)), in place."""
    if std > 0:
        g = g + torch.normal(0.0, std, g.shape, device=g.device, generator=gen)
    p.add_(g, alpha=scale)
