"""The recurrent classifier: shapes per cell, stacking, config validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnntune.exceptions import ConfigError
from rnntune.models import FAMILIES, ModelConfig, RecurrentClassifier


@pytest.mark.parametrize("cell", FAMILIES)
def test_output_shape_per_cell(cell: str) -> None:
    torch.manual_seed(0)
    model = RecurrentClassifier(ModelConfig(cell=cell, input_size=4, hidden_size=8))
    logits = model(torch.randn(5, 11, 4))
    assert logits.shape == (5, 2) and logits.dtype == torch.float32
    assert isinstance(model.rnn, {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell])
    assert model.rnn.batch_first


@pytest.mark.parametrize("cell", FAMILIES)
def test_two_layers_with_dropout(cell: str) -> None:
    config = ModelConfig(cell=cell, input_size=3, hidden_size=6, num_layers=2, dropout=0.3)
    model = RecurrentClassifier(config)
    assert model.rnn.num_layers == 2 and model.rnn.dropout == pytest.approx(0.3)
    model.train()
    assert model(torch.randn(4, 7, 3)).shape == (4, 2)


def test_dropout_is_dropped_for_one_layer() -> None:
    # torch warns about dropout on a single layer; pytest turns that warning into an error.
    model = RecurrentClassifier(ModelConfig("gru", input_size=2, hidden_size=4, dropout=0.5))
    assert model.rnn.dropout == 0.0


def test_uses_the_last_time_step() -> None:
    torch.manual_seed(0)
    model = RecurrentClassifier(ModelConfig("gru", input_size=2, hidden_size=4)).eval()
    x = torch.randn(3, 9, 2)
    expected = model.head(model.rnn(x)[0][:, -1])
    torch.testing.assert_close(model(x), expected)
    # A causal model: changing only the last step changes the output, the prefix is memory.
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(model(x2), model(x))


def test_num_classes() -> None:
    model = RecurrentClassifier(ModelConfig("lstm", input_size=1, hidden_size=3, num_classes=5))
    assert model(torch.randn(2, 4, 1)).shape == (2, 5)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"cell": "transformer"}, "unknown cell 'transformer'; use one of rnn, gru, lstm"),
        ({"cell": "GRU"}, "unknown cell 'GRU'"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"input_size": 2.5}, "input_size must be a positive integer"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ],
)
def test_bad_config(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"cell": "gru", "input_size": 4, "hidden_size": 8} | kwargs
    with pytest.raises(ConfigError) as err:
        RecurrentClassifier(ModelConfig(**args))  # type: ignore[arg-type]
    assert needle in str(err.value) and "\n" not in str(err.value)
