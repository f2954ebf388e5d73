"""The core job end to end, through the real CLI, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_DATA
from tests.helpers import FAST, assert_exact, rnntune

pytestmark = pytest.mark.slow


def _run(url: str, cwd: Path, *extra: str, check: bool = True):  # noqa: ANN202
    return rnntune(
        "run",
        "--storage",
        url,
        "--data",
        TINY_DATA,
        "--trials",
        "3",
        "--repeats",
        "3",
        "--max-epochs",
        "2",
        "--workers",
        "2",
        "--artifacts",
        str(cwd / "artifacts"),
        *FAST,
        *extra,
        cwd=cwd,
        check=check,
    )


def test_run_end_to_end(storage_url: str, tmp_path: Path) -> None:
    proc = _run(storage_url, tmp_path)
    assert "report: reports/report.md" in proc.stdout
    # Progress was shown: the first view (taken as the workers start) and the last one. The
    # views between are polled every 2 s, so a short evaluation may show none of its own.
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    assert lines[0].split()[1] == "tuning", proc.stdout
    assert lines[-1].split()[1:3] == ["done", "rnn"] and "lstm 3/3" in lines[-1], proc.stdout
    exact = assert_exact(storage_url, budget=3, repeats=3)

    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert report["complete"] is True and report["missing"] == []
    for family in ("rnn", "gru", "lstm"):
        fam = report["families"][family]
        assert fam["trials"]["complete"] + fam["trials"]["pruned"] == 3
        assert set(fam["best_params"]) == {"hidden_size", "learning_rate", "batch_size"}
        assert [r["repeat"] for r in fam["repeats"]] == [0, 1, 2]
        # The report's averages are the true mean of the stored repeats, cell by cell.
        stored = [r.metrics for r in exact["runs"] if r.family == family]
        for metric in ("accuracy", "macro_f1", "abnormal_recall", "roc_auc"):
            assert fam["summary"][metric]["mean"] == pytest.approx(
                np.mean([m[metric] for m in stored]), abs=1e-12
            )
            assert fam["summary"][metric]["std"] == pytest.approx(
                np.std([m[metric] for m in stored], ddof=1), abs=1e-12
            )
        assert all("Normal" in r["classification_report"] for r in fam["repeats"])
    md = (tmp_path / "reports" / "report.md").read_text()
    assert "GRU - Best hyperparameters found by Optuna: {" in md
    assert (tmp_path / "reports" / "report.html").exists()

    # A finished experiment: no new work, and it says where the report is.
    again = _run(storage_url, tmp_path)
    assert "already finished; nothing to do. Report: reports/report.md" in again.stdout
    assert_exact(storage_url, budget=3, repeats=3)

    # CSV: one row per (family, repeat).
    csv = rnntune("report", "--storage", storage_url, "--format", "csv", cwd=tmp_path).stdout
    assert len(csv.strip().splitlines()) == 1 + 3 * 3


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    """Two experiments with one-point search spaces: identical repeat metrics, seed by seed."""
    cfg = tmp_path / "one.toml"
    cfg.write_text(
        '[experiment]\nfamilies = ["gru"]\n'
        '[search_space.hidden_size]\ntype = "categorical"\nchoices = [16]\n'
        '[search_space.learning_rate]\ntype = "categorical"\nchoices = [0.005]\n'
        '[search_space.batch_size]\ntype = "categorical"\nchoices = [32]\n'
    )
    metrics = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / name}.db"
        rnntune(
            "run",
            "--storage",
            url,
            "--config",
            str(cfg),
            "--data",
            TINY_DATA,
            "--trials",
            "1",
            "--repeats",
            "2",
            "--max-epochs",
            "2",
            "--workers",
            "1",
            "--out",
            str(tmp_path / name),
            "--artifacts",
            str(tmp_path / "art"),
            cwd=tmp_path,
        )
        rep = json.loads((tmp_path / name / "report.json").read_text())
        metrics.append([r["metrics"] for r in rep["families"]["gru"]["repeats"]])
    assert metrics[0] == metrics[1]
    assert metrics[0][0] != metrics[0][1]  # different repeat seeds, different runs


def test_report_of_unfinished_experiment_says_what_is_missing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    rnntune("init", "--storage", url, "--data", TINY_DATA, "--trials", "2", cwd=tmp_path)
    out = rnntune("report", "--storage", url, "--format", "json", cwd=tmp_path).stdout
    rep = json.loads(out)
    assert rep["complete"] is False
    assert "rnn: 0/2 tuning trials finished" in rep["missing"]
    md = rnntune("report", "--storage", url, cwd=tmp_path).stdout
    assert "rnn: 0/2 tuning trials finished" in md
    status = rnntune("status", "--storage", url, cwd=tmp_path).stdout
    assert "experiment default: tuning" in status and "workers alive: none" in status
