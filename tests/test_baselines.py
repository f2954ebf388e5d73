"""Reference points in every report (issue 10.6): majority class and 1-NN on the same split.

End to end (the final job computes and stores them, `rnntune report` reads them back) is checked
in tests/test_readout.py, which shares one real run with the readout option.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from rnntune.baselines import reference_points
from rnntune.data import load_dataset, split_dataset
from rnntune.report.html import to_html
from rnntune.report.markdown import to_markdown
from rnntune.report.plots import plot_pngs
from rnntune.report.stats import compare_families
from rnntune.report.verdict import reference_verdict, verdict
from tests.test_report_render import FAMILIES, _assemble, _metrics, make_report


@pytest.fixture(scope="module")
def split():  # noqa: ANN201
    return split_dataset(load_dataset("synthetic:n=400,length=16,features=3,seed=1"), seed=0)


def _flat(X: np.ndarray) -> np.ndarray:
    return X.reshape(len(X), -1)


def test_numbers_equal_sklearn_on_the_same_split(split) -> None:  # noqa: ANN001
    refs = reference_points(split.X_train, split.y_train, split.X_test, split.y_test)
    majority, nn = refs["points"]
    assert (majority["name"], nn["name"]) == ("majority", "1nn")
    assert refs["n_test"] == len(split.y_test) and refs["n_train"] == len(split.y_train)

    dummy = DummyClassifier(strategy="most_frequent").fit(_flat(split.X_train), split.y_train)
    pred = dummy.predict(_flat(split.X_test))
    assert majority["metrics"]["accuracy"] == accuracy_score(split.y_test, pred)
    assert majority["metrics"]["macro_f1"] == f1_score(split.y_test, pred, average="macro")
    assert majority["metrics"]["roc_auc"] == 0.5
    assert majority["label"] == "Majority class (Normal)"

    knn = KNeighborsClassifier(n_neighbors=1).fit(_flat(split.X_train), split.y_train)
    pred = knn.predict(_flat(split.X_test))
    assert nn["metrics"]["accuracy"] == accuracy_score(split.y_test, pred)
    assert nn["metrics"]["macro_f1"] == f1_score(split.y_test, pred, average="macro")
    assert nn["metrics"]["weighted_f1"] == f1_score(split.y_test, pred, average="weighted")
    assert nn["metrics"]["roc_auc"] == roc_auc_score(split.y_test, pred)
    # The synthetic task is learnable: 1-NN is well above the majority class.
    assert nn["metrics"]["macro_f1"] > majority["metrics"]["macro_f1"] + 0.1


def test_logistic_regression_when_1nn_is_too_slow(split) -> None:  # noqa: ANN001
    refs = reference_points(
        split.X_train, split.y_train, split.X_test, split.y_test, seed=3, max_work=1e3
    )
    point = refs["points"][1]
    assert point["name"] == "logreg"
    assert "logistic regression, because 1-NN would need" in refs["choice"]
    clf = LogisticRegression(max_iter=1000, random_state=3).fit(_flat(split.X_train), split.y_train)
    proba = clf.predict_proba(_flat(split.X_test))[:, 1]
    assert point["metrics"]["macro_f1"] == f1_score(split.y_test, proba >= 0.5, average="macro")
    assert point["metrics"]["roc_auc"] == roc_auc_score(split.y_test, proba)


def test_readers_do_not_import_torch() -> None:
    code = (
        "import sys, rnntune.baselines, rnntune.stopping, rnntune.report.stats, "
        "rnntune.report.document, rnntune.report.collect; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------------------------
# The verdict, the ranking table and the plot
# --------------------------------------------------------------------------------------------


def _with_references(report: dict, nn_macro_f1: float) -> dict:
    """The report fixture's test labels with a majority-class point and a 1-NN point."""
    y = np.asarray(
        [1] * report["experiment"]["data"]["splits"]["test"]["abnormal"]
        + [0] * report["experiment"]["data"]["splits"]["test"]["normal"]
    )
    majority = reference_points(np.zeros((4, 2, 1)), [0, 0, 0, 1], np.zeros((len(y), 2, 1)), y)
    majority["points"][1]["metrics"]["macro_f1"] = nn_macro_f1
    majority["points"][1]["metrics"]["accuracy"] = nn_macro_f1
    report = copy.deepcopy(report)
    report["baselines"] = majority
    report["verdict"] = verdict(
        report["families"], report["comparison"], references=report["baselines"]
    )
    return report


def _at_chance() -> dict:
    """The fixture's families, but their scores are pure noise: at chance."""
    report = make_report()
    y = (np.random.default_rng(42).random(300) < 0.29).astype(int)
    for f in FAMILIES:
        for r in report["families"][f]["repeats"]:
            rrng = np.random.default_rng([FAMILIES.index(f), r["repeat"], 7])
            proba = 1 / (1 + np.exp(-rrng.normal(0, 1, y.size)))
            r.update(_metrics(y, proba))
    report.pop("comparison")
    report = _assemble(report)
    report["comparison"] = compare_families(report["families"])
    return report


def test_a_report_at_chance_says_so() -> None:
    report = _with_references(_at_chance(), nn_macro_f1=0.665)
    sentence = report["verdict"]
    assert "No family beat the 1-NN baseline (test macro F1 0.665)" in sentence
    assert "No family's test accuracy is significantly above the majority-class rate" in sentence
    assert "the families are at chance." in sentence
    one = reference_verdict({"gru": report["families"]["gru"]}, report["baselines"])
    assert one.startswith("GRU did not beat the 1-NN baseline (test macro F1 0.665); GRU ")
    assert "GRU's test accuracy is not significantly above the majority-class rate" in one
    md = to_markdown(report)
    assert sentence in md
    assert "| ref. | 1-NN (Euclidean) (baseline) | 0.6650 |" in md
    assert "| ref. | Majority class (Normal) (baseline) |" in md
    assert "### Reference points" in md
    html = to_html(report)
    assert "Reference points</h3>" in html and "1-NN (Euclidean) (baseline)" in html


def test_a_report_that_beats_the_references_says_so() -> None:
    report = _with_references(make_report(), nn_macro_f1=0.60)
    sentence = report["verdict"]
    assert "Every family beat the 1-NN baseline (test macro F1 0.600)" in sentence
    assert "every family beat the majority-class baseline" in sentence
    assert "at chance" not in sentence
    assert reference_verdict(report["families"], report["baselines"], "macro_f1") in sentence
    # Between the families' means: the ones above it beat it, the others are named.
    ranked = sorted(
        (report["families"][f]["summary"]["macro_f1"]["mean"], f.upper()) for f in FAMILIES
    )
    cut = (ranked[0][0] + ranked[1][0]) / 2
    between = _with_references(make_report(), nn_macro_f1=cut)["verdict"]
    assert f"beat the 1-NN baseline (test macro F1 {cut:.3f}), {ranked[0][1]} did not" in between


def test_the_plot_draws_the_reference_points() -> None:
    report = _with_references(_at_chance(), nn_macro_f1=0.665)
    for fam in report["families"].values():  # only the test-metric plot is drawn
        fam.update(history=[], importances=None, repeats=fam["repeats"][:3])
        fam["repeats"] = [{**r, "confusion_matrix": None} for r in fam["repeats"]]
    with_refs = plot_pngs(report)["test_metrics"]
    without = plot_pngs({**report, "baselines": None})["test_metrics"]
    assert with_refs != without
