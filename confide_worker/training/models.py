"""The built-in models as torch modules whose parameters match ``confide.models`` exactly.

``confide.models.parameter_shapes`` is the contract: the aggregator creates and aggregates
weights by those names and shapes, so ``named_parameters()`` here yields the same names, shapes
and order (a test checks each kind).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from confide.errors import ConfigError, MalformedMessage
from confide.models import CNN_CHANNELS, DEFAULT_MLP_HIDDEN, parameter_shapes
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays

__all__ = ["CNN", "MLP", "LogReg", "build_model", "load_weights", "weights_delta"]


class LogReg(nn.Module):
    """Multinomial logistic regression: ``net.0`` Linear(F, C) on logits."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape [batch, classes]."""
        return self.net(x)  # type: ignore[no-any-return]


class MLP(nn.Module):
    """Linear/ReLU stack: ``net.0``, ``net.2``, ... with the last Linear giving logits."""

    def __init__(self, features: int, hidden: list[int], classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = features
        for h in hidden:
            layers += [nn.Linear(fan_in, h), nn.ReLU()]
            fan_in = h
        layers.append(nn.Linear(fan_in, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape [batch, classes]."""
        return self.net(x)  # type: ignore[no-any-return]


class CNN(nn.Module):
    """Two 3x3 conv blocks, global average pooling, then ``head`` Linear(32, C)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        c1, c2 = CNN_CHANNELS
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(c2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape [batch, classes] from images [batch, c, h, w]."""
        return self.head(self.features(x))  # type: ignore[no-any-return]


def build_model(model: common_pb2.ModelSpec, dataset: common_pb2.DatasetSpec) -> nn.Module:
    """Build a built-in model for a job (float32, on the CPU).

    Raises:
        ConfigError: unknown or torch-less model kind, or a spec that does not fit.
    """
    parameter_shapes(model, dataset)  # validates the spec, raising ConfigError
    classes = int(dataset.num_classes)
    kind = model.kind
    if kind == common_pb2.MODEL_KIND_LOGREG:
        return LogReg(len(dataset.features), classes)
    if kind == common_pb2.MODEL_KIND_MLP:
        hidden = [int(h) for h in model.hidden] or list(DEFAULT_MLP_HIDDEN)
        return MLP(len(dataset.features), hidden, classes)
    if kind == common_pb2.MODEL_KIND_CNN:
        return CNN(int(dataset.input_shape[0]), classes)
    raise ConfigError("model.kind", f"model kind {kind} has no torch module")


def load_weights(module: nn.Module, weights: NamedArrays) -> None:
    """Copy weights into a module's parameters, checking names, shapes and order.

    Raises:
        MalformedMessage: the weights do not match the module's parameters.
    """
    params = list(module.named_parameters())
    if [n for n, _ in params] != [n for n, _ in weights]:
        raise MalformedMessage("weights do not name the model's parameters in order")
    with torch.no_grad():
        for (name, p), (_, arr) in zip(params, weights, strict=True):
            if tuple(arr.shape) != tuple(p.shape):
                raise MalformedMessage(
                    f"weight {name!r} has shape {arr.shape}, not {tuple(p.shape)}"
                )
            p.copy_(torch.from_numpy(np.asarray(arr, dtype=np.float32)))


def weights_delta(module: nn.Module, old: NamedArrays) -> NamedArrays:
    """new - old for each parameter, as float32 NumPy arrays in parameter order."""
    out: NamedArrays = []
    for (name, p), (_, arr) in zip(module.named_parameters(), old, strict=True):
        new = p.detach().to("cpu", torch.float32).numpy()
        out.append((name, np.subtract(new, arr, dtype=np.float32)))
    return out
