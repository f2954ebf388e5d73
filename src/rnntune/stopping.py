"""The early-stopping rule: one small, pure object that every training loop uses.

Pure Python (no torch, no numpy), so the report can state the rule without importing a writer,
and a loop that trains several members at once keeps one :class:`EarlyStopping` per member.

The rule, after every epoch (``describe`` says it in words for the report and the README):

* **Progress** is a validation cross-entropy more than ``min_delta`` below its best so far, *or*
  a validation objective (e.g. macro F1) above its best so far. The loss is continuous, so a
  model that is slowly getting better is seen to, even while a discrete metric on a validation
  part of a few dozen sequences does not move.
* **Patience scales with the budget:** stop after ``max(patience, ceil(max_epochs / 4))`` epochs
  in a row without progress (3 at the default 10 epochs, 8 at 30).
* **Never on the majority-class plateau:** while the model predicts one class for every
  validation sequence, it has nothing worth keeping yet and everything to gain, so those epochs
  do not count against the patience. (Issue 10.5: patience 3 on macro F1 over a validation part
  of a few dozen stopped a slow-starting RNN after 4 of 30 epochs, predicting "normal" for all.)
* **The weights kept** are the epoch with the best objective; a tie goes to the lower loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "MIN_DELTA",
    "PATIENCE_FRACTION",
    "EarlyStopping",
    "Step",
    "describe",
    "effective_patience",
]

# Absolute: cross-entropy in nats, so 0.001 is a tenth of a percent of the loss at chance (0.69).
MIN_DELTA = 1e-3
# The patience is at least this share of the epoch budget (rounded up).
PATIENCE_FRACTION = 0.25


def effective_patience(patience: int, max_epochs: int) -> int:
    """Epochs without progress before stopping: ``max(patience, ceil(max_epochs / 4))``, >= 1."""
    return max(1, int(patience), math.ceil(PATIENCE_FRACTION * int(max_epochs)))


def describe(patience: int, max_epochs: int, metric: str, min_delta: float = MIN_DELTA) -> dict:
    """The rule as data and as one sentence (stored in the report, shown in every format)."""
    eff = effective_patience(patience, max_epochs)
    text = (
        f"stop after {eff} epochs in a row without progress (max(patience {patience}, "
        f"ceil(max_epochs {max_epochs} / 4))); progress is a validation cross-entropy more "
        f"than {min_delta:g} below its best, or a validation {metric} above its best; epochs "
        "in which the model predicts a single class for every validation sequence (the "
        f"majority-class plateau) never count; the weights kept are the best {metric}'s "
        "epoch (ties: lower loss)"
    )
    return {
        "monitor": ["val_loss", f"val_{metric}"],
        "min_delta": min_delta,
        "patience": eff,
        "patience_given": int(patience),
        "max_epochs": int(max_epochs),
        "plateau_guard": True,
        "rule": text,
    }


@dataclass(frozen=True)
class Step:
    """What one epoch decided: keep its weights (``improved``), and whether to stop now."""

    improved: bool
    stop: bool


@dataclass
class EarlyStopping:
    """Per-run state of the rule; :meth:`state_dict` goes into every checkpoint.

    ``update`` takes the epoch's validation loss, its objective (higher is better) and the
    number of distinct classes the model predicted on the validation part.
    """

    patience: int
    min_delta: float = MIN_DELTA
    best_loss: float = math.inf
    best_metric: float = -math.inf
    best_metric_loss: float = math.inf
    bad_epochs: int = 0
    stopped: bool = False

    @classmethod
    def for_budget(
        cls, patience: int, max_epochs: int, min_delta: float = MIN_DELTA
    ) -> EarlyStopping:
        return cls(patience=effective_patience(patience, max_epochs), min_delta=min_delta)

    def update(self, val_loss: float, val_metric: float, predicted_classes: int) -> Step:
        """Fold in one finished epoch. NaN never counts as progress or as a better epoch."""
        loss_progress = val_loss < self.best_loss - self.min_delta
        metric_progress = val_metric > self.best_metric
        if val_loss < self.best_loss:
            self.best_loss = val_loss
        improved = val_metric > self.best_metric or (
            val_metric == self.best_metric and val_loss < self.best_metric_loss
        )
        if improved:
            self.best_metric, self.best_metric_loss = val_metric, val_loss
        if loss_progress or metric_progress or predicted_classes <= 1:
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.stopped = self.bad_epochs >= max(self.patience, 1)
        return Step(improved=improved, stop=self.stopped)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)
