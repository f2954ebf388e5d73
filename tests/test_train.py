"""The training loop: determinism, resume, early stopping, failures, metrics."""

from __future__ import annotations

import logging
import math
import os
import pathlib
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from rnntune import train
from rnntune.data import load_dataset, split_dataset
from rnntune.exceptions import ConfigError, DataError, Interrupted, TrainingError
from rnntune.models import ModelConfig, RecurrentClassifier
from rnntune.train import (
    METRICS,
    EpochResult,
    TrainConfig,
    classification_metrics,
    fit,
    predict_proba,
    resolve_device,
    score,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, ...]:
    """A small, quick split of the synthetic task: 350 / 75 / 75 sequences of 16 steps."""
    s = split_dataset(load_dataset("synthetic:n=500,length=16,features=3,seed=1"), seed=0)
    return s.X_train, s.y_train, s.X_val, s.y_val


MODEL = ModelConfig(cell="gru", input_size=3, hidden_size=8)
# Two layers with dropout: resuming must also restore the global RNG that dropout draws from.
DROPOUT_MODEL = ModelConfig(cell="lstm", input_size=3, hidden_size=8, num_layers=2, dropout=0.2)


def _history(result: train.FitResult) -> list[tuple[int, float, float, float]]:
    # Seconds differ between runs; everything else must not.
    return [(h.epoch, h.train_loss, h.val_metric, h.val_loss) for h in result.history]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------------------------
# Determinism and resume
# --------------------------------------------------------------------------------------------


def test_same_seed_same_metrics(small: tuple[np.ndarray, ...]) -> None:
    config = TrainConfig(learning_rate=1e-2, batch_size=32, max_epochs=3, seed=7)
    a = fit(MODEL, config, *small)
    b = fit(MODEL, config, *small)
    assert _history(a) == _history(b)
    assert a.best_val_metric == b.best_val_metric and a.best_epoch == b.best_epoch
    _assert_same_weights(a.model.state_dict(), b.model.state_dict())
    c = fit(MODEL, TrainConfig(learning_rate=1e-2, batch_size=32, max_epochs=3, seed=8), *small)
    assert _history(c) != _history(a)


@pytest.mark.parametrize("model_config", [MODEL, DROPOUT_MODEL], ids=["gru", "lstm-dropout"])
def test_resume_is_bit_identical(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path, model_config: ModelConfig
) -> None:
    config = TrainConfig(learning_rate=1e-2, batch_size=32, max_epochs=4, patience=10, seed=3)
    straight_ckpt = tmp_path / "straight.pt"
    straight = fit(model_config, config, *small, checkpoint_path=straight_ckpt)
    assert straight.resumed_from_epoch == 0 and straight.epochs_this_run == [1, 2, 3, 4]

    ckpt = tmp_path / "sub" / "trial.pt"  # the parent directory is created on demand
    stop = False

    def on_epoch(r: EpochResult) -> None:
        nonlocal stop
        stop = r.epoch == 2

    with pytest.raises(Interrupted) as err:
        fit(
            model_config,
            config,
            *small,
            checkpoint_path=ckpt,
            on_epoch=on_epoch,
            should_stop=lambda: stop,
        )
    assert "\n" not in str(err.value)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2  # the last finished epoch's

    seen: list[int] = []
    resumed = fit(
        model_config, config, *small, checkpoint_path=ckpt, on_epoch=lambda r: seen.append(r.epoch)
    )
    assert resumed.resumed_from_epoch == 2
    assert resumed.epochs_this_run == [3, 4] == seen
    assert resumed.epochs_trained == 4
    assert _history(resumed) == _history(straight)
    assert resumed.best_val_metric == straight.best_val_metric
    assert resumed.best_epoch == straight.best_epoch
    _assert_same_weights(resumed.model.state_dict(), straight.model.state_dict())
    # The last epoch's weights and optimizer state, not only the best ones, agree too.
    end_a = torch.load(straight_ckpt, weights_only=True)
    end_b = torch.load(ckpt, weights_only=True)
    _assert_same_weights(end_a["model"], end_b["model"])
    assert end_a["epoch"] == end_b["epoch"] == 4
    assert [
        (h["epoch"], h["train_loss"], h["val_metric"], h["val_loss"]) for h in end_b["history"]
    ] == _history(straight)
    assert end_a["stopper"] == end_b["stopper"]
    assert end_a["optimizer"]["state"].keys() == end_b["optimizer"]["state"].keys()
    for i, state in end_a["optimizer"]["state"].items():
        _assert_same_weights(state, end_b["optimizer"]["state"][i])


def test_resuming_a_finished_run_trains_nothing(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path
) -> None:
    config = TrainConfig(learning_rate=1e-2, batch_size=64, max_epochs=2)
    ckpt = tmp_path / "c.pt"
    first = fit(MODEL, config, *small, checkpoint_path=ckpt)
    again = fit(MODEL, config, *small, checkpoint_path=ckpt)
    assert again.epochs_this_run == [] and again.resumed_from_epoch == 2
    assert _history(again) == _history(first) and again.best_val_metric == first.best_val_metric
    _assert_same_weights(again.model.state_dict(), first.model.state_dict())


def test_checkpoint_of_other_config_is_ignored(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "c.pt"
    fit(
        MODEL,
        TrainConfig(learning_rate=1e-2, batch_size=64, max_epochs=2),
        *small,
        checkpoint_path=ckpt,
    )
    other = TrainConfig(learning_rate=5e-3, batch_size=64, max_epochs=2)
    with caplog.at_level(logging.WARNING, logger="rnntune.train"):
        result = fit(MODEL, other, *small, checkpoint_path=ckpt)
    assert result.resumed_from_epoch == 0 and result.epochs_this_run == [1, 2]
    assert "different train_config" in caplog.text
    caplog.clear()
    X_train, y_train, X_val, y_val = small
    with caplog.at_level(logging.WARNING, logger="rnntune.train"):
        fresh = fit(MODEL, other, X_train + 1.0, y_train, X_val, y_val, checkpoint_path=ckpt)
    assert fresh.resumed_from_epoch == 0 and "different data" in caplog.text


def test_damaged_checkpoint_is_ignored(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.WARNING, logger="rnntune.train"):
        result = fit(MODEL, TrainConfig(1e-2, 64, 1), *small, checkpoint_path=ckpt)
    assert result.resumed_from_epoch == 0 and "unreadable checkpoint" in caplog.text
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary files left


# --------------------------------------------------------------------------------------------
# Early stopping, failures, callbacks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patience", "max_epochs", "stops_after"),
    # The patience used is max(patience, ceil(max_epochs / 4)) (rnntune.stopping).
    [(2, 10, 4), (5, 10, 6), (1, 4, 2), (0, 4, 2)],
)
def test_early_stopping_honours_patience(
    small: tuple[np.ndarray, ...], patience: int, max_epochs: int, stops_after: int
) -> None:
    # A learning rate too small to move a float32 weight: neither the metric nor the loss
    # improves again (and the model predicts both classes, so it is not on the plateau).
    config = TrainConfig(
        learning_rate=1e-12, batch_size=64, max_epochs=max_epochs, patience=patience
    )
    result = fit(MODEL, config, *small)
    assert result.stopped_early
    assert result.epochs_trained == stops_after == len(result.history)
    assert result.best_epoch == 1
    assert result.best_val_metric == result.history[0].val_metric


def test_no_early_stop_while_improving(small: tuple[np.ndarray, ...]) -> None:
    result = fit(MODEL, TrainConfig(1e-2, 32, max_epochs=3, patience=5), *small)
    assert not result.stopped_early and result.epochs_trained == 3
    assert result.best_val_metric == max(h.val_metric for h in result.history)
    best = result.history[result.best_epoch - 1]
    assert best.val_metric == result.best_val_metric
    assert all(h.seconds > 0 and math.isfinite(h.train_loss) for h in result.history)


def test_nan_loss_raises_training_error(small: tuple[np.ndarray, ...]) -> None:
    # A step beyond float32's range makes the weights infinite, and inf - inf is NaN. (Merely
    # huge rates such as 1e6 give huge but finite losses: a bad trial, not a failed one.)
    with pytest.raises(TrainingError) as err:
        fit(MODEL, TrainConfig(learning_rate=1e39, batch_size=64, max_epochs=3), *small)
    msg = str(err.value)
    assert "training loss became nan in epoch 1" in msg and "lower the learning rate" in msg
    assert "\n" not in msg


def test_non_finite_data_is_refused(small: tuple[np.ndarray, ...]) -> None:
    X_train, y_train, X_val, y_val = small
    X_val = X_val.copy()
    X_val[0, 0, 0] = np.inf
    with pytest.raises(DataError, match="X_val holds NaN or infinite values"):
        fit(MODEL, TrainConfig(1e-3, 64, 1), X_train, y_train, X_val, y_val)


def test_on_epoch_exception_propagates_after_checkpoint(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path
) -> None:
    class Pruned(Exception):
        pass

    def on_epoch(r: EpochResult) -> None:
        if r.epoch == 2:
            raise Pruned("pruned at epoch 2")

    ckpt = tmp_path / "c.pt"
    with pytest.raises(Pruned):
        fit(MODEL, TrainConfig(1e-2, 64, 5), *small, checkpoint_path=ckpt, on_epoch=on_epoch)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2


def test_killed_writers_temporaries_are_removed_and_a_live_one_is_kept(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path
) -> None:
    """L4: a SIGKILL between a checkpoint's open and its rename left ``.c.pt.<pid>.tmp`` for
    ever. The next writer of that checkpoint removes the old ones; a recent one may be a live
    writer's (a taken-over zombie) and stays."""
    ckpt = tmp_path / "c.pt"
    old, fresh = tmp_path / ".c.pt.7.dead.tmp", tmp_path / ".c.pt.8.live.tmp"
    other = tmp_path / ".d.pt.7.dead.tmp"  # another checkpoint's: not this writer's business
    for f in (old, fresh, other):
        f.write_bytes(b"half a checkpoint")
    hour_ago = time.time() - 3600
    for f in (old, other):
        os.utime(f, (hour_ago, hour_ago))
    fit(MODEL, TrainConfig(1e-2, 64, 1), *small, checkpoint_path=ckpt)
    assert not old.exists() and fresh.exists() and other.exists()
    assert ckpt.exists()
    # The writer's own temporary is gone after the rename.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".c.pt.8.live.tmp", ".d.pt.7.dead.tmp", "c.pt"]
    )


def test_resume_hands_the_checkpoints_last_epoch_back_before_training(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path
) -> None:
    ckpt = tmp_path / "c.pt"
    fit(MODEL, TrainConfig(1e-2, 64, 2), *small, checkpoint_path=ckpt)
    seen: list[tuple[str, int]] = []
    fit(
        MODEL,
        TrainConfig(1e-2, 64, 3),  # a longer budget: another config, so no resume
        *small,
        checkpoint_path=tmp_path / "other.pt",
        on_resume=lambda r: seen.append(("resume", r.epoch)),
    )
    assert seen == []  # nothing was resumed from
    fit(
        MODEL,
        TrainConfig(1e-2, 64, 2),
        *small,
        checkpoint_path=ckpt,
        on_resume=lambda r: seen.append(("resume", r.epoch)),
        on_epoch=lambda r: seen.append(("epoch", r.epoch)),
    )
    assert seen == [("resume", 2)]


def test_stop_before_the_first_epoch_leaves_no_checkpoint(
    small: tuple[np.ndarray, ...], tmp_path: pathlib.Path
) -> None:
    ckpt = tmp_path / "c.pt"
    with pytest.raises(Interrupted):
        fit(MODEL, TrainConfig(1e-2, 64, 5), *small, checkpoint_path=ckpt, should_stop=lambda: True)
    assert not ckpt.exists()


def test_bad_arrays(small: tuple[np.ndarray, ...]) -> None:
    X_train, y_train, X_val, y_val = small
    config = TrainConfig(1e-2, 64, 1)
    with pytest.raises(DataError, match="input_size must match"):
        fit(MODEL, config, X_train[:, :, :2], y_train, X_val, y_val)
    with pytest.raises(DataError, match=r"y_val has shape \(74,\)"):
        fit(MODEL, config, X_train, y_train, X_val, y_val[:-1])
    with pytest.raises(DataError, match="labels outside 0..1"):
        fit(MODEL, config, X_train, y_train * 2, X_val, y_val)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"learning_rate": 0.0}, "learning_rate must be a positive finite number"),
        ({"learning_rate": math.inf}, "learning_rate must be a positive finite number"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"max_epochs": 2.5}, "max_epochs must be an integer >= 1"),
        ({"patience": -1}, "patience must be an integer >= 0"),
        ({"metric": "loss"}, "unknown metric 'loss'"),
    ],
)
def test_bad_train_config(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"learning_rate": 1e-3, "batch_size": 32, "max_epochs": 3} | kwargs
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Devices, threads, prediction
# --------------------------------------------------------------------------------------------


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU; use device cpu or auto"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            fit(MODEL, TrainConfig(1e-3, 8, 1, device="cuda"), *(np.zeros(0),) * 4)


def test_set_threads() -> None:
    train.set_threads(2)
    assert torch.get_num_threads() == 2
    train.set_threads(1)  # a second call must not fail on the inter-op setting
    assert torch.get_num_threads() == 1
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        train.set_threads(0)


def test_predict_proba(small: tuple[np.ndarray, ...]) -> None:
    X_train, _, X_val, _ = small
    model = RecurrentClassifier(MODEL).train()
    proba = predict_proba(model, X_val, batch_size=16)
    assert proba.shape == (len(X_val),) and proba.dtype == np.float64
    assert ((proba >= 0) & (proba <= 1)).all()
    assert model.training  # the caller's mode is restored
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(X_val)), dim=-1)[:, 1]
    np.testing.assert_allclose(proba, expected.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="need \\(N, T, F\\)"):
        predict_proba(model, X_val[:, :, 0])


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

Y_TRUE = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
PROBA = np.array([0.1, 0.2, 0.7, 0.3, 0.05, 0.5, 0.9, 0.4, 0.8, 0.6])
PRED = (PROBA >= 0.5).astype(int)  # [0 0 1 0 0 1 1 0 1 1]


def test_score_matches_sklearn() -> None:
    assert score("macro_f1", Y_TRUE, PROBA) == pytest.approx(
        f1_score(Y_TRUE, PRED, average="macro")
    )
    assert score("weighted_f1", Y_TRUE, PROBA) == pytest.approx(
        f1_score(Y_TRUE, PRED, average="weighted")
    )
    assert score("accuracy", Y_TRUE, PROBA) == pytest.approx(0.7)
    assert score("roc_auc", Y_TRUE, PROBA) == pytest.approx(roc_auc_score(Y_TRUE, PROBA))
    assert set(METRICS) == {"macro_f1", "weighted_f1", "accuracy", "roc_auc"}
    with pytest.raises(ConfigError, match="unknown metric 'f2'"):
        score("f2", Y_TRUE, PROBA)
    assert math.isnan(score("roc_auc", np.zeros(4), PROBA[:4]))  # one class: undefined, no warning
    assert score("macro_f1", np.zeros(4), np.zeros(4)) == pytest.approx(0.5)  # zero_division=0


def test_classification_metrics_match_sklearn() -> None:
    m = classification_metrics(Y_TRUE, PROBA)
    prec, rec, f1, support = precision_recall_fscore_support(Y_TRUE, PRED)
    expected = {
        "accuracy": accuracy_score(Y_TRUE, PRED),
        "roc_auc": roc_auc_score(Y_TRUE, PROBA),
        "normal_precision": prec[0],
        "normal_recall": rec[0],
        "normal_f1": f1[0],
        "normal_support": 6.0,
        "abnormal_precision": prec[1],
        "abnormal_recall": rec[1],
        "abnormal_f1": f1[1],
        "abnormal_support": 4.0,
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(Y_TRUE, PRED, average=average)
        expected |= {f"{average}_precision": p, f"{average}_recall": r, f"{average}_f1": f}
    assert support.tolist() == [6, 4]
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
        assert type(m[key]) is float, key
    assert set(m) == set(expected) | {"confusion_matrix", "classification_report"}
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    report = m["classification_report"]
    assert "Normal" in report and "Abnormal" in report
    assert report == classification_report(
        Y_TRUE, PRED, target_names=["Normal", "Abnormal"], digits=4, zero_division=0
    )


def test_classification_metrics_one_predicted_class() -> None:
    m = classification_metrics(Y_TRUE, np.zeros(10))  # everything Normal: no warnings
    assert m["abnormal_precision"] == 0.0 and m["abnormal_recall"] == 0.0
    assert m["confusion_matrix"] == [[6, 0], [4, 0]]
    with pytest.raises(DataError, match="10 labels but 9 probabilities"):
        classification_metrics(Y_TRUE, PROBA[:-1])


# --------------------------------------------------------------------------------------------
# It learns
# --------------------------------------------------------------------------------------------


def test_gru_learns_the_synthetic_task() -> None:
    s = split_dataset(load_dataset("synthetic:n=6000,length=30,seed=0"), seed=0)
    start = time.perf_counter()
    result = fit(
        ModelConfig(cell="gru", input_size=4, hidden_size=32),
        TrainConfig(learning_rate=5e-3, batch_size=32, max_epochs=5, patience=5),
        s.X_train,
        s.y_train,
        s.X_val,
        s.y_val,
    )
    elapsed = time.perf_counter() - start
    # About 0.73 here; always-Normal scores 0.42, and a tuned model on more data ~0.85.
    assert result.best_val_metric > 0.65, [h.val_metric for h in result.history]
    assert score("macro_f1", s.y_test, predict_proba(result.model, s.X_test)) > 0.6
    assert elapsed < 60  # ~4 s on one idle core
