"""Weighted sums of the sites' hold-out figures of one model, and the means they give.

Each site i reports its hold-out accuracy acc_i and loss loss_i on n_i records; the
aggregator weighs them by v_i = ``admission.eval_weight`` (n_i, bounded so one site cannot
outweigh the rest) and reports the means Σ v_i·acc_i / Σ v_i and Σ v_i·loss_i / Σ v_i, with
Σ min(n_i, cap) hold-out records. A job keeps one ``EvalSums`` for the current round's input
model and one for its final model (``aggregator.jobs.Job``): named fields, so a misspelt
figure is a type error rather than a silent zero.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EvalSums"]


@dataclass(slots=True)
class EvalSums:
    """Σ v_i·acc_i, Σ v_i·loss_i, Σ v_i and Σ min(n_i, cap) over the sites added so far."""

    weighted_accuracy: float = 0.0
    weighted_loss: float = 0.0
    weight: float = 0.0
    samples: float = 0.0

    def add(self, *, accuracy: float, loss: float, weight: float, samples: float) -> None:
        """Add one site's figures: its accuracy and loss, its weight v_i, its capped count."""
        self.weighted_accuracy += accuracy * weight
        self.weighted_loss += loss * weight
        self.weight += weight
        self.samples += samples

    @property
    def accuracy(self) -> float:
        """The weighted mean accuracy (0 when no site reported a weighted figure)."""
        return self.weighted_accuracy / self.weight if self.weight else 0.0

    @property
    def loss(self) -> float:
        """The weighted mean loss (0 when no site reported a weighted figure)."""
        return self.weighted_loss / self.weight if self.weight else 0.0
