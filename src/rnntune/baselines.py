"""Reference points for the report: what a family must beat to have learned anything at all.

Issue 10.6: on long sequences every family ended at chance and the report only said "too few
repeats", while 1-nearest-neighbour on the raw sequences was known to do far better. So every
report puts the families beside two reference points measured on the same split:

* **majority class**: predict the training part's most frequent class for every test sequence;
* **a classical baseline**: 1-NN with Euclidean distance on the sequences (the UCR archive's
  reference), trained on the training part; when brute-force 1-NN would cost more than
  :data:`ONE_NN_MAX_WORK` multiply-adds (``n_train × n_test × T × F``), logistic regression on
  the flattened sequences instead (the rule is stored with the result).

The inputs are the standardised splits the models see (one mean and std per feature, fit on the
training part): for one channel this is an affine map of the raw sequences, which leaves every
nearest neighbour unchanged.

numpy and scikit-learn only (no torch): the final job computes these once and stores them with
the experiment; the report only reads them.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

__all__ = [
    "ONE_NN_MAX_WORK",
    "majority_class",
    "one_nn",
    "logistic_regression",
    "reference_points",
]

# About a minute of brute-force distances on one busy core (measured: 1.3e9 multiply-adds in
# 0.26 s, benchmarks/baselines.py). A 5,000 x 500 x 1 set needs 1.3e9; the seed-scale synthetic
# set (119,000 train x 25,500 test x 50 x 4) 6.1e11, so it gets logistic regression.
ONE_NN_MAX_WORK = 3e11
_METRICS = ("accuracy", "macro_f1", "weighted_f1", "roc_auc")


def _metrics(y: np.ndarray, pred: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """The families' headline metrics, defined as in ``train.score`` (threshold 0.5)."""
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=[0, 1], average="weighted", zero_division=0)),
        "roc_auc": float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else math.nan,
    }


def _flat(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    return X.reshape(len(X), -1)


def _point(
    name: str,
    label: str,
    rule: str,
    y_test: np.ndarray,
    pred: np.ndarray,
    score: np.ndarray,
    t0: float,
) -> dict[str, Any]:
    """One reference point as stored: what it is, how it decides, its metrics and its cost."""
    return {
        "name": name,
        "label": label,
        "rule": rule,
        "metrics": _metrics(np.asarray(y_test, dtype=np.int64), pred, score),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def majority_class(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Predict the training part's most frequent class (ties: class 0, Normal) everywhere."""
    t0 = time.perf_counter()
    cls = int(np.argmax(np.bincount(np.asarray(y_train, dtype=np.int64), minlength=2)))
    pred = np.full(len(y_test), cls, dtype=np.int64)
    word = "Abnormal" if cls else "Normal"
    return _point(
        "majority",
        f"Majority class ({word})",
        f"predicts {word}, the training part's most frequent class, for every test sequence",
        y_test,
        pred,
        pred.astype(float),
        t0,
    )


def one_nn(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray):
    """scikit-learn's 1-nearest-neighbour, Euclidean distance, brute force, flattened sequences."""
    t0 = time.perf_counter()
    clf = KNeighborsClassifier(n_neighbors=1, metric="euclidean", algorithm="brute")
    clf.fit(_flat(X_train), np.asarray(y_train, dtype=np.int64))
    pred = clf.predict(_flat(X_test)).astype(np.int64)
    return _point(
        "1nn",
        "1-NN (Euclidean)",
        "1-nearest neighbour, Euclidean distance on the whole sequences (scikit-learn "
        "KNeighborsClassifier, n_neighbors=1, brute force), fit on the training part",
        y_test,
        pred,
        pred.astype(float),
        t0,
    )


def logistic_regression(
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int = 0
) -> dict[str, Any]:
    """scikit-learn's L2 logistic regression (C=1, lbfgs) on the flattened sequences."""
    t0 = time.perf_counter()
    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    clf.fit(_flat(X_train), np.asarray(y_train, dtype=np.int64))
    Xt = _flat(X_test)
    proba = clf.predict_proba(Xt)[:, 1]
    pred = (proba >= 0.5).astype(np.int64)
    return _point(
        "logreg",
        "Logistic regression",
        "L2 logistic regression (scikit-learn, C=1, lbfgs, max_iter=1000) on the flattened "
        "sequences, fit on the training part",
        y_test,
        pred,
        proba,
        t0,
    )


def reference_points(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    seed: int = 0,
    max_work: float = ONE_NN_MAX_WORK,
) -> dict[str, Any]:
    """The majority class and the classical baseline on one split, with the choice explained."""
    work = float(len(X_train)) * len(X_test) * _flat(X_train[:1]).shape[1]
    if work <= max_work:
        classical = one_nn(X_train, y_train, X_test, y_test)
        why = f"1-NN: {work:.3g} multiply-adds, within the limit of {max_work:.3g}"
    else:
        classical = logistic_regression(X_train, y_train, X_test, y_test, seed=seed)
        why = (
            f"logistic regression, because 1-NN would need {work:.3g} multiply-adds "
            f"(n_train × n_test × T × F), over the limit of {max_work:.3g}"
        )
    return {
        "split": "test",
        "fit_on": "train",
        "n_train": int(len(X_train)),
        "n_test": int(len(X_test)),
        "choice": why,
        "points": [majority_class(y_train, y_test), classical],
    }
