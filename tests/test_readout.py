"""The readout as a search-space option (issue 10.6): last step (default) or mean over time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier
from sqlalchemy import select

from rnntune.config import ExperimentConfig, build
from rnntune.exceptions import ConfigError
from rnntune.experiment import load_data
from rnntune.models import ModelConfig, RecurrentClassifier
from rnntune.storage import EvaluationRunRow, StorageRole, open_optuna_storage, session_scope
from rnntune.train import classification_metrics, fit, model_and_train_config, predict_proba
from tests.conftest import TINY_DATA
from tests.helpers import rnntune


def test_mean_readout_reads_the_mean_over_time() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 7, 2)
    last = RecurrentClassifier(ModelConfig("gru", 2, 4))
    mean = RecurrentClassifier(ModelConfig("gru", 2, 4, readout="mean"))
    mean.load_state_dict(last.state_dict())  # same parameters: the readout adds none
    with torch.no_grad():
        out = last.rnn(x)[0]
        assert torch.equal(last(x), last.head(out[:, -1]))
        assert torch.allclose(mean(x), mean.head(out.mean(dim=1)))
    assert ModelConfig("gru", 2, 4).readout == "last"  # the default is unchanged
    with pytest.raises(ConfigError, match="unknown readout 'max'"):
        ModelConfig("gru", 2, 4, readout="max")


def test_readout_in_the_search_space() -> None:
    space = {"readout": {"type": "categorical", "choices": ["last", "mean"]}}
    cfg = build({"search_space": space})
    assert cfg.search_space["readout"]["choices"] == ["last", "mean"]
    assert "readout" not in ExperimentConfig().search_space  # not searched unless asked
    bad = {"readout": {"type": "categorical", "choices": ["last", "max"]}}
    with pytest.raises(ConfigError, match="readout must be one of last, mean, got 'max'"):
        build({"search_space": bad})
    with pytest.raises(ConfigError, match="type 'int' not allowed"):
        build({"search_space": {"readout": {"type": "int", "low": 0, "high": 1}}})
    params = {"hidden_size": 8, "learning_rate": 0.01, "batch_size": 32}
    model, _ = model_and_train_config("rnn", params, cfg, 3, 0, "cpu")
    assert model.readout == "last"
    model, _ = model_and_train_config("rnn", {**params, "readout": "mean"}, cfg, 3, 0, "cpu")
    assert model.readout == "mean"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_mean_readout_trial_carries_into_the_repeats(tmp_path: Path) -> None:
    """One real `rnntune run` (1 family); also checks the reference points end to end."""
    cfg_file = tmp_path / "readout.toml"
    cfg_file.write_text(
        '[experiment]\nfamilies = ["gru"]\n'
        '[search_space.hidden_size]\ntype = "categorical"\nchoices = [8]\n'
        '[search_space.learning_rate]\ntype = "categorical"\nchoices = [0.01]\n'
        '[search_space.batch_size]\ntype = "categorical"\nchoices = [32]\n'
        '[search_space.readout]\ntype = "categorical"\nchoices = ["mean"]\n'
    )
    url = f"sqlite:///{tmp_path / 'r.db'}"
    rnntune(
        "run",
        "--storage",
        url,
        "--config",
        str(cfg_file),
        "--data",
        TINY_DATA,
        "--trials",
        "2",
        "--repeats",
        "2",
        "--max-epochs",
        "2",
        "--workers",
        "1",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--artifacts",
        str(tmp_path / "art"),
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    fam = report["families"]["gru"]
    assert fam["best_params"]["readout"] == "mean"
    assert all(t["params"]["readout"] == "mean" for t in fam["history"])
    assert fam["trials"]["complete"] + fam["trials"]["pruned"] == 2
    storage = open_optuna_storage(url, StorageRole.READ)
    with session_scope(storage.engine) as s:
        rows = list(s.scalars(select(EvaluationRunRow).order_by(EvaluationRunRow.repeat)))
        stored = [(r.params, r.seed, r.metrics) for r in rows]
    storage.engine.dispose()
    assert len(stored) == 2 and all(p["readout"] == "mean" for p, _, _ in stored)
    # The repeat really trained a mean-readout model: its test metrics are those of that
    # model trained here with the repeat's seed (one thread, CPU: bit-identical).
    run_cfg = build(
        {"data": TINY_DATA, "max_epochs": 2, "trials": 2, "repeats": 2, "families": ["gru"]}
    )
    splits = load_data(run_cfg).splits
    params, seed, metrics = stored[0]
    model_cfg, train_cfg = model_and_train_config("gru", params, run_cfg, 3, seed, "cpu")
    assert model_cfg.readout == "mean"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = fit(model_cfg, train_cfg, *splits.fit_parts())
    finally:
        torch.set_num_threads(before)
    here = classification_metrics(splits.y_test, predict_proba(result.model, splits.X_test))
    assert here["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-9)
    assert here["roc_auc"] == pytest.approx(metrics["roc_auc"], abs=1e-9)

    # The reference points: computed by the final job on the same split, equal to sklearn's.
    refs = report["baselines"]
    flat = splits.X_train.reshape(len(splits.X_train), -1)
    knn = KNeighborsClassifier(n_neighbors=1).fit(flat, splits.y_train)
    pred = knn.predict(splits.X_test.reshape(len(splits.X_test), -1))
    nn = refs["points"][1]
    assert nn["name"] == "1nn" and refs["n_test"] == len(splits.y_test)
    assert nn["metrics"]["macro_f1"] == f1_score(splits.y_test, pred, average="macro")
    assert "1-NN baseline" in report["verdict"]
    assert report["experiment"]["early_stopping"]["patience"] == 3
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Early-stopping rule" in md and "| ref. | 1-NN (Euclidean) (baseline) |" in md
    # A reader, later: the stored points, not recomputed (no data needed).
    again = rnntune("report", "--storage", url, "--format", "json", cwd=tmp_path).stdout
    assert json.loads(again)["baselines"] == refs
