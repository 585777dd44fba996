"""Local training without record-level privacy: SGD on a loss, and evaluation.

The loss is cross-entropy, or a code bundle's own ``loss(outputs, labels)`` (the batch mean of
a per-record loss, ``confide_worker.bundle``); evaluation is always accuracy and cross-entropy,
so every job reports the same figures.

The data is used as the site gives it: nothing is standardized implicitly. Batches are drawn
by indexing tensors already on the device (no DataLoader), which is several times faster
than a DataLoader for the small tabular and image sets built-in models train on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Loss", "RoundStats", "evaluate", "train_plain"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A batch's mean loss from (outputs, labels)."""


@dataclass
class RoundStats:
    """Running loss/accuracy over the records a round's steps saw."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0

    def add(self, logits: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Accumulate one batch (``loss_sum`` is the batch's summed, detached loss)."""
        self.loss_sum += float(loss_sum)
        self.correct += int((logits.argmax(dim=1) == y).sum())
        self.seen += int(y.shape[0])

    def metrics(self) -> dict[str, float]:
        """``train_loss`` (mean per record) and ``train_accuracy``."""
        n = max(1, self.seen)
        return {"train_loss": self.loss_sum / n, "train_accuracy": self.correct / n}


def train_plain(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    loss_fn: Loss = F.cross_entropy,
) -> RoundStats:
    """Minibatch SGD for ``epochs`` passes over shuffled data; returns the round's stats.

    Args:
        model: the module, already holding the round's starting weights, on x's device.
        x: training features on the model's device.
        y: training labels (int64 class indices) on the same device.
        lr: SGD learning rate.
        epochs: passes over the data.
        batch_size: records per step (the last batch of an epoch may be smaller).
        generator: CPU generator for the shuffles.
        loss_fn: the batch's mean loss (a bundle's own, or cross-entropy).
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    stats = RoundStats()
    n = int(x.shape[0])
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            stats.add(logits.detach(), yb, loss.detach() * yb.shape[0])
            stats.steps += 1
    return stats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 4096,
    loss_clip: float | None = None,
) -> tuple[float, float, int]:
    """Accuracy, mean cross-entropy and record count on (x, y); (0, 0, 0) when empty.

    With ``loss_clip`` L each record's cross-entropy is clipped to L before the mean, so one
    record moves the loss sum by at most L (``confide.dp.evaluation``).
    """
    model.eval()
    n = int(x.shape[0])
    if n == 0:
        return 0.0, 0.0, 0
    loss_sum = 0.0
    correct = 0
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = model(xb)
        losses = F.cross_entropy(logits, yb, reduction="none")
        if loss_clip is not None:
            losses = losses.clamp(max=float(loss_clip))
        loss_sum += float(losses.sum())
        correct += int((logits.argmax(dim=1) == yb).sum())
    return correct / n, loss_sum / n, n
