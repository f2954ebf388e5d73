"""Renderers of the report dict: JSON, CSV, Markdown, HTML and the PNG plots.

The fixture is a realistic report as ``collect.py`` builds it: 3 families x 10 paired repeats whose
metrics and classification reports come from sklearn on seeded predictions, Optuna-like
histories and importances; plus an incomplete variant (LSTM not tuned yet, GRU half evaluated).
"""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import (
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from rnntune.names import FAMILIES, KNOWN_METRICS
from rnntune.report import as_report, to_csv, to_json, to_markdown
from rnntune.report.html import to_html
from rnntune.report.plots import make_plots
from rnntune.report.stats import compare_families, ranked_families, summarize_repeats
from rnntune.report.verdict import verdict

SKILL = {"rnn": 1.1, "gru": 1.9, "lstm": 1.6}  # separation of the class scores
BEST_PARAMS = {
    "rnn": {"hidden_size": 32, "learning_rate": 0.0087, "batch_size": 64},
    "gru": {"hidden_size": 64, "learning_rate": 0.0031, "batch_size": 32},
    "lstm": {"hidden_size": 128, "learning_rate": 0.0012, "batch_size": 32},
}
REPEATS = 10
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {"test_metrics", "confusion_matrices"} | {
    f"{kind}_{f}" for kind in ("history", "importances") for f in FAMILIES
}


def _metrics(y: np.ndarray, proba: np.ndarray) -> dict:
    """What train.classification_metrics returns: sklearn's per-class scores and its report.

    One precision_recall_fscore_support call gives every cell (macro = mean over the classes,
    weighted = support-weighted mean, as in sklearn's report); a second classification_report
    call per repeat would double the fixture's cost.
    """
    pred = (proba >= 0.5).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=[0, 1], zero_division=0
    )
    flat = {
        "accuracy": float(np.mean(pred == y)),
        "roc_auc": float(roc_auc_score(y, proba)),
    }
    for i, name in enumerate(("normal", "abnormal")):
        flat |= {
            f"{name}_precision": float(precision[i]),
            f"{name}_recall": float(recall[i]),
            f"{name}_f1": float(f1[i]),
            f"{name}_support": float(support[i]),
        }
    for name, weights in (("macro", None), ("weighted", support)):
        flat |= {
            f"{name}_precision": float(np.average(precision, weights=weights)),
            f"{name}_recall": float(np.average(recall, weights=weights)),
            f"{name}_f1": float(np.average(f1, weights=weights)),
        }
    text = classification_report(
        y, pred, labels=[0, 1], target_names=["Normal", "Abnormal"], digits=4, zero_division=0
    )
    return {
        "metrics": flat,
        "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
        "classification_report": text,
    }


def _history(rng: np.random.Generator, n: int, best: float) -> list[dict]:
    history = []
    for number in range(n):
        state = rng.choice(["COMPLETE"] * 6 + ["PRUNED"] * 3 + ["FAIL"])
        value = None if state == "FAIL" else float(best - abs(rng.normal(0, 0.04)))
        history.append(
            {
                "number": number,
                "state": str(state),
                "value": value,
                "params": {"hidden_size": int(rng.choice([32, 64, 128]))},
                "duration_s": float(rng.uniform(5, 40)),
                "datetime_complete": f"2025-01-01T00:{number:02d}:00",
            }
        )
    return history


def make_report() -> dict:
    rng = np.random.default_rng(42)
    y = (rng.random(300) < 0.29).astype(int)
    families: dict = {}
    for f in FAMILIES:
        frng = np.random.default_rng(FAMILIES.index(f))
        repeats = []
        for i in range(REPEATS):
            # Paired seeds: repeat i has seed 1000 + i in every family.
            rrng = np.random.default_rng([FAMILIES.index(f), i])
            score = SKILL[f] * (2 * y - 1) + rrng.normal(0, 1, y.size)
            proba = 1 / (1 + np.exp(-score))
            repeats.append(
                {
                    "repeat": i,
                    "seed": 1000 + i,
                    "status": "done",
                    **_metrics(y, proba),
                    "epochs_trained": int(rrng.integers(5, 30)),
                    "train_seconds": float(rrng.uniform(10, 60)),
                }
            )
        history = _history(frng, 20, 0.8 + SKILL[f] / 20)
        best = max((t for t in history if t["state"] == "COMPLETE"), key=lambda t: t["value"])
        families[f] = {
            "study_name": f"demo-{f}",
            "best_params": dict(BEST_PARAMS[f]),
            "best_value": best["value"],
            "best_trial": best["number"],
            "trials": {
                "complete": sum(t["state"] == "COMPLETE" for t in history),
                "pruned": sum(t["state"] == "PRUNED" for t in history),
                "fail": sum(t["state"] == "FAIL" for t in history),
                "running": 0,
                "waiting": 0,
            },
            "history": history,
            "importances": {"learning_rate": 0.55, "hidden_size": 0.3, "batch_size": 0.15},
            "tuning_seconds": {"wall": 600.0 + 10 * SKILL[f], "compute": 2000.5 + 500 * SKILL[f]},
            "evaluation_seconds": {"wall": 120.25, "compute": 480.0},
            "repeats": repeats,
        }
    # A failed trial whose value is NaN: JSON must carry it as null.
    families["rnn"]["history"].append(
        {
            "number": 20,
            "state": "FAIL",
            "value": float("nan"),
            "params": {},
            "duration_s": 1.0,
            "datetime_complete": None,
        }
    )
    return _assemble(
        {
            "experiment": {
                "name": "demo <script>alert(1)</script>",
                "created_at": "2025-01-01T00:00:00+00:00",
                "storage": "postgresql://rnntune:***@db:5432/rnntune",
                "data": {
                    "spec": "synthetic:abnormal_rate=0.29,features=4,length=50,n=2000,seed=0",
                    "fingerprint": "sha256:" + "ab" * 32,
                    "splits": {
                        "train": {"n": 1400, "normal": 994, "abnormal": 406},
                        "val": {"n": 300, "normal": 213, "abnormal": 87},
                        "test": {"n": 300, "normal": int((y == 0).sum()), "abnormal": int(y.sum())},
                    },
                    "shape": [2000, 50, 4],
                },
                "search_space": {
                    "hidden_size": {"type": "categorical", "choices": [32, 64, 128]},
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                    "batch_size": {"type": "categorical", "choices": [32, 64]},
                    "num_layers": {"type": "int", "low": 1, "high": 3, "step": 1, "log": False},
                },
                "trials": 20,
                "repeats": REPEATS,
                "max_epochs": 30,
                "patience": 3,
                "objective": "macro_f1",
                "pruner": "MedianPruner(n_warmup_steps=3)",
                "seed": 0,
                "split_seed": 0,
                "repeat_seeds": [1000 + i for i in range(REPEATS)],
                "device": "cpu",
                "versions": {
                    "python": "3.11.7",
                    "torch": "2.13.0",
                    "optuna": "5.0.0",
                    "rnntune": "0.1.0",
                    "sklearn": "1.9.1",
                },
            },
            "complete": True,
            "missing": [],
            "families": families,
        }
    )


def _assemble(report: dict) -> dict:
    """Add the derived parts (summaries, ranking, comparison, verdict) as collect.py does."""
    families = report["families"]
    for fam in families.values():
        fam["summary"] = summarize_repeats(fam["repeats"])
    comparison = compare_families(families)
    report["ranking"] = [
        {"family": f, "rank": i + 1, "macro_f1_mean": s["mean"]}
        for i, (f, s) in enumerate(ranked_families(families))
    ]
    report["comparison"] = comparison
    report["verdict"] = verdict(families, comparison)
    return report


def make_incomplete(full: dict) -> dict:
    """LSTM not tuned yet (no best params, no repeats); GRU 4 of 10 repeats done, one running."""
    report = copy.deepcopy(full)
    families = report["families"]
    families["lstm"].update(
        best_params=None,
        best_value=None,
        best_trial=None,
        history=[],
        importances=None,
        repeats=[],
        trials={"complete": 0, "pruned": 0, "fail": 0, "running": 2, "waiting": 18},
    )
    families["gru"]["repeats"] = families["gru"]["repeats"][:4] + [
        {
            "repeat": 4,
            "seed": 1004,
            "status": "running",
            "metrics": {},
            "confusion_matrix": None,
            "classification_report": None,
            "epochs_trained": 3,
            "train_seconds": 8.5,
        }
    ]
    report["complete"] = False
    report["missing"] = [
        "LSTM: tuning 0/20 trials finished",
        "GRU: evaluation 4/10 repeats done",
        "LSTM: evaluation 0/10 repeats done",
    ]
    return _assemble(report)


@pytest.fixture(scope="module")
def report() -> dict:
    return make_report()


@pytest.fixture(scope="module")
def incomplete(report) -> dict:
    return make_incomplete(report)


@pytest.fixture(scope="module")
def html(report) -> str:
    return to_html(report)


def _without_nan(value):
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _family_chunk(text: str, family: str) -> str:
    """The Markdown of one family's section: from its heading to the next level-2 heading."""
    start = text.index(f"## {family.upper()} (")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


# --------------------------------------------------------------------------- JSON / CSV


def test_json_round_trips_every_number_and_writes_nan_as_null(report):
    text = to_json(report)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == _without_nan(copy.deepcopy(report))
    assert json.loads(text)["families"]["rnn"]["history"][-1]["value"] is None
    assert text.startswith('{\n  "experiment"')  # indent 2


def test_json_accepts_numpy_values():
    out = json.loads(to_json({"a": np.float32(0.5), "b": np.arange(3), "c": np.float64("inf")}))
    assert out == {"a": 0.5, "b": [0, 1, 2], "c": None}


def test_csv_has_a_row_per_family_and_repeat_with_exact_values(report):
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert len(rows) == 3 * REPEATS
    header = to_csv(report).splitlines()[0].split(",")
    assert header[:6] == ["family", "repeat", "seed", "status", "epochs_trained", "train_seconds"]
    assert header[6:] == sorted(KNOWN_METRICS)
    for row in rows:
        rep = report["families"][row["family"]]["repeats"][int(row["repeat"])]
        assert int(row["seed"]) == rep["seed"] and row["status"] == "done"
        assert int(row["epochs_trained"]) == rep["epochs_trained"]
        assert float(row["train_seconds"]) == rep["train_seconds"]
        for metric, value in rep["metrics"].items():
            assert float(row[metric]) == value  # full precision, no rounding
    assert [r["family"] for r in rows[::REPEATS]] == list(FAMILIES)


def test_csv_header_is_the_same_for_an_incomplete_report(report, incomplete):
    assert to_csv(incomplete).splitlines()[0] == to_csv(report).splitlines()[0]
    rows = list(csv.DictReader(io.StringIO(to_csv(incomplete))))
    assert len(rows) == REPEATS + 5  # rnn 10, gru 4 done + 1 running, lstm none
    running = next(r for r in rows if r["status"] == "running")
    assert running["macro_f1"] == "" and running["epochs_trained"] == "3"


# --------------------------------------------------------------------------- Markdown


def test_markdown_best_hyperparameter_lines(report):
    md = to_markdown(report)
    assert (
        "GRU - Best hyperparameters found by Optuna: "
        "{'hidden_size': 64, 'learning_rate': 0.0031, 'batch_size': 32}"
    ) in md
    for f in FAMILIES:
        assert f"{f.upper()} - Best hyperparameters found by Optuna: {{" in md


def test_markdown_has_experiment_tuning_ledger_comparison_and_verdict(report):
    md = to_markdown(report)
    exp = report["experiment"]
    for text in (
        exp["data"]["fingerprint"],
        exp["data"]["spec"],
        exp["pruner"],
        "2000 × 50 × 4",
        "1000, 1001, 1002",
        "torch 2.13.0",
        "| learning_rate | float | [0.0001, 0.01], log scale |",
        "| test | 300 |",
        "Fairness ledger",
        "| GRU | 619.0 | 2950.5 | 120.2 | 480.0 | 3430.5 | 20 | 10 |",
        "Total compute ranges from 3030.5 s (RNN) to 3430.5 s (GRU), a ratio of 1.13×.",
        "| 120.2 |",
        report["verdict"],
        "Friedman",
        "Rank-biserial r",
        "Cohen's d_z",
    ):
        assert text in md, text
    assert md.index("**Verdict:**") < md.index("## Experiment")
    assert "## Incomplete" not in md
    for pair in report["comparison"]["pairs"]:
        assert (
            f"| {pair['a'].upper()} − {pair['b'].upper()} | 10 | {pair['mean_diff']:+.4f} |" in md
        )
    trials = report["families"]["gru"]["trials"]
    assert (
        f"| GRU | demo-gru | {trials['complete']} | {trials['pruned']} | {trials['fail']} |" in md
    )


def test_markdown_has_every_repeat_report(report):
    md = to_markdown(report)
    for f in FAMILIES:
        for rep in report["families"][f]["repeats"]:
            assert f"```\n{rep['classification_report'].rstrip()}\n```" in md
            assert f"{f.upper()} repeat {rep['repeat']} (seed {rep['seed']}," in md


def _mean_std(values, digits=4) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _table_row(chunk: str, label: str) -> list[str]:
    line = next(x for x in chunk.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


@pytest.mark.parametrize("family", FAMILIES)
def test_markdown_mean_std_table_matches_numpy(report, family):
    chunk = _family_chunk(to_markdown(report), family)
    metrics = [r["metrics"] for r in report["families"][family]["repeats"]]

    def cell(key, digits=4):
        return _mean_std([m[key] for m in metrics], digits)

    total = _mean_std([m["normal_support"] + m["abnormal_support"] for m in metrics], 1)
    for label, prefix in (("Normal", "normal"), ("Abnormal", "abnormal")):
        assert _table_row(chunk, label) == [
            cell(f"{prefix}_precision"),
            cell(f"{prefix}_recall"),
            cell(f"{prefix}_f1"),
            cell(f"{prefix}_support", 1),
        ]
    assert _table_row(chunk, "accuracy") == ["", "", cell("accuracy"), total]
    for label, prefix in (("macro avg", "macro"), ("weighted avg", "weighted")):
        assert _table_row(chunk, label) == [
            cell(f"{prefix}_precision"),
            cell(f"{prefix}_recall"),
            cell(f"{prefix}_f1"),
            total,
        ]
    assert f"**ROC AUC:** {cell('roc_auc')}" in chunk


def test_markdown_links_plots_relatively(report):
    rel = {name: f"plots/{name}.png" for name in sorted(ALL_PLOTS)}
    md = to_markdown(report, plot_files=rel)
    assert "![Test metrics over the evaluation repeats" in md
    for name in rel:
        assert f"](plots/{name}.png)" in md
    assert "](plots/history_gru.png)" in _family_chunk(md, "gru")


def test_incomplete_report_renders_what_exists(incomplete):
    md = to_markdown(incomplete)
    assert md.index("## Incomplete") < md.index("**Verdict:**") < md.index("## Experiment")
    for item in incomplete["missing"]:
        assert f"- {item}" in md
    assert "LSTM - Best hyperparameters found by Optuna: none yet" in md
    assert "LSTM has no finished evaluation repeats yet." in _family_chunk(md, "lstm")
    gru = _family_chunk(md, "gru")
    assert "mean ± std over 4 repeats" in gru
    assert "GRU repeat 4 (seed 1004, 3 epochs, 8.5 s, status running)" in gru
    for rep in incomplete["families"]["rnn"]["repeats"]:
        assert rep["classification_report"].rstrip() in md
    # 4 paired repeats: the verdict must say the evidence is too thin.
    assert "too few repeats (n=4)" in incomplete["verdict"]
    assert incomplete["verdict"].endswith("; LSTM has no finished repeats yet.")
    assert incomplete["verdict"] in md


def test_markdown_without_comparison_or_verdict_computes_them(report):
    bare = {k: v for k, v in report.items() if k not in ("comparison", "verdict", "ranking")}
    md = to_markdown(bare)
    assert report["verdict"] in md


# --------------------------------------------------------------------------- plots


def test_make_plots_writes_pngs(report, incomplete, tmp_path):
    # One family keeps this fast; the HTML test renders every plot of the full report.
    out = tmp_path / "plots"
    files = make_plots({"families": {"gru": report["families"]["gru"]}}, out)
    assert set(files) == {"test_metrics", "confusion_matrices", "history_gru", "importances_gru"}
    for name, path in files.items():
        assert path == str(out / f"{name}.png")
        with open(path, "rb") as fh:
            assert fh.read(8) == PNG_MAGIC
    # Missing data skip their plots (one family only, to keep the test fast).
    lstm = incomplete["families"]["lstm"]
    assert make_plots({"families": {"lstm": lstm}}, tmp_path / "none") == {}
    untuned = dict(report["families"]["gru"], importances=None, history=[], repeats=[])
    tuned = dict(untuned, history=report["families"]["gru"]["history"])
    assert make_plots({"families": {"gru": untuned}}, tmp_path / "none") == {}
    assert set(make_plots({"families": {"gru": tuned}}, tmp_path / "one")) == {"history_gru"}
    assert make_plots({"families": {}}, tmp_path / "empty") == {}


# --------------------------------------------------------------------------- HTML


def test_html_is_self_contained_with_decodable_plots(html):
    from PIL import Image

    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", html)
    assert not re.search(r"<(script|link)\b", html)
    images = re.findall(
        r'<img class="plot" data-plot="([^"]+)" alt="([^"]+)" '
        r'src="data:image/png;base64,([^"]+)">',
        html,
    )
    assert sorted(name for name, _, _ in images) == sorted(ALL_PLOTS)
    for _, alt, data in images:
        png = base64.b64decode(data)
        assert png.startswith(PNG_MAGIC) and alt
        with Image.open(io.BytesIO(png)) as img:
            img.verify()


def test_html_hooks_and_contents(report, html):
    assert html.count('id="verdict"') == 1
    verdict_tag = re.search(r'<p id="verdict" class="verdict">(.*?)</p>', html).group(1)
    assert report["verdict"].replace("&", "&amp;") in verdict_tag
    assert html.index('id="verdict"') < html.index('id="experiment"')
    for f in FAMILIES:
        assert f'class="family-section" data-family="{f}"' in html
    assert html.count('<table class="metrics') >= 10
    assert "GRU - Best hyperparameters found by Optuna: {&#x27;hidden_size&#x27;: 64" in html
    assert "demo &lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "demo \\<script>alert(1)\\</script>" in to_markdown(report)
    first = report["families"]["lstm"]["repeats"][0]["classification_report"].rstrip()
    assert first in html  # no character of sklearn's report needs escaping
    assert '<th scope="row">macro avg</th>' in html


def test_html_incomplete(incomplete):
    page = to_html(incomplete, embed_plots=False)
    section = re.search(
        r'<section id="incomplete-section" class="incomplete">(.*?)</section>', page, re.S
    ).group(1)
    for item in incomplete["missing"]:
        assert f"<li>{item}</li>" in section
    assert 'data-family="lstm"' in page and "LSTM has no finished evaluation repeats yet." in page
    assert "data:image/png" not in page


def test_report_package_imports_neither_torch_nor_the_writers() -> None:
    """``import rnntune.report`` and the readers stay light: no torch, no writers, no matplotlib
    (issue 12). In a fresh interpreter, so nothing imported by other tests hides an import."""
    code = (
        "import sys, rnntune.report, rnntune.names; "
        "light = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
        "import rnntune.report.collect, rnntune.progress, rnntune.live, rnntune.publish; "
        "bad = [m for m in ('torch', 'rnntune.train', 'rnntune.models', 'rnntune.tuning', "
        "'rnntune.evaluation', 'rnntune.worker') if m in sys.modules]; "
        "print(light, bad); sys.exit(1 if light or bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tables_show_the_clipped_ci_of_report_json(report):
    """Issue 12: Markdown and HTML showed unclipped 95% CIs while report.json clipped them to
    [0, 1]. Two far-apart repeats give a t-interval (df=1) far past [0, 1]: every format shows
    the one clipped interval of the Report."""
    two = copy.deepcopy(report)
    for fam in two["families"].values():
        fam["repeats"] = fam["repeats"][:2]
        fam["repeats"][0]["metrics"]["roc_auc"] = 0.2
        fam["repeats"][1]["metrics"]["roc_auc"] = 0.9
    rep = as_report(_assemble(two))
    auc = rep.families["gru"].stat("roc_auc")
    assert auc["ci95"] == [0.0, 1.0] and auc["ci95_clipped"]
    assert json.loads(to_json(rep))["families"]["gru"]["summary"]["roc_auc"]["ci95"] == [0.0, 1.0]
    md, page = to_markdown(rep), to_html(rep, embed_plots=False)
    assert "**ROC AUC:** 0.5500 ± 0.4950 (95% CI [0.0000, 1.0000], n=2)" in md
    assert "0.5500 ± 0.4950 (95% CI [0.0000, 1.0000], n=2)" in page
    assert "[-" not in md.split("### Paired comparison")[0]  # no negative score CI anywhere


def test_one_report_object_formats_agree(report):
    """Markdown, HTML and JSON show the same (clipped) 95% CIs: they format one Report."""
    rep = as_report(report)
    md, page = to_markdown(rep), to_html(rep, embed_plots=False)
    for f in rep.order:
        lo, hi = rep.families[f].stat("roc_auc")["ci95"]
        cell = f"[{lo:.4f}, {hi:.4f}]"
        assert cell in md and cell in page
    assert json.loads(to_json(rep)) == json.loads(to_json(rep.as_dict()))
