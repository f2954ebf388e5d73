"""Statistics of the report: summaries, paired comparisons, Holm, verdict sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from rnntune.report.stats import compare_families, holm, summarize, summarize_repeats
from rnntune.report.verdict import family_verdict, verdict


def _family(values, *, statuses=None, start=0):
    """A family dict whose repeat ``start + i`` scored ``values[i]`` on macro F1."""
    statuses = statuses or ["done"] * len(values)
    return {
        "repeats": [
            {
                "repeat": start + i,
                "seed": 1000 + start + i,
                "status": status,
                "metrics": {"macro_f1": float(v), "accuracy": float(v) + 0.05},
            }
            for i, (v, status) in enumerate(zip(values, statuses, strict=True))
        ]
    }


def _pair(comparison, a, b):
    return next(p for p in comparison["pairs"] if {p["a"], p["b"]} == {a, b})


# --------------------------------------------------------------------------- summarize


def test_summarize_matches_scipy_t_interval():
    values = [0.81, 0.84, 0.79, 0.86, 0.83, 0.80]
    s = summarize(values)
    mean, sd = np.mean(values), np.std(values, ddof=1)
    lo, hi = st.t.interval(0.95, len(values) - 1, loc=mean, scale=sd / math.sqrt(len(values)))
    assert s["n"] == 6
    assert s["mean"] == pytest.approx(mean, abs=1e-15)
    assert s["std"] == pytest.approx(sd, abs=1e-15)
    assert s["ci95"] == pytest.approx([lo, hi], abs=1e-12)
    # Hand check of the t quantile: t_{0.975, 5} = 2.5706.
    assert s["ci95"][1] - mean == pytest.approx(2.570582 * sd / math.sqrt(6), rel=1e-5)


def test_summarize_small_and_degenerate_inputs():
    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "ci95": [0.5, 0.5], "n": 1}
    assert summarize([0.7, 0.7, 0.7]) == {"mean": 0.7, "std": 0.0, "ci95": [0.7, 0.7], "n": 3}
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])
    # Non-finite values are dropped, not propagated.
    assert summarize([0.5, float("nan"), 0.7])["n"] == 2


def test_summarize_repeats_uses_done_repeats_and_numeric_metrics_only():
    repeats = [
        {"repeat": 0, "status": "done", "metrics": {"macro_f1": 0.8, "note": "x", "flag": True}},
        {"repeat": 1, "status": "done", "metrics": {"macro_f1": 0.9, "roc_auc": 0.95}},
        {"repeat": 2, "status": "running", "metrics": {"macro_f1": 0.1}},
        {"repeat": 3, "status": "failed", "metrics": {}},
    ]
    out = summarize_repeats(repeats)
    assert list(out) == ["macro_f1", "roc_auc"]
    assert out["macro_f1"]["n"] == 2
    assert out["macro_f1"]["mean"] == pytest.approx(0.85)
    assert out["roc_auc"] == {"mean": 0.95, "std": 0.0, "ci95": [0.95, 0.95], "n": 1}


# --------------------------------------------------------------------------- Holm


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04)
        ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
        # 4*0.01, 3*0.02, 2*0.03, max(0.06, 0.04)
        ([0.01, 0.02, 0.03, 0.04], [0.04, 0.06, 0.06, 0.06]),
        # capped at 1 and kept monotone
        ([0.6, 0.5], [1.0, 1.0]),
        ([0.2], [0.2]),
        ([], []),
    ],
)
def test_holm_hand_computed(p, expected):
    assert holm(p) == pytest.approx(expected, abs=1e-12)


def test_holm_skips_nan_and_does_not_count_it():
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    assert math.isnan(out[1])


# --------------------------------------------------------------------------- compare_families


def test_pairs_match_scipy_and_pair_by_repeat_index():
    rng = np.random.default_rng(1)
    a = rng.normal(0.85, 0.02, 10)
    b = a - rng.normal(0.01, 0.01, 10)
    statuses = ["done"] * 10
    statuses[7] = "failed"
    families = {"gru": _family(a), "rnn": _family(b, statuses=statuses)}
    # Repeat 3 is missing from rnn altogether, repeat 7 failed: 8 pairs remain.
    del families["rnn"]["repeats"][3]
    comp = compare_families(families)
    pair = _pair(comp, "gru", "rnn")
    keep = [i for i in range(10) if i not in (3, 7)]
    diffs = a[keep] - b[keep]
    assert pair["repeats"] == keep and pair["n_pairs"] == 8
    assert pair["p_value"] == pytest.approx(st.wilcoxon(diffs).pvalue, abs=1e-15)
    assert pair["statistic"] == pytest.approx(st.wilcoxon(diffs).statistic)
    assert pair["p_holm"] == pytest.approx(pair["p_value"])  # one pair: Holm changes nothing
    sign = 1 if pair["a"] == "gru" else -1
    assert sign * pair["mean_diff"] == pytest.approx(diffs.mean())
    assert sign * pair["cohens_dz"] == pytest.approx(diffs.mean() / diffs.std(ddof=1))
    lo, hi = st.t.interval(0.95, 7, loc=diffs.mean(), scale=st.sem(diffs))
    assert sorted(sign * np.asarray(pair["diff_ci95"])) == pytest.approx([lo, hi])


def test_rank_biserial_hand_computed():
    # Differences 1, 2, -3, 4 -> ranks of |d| 1, 2, 3, 4: R+ = 7, R- = 3, r = 4/10.
    families = {"gru": _family([1.0, 2.0, 0.0, 4.0]), "rnn": _family([0.0, 0.0, 3.0, 0.0])}
    pair = compare_families(families)["pairs"][0]
    assert (pair["a"], pair["b"]) == ("gru", "rnn")  # best mean first
    assert pair["rank_biserial"] == pytest.approx(0.4)


def test_holm_across_three_pairs_and_friedman_match_scipy():
    rng = np.random.default_rng(7)
    base = rng.normal(0.8, 0.02, 10)
    values = {
        "rnn": base,
        "gru": base + 0.03 + rng.normal(0, 0.004, 10),
        "lstm": base + 0.002 + rng.normal(0, 0.01, 10),
    }
    families = {f: _family(v) for f, v in values.items()}
    comp = compare_families(families)
    raw = [p["p_value"] for p in comp["pairs"]]
    assert [p["p_holm"] for p in comp["pairs"]] == pytest.approx(holm(raw))
    for pair in comp["pairs"]:
        diffs = values[pair["a"]] - values[pair["b"]]
        assert pair["p_value"] == pytest.approx(st.wilcoxon(diffs).pvalue)
    fried = comp["friedman"]
    ref = st.friedmanchisquare(*(values[f] for f in fried["families"]))
    assert fried["statistic"] == pytest.approx(ref.statistic)
    assert fried["p_value"] == pytest.approx(ref.pvalue)
    assert fried["n_blocks"] == 10
    assert comp["n_pairs"] == 10 and comp["too_few_repeats"] is False


def test_friedman_needs_three_families_and_three_common_repeats():
    two = compare_families({"gru": _family([0.8, 0.9, 0.7]), "rnn": _family([0.7, 0.8, 0.6])})
    assert two["friedman"] is None
    short = {f: _family([0.8, 0.9]) for f in ("rnn", "gru", "lstm")}
    assert compare_families(short)["friedman"] is None


def test_all_zero_differences_do_not_crash():
    # filterwarnings=error: scipy's 0/0 RuntimeWarning would fail this test.
    values = [0.8, 0.82, 0.79, 0.85, 0.81, 0.8, 0.83]
    families = {f: _family(values) for f in ("rnn", "gru", "lstm")}
    comp = compare_families(families)
    for pair in comp["pairs"]:
        assert pair["p_value"] == 1.0 and pair["p_holm"] == 1.0
        assert pair["mean_diff"] == 0.0 and pair["rank_biserial"] == 0.0
        assert pair["cohens_dz"] == 0.0 and pair["significant"] is False
    assert comp["friedman"]["p_value"] == 1.0
    assert "not significantly different" in verdict(families, comp)


def test_too_few_repeats_flag_follows_two_over_two_to_the_n():
    five = {f: _family(np.linspace(0.7, 0.8, 5) + i / 10) for i, f in enumerate(("rnn", "gru"))}
    six = {f: _family(np.linspace(0.7, 0.8, 6) + i / 10) for i, f in enumerate(("rnn", "gru"))}
    c5, c6 = compare_families(five), compare_families(six)
    assert c5["too_few_repeats"] is True and c5["min_possible_p"] == 2 / 2**5
    assert "too_few_repeats" in c5["min_detectable_note"]
    assert c6["too_few_repeats"] is False and c6["min_possible_p"] == 2 / 2**6


def test_families_without_repeats_are_left_out():
    families = {"gru": _family([0.8, 0.9, 0.85]), "lstm": {"repeats": []}}
    comp = compare_families(families)
    assert comp["pairs"] == [] and comp["families"] == ["gru"]
    assert verdict(families, comp).startswith("Only GRU has finished repeats")
    assert verdict(families, comp).endswith("; LSTM has no finished repeats yet.")
    assert "no finished repeats" in family_verdict("lstm", families, comp)
    assert verdict({"gru": {"repeats": []}}, compare_families({})).startswith("No repeats")


# --------------------------------------------------------------------------- verdict


def _clear_winner():
    rng = np.random.default_rng(3)
    base = rng.normal(0.82, 0.01, 10)
    return {
        "rnn": _family(base),
        "gru": _family(base + 0.05 + rng.uniform(0.001, 0.005, 10)),
        "lstm": _family(base + 0.02 + rng.uniform(0.001, 0.005, 10)),
    }


def test_verdict_clear_winner():
    families = _clear_winner()
    comp = compare_families(families)
    gru = np.array([r["metrics"]["macro_f1"] for r in families["gru"]["repeats"]])
    # Every pair is 10/10 in one direction: p = 2/2^10 for each; Holm's largest is 3 * that.
    assert max(_pair(comp, "gru", f)["p_holm"] for f in ("rnn", "lstm")) == pytest.approx(
        3 * 2 / 2**10
    )
    expected = (
        f"GRU is best on macro F1 ({gru.mean():.3f} ± {gru.std(ddof=1):.3f} over 10 repeats), "
        "significantly better than LSTM and RNN (Wilcoxon, Holm-adjusted p ≤ 0.006)."
    )
    assert verdict(families, comp) == expected
    note = family_verdict("gru", families, comp)
    assert note.startswith("GRU ranks 1st of 3 on macro F1")
    assert "significantly better than LSTM (p = 0.006) and RNN (p = 0.006)" in note
    assert "significantly worse than GRU" in family_verdict("rnn", families, comp)


def test_verdict_tie_names_ranking_but_not_significance():
    rng = np.random.default_rng(12)
    families = {f: _family(rng.normal(0.85, 0.01, 10)) for f in ("rnn", "gru", "lstm")}
    comp = compare_families(families)
    assert not any(p["significant"] for p in comp["pairs"])
    sentence = verdict(families, comp)
    means = {
        f: np.mean([r["metrics"]["macro_f1"] for r in families[f]["repeats"]]) for f in families
    }
    order = sorted(means, key=means.get, reverse=True)
    assert "are not significantly different on macro F1" in sentence
    assert "significantly better" not in sentence
    positions = [sentence.index(f"{f.upper()} (") for f in order]
    assert positions == sorted(positions)  # named best mean first
    assert sentence.count(".") >= 1 and "\n" not in sentence


def test_verdict_winner_over_some_but_not_all():
    rng = np.random.default_rng(5)
    base = rng.normal(0.82, 0.01, 10)
    families = {
        "rnn": _family(base),
        "gru": _family(base + 0.05 + rng.uniform(0.001, 0.005, 10)),
        "lstm": _family(base + 0.05 + rng.normal(0, 0.01, 10)),
    }
    comp = compare_families(families)
    sentence = verdict(families, comp)
    top = comp["families"][0].upper()
    assert sentence.startswith(f"{top} has the highest mean macro F1")
    assert "significantly better than RNN" in sentence
    assert "but not significantly different from" in sentence


def test_verdict_warns_about_too_few_repeats():
    families = {
        f: _family([0.8 + i / 10, 0.81 + i / 10, 0.79 + i / 10])
        for i, f in enumerate(("rnn", "gru", "lstm"))
    }
    comp = compare_families(families)
    sentence = verdict(families, comp)
    assert "too few repeats (n=3) to tell a difference at α=0.05" in sentence
    assert "LSTM (1.000 ± 0.010), GRU (0.900 ± 0.010) and RNN (0.800 ± 0.010)" in sentence
    assert "too few repeats (n=3)" in family_verdict("lstm", families, comp)
