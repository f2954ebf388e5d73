"""The recurrent classifier compared across families: one model, the cell type is a parameter.

Pure torch: no I/O, no Optuna, no database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rnntune.exceptions import ConfigError
from rnntune.fastrnn import FastGRU, FastRNN
from rnntune.names import FAMILIES

__all__ = ["FAMILIES", "READOUTS", "ModelConfig", "RecurrentClassifier"]

# What the head reads: the top layer's last step, or its mean over time (long sequences).
READOUTS = ("last", "mean")

# GRU and RNN: torch's modules with a hand-written CPU kernel (rnntune.fastrnn): the same
# parameters, initialisation and state dicts, 2-5x faster training on the CPU; on CUDA they
# are cuDNN's. torch already fuses LSTM on the CPU (oneDNN).
_CELLS: dict[str, Callable[..., nn.RNNBase]] = {"rnn": FastRNN, "gru": FastGRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`RecurrentClassifier`; validated on construction."""

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    dropout: float = 0.0
    num_classes: int = 2
    readout: str = "last"

    def __post_init__(self) -> None:
        if self.cell not in FAMILIES:
            raise ConfigError(f"unknown cell {self.cell!r}; use one of {', '.join(FAMILIES)}")
        if self.readout not in READOUTS:
            raise ConfigError(f"unknown readout {self.readout!r}; use one of {', '.join(READOUTS)}")
        for name in ("input_size", "hidden_size", "num_layers", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_params(cls, cell: str, params: Mapping[str, Any], input_size: int) -> ModelConfig:
        """The architecture a trial's (or a best trial's) Optuna ``params`` describe."""
        return cls(
            cell=cell,
            input_size=input_size,
            hidden_size=int(params["hidden_size"]),
            num_layers=int(params.get("num_layers", 1)),
            dropout=float(params.get("dropout", 0.0)),
            readout=str(params.get("readout", "last")),
        )


class RecurrentClassifier(nn.Module):
    """``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` over the sequence, a linear head on the last step
    (or, with ``readout="mean"``, on the mean over all steps).

    The RNN and GRU are :class:`~rnntune.fastrnn.FastRNN` / :class:`~rnntune.fastrnn.FastGRU`:
    subclasses of torch's with the same state dict, faster on the CPU.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.rnn = _CELLS[config.cell](
            input_size=config.input_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            # torch applies dropout between stacked layers only, and warns if it has none.
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden_size, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for sequences ``x`` of shape ``(B, T, F)``."""
        out = self.rnn(x)[0]  # (B, T, H): the top layer at every step
        h = out[:, -1] if self.config.readout == "last" else out.mean(dim=1)  # (B, H)
        logits: torch.Tensor = self.head(h)  # (B, C)
        return logits
