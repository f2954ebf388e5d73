"""Statistics over the evaluation repeats: summaries and paired family comparisons.

Every family is trained ``repeats`` times with *paired* seeds (repeat ``i`` uses the same seed in
every family), so families are compared with paired tests on the per-repeat metric: a Wilcoxon
signed-rank test per pair, Holm-adjusted across the pairs, plus a Friedman test across all
families. The tests come from scipy; only the Holm step-down (not in scipy, whose
``false_discovery_control`` is Benjamini-Hochberg) and the effect sizes are written out here.

All inputs are the plain dicts of the report's serialised form (see ``model.py``); outputs are
plain dicts of floats, ints, strings and lists, ready for ``json.dumps``. An undefined number is
``math.nan``. The sentences that state these numbers (the verdicts) are in ``verdict.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any, TypeGuard

import numpy as np
from scipy import stats as _st

from rnntune.names import family_sort_key as _family_sort_key

__all__ = [
    "CHANCE_ALPHA",
    "above_chance",
    "compare_families",
    "family_values",
    "holm",
    "is_number",
    "min_exact_p",
    "min_pairs",
    "ranked_families",
    "reference_points",
    "summarize",
    "summarize_repeats",
]

# --------------------------------------------------------------------------- summaries


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and t-based 95% confidence interval of the mean.

    ``std`` uses ddof=1 and is 0 for a single value; ``ci95`` collapses to ``[mean, mean]`` when
    it is undefined (n < 2) or degenerate (all values equal). Non-finite values are dropped, so
    ``n`` counts the values actually summarised; with none left every number is NaN.
    """
    arr = np.asarray([float(v) for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci95": [math.nan, math.nan], "n": 0}
    if np.all(arr == arr[0]):
        # Equal values (or just one): summing them would give a mean off by an ulp and a
        # 1e-16 std, and scipy's t.interval with scale=0 yields NaN plus a RuntimeWarning.
        value = float(arr[0])
        return {"mean": value, "std": 0.0, "ci95": [value, value], "n": n}
    mean = float(np.mean(arr))
    std = float(np.std(arr, ddof=1))
    lo, hi = _st.t.interval(0.95, n - 1, loc=mean, scale=_st.sem(arr))
    return {"mean": mean, "std": std, "ci95": [float(lo), float(hi)], "n": n}


def is_number(value: object) -> TypeGuard[float]:
    """A real number (int, float or numpy scalar), not a bool."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _done(repeats: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in repeats if r.get("status") == "done"]


def summarize_repeats(repeats: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{metric: summarize(...)}`` over every numeric key of the finished repeats' ``metrics``.

    Repeats whose status is not ``"done"`` (running, failed) are ignored; metric names come out
    sorted so the summary is stable.
    """
    done = _done(repeats)
    keys = sorted({k for r in done for k, v in (r.get("metrics") or {}).items() if is_number(v)})
    out = {
        key: summarize(
            r["metrics"][key] for r in done if is_number((r.get("metrics") or {}).get(key))
        )
        for key in keys
    }
    for key, summary in out.items():
        # Scores live in [0, 1]: a t-interval over few repeats can reach past that, which only
        # says "too few repeats" in a form that reads as a bug. Clip, and say so.
        if not key.endswith("_support") and all(is_number(c) for c in summary["ci95"]):
            lo, hi = summary["ci95"]
            if lo < 0.0 or hi > 1.0:
                summary["ci95"] = [max(0.0, lo), min(1.0, hi)]
                summary["ci95_clipped"] = True
    return out


def family_values(family: Mapping[str, Any], metric: str = "macro_f1") -> dict[int, float]:
    """``{repeat index: metric value}`` for the family's finished repeats with a finite value."""
    out: dict[int, float] = {}
    for r in _done(family.get("repeats") or []):
        value = (r.get("metrics") or {}).get(metric)
        if is_number(value) and math.isfinite(float(value)):
            out[int(r["repeat"])] = float(value)
    return out


def ranked_families(
    families: Mapping[str, Mapping[str, Any]], metric: str = "macro_f1"
) -> list[tuple[str, dict[str, Any]]]:
    """Families with at least one finished repeat, best mean first, as ``(family, summary)``.

    Ties on the mean keep the canonical family order so the ranking is deterministic.
    """
    rows = []
    for name in sorted(families, key=_family_sort_key):
        values = family_values(families[name], metric)
        if values:
            rows.append((name, summarize(values.values())))
    rows.sort(key=lambda row: -row[1]["mean"])  # stable: ties stay in canonical order
    return rows


# --------------------------------------------------------------------------- tests


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    The i-th smallest p (0-based) is multiplied by ``m - i``; a running maximum keeps the
    adjusted values monotone and each is capped at 1. NaN entries are not tests: they are passed
    through and do not count towards ``m``.
    """
    p = [float(x) for x in p_values]
    tested = sorted((i for i, x in enumerate(p) if not math.isnan(x)), key=lambda i: p[i])
    m = len(tested)
    adjusted = list(p)
    running = 0.0
    for step, i in enumerate(tested):
        running = max(running, min(1.0, (m - step) * p[i]))
        adjusted[i] = running
    return adjusted


def _wilcoxon(diffs: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank (statistic, p); all-zero differences give (0, 1)."""
    if diffs.size == 0:
        return math.nan, math.nan
    if not np.any(diffs):
        # scipy returns p=1 here too, but only after a 0/0 RuntimeWarning: no difference at all.
        return 0.0, 1.0
    result = _st.wilcoxon(diffs)
    return float(result.statistic), float(result.pvalue)


def _rank_biserial(diffs: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (Kerby 2014): (R+ - R-) / (R+ + R-).

    Zero differences are dropped, as the Wilcoxon test above drops them (zero_method="wilcox").
    Ranges from -1 (every pair favours the second family) to +1 (every pair favours the first).
    """
    nonzero = diffs[diffs != 0]
    if nonzero.size == 0:
        return 0.0 if diffs.size else math.nan
    ranks = _st.rankdata(np.abs(nonzero))
    r_plus = float(ranks[nonzero > 0].sum())
    r_minus = float(ranks[nonzero < 0].sum())
    return (r_plus - r_minus) / (r_plus + r_minus)


def _cohens_dz(diffs: np.ndarray) -> float:
    """Cohen's d_z: mean difference over its sample sd; NaN when the sd is 0 or undefined."""
    if diffs.size < 2:
        return math.nan
    sd = float(np.std(diffs, ddof=1))
    if sd == 0.0:
        # Constant differences: 0 if they are all zero, otherwise unbounded; report "undefined".
        return 0.0 if not np.any(diffs) else math.nan
    return float(np.mean(diffs)) / sd


def min_exact_p(n: int) -> float:
    """Smallest two-sided exact Wilcoxon p-value reachable with n non-tied pairs: 2 / 2**n."""
    return 2.0 / 2.0**n if n > 0 else 1.0


def _min_detectable_note(n: int, alpha: float) -> str:
    p_min = min_exact_p(n)
    if p_min > alpha:
        return (
            f"too_few_repeats: with {n} paired repeats the smallest possible two-sided Wilcoxon "
            f"p is 2/2^{n} = {p_min:.4g} > α={alpha:g}, so no difference can be significant; "
            f"run at least {min_pairs(alpha)} repeats."
        )
    return (
        f"With {n} paired repeats the smallest possible two-sided Wilcoxon p is "
        f"2/2^{n} = {p_min:.4g} ≤ α={alpha:g}."
    )


def min_pairs(alpha: float) -> int:
    n = 1
    while min_exact_p(n) > alpha:
        n += 1
    return n


def _friedman(
    families: Mapping[str, Mapping[str, Any]], names: Sequence[str], metric: str
) -> dict[str, Any] | None:
    """Friedman test over the repeats present in every family; None below 3 families/blocks."""
    if len(names) < 3:
        return None
    values = {name: family_values(families[name], metric) for name in names}
    common = sorted(set.intersection(*(set(v) for v in values.values())))
    if len(common) < 3:
        return None
    samples = [np.asarray([values[name][r] for r in common]) for name in names]
    blocks = np.column_stack(samples)  # (repeats, families)
    if np.all(blocks == blocks[:, :1]):
        # Every repeat ties all families: the statistic is 0/0 in scipy; nothing differs.
        statistic, p_value = 0.0, 1.0
    else:
        result = _st.friedmanchisquare(*samples)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return {
        "families": list(names),
        "n_blocks": len(common),
        "repeats": common,
        "statistic": statistic,
        "p_value": p_value,
    }


def compare_families(
    families: Mapping[str, Mapping[str, Any]],
    metric: str = "macro_f1",
    *,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired comparisons of the families on ``metric`` over their finished repeats.

    Pairs are oriented best-mean-first (``a`` ranks above ``b``; ``mean_diff = a - b``) and
    paired by repeat index, using only repeats finished in both families. Each pair carries the
    Wilcoxon signed-rank test (two-sided), its Holm-adjusted p across all pairs, the
    matched-pairs rank-biserial correlation, Cohen's d_z and the mean difference with its
    t-based 95% CI. ``friedman`` tests all families at once when there are at least three
    families and three repeats common to all (else None).

    ``too_few_repeats`` is set when the smallest pair count cannot reach ``alpha`` at all: the
    smallest two-sided exact Wilcoxon p with n pairs is 2/2^n (n < 6 at alpha 0.05).
    """
    names = [name for name, _ in ranked_families(families, metric)]
    pairs: list[dict[str, Any]] = []
    for a, b in combinations(names, 2):
        va, vb = family_values(families[a], metric), family_values(families[b], metric)
        common = sorted(set(va) & set(vb))
        diffs = np.asarray([va[r] - vb[r] for r in common], dtype=float)
        statistic, p_value = _wilcoxon(diffs)
        diff_summary = summarize(diffs)
        pairs.append(
            {
                "a": a,
                "b": b,
                "n_pairs": len(common),
                "repeats": common,
                "mean_a": summarize(va[r] for r in common)["mean"],
                "mean_b": summarize(vb[r] for r in common)["mean"],
                "mean_diff": diff_summary["mean"],
                "diff_ci95": diff_summary["ci95"],
                "statistic": statistic,
                "p_value": p_value,
                "rank_biserial": _rank_biserial(diffs),
                "cohens_dz": _cohens_dz(diffs),
            }
        )
    for pair, p_holm in zip(pairs, holm([p["p_value"] for p in pairs]), strict=True):
        pair["p_holm"] = p_holm
        pair["significant"] = bool(not math.isnan(p_holm) and p_holm <= alpha)

    n_pairs = min((p["n_pairs"] for p in pairs), default=0)
    return {
        "metric": metric,
        "alpha": alpha,
        "test": "Wilcoxon signed-rank (two-sided), Holm-adjusted across the pairs",
        "families": names,
        "n_pairs": n_pairs,
        "min_possible_p": min_exact_p(n_pairs),
        "too_few_repeats": bool(pairs) and min_exact_p(n_pairs) > alpha,
        "min_detectable_note": _min_detectable_note(n_pairs, alpha) if pairs else "",
        "pairs": pairs,
        "friedman": _friedman(families, names, metric),
    }


# --------------------------------------------------------------------------- reference points


def reference_points(references: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The stored reference points (``baselines.reference_points``' ``points``), or none."""
    return [p for p in (references or {}).get("points") or [] if isinstance(p, Mapping)]


CHANCE_ALPHA = 0.05


def above_chance(accuracy: float, n_test: int, majority_accuracy: float) -> bool:
    """Is a mean test accuracy significantly above the majority-class rate? One-sided exact
    binomial test on the ``n_test`` test sequences at :data:`CHANCE_ALPHA`."""
    k = int(round(accuracy * n_test))
    p = _st.binomtest(k, n_test, majority_accuracy, alternative="greater").pvalue
    return bool(p <= CHANCE_ALPHA)
