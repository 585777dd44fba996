"""A two-layer net for tabular records with its own loss (e.g. scikit-learn's breast_cancer).

A Confide code bundle: ``build_model`` is called once per job in each site's sandboxed worker
(and once by ``confide job init-weights``); ``loss`` replaces cross-entropy in training
(hold-out figures stay accuracy and cross-entropy of the outputs, so every job reports the
same quantities).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

GAMMA = 2.0
"""Focal loss exponent: 0 is plain cross-entropy; larger values weigh hard records more."""


def build_model(spec: Any) -> nn.Module:
    """features -> 16 (tanh) -> classes."""
    (features,) = spec.input_shape
    return nn.Sequential(nn.Linear(features, 16), nn.Tanh(), nn.Linear(16, spec.num_classes))


def loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. 5):
    -(1 - p_t)^gamma log p_t, with p_t the predicted probability of the true class."""
    log_p = F.log_softmax(outputs, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    return (-((1.0 - log_p.exp()) ** GAMMA) * log_p).mean()
