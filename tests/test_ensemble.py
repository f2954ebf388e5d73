"""Repeats trained as one ensemble: each member equals its repeat trained alone (same seed)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from rnntune import ensemble
from rnntune.data import load_dataset, split_dataset
from rnntune.exceptions import ConfigError, Interrupted
from rnntune.models import ModelConfig, RecurrentClassifier
from rnntune.train import TrainConfig, fit, fit_ensemble, predict_proba

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, ...]:
    """350 / 75 / 75 sequences of 16 steps, 3 channels; the test part to compare predictions."""
    s = split_dataset(load_dataset("synthetic:n=500,length=16,features=3,seed=1"), seed=0)
    return s.X_train, s.y_train, s.X_val, s.y_val, s.X_test


def _configs(seeds: list[int], **kw: object) -> list[TrainConfig]:
    base = {"learning_rate": 1e-2, "batch_size": 32, "max_epochs": 6, "patience": 1}
    return [TrainConfig(**{**base, **kw, "seed": s}) for s in seeds]  # type: ignore[arg-type]


def _assert_member_equals_solo(member, solo, X_test: np.ndarray) -> None:  # noqa: ANN001
    # Same decisions: epochs, the best epoch, the validation metric of every epoch ...
    assert member.epochs_trained == solo.epochs_trained
    assert member.best_epoch == solo.best_epoch
    assert member.stopped_early == solo.stopped_early
    assert [h.val_metric for h in member.history] == [h.val_metric for h in solo.history]
    np.testing.assert_allclose(
        [h.train_loss for h in member.history], [h.train_loss for h in solo.history], rtol=1e-4
    )
    # ... and the same model, within fp32 rounding: equal predicted classes, close probabilities.
    p_member, p_solo = predict_proba(member.model, X_test), predict_proba(solo.model, X_test)
    np.testing.assert_allclose(p_member, p_solo, atol=1e-4)
    assert ((p_member >= 0.5) == (p_solo >= 0.5)).all()


MODELS = [
    ModelConfig("rnn", 3, 8),
    ModelConfig("gru", 3, 8),
    ModelConfig("lstm", 3, 8),
    ModelConfig("gru", 3, 6, num_layers=2),
    ModelConfig("lstm", 3, 6, num_layers=2),
    ModelConfig("rnn", 3, 6, readout="mean"),
]


@pytest.mark.parametrize(
    "model_config", MODELS, ids=lambda c: f"{c.cell}-{c.num_layers}-{c.readout}"
)
def test_each_member_equals_its_repeat_trained_alone(
    small: tuple[np.ndarray, ...], model_config: ModelConfig
) -> None:
    X_train, y_train, X_val, y_val, X_test = small
    configs = _configs([0, 1, 2, 3])
    members = fit_ensemble(model_config, configs, X_train, y_train, X_val, y_val)
    solos = [fit(model_config, tc, X_train, y_train, X_val, y_val) for tc in configs]
    for member, solo in zip(members, solos, strict=True):
        _assert_member_equals_solo(member, solo, X_test)


def test_members_stop_on_their_own(small: tuple[np.ndarray, ...]) -> None:
    """A member that stops early keeps its best weights while the others train on: here the
    members stop after different numbers of epochs, and each still equals its solo run."""
    X_train, y_train, X_val, y_val, X_test = small
    config = ModelConfig("gru", 3, 8)
    configs = _configs(list(range(6)), learning_rate=3e-2, max_epochs=12, patience=2)
    done_order: list[int] = []
    members = fit_ensemble(
        config,
        configs,
        X_train,
        y_train,
        X_val,
        y_val,
        on_member_done=lambda i, r: done_order.append(i),
    )
    epochs = [m.epochs_trained for m in members]
    assert len(set(epochs)) > 1, f"members all stopped together ({epochs}): make the test harder"
    assert sorted(done_order) == list(range(6))
    # Reported in the order they finished.
    assert [epochs[i] for i in done_order] == sorted(epochs)
    for member, tc in zip(members, configs, strict=True):
        solo = fit(config, tc, X_train, y_train, X_val, y_val)
        _assert_member_equals_solo(member, solo, X_test)
        assert member.model.state_dict().keys() == RecurrentClassifier(config).state_dict().keys()
    # Shared time is split among the members training in each epoch, never counted twice.
    assert all(m.train_seconds > 0 for m in members)


class _StopAfter(Exception):
    pass


def test_killed_group_resumes_member_by_member(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path
) -> None:
    """Each member's checkpoint is the solo run's: after the group dies, members resume in a
    new group, or alone, or in a group whose members stopped at different epochs."""
    X_train, y_train, X_val, y_val, X_test = small
    config = ModelConfig("gru", 3, 8)
    configs = _configs([10, 11, 12], max_epochs=5, patience=5)
    paths = [tmp_path / f"m{i}.pt" for i in range(3)]

    def die_after(n: int):  # noqa: ANN202
        def on_epoch(results: list) -> None:  # noqa: ANN001
            if results[0][1].epoch >= n:
                raise _StopAfter

        return on_epoch

    with pytest.raises(_StopAfter):
        fit_ensemble(
            config,
            configs,
            X_train,
            y_train,
            X_val,
            y_val,
            checkpoint_paths=paths,
            on_epoch=die_after(2),
        )
    assert all(p.exists() for p in paths)
    # Member 0 goes on alone for one more epoch and dies: the members are now at epochs 3, 2, 2.
    with pytest.raises(_StopAfter):
        fit(
            config,
            configs[0],
            X_train,
            y_train,
            X_val,
            y_val,
            checkpoint_path=paths[0],
            on_epoch=lambda r: (_ for _ in ()).throw(_StopAfter()) if r.epoch >= 3 else None,
        )
    resumed = fit_ensemble(config, configs, X_train, y_train, X_val, y_val, checkpoint_paths=paths)
    assert [m.resumed_from_epoch for m in resumed] == [3, 2, 2]
    for member, tc in zip(resumed, configs, strict=True):
        solo = fit(config, tc, X_train, y_train, X_val, y_val)
        _assert_member_equals_solo(member, solo, X_test)
    # A finished member's checkpoint resumes as finished: alone, nothing is trained again.
    again = fit(config, configs[1], X_train, y_train, X_val, y_val, checkpoint_path=paths[1])
    assert again.epochs_this_run == []


def test_should_stop_interrupts_between_batches(small: tuple[np.ndarray, ...]) -> None:
    X_train, y_train, X_val, y_val, _ = small
    with pytest.raises(Interrupted):
        fit_ensemble(
            ModelConfig("rnn", 3, 4),
            _configs([0, 1]),
            X_train,
            y_train,
            X_val,
            y_val,
            should_stop=lambda: True,
        )


def test_members_must_differ_only_in_seed(small: tuple[np.ndarray, ...]) -> None:
    X_train, y_train, X_val, y_val, _ = small
    configs = [*_configs([0]), *_configs([1], learning_rate=1e-3)]
    with pytest.raises(ConfigError, match="differ only in their seed"):
        fit_ensemble(ModelConfig("rnn", 3, 4), configs, X_train, y_train, X_val, y_val)
    dropout = ModelConfig("gru", 3, 4, num_layers=2, dropout=0.2)
    assert not ensemble.supports(dropout)
    with pytest.raises(ConfigError, match="dropout"):
        fit_ensemble(dropout, _configs([0, 1]), X_train, y_train, X_val, y_val)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("readout", ["last", "mean"])
def test_hand_written_backward_gradcheck(cell: str, readout: str) -> None:
    """float64 gradcheck of the batched recurrences (two layers: also the gradient that flows
    into every hidden state, not only the last)."""
    config = ModelConfig(cell, 2, 3, num_layers=2, readout=readout)
    gen = torch.Generator().manual_seed(0)
    states = [RecurrentClassifier(config).double().state_dict() for _ in range(2)]
    params = [p.requires_grad_() for p in ensemble.stack(config, states)]
    x = torch.randn(2, 4, 5, 2, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(
        lambda *ps: ensemble.logits(config, ps, x), tuple(params), eps=1e-6, atol=1e-5
    )


def test_validation_holds_one_models_batch_of_rows_across_the_members(
    small: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """k members validate a k-th of one model's batch of rows at a time: the whole batch at
    once held k times the buffers (measured: 9.3 GB peak for 10 GRU-32 members on 4,096
    sequences of 140 steps), and the members' results are the same either way."""
    from rnntune import train

    X_train, y_train, X_val, y_val, X_test = small
    config = ModelConfig("gru", 3, 8)
    configs = _configs([0, 1, 2, 3], max_epochs=2)
    whole = fit_ensemble(config, configs, X_train, y_train, X_val, y_val)
    rows: list[int] = []
    real = ensemble.logits

    def recording(cfg, params, x):  # noqa: ANN001, ANN202
        if not torch.is_grad_enabled():
            rows.append(x.shape[0])
        return real(cfg, params, x)

    monkeypatch.setattr(train, "_EVAL_BATCH", 40)
    monkeypatch.setattr(ensemble, "logits", recording)
    chunked = fit_ensemble(config, configs, X_train, y_train, X_val, y_val)
    assert rows and max(rows) == 10 and sum(rows) == 2 * len(X_val)
    for a, b in zip(whole, chunked, strict=True):
        assert [h.val_metric for h in a.history] == [h.val_metric for h in b.history]
        np.testing.assert_allclose(
            predict_proba(a.model, X_test), predict_proba(b.model, X_test), atol=1e-6
        )
