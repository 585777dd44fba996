"""A small convolutional net for scikit-learn's digits: 8x8 grey images, 10 classes.

A Confide code bundle: ``build_model`` is called once per job in each site's sandboxed worker
(and once by ``confide job init-weights`` on the operator's machine); ``transform`` runs there
on every record's features before training and evaluation. Only torch, numpy and opacus are
available, and the sandbox has no network and no files but this folder and the dataset.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def build_model(spec: Any) -> nn.Module:
    """Conv(8) + ReLU + max-pool, then a linear layer over the pooled maps.

    Args:
        spec: ``confide.models.BundleSpec``: ``input_shape`` is ``(1, 8, 8)`` for digits and
            ``num_classes`` 10.
    """
    channels, height, width = spec.input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * (height // 2) * (width // 2), spec.num_classes),
    )


def transform(features: torch.Tensor) -> torch.Tensor:
    """Pixel intensities 0..16 (as the data set stores them) scaled to [0, 1]."""
    return features / 16.0
