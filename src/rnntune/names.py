"""The names every layer shares: the model families, the metrics, and how both are shown.

One definition each (issue 12): the family list and its display order, the metric names, the
metrics the report, the dashboard note and the plots show. Dependency-free (standard library
only), so any layer may import it: config, models, the report, the dashboard note.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "FAMILIES",
    "HEADLINE_METRICS",
    "KNOWN_METRICS",
    "PLOT_METRICS",
    "SUMMARY_METRICS",
    "display_family",
    "display_metric",
    "family_sort_key",
    "ordered_families",
]

# The model families, in their canonical (and display) order.
FAMILIES: tuple[str, ...] = ("rnn", "gru", "lstm")

# The flat metrics of train.classification_metrics: always CSV columns, so the header is the
# same for a half-finished report as for a finished one.
KNOWN_METRICS: tuple[str, ...] = (
    "accuracy",
    "roc_auc",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "normal_precision",
    "normal_recall",
    "normal_f1",
    "normal_support",
    "abnormal_precision",
    "abnormal_recall",
    "abnormal_f1",
    "abnormal_support",
)
# The report's summary tables and reference-point table, in this order.
HEADLINE_METRICS: tuple[str, ...] = ("macro_f1", "accuracy", "weighted_f1", "roc_auc")
# The dashboard's study attributes and note table, in this order.
SUMMARY_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "weighted_f1", "roc_auc")
# The panels of the test-metric plot, in this order, when present.
PLOT_METRICS: tuple[str, ...] = ("macro_f1", "accuracy", "roc_auc")

_METRIC_NAMES = {
    "macro_f1": "macro F1",
    "weighted_f1": "weighted F1",
    "accuracy": "accuracy",
    "roc_auc": "ROC AUC",
}


def display_family(family: str) -> str:
    """``"gru"`` -> ``"GRU"``: how a family is named in prose and tables."""
    return family.upper()


def display_metric(metric: str) -> str:
    """``"macro_f1"`` -> ``"macro F1"``: how a metric is named in prose."""
    return _METRIC_NAMES.get(metric, metric.replace("_", " "))


def family_sort_key(family: str) -> tuple[int, str]:
    """Canonical families first, in :data:`FAMILIES` order; any other name after, by name."""
    return (FAMILIES.index(family) if family in FAMILIES else len(FAMILIES), family)


def ordered_families(families: Iterable[str]) -> list[str]:
    """``families`` in display order (see :func:`family_sort_key`)."""
    return sorted(families, key=family_sort_key)
