"""The report as ONE typed object, built once; every output only formats it.

:class:`Report` holds what ``report.json`` holds (its serialisation is :meth:`Report.as_dict`,
key for key) plus what the formats derive from it, computed here once: the display order of
the families, the ranking with its summaries, each family's verdict sentence and its
classification-report support. Markdown, HTML, CSV, the dashboard note and the plots read this
object and compute nothing themselves, so they cannot disagree (issue 12: the tables once showed
unclipped 95% CIs while ``report.json`` clipped them to [0, 1]).

Built from the database by :func:`rnntune.report.collect.build_report`, or from a stored or
hand-made dict by :meth:`Report.from_dict`, which fills in whatever statistics the dict lacks.
A ``Report`` is also a read-only mapping over its serialised form, for code that still reads
``report["families"]`` (the runner's summary table, the plots).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rnntune.names import ordered_families
from rnntune.report import stats
from rnntune.report import verdict as prose

__all__ = ["FamilyResult", "Repeat", "Report", "as_report"]

# A summary with no values: what every table shows as "n/a".
EMPTY_SUMMARY: Mapping[str, Any] = {
    "mean": math.nan,
    "std": math.nan,
    "ci95": [math.nan, math.nan],
    "n": 0,
}


@dataclass(frozen=True)
class Repeat:
    """One evaluation repeat of one family: its seed, status and test metrics."""

    repeat: int
    seed: int | None
    status: str
    error: str | None
    metrics: dict[str, Any]
    confusion_matrix: Any
    classification_report: str
    epochs_trained: int | None
    train_seconds: float | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Repeat:
        return cls(
            repeat=d.get("repeat", 0),
            seed=d.get("seed"),
            status=d.get("status", ""),
            error=d.get("error"),
            metrics=dict(d.get("metrics") or {}),
            confusion_matrix=d.get("confusion_matrix"),
            classification_report=d.get("classification_report") or "",
            epochs_trained=d.get("epochs_trained"),
            train_seconds=d.get("train_seconds"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "repeat": self.repeat,
            "seed": self.seed,
            "status": self.status,
            "error": self.error,
            "metrics": self.metrics,
            "confusion_matrix": self.confusion_matrix,
            "classification_report": self.classification_report,
            "epochs_trained": self.epochs_trained,
            "train_seconds": self.train_seconds,
        }


@dataclass(frozen=True)
class FamilyResult:
    """One model family: its tuning (study, best trial, history) and its evaluation repeats.

    ``summary`` is ``{metric: {mean, std, ci95, n[, ci95_clipped]}}`` over the finished
    repeats (:func:`stats.summarize_repeats`: score CIs clipped to [0, 1]); every table and note
    reads it. ``verdict`` and ``support_total`` are derived, not serialised.
    """

    study_name: str | None
    best_params: dict[str, Any] | None
    best_value: float | None
    best_trial: int | None
    trials: dict[str, int]
    tuning_state: str | None
    history: list[dict[str, Any]]
    importances: dict[str, float] | None
    tuning_seconds: dict[str, float]
    evaluation_seconds: dict[str, float]
    repeats: tuple[Repeat, ...]
    summary: dict[str, dict[str, Any]]
    verdict: str = ""  # one sentence about this family alone (verdict.py: family_verdict)
    # Mean ± std of the total test support (normal + abnormal) over the finished repeats.
    support_total: Mapping[str, Any] = field(default_factory=lambda: dict(EMPTY_SUMMARY))

    def stat(self, metric: str) -> Mapping[str, Any]:
        """The summary of ``metric`` over the finished repeats (empty: ``n`` is 0)."""
        return self.summary.get(metric) or EMPTY_SUMMARY

    @property
    def done(self) -> list[Repeat]:
        return [r for r in self.repeats if r.status == "done"]

    @property
    def by_repeat(self) -> list[Repeat]:
        """The repeats in repeat order (stored order is the database's)."""
        return sorted(self.repeats, key=lambda r: r.repeat)

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "best_params": self.best_params,
            "best_value": self.best_value,
            "best_trial": self.best_trial,
            "trials": self.trials,
            "tuning_state": self.tuning_state,
            "history": self.history,
            "importances": self.importances,
            "tuning_seconds": self.tuning_seconds,
            "evaluation_seconds": self.evaluation_seconds,
            "repeats": [r.as_dict() for r in self.repeats],
            "summary": self.summary,
        }


@dataclass(frozen=True)
class Report(Mapping[str, Any]):
    """The whole report; see the module docstring. Build it with :meth:`build`."""

    experiment: dict[str, Any]
    complete: bool
    missing: list[str]
    families: dict[str, FamilyResult]
    ranking: list[dict[str, Any]]
    comparison: dict[str, Any]
    baselines: dict[str, Any] | None
    verdict: str
    # Derived: the families in display order, and the ranked ones with their summaries of
    # ``metric`` (best mean first), as the ranking table shows them.
    order: tuple[str, ...] = ()
    ranked: tuple[tuple[int, str, Mapping[str, Any]], ...] = ()

    @property
    def metric(self) -> str:
        return str(self.comparison.get("metric", "macro_f1"))

    @property
    def alpha(self) -> float:
        return float(self.comparison.get("alpha", 0.05))

    @classmethod
    def build(
        cls,
        *,
        experiment: Mapping[str, Any],
        complete: bool,
        missing: Sequence[str],
        families: Mapping[str, Mapping[str, Any]],
        baselines: Mapping[str, Any] | None,
        ranking: Sequence[Mapping[str, Any]] | None = None,
        comparison: Mapping[str, Any] | None = None,
        verdict: str | None = None,
        metric: str = "macro_f1",
    ) -> Report:
        """The one place the statistics are computed: summaries, comparison, ranking, verdicts.

        ``families`` are the serialised family dicts; whatever of ``ranking``, ``comparison``,
        ``verdict`` and each family's ``summary`` is given is kept as it is (a stored report
        says what it said), the rest is computed.
        """
        fams = {name: dict(fam) for name, fam in families.items()}
        for fam in fams.values():
            if "summary" not in fam:
                fam["summary"] = stats.summarize_repeats(fam.get("repeats") or [])
        if not comparison or "pairs" not in comparison:
            comparison = stats.compare_families(fams, metric=metric)
        comparison = dict(comparison)
        metric = str(comparison.get("metric", metric))
        alpha = float(comparison.get("alpha", 0.05))
        if ranking is None:
            ranking = [
                {"family": f, "rank": i + 1, f"{metric}_mean": s["mean"]}
                for i, (f, s) in enumerate(stats.ranked_families(fams, metric))
            ]
        if not verdict:
            verdict = prose.verdict(fams, comparison, metric, alpha, references=baselines)
        results = {
            name: _family(name, fam, fams, comparison, metric, alpha) for name, fam in fams.items()
        }
        return cls(
            experiment=dict(experiment),
            complete=bool(complete),
            missing=[str(m) for m in missing],
            families=results,
            ranking=[dict(r) for r in ranking],
            comparison=comparison,
            baselines=dict(baselines) if baselines is not None else None,
            verdict=verdict,
            order=tuple(ordered_families(results)),
            ranked=_ranked(results, ranking, metric),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """A report from its serialised form (``report.json``) or a partial, hand-made dict."""
        return cls.build(
            experiment=d.get("experiment") or {},
            complete=d.get("complete", True),
            missing=d.get("missing") or [],
            families=d.get("families") or {},
            baselines=d.get("baselines"),
            ranking=d.get("ranking"),
            comparison=d.get("comparison"),
            verdict=d.get("verdict"),
        )

    @cached_property
    def _dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "complete": self.complete,
            "missing": self.missing,
            "families": {name: fam.as_dict() for name, fam in self.families.items()},
            "ranking": self.ranking,
            "comparison": self.comparison,
            "baselines": self.baselines,
            "verdict": self.verdict,
        }

    def as_dict(self) -> dict[str, Any]:
        """The serialised form: exactly what ``report.json`` holds, key for key."""
        return self._dict

    # A read-only mapping over the serialised form.
    def __getitem__(self, key: str) -> Any:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)


def as_report(report: Report | Mapping[str, Any]) -> Report:
    """``report`` itself, or the report a (serialised or hand-made) dict describes."""
    return report if isinstance(report, Report) else Report.from_dict(report)


def _family(
    name: str,
    fam: Mapping[str, Any],
    families: Mapping[str, Mapping[str, Any]],
    comparison: Mapping[str, Any],
    metric: str,
    alpha: float,
) -> FamilyResult:
    normal = stats.family_values(fam, "normal_support")
    abnormal = stats.family_values(fam, "abnormal_support")
    total = stats.summarize(normal[r] + abnormal[r] for r in sorted(set(normal) & set(abnormal)))
    return FamilyResult(
        study_name=fam.get("study_name"),
        best_params=fam.get("best_params"),
        best_value=fam.get("best_value"),
        best_trial=fam.get("best_trial"),
        trials=dict(fam.get("trials") or {}),
        tuning_state=fam.get("tuning_state"),
        history=list(fam.get("history") or []),
        importances=fam.get("importances"),
        tuning_seconds=dict(fam.get("tuning_seconds") or {}),
        evaluation_seconds=dict(fam.get("evaluation_seconds") or {}),
        repeats=tuple(Repeat.from_dict(r) for r in fam.get("repeats") or []),
        summary=fam["summary"],
        verdict=prose.family_verdict(name, families, comparison, metric, alpha),
        support_total=total,
    )


def _ranked(
    families: Mapping[str, FamilyResult], ranking: Sequence[Mapping[str, Any]], metric: str
) -> tuple[tuple[int, str, Mapping[str, Any]], ...]:
    """``(rank, family, summary of metric)`` for the families with finished repeats.

    The stored ranking's order and ranks when it has one; else best mean first, ties in
    display order. The summaries are the families' own (clipped CIs, as in ``report.json``).
    """
    with_values = {f for f, fam in families.items() if fam.stat(metric)["n"]}
    given = [r for r in ranking if r.get("family") in with_values]
    if given:
        order = [(int(r.get("rank", i + 1)), str(r["family"])) for i, r in enumerate(given)]
    else:
        best_first = sorted(
            ordered_families(with_values), key=lambda f: -families[f].stat(metric)["mean"]
        )
        order = [(i + 1, f) for i, f in enumerate(best_first)]
    return tuple((rank, f, families[f].stat(metric)) for rank, f in order)
