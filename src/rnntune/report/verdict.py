"""The prose that states the statistics: the verdict sentences of the report and the notes.

One sentence overall (:func:`verdict`: which family is best and how sure that is, then how the
families fare against the reference points) and one per family (:func:`family_verdict`). The
numbers come from :mod:`rnntune.report.stats`; nothing here runs a test, it only decides which
of the tested differences are significant at ``alpha`` and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rnntune.names import display_family, display_metric
from rnntune.names import family_sort_key as _family_sort_key
from rnntune.report.stats import (
    CHANCE_ALPHA,
    above_chance,
    family_values,
    is_number,
    min_exact_p,
    min_pairs,
    ranked_families,
    reference_points,
    summarize,
)

__all__ = ["family_verdict", "reference_verdict", "verdict"]

_REFERENCE_PROSE = {
    "majority": "majority-class baseline",
    "1nn": "1-NN baseline",
    "logreg": "logistic-regression baseline",
}


def _reference_name(point: Mapping[str, Any]) -> str:
    name = str(point.get("name", ""))
    return _REFERENCE_PROSE.get(name, f"{point.get('label', name or '?')} baseline")


def _fmt_summary(summary: Mapping[str, Any], *, with_n: bool = True) -> str:
    text = f"{summary['mean']:.3f} ± {summary['std']:.3f}"
    if with_n:
        n = summary["n"]
        text += f" over {n} repeat{'s' if n != 1 else ''}"
    return text


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _fmt_p_bound(p_values: Sequence[float]) -> str:
    """``p ≤ 0.004`` (rounded *up*, so the bound stays true) or ``p < 0.001``."""
    worst = max(p_values)
    if worst < 0.001:
        return "p < 0.001"
    return f"p ≤ {math.ceil(worst * 1000 - 1e-9) / 1000:.3f}"


def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _find_pair(comparison: Mapping[str, Any], x: str, y: str) -> Mapping[str, Any] | None:
    for pair in comparison.get("pairs") or []:
        if {pair["a"], pair["b"]} == {x, y}:
            return pair
    return None


def _beats(pair: Mapping[str, Any], winner: str, alpha: float) -> bool:
    """True when ``winner`` is significantly better in ``pair``: Holm p ≤ alpha and both the
    mean difference and the rank-biserial correlation (the Wilcoxon direction) favour it."""
    p_holm = pair.get("p_holm")
    if p_holm is None or math.isnan(p_holm) or p_holm > alpha:
        return False
    sign = 1.0 if pair["a"] == winner else -1.0
    diff, r = pair.get("mean_diff"), pair.get("rank_biserial")
    return (
        diff is not None
        and r is not None
        and not (math.isnan(diff) or math.isnan(r))
        and sign * diff > 0
        and sign * r > 0
    )


def _too_few(comparison: Mapping[str, Any], alpha: float) -> bool:
    pairs = comparison.get("pairs") or []
    n = min((p["n_pairs"] for p in pairs), default=0)
    return bool(pairs) and min_exact_p(n) > alpha


def verdict(
    families: Mapping[str, Mapping[str, Any]],
    comparison: Mapping[str, Any],
    metric: str = "macro_f1",
    alpha: float = 0.05,
    references: Mapping[str, Any] | None = None,
) -> str:
    """One plain sentence saying which family is best on ``metric`` and how sure that is, then
    (with ``references``) one saying plainly which families beat the reference points.

    Significance is judged here from the pairs' Holm-adjusted p-values against ``alpha``, so the
    sentence matches the ``alpha`` it names even if ``comparison`` was built with another.
    Families without finished repeats are named at the end, so none silently drops out.
    """
    sentence = _verdict(families, comparison, metric, alpha)
    ranked = {f for f, _ in ranked_families(families, metric)}
    absent = [display_family(f) for f in sorted(families, key=_family_sort_key) if f not in ranked]
    if ranked and absent:
        verb = "has" if len(absent) == 1 else "have"
        sentence = f"{sentence[:-1]}; {_join(absent)} {verb} no finished repeats yet."
    against = reference_verdict(families, references, metric)
    return f"{sentence} {against}" if against else sentence


def reference_verdict(
    families: Mapping[str, Mapping[str, Any]],
    references: Mapping[str, Any] | None,
    metric: str = "macro_f1",
) -> str:
    """Which families beat the reference points, said plainly: by mean test ``metric`` (e.g.
    "No family beat the 1-NN baseline (macro F1 0.665)"), and whether any family's accuracy is
    significantly above the majority-class rate (else: "at chance"). Empty without either."""
    ranked = ranked_families(families, metric)
    points = [
        (p, float(p["metrics"][metric]))
        for p in reference_points(references)
        if is_number((p.get("metrics") or {}).get(metric))
        and math.isfinite(float(p["metrics"][metric]))
    ]
    if not ranked or not points:
        return ""
    label = display_metric(metric)
    single = len(ranked) == 1
    clauses: list[str] = []
    # The classical baseline first: it is the bar that says whether the models earn their cost.
    for point, value in sorted(points, key=lambda pv: pv[0].get("name") == "majority"):
        beat = [display_family(f) for f, s in ranked if s["mean"] > value]
        missed = [display_family(f) for f, s in ranked if not s["mean"] > value]
        shown = f"test {label} {value:.3f}" if not clauses else f"{value:.3f}"
        ref = f"the {_reference_name(point)} ({shown})"
        if single:
            clauses.append(
                f"{display_family(ranked[0][0])} {'beat' if beat else 'did not beat'} {ref}"
            )
        elif not beat:
            clauses.append(f"no family beat {ref}")
        elif not missed:
            clauses.append(f"every family beat {ref}")
        else:
            clauses.append(f"{_join(beat)} beat {ref}, {_join(missed)} did not")
    text = "; ".join(clauses)
    text = text[0].upper() + text[1:] + "."

    majority = next((p for p, _ in points if p.get("name") == "majority"), None)
    n_test = (references or {}).get("n_test")
    rate = (majority or {}).get("metrics", {}).get("accuracy")
    if majority is None or not is_number(n_test) or not is_number(rate) or n_test < 1:
        return text
    chance = []
    for f, _ in ranked:
        acc = summarize(family_values(families[f], "accuracy").values())
        if acc["n"] and not above_chance(acc["mean"], int(n_test), float(rate)):
            chance.append(display_family(f))
    test = (
        f"the majority-class rate ({float(rate):.3f}; one-sided binomial test on "
        f"{int(n_test)} test sequences, α={CHANCE_ALPHA:g})"
    )
    if chance and single:
        text += f" {chance[0]}'s test accuracy is not significantly above {test}: it is at chance."
    elif chance and len(chance) == len(ranked):
        text += (
            f" No family's test accuracy is significantly above {test}: the families are at chance."
        )
    elif chance:
        verb = "is" if len(chance) == 1 else "are"
        text += (
            f" {_join(chance)} {verb} at chance: mean test accuracy not significantly above {test}."
        )
    return text


def _verdict(
    families: Mapping[str, Mapping[str, Any]],
    comparison: Mapping[str, Any],
    metric: str,
    alpha: float,
) -> str:
    label = display_metric(metric)
    ranked = ranked_families(families, metric)
    if not ranked:
        return f"No repeats have finished yet, so there is no verdict on {label}."
    top, top_summary = ranked[0]
    top_name = display_family(top)
    if len(ranked) == 1:
        return (
            f"Only {top_name} has finished repeats ({label} {_fmt_summary(top_summary)}), "
            "so there is nothing to compare it with yet."
        )
    order = _join([f"{display_family(f)} ({_fmt_summary(s, with_n=False)})" for f, s in ranked])
    if _too_few(comparison, alpha):
        n = min(p["n_pairs"] for p in comparison["pairs"])
        return (
            f"There are too few repeats (n={n}) to tell a difference at α={alpha:g}; "
            f"by mean {label} the order is {order}, but this ranking is not evidence "
            f"(run at least {min_pairs(alpha)} repeats)."
        )

    beaten: list[tuple[str, float]] = []
    tied: list[tuple[str, float]] = []
    for other, _ in ranked[1:]:
        pair = _find_pair(comparison, top, other)
        if pair is not None and _beats(pair, top, alpha):
            beaten.append((other, pair["p_holm"]))
        else:
            p = pair.get("p_holm", math.nan) if pair is not None else math.nan
            tied.append((other, p))

    def names(items: Sequence[tuple[str, float]]) -> str:
        return _join([display_family(f) for f, _ in items])

    if not tied:
        bound = _fmt_p_bound([p for _, p in beaten])
        return (
            f"{top_name} is best on {label} ({_fmt_summary(top_summary)}), significantly better "
            f"than {names(beaten)} (Wilcoxon, Holm-adjusted {bound})."
        )
    tied_ps = [p for _, p in tied if not math.isnan(p)]
    if not beaten:
        everyone = _join([display_family(f) for f, _ in ranked])
        p_text = f"Holm-adjusted p ≥ {min(tied_ps):.3f}, " if tied_ps else ""
        return (
            f"{everyone} are not significantly different on {label} (Wilcoxon, {p_text}"
            f"α={alpha:g}); by mean the order is {order}, but the differences are not significant."
        )
    tied_text = _join(
        [
            f"{display_family(f)} ({_fmt_p(p)})" if not math.isnan(p) else display_family(f)
            for f, p in tied
        ]
    )
    return (
        f"{top_name} has the highest mean {label} ({_fmt_summary(top_summary)}) and is "
        f"significantly better than {names(beaten)} (Wilcoxon, Holm-adjusted "
        f"{_fmt_p_bound([p for _, p in beaten])}), but not significantly different from "
        f"{tied_text}."
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def family_verdict(
    family: str,
    families: Mapping[str, Mapping[str, Any]],
    comparison: Mapping[str, Any],
    metric: str = "macro_f1",
    alpha: float = 0.05,
) -> str:
    """One sentence about ``family`` alone: its rank, its score, how it compares to the others."""
    label = display_metric(metric)
    name = display_family(family)
    ranked = ranked_families(families, metric)
    position = next((i for i, (f, _) in enumerate(ranked) if f == family), None)
    if position is None:
        return f"{name} has no finished repeats yet, so it is not ranked on {label}."
    summary = ranked[position][1]
    rank = f"{_ordinal(position + 1)} of {len(ranked)}"
    head = f"{name} ranks {rank} on {label} ({_fmt_summary(summary)})"
    if len(ranked) == 1:
        return head + "; there is nothing to compare it with yet."
    if _too_few(comparison, alpha):
        n = min(p["n_pairs"] for p in comparison["pairs"])
        return (
            head + f", but there are too few repeats (n={n}) to tell a difference at α={alpha:g}."
        )
    better, worse, same = [], [], []
    for other, _ in ranked:
        if other == family:
            continue
        pair = _find_pair(comparison, family, other)
        if pair is None:
            continue
        p = pair.get("p_holm", math.nan)
        text = (
            f"{display_family(other)} ({_fmt_p(p)})" if not math.isnan(p) else display_family(other)
        )
        if _beats(pair, family, alpha):
            better.append(text)
        elif _beats(pair, other, alpha):
            worse.append(text)
        else:
            same.append(text)
    clauses: list[str] = []
    if better:
        clauses.append(f"significantly better than {_join(better)}")
    if worse:
        clauses.append(f"significantly worse than {_join(worse)}")
    if same:
        clauses.append(f"not significantly different from {_join(same)}")
    return head + "; by Holm-adjusted Wilcoxon tests it is " + "; ".join(clauses) + "."
