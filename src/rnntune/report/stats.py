"""Statistics over the evaluation repeats: summaries, paired family comparisons and a verdict.

Every family is trained ``repeats`` times with *paired* seeds (repeat ``i`` uses the same seed in
every family), so families are compared with paired tests on the per-repeat metric: a Wilcoxon
signed-rank test per pair, Holm-adjusted across the pairs, plus a Friedman test across all
families. The tests come from scipy; only the Holm step-down (not in scipy, whose
``false_discovery_control`` is Benjamini-Hochberg) and the effect sizes are written out here.

All inputs are the plain dicts of the report's serialised form (see ``model.py``); outputs are
plain dicts of floats, ints, strings and lists, ready for ``json.dumps``. An undefined number is
``math.nan``. The family and metric names come from :mod:`rnntune.names`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any, TypeGuard

import numpy as np
from scipy import stats as _st

from rnntune.names import display_family, display_metric
from rnntune.names import family_sort_key as _family_sort_key

__all__ = [
    "CHANCE_ALPHA",
    "compare_families",
    "family_values",
    "family_verdict",
    "holm",
    "ranked_families",
    "reference_points",
    "reference_verdict",
    "summarize",
    "summarize_repeats",
    "verdict",
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


def _is_number(value: object) -> TypeGuard[float]:
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
    keys = sorted({k for r in done for k, v in (r.get("metrics") or {}).items() if _is_number(v)})
    out = {
        key: summarize(
            r["metrics"][key] for r in done if _is_number((r.get("metrics") or {}).get(key))
        )
        for key in keys
    }
    for key, summary in out.items():
        # Scores live in [0, 1]: a t-interval over few repeats can reach past that, which only
        # says "too few repeats" in a form that reads as a bug. Clip, and say so.
        if not key.endswith("_support") and all(_is_number(c) for c in summary["ci95"]):
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
        if _is_number(value) and math.isfinite(float(value)):
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


def _min_exact_p(n: int) -> float:
    """Smallest two-sided exact Wilcoxon p-value reachable with n non-tied pairs: 2 / 2**n."""
    return 2.0 / 2.0**n if n > 0 else 1.0


def _min_detectable_note(n: int, alpha: float) -> str:
    p_min = _min_exact_p(n)
    if p_min > alpha:
        return (
            f"too_few_repeats: with {n} paired repeats the smallest possible two-sided Wilcoxon "
            f"p is 2/2^{n} = {p_min:.4g} > α={alpha:g}, so no difference can be significant; "
            f"run at least {_min_pairs(alpha)} repeats."
        )
    return (
        f"With {n} paired repeats the smallest possible two-sided Wilcoxon p is "
        f"2/2^{n} = {p_min:.4g} ≤ α={alpha:g}."
    )


def _min_pairs(alpha: float) -> int:
    n = 1
    while _min_exact_p(n) > alpha:
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
        "min_possible_p": _min_exact_p(n_pairs),
        "too_few_repeats": bool(pairs) and _min_exact_p(n_pairs) > alpha,
        "min_detectable_note": _min_detectable_note(n_pairs, alpha) if pairs else "",
        "pairs": pairs,
        "friedman": _friedman(families, names, metric),
    }


# --------------------------------------------------------------------------- verdicts


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
    return bool(pairs) and _min_exact_p(n) > alpha


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


# --------------------------------------------------------------------------- reference points


def reference_points(references: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The stored reference points (``baselines.reference_points``' ``points``), or none."""
    return [p for p in (references or {}).get("points") or [] if isinstance(p, Mapping)]


_REFERENCE_PROSE = {
    "majority": "majority-class baseline",
    "1nn": "1-NN baseline",
    "logreg": "logistic-regression baseline",
}
CHANCE_ALPHA = 0.05


def _reference_name(point: Mapping[str, Any]) -> str:
    name = str(point.get("name", ""))
    return _REFERENCE_PROSE.get(name, f"{point.get('label', name or '?')} baseline")


def _above_chance(accuracy: float, n_test: int, majority_accuracy: float) -> bool:
    """Is a mean test accuracy significantly above the majority-class rate? One-sided exact
    binomial test on the ``n_test`` test sequences at :data:`CHANCE_ALPHA`."""
    k = int(round(accuracy * n_test))
    p = _st.binomtest(k, n_test, majority_accuracy, alternative="greater").pvalue
    return bool(p <= CHANCE_ALPHA)


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
        if _is_number((p.get("metrics") or {}).get(metric))
        and math.isfinite(float(p["metrics"][metric]))
    ]
    if not ranked or not points:
        return ""
    label = display_metric(metric)
    single = len(ranked) == 1
    clauses = []
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
    if majority is None or not _is_number(n_test) or not _is_number(rate) or n_test < 1:
        return text
    chance = []
    for f, _ in ranked:
        acc = summarize(family_values(families[f], "accuracy").values())
        if acc["n"] and not _above_chance(acc["mean"], int(n_test), float(rate)):
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
            f"(run at least {_min_pairs(alpha)} repeats)."
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
    clauses = []
    if better:
        clauses.append(f"significantly better than {_join(better)}")
    if worse:
        clauses.append(f"significantly worse than {_join(worse)}")
    if same:
        clauses.append(f"not significantly different from {_join(same)}")
    return head + "; by Holm-adjusted Wilcoxon tests it is " + "; ".join(clauses) + "."
