"""The report laid out once as a small tree of blocks, which every text format serialises.

Markdown (``markdown.py``) and HTML (``html.py``) must say the same things, so the content is
laid out once, by :func:`build_document`, as headings, paragraphs, tables, code, images and
sections; each format only serialises that tree. The numbers and sentences come from the
:class:`~rnntune.report.model.Report` as they are: nothing here computes a statistic, it only
formats. Everything that exists is laid out even when the report is incomplete: a family
without repeats or without a best trial says so instead of failing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from rnntune.names import HEADLINE_METRICS, display_family, display_metric
from rnntune.report.model import FamilyResult, Repeat, Report, as_report
from rnntune.report.plots import plot_alt  # matplotlib itself is imported only to draw
from rnntune.report.stats import reference_points

__all__ = [
    "Block",
    "BulletList",
    "Code",
    "CodeGroup",
    "Heading",
    "Image",
    "Paragraph",
    "Section",
    "Table",
    "best_params_line",
    "build_document",
]

# A table cell that reads as a number: "0.81 ± 0.01", "+0.03", "[0.1, 0.2]", "< 0.0001", "29.0%".
_NUMERIC = re.compile(r"^[-+−\[<]?\s*\d")


def _is_number(value: object) -> TypeGuard[float]:
    """A real number (int, float or numpy scalar), not a bool."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


# --------------------------------------------------------------------------- document model


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str | None = None


@dataclass(frozen=True)
class Paragraph:
    """A paragraph; ``label`` is shown in bold before the text, ``role`` styles it in HTML."""

    text: str
    label: str | None = None
    role: str | None = None
    anchor: str | None = None


@dataclass(frozen=True)
class BulletList:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    kind: str = ""  # extra HTML class, e.g. "ledger"; every table also has class "metrics"
    row_header: bool = True  # the first column labels the row

    def numeric_columns(self) -> tuple[bool, ...]:
        """Per column: are all its filled cells numbers (to be right-aligned)?"""
        flags = []
        for i in range(len(self.header)):
            cells = [row[i] for row in self.rows if i < len(row) and row[i] not in ("", "n/a")]
            flags.append(bool(cells) and all(_NUMERIC.match(c) for c in cells))
        return tuple(flags)


@dataclass(frozen=True)
class Code:
    title: str
    text: str


@dataclass(frozen=True)
class CodeGroup:
    """Several titled code blocks shown side by side in HTML (the per-repeat reports)."""

    items: tuple[Code, ...]


@dataclass(frozen=True)
class Image:
    name: str  # the plot name from plots.make_plots; each renderer resolves its source
    alt: str


@dataclass(frozen=True)
class Section:
    role: str
    children: tuple[Block, ...]
    family: str | None = None
    anchor: str | None = None


Block = Heading | Paragraph | BulletList | Table | Code | CodeGroup | Image | Section


@dataclass
class _Doc:
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)


# --------------------------------------------------------------------------- formatting


def _num(value: Any, fmt: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if _is_number(value):
        return format(float(value), fmt)
    return str(value)


def _pm(summary: Mapping[str, Any] | None, fmt: str = ".4f") -> str:
    """``0.8123 ± 0.0100`` (mean ± sample std); ``n/a`` without values."""
    if not summary or not summary.get("n"):
        return "n/a"
    return f"{_num(summary['mean'], fmt)} ± {_num(summary['std'], fmt)}"


def _ci(summary: Mapping[str, Any] | None, fmt: str = ".4f") -> str:
    if not summary or not summary.get("n"):
        return "n/a"
    lo, hi = summary["ci95"]
    return f"[{_num(lo, fmt)}, {_num(hi, fmt)}]"


def _pm_ci(summary: Mapping[str, Any]) -> str:
    """``0.8123 ± 0.0100 [0.8051, 0.8195]``; ``n/a`` without values."""
    return f"{_pm(summary)} {_ci(summary)}" if summary.get("n") else "n/a"


def _seconds(value: Any) -> str:
    return _num(value, ".1f")


def _p(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return "< 0.0001" if value < 0.0001 else f"{value:.4f}"


def _short(value: Any) -> Any:
    """Floats to 4 significant digits for the best-parameter line (full values are in JSON)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    return value


def best_params_line(family: str, params: Mapping[str, Any] | None) -> str:
    """``GRU - Best hyperparameters found by Optuna: {...}``, the original study's wording."""
    prefix = f"{display_family(family)} - Best hyperparameters found by Optuna:"
    if params is None:
        return f"{prefix} none yet (no trial has completed)"
    shown = {k: _short(v) for k, v in params.items()}
    return f"{prefix} {shown!r}"


# --------------------------------------------------------------------------- document sections


def _experiment(exp: Mapping[str, Any]) -> list[Block]:
    data = exp.get("data") or {}
    versions = exp.get("versions") or {}
    shape = data.get("shape")
    rows = [
        ("Name", exp.get("name")),
        ("Created", exp.get("created_at")),
        ("Storage", exp.get("storage")),
        ("Data spec", data.get("spec")),
        ("Data fingerprint", data.get("fingerprint")),
        ("Data shape (N × T × F)", " × ".join(str(s) for s in shape) if shape else None),
        ("Objective (validation)", exp.get("objective")),
        ("Trials per family", exp.get("trials")),
        ("Evaluation repeats", exp.get("repeats")),
        ("Max epochs", exp.get("max_epochs")),
        ("Early-stopping patience", exp.get("patience")),
        ("Early-stopping rule", (exp.get("early_stopping") or {}).get("rule")),
        ("Pruner", exp.get("pruner")),
        ("Seed", exp.get("seed")),
        ("Split seed", exp.get("split_seed")),
        ("Split", (data.get("split") or {}).get("text")),
        ("Evaluation protocol", (data.get("split") or {}).get("protocol_text")),
        ("Repeat seeds", ", ".join(str(s) for s in exp.get("repeat_seeds") or []) or None),
        ("Device", exp.get("device")),
        ("Versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or None),
    ]
    if data.get("labels"):  # how the file's classes became Normal/Abnormal (UCR/UEA data)
        rows.insert(6, ("Classes", data["labels"]))
    if exp.get("retry_limits"):  # reports written before the limits were recorded lack them
        rows.append(
            ("Heartbeat / grace period", f"{exp.get('heartbeat_interval')} s / "
             f"{exp.get('grace_period')} s")
        )  # fmt: skip
        rows.append(("Retry limits", ", ".join(f"{k} {v}" for k, v in exp["retry_limits"].items())))
    blocks: list[Block] = [
        Heading(2, "Experiment", "experiment"),
        Table(
            ("Setting", "Value"),
            tuple((k, "n/a" if v is None else str(v)) for k, v in rows),
            kind="experiment",
        ),
    ]
    splits = data.get("splits") or {}
    if splits:
        split_rows = []
        for split in ("train", "val", "test"):
            s = splits.get(split)
            if not s:
                continue
            n = s.get("n") or 0
            share = f"{s.get('abnormal', 0) / n:.1%}" if n else "n/a"
            split_rows.append(
                (split, str(n), str(s.get("normal", "n/a")), str(s.get("abnormal", "n/a")), share)
            )
        blocks += [
            Heading(3, "Data splits", "splits"),
            Table(
                ("Split", "n", "Normal", "Abnormal", "Abnormal share"),
                tuple(split_rows),
                kind="splits",
            ),
        ]
    space = exp.get("search_space") or {}
    if space:
        blocks += [
            Heading(3, "Search space", "search-space"),
            Table(
                ("Hyperparameter", "Type", "Values"),
                tuple(
                    (name, str(d.get("type", "?")), _space_values(d)) for name, d in space.items()
                ),
                kind="search-space",
            ),
        ]
    return blocks


def _space_values(dist: Mapping[str, Any]) -> str:
    if dist.get("type") == "categorical":
        return ", ".join(repr(c) for c in dist.get("choices") or [])
    text = f"[{dist.get('low')}, {dist.get('high')}]"
    step = dist.get("step")
    if step is not None and not (dist.get("type") == "int" and step == 1):
        text += f", step {step}"
    if dist.get("log"):
        text += ", log scale"
    return text


def _tuning(report: Report) -> list[Block]:
    families = report.families
    objective = report.experiment.get("objective", "objective")
    blocks: list[Block] = [Heading(2, "Tuning", "tuning")]
    blocks += [
        Paragraph(best_params_line(f, families[f].best_params), role="best-params")
        for f in report.order
    ]
    rows = []
    for f in report.order:
        fam = families[f]
        rows.append(
            (
                display_family(f),
                str(fam.study_name or "n/a"),
                *(
                    str(fam.trials.get(k, 0))
                    for k in ("complete", "pruned", "fail", "running", "waiting")
                ),
                str(fam.best_trial) if fam.best_trial is not None else "n/a",
                _num(fam.best_value),
            )
        )
    blocks.append(
        Table(
            (
                "Family",
                "Study",
                "Complete",
                "Pruned",
                "Failed",
                "Running",
                "Waiting",
                "Best trial",
                f"Best validation {display_metric(str(objective))}",
            ),
            tuple(rows),
            kind="tuning",
        )
    )
    return blocks


def _ledger(report: Report) -> list[Block]:
    rows = []
    totals: dict[str, float] = {}
    for f in report.order:
        fam = report.families[f]
        tune = fam.tuning_seconds
        ev = fam.evaluation_seconds
        compute = [v for v in (tune.get("compute"), ev.get("compute")) if _is_number(v)]
        total = float(sum(compute)) if compute else math.nan
        if compute:
            totals[f] = total
        done = len(fam.done)
        trials = sum(fam.trials.get(k, 0) for k in ("complete", "pruned", "fail"))
        rows.append(
            (
                display_family(f),
                _seconds(tune.get("wall")),
                _seconds(tune.get("compute")),
                _seconds(ev.get("wall")),
                _seconds(ev.get("compute")),
                _seconds(total),
                str(trials),
                str(done),
            )
        )
    blocks: list[Block] = [
        Heading(2, "Fairness ledger", "ledger"),
        Paragraph(
            "Seconds each family spent, side by side: wall is elapsed time, compute is the sum "
            "over trials and repeats (across all workers)."
        ),
        Table(
            (
                "Family",
                "Tuning wall (s)",
                "Tuning compute (s)",
                "Evaluation wall (s)",
                "Evaluation compute (s)",
                "Total compute (s)",
                "Trials finished",
                "Repeats done",
            ),
            tuple(rows),
            kind="ledger",
        ),
    ]
    positive = {f: t for f, t in totals.items() if t > 0}
    if len(positive) >= 2:
        lo = min(positive, key=positive.__getitem__)
        hi = max(positive, key=positive.__getitem__)
        if positive[hi] == positive[lo]:
            text = f"Total compute is the same for every family: {positive[lo]:.1f} s."
        else:
            text = (
                f"Total compute ranges from {positive[lo]:.1f} s ({display_family(lo)}) to "
                f"{positive[hi]:.1f} s ({display_family(hi)}), a ratio of "
                f"{positive[hi] / positive[lo]:.2f}×."
            )
        blocks.append(Paragraph(text, role="note"))
    return blocks


def _ranking(report: Report) -> list[Block]:
    metric = report.metric
    rows = tuple(
        (str(rank), display_family(f), _pm(summary), _ci(summary), str(summary["n"]))
        for rank, f, summary in report.ranked
    )
    label = display_metric(metric)
    # The reference points sit in the same table, unranked: one deterministic fit each.
    refs = tuple(
        ("ref.", _reference_label(p), _num((p.get("metrics") or {}).get(metric)), "n/a", "n/a")
        for p in reference_points(report.baselines)
    )
    if not rows:
        return [
            Heading(3, "Ranking", "ranking"),
            Paragraph("No family has finished repeats yet."),
        ]
    return [
        Heading(3, "Ranking", "ranking"),
        Table(
            ("Rank", "Family", f"Test {label} (mean ± std)", "95% CI of the mean", "Repeats"),
            rows + refs,
            kind="ranking",
            row_header=False,
        ),
    ]


def _reference_label(point: Mapping[str, Any]) -> str:
    return f"{point.get('label', point.get('name', '?'))} (baseline)"


def _references(report: Report) -> list[Block]:
    """The reference points on the same test split, with how each was made."""
    blocks: list[Block] = [Heading(3, "Reference points", "reference-points")]
    refs = report.baselines or {}
    points = reference_points(refs)
    if not points:
        blocks.append(
            Paragraph(
                "Not computed yet: the final job (`rnntune run` or `rnntune evaluate`) computes "
                "the majority-class and 1-NN baselines on the experiment's split.",
                role="note",
            )
        )
        return blocks
    blocks.append(
        Paragraph(
            f"Measured on the same test split as the families ({refs.get('n_test', 'n/a')} "
            f"sequences), fit on the training part ({refs.get('n_train', 'n/a')}); classical "
            f"baseline chosen by rule: {refs.get('choice', 'n/a')}."
            + (f" Note: {refs['note']}." if refs.get("note") else "")
        )
    )
    blocks.append(
        Table(
            ("Reference point", *(display_metric(m) for m in HEADLINE_METRICS), "Seconds", "How"),
            tuple(
                (
                    _reference_label(p),
                    *(_num((p.get("metrics") or {}).get(m)) for m in HEADLINE_METRICS),
                    _seconds(p.get("seconds")),
                    str(p.get("rule", "")),
                )
                for p in points
            ),
            kind="references",
        )
    )
    return blocks


def _metric_summary(report: Report) -> list[Block]:
    summaries = {f: {m: report.families[f].stat(m) for m in HEADLINE_METRICS} for f in report.order}
    with_data = [f for f in report.order if any(s["n"] for s in summaries[f].values())]
    if not with_data:
        return []
    rows = tuple(
        (
            display_metric(m),
            *(_pm_ci(summaries[f][m]) for f in with_data),
        )
        for m in HEADLINE_METRICS
    )
    return [
        Heading(3, "Test metrics", "test-metrics"),
        Paragraph(
            "Mean ± sample std over the finished repeats, with the t-based 95% CI of the mean."
        ),
        Table(("Metric", *(display_family(f) for f in with_data)), rows, kind="summary"),
    ]


def _join_families(families: Sequence[str]) -> str:
    return ", ".join(display_family(f) for f in families)


def _comparison(comparison: Mapping[str, Any]) -> list[Block]:
    pairs = comparison.get("pairs") or []
    metric = comparison.get("metric", "macro_f1")
    alpha = comparison.get("alpha", 0.05)
    blocks: list[Block] = [Heading(3, "Paired comparison", "comparison")]
    if not pairs:
        blocks.append(
            Paragraph("Fewer than two families have finished repeats: nothing to compare.")
        )
        return blocks
    blocks.append(
        Paragraph(
            f"Test {display_metric(metric)} per repeat, paired by repeat index (repeat i has "
            f"the same seed in every family). Test: {comparison.get('test', 'Wilcoxon')}; "
            f"significant means Holm-adjusted p ≤ {alpha:g}. Effect sizes: matched-pairs "
            "rank-biserial r and Cohen's d_z (mean difference / sd of the differences)."
        )
    )
    rows = []
    for p in pairs:
        rows.append(
            (
                f"{display_family(p['a'])} − {display_family(p['b'])}",
                str(p.get("n_pairs", "n/a")),
                _num(p.get("mean_diff"), "+.4f"),
                _ci({"n": p.get("n_pairs"), "ci95": p.get("diff_ci95") or [None, None]}),
                _num(p.get("statistic"), "g"),
                _p(p.get("p_value")),
                _p(p.get("p_holm")),
                _num(p.get("rank_biserial"), "+.3f"),
                _num(p.get("cohens_dz"), "+.3f"),
                "yes" if p.get("significant") else "no",
            )
        )
    blocks.append(
        Table(
            (
                "Pair (a − b)",
                "n",
                "Mean diff",
                "95% CI",
                "W",
                "p",
                "Holm p",
                "Rank-biserial r",
                "Cohen's d_z",
                f"Significant (α={alpha:g})",
            ),
            tuple(rows),
            kind="comparison",
        )
    )
    friedman = comparison.get("friedman")
    if friedman:
        blocks.append(
            Paragraph(
                f"{_join_families(friedman['families'])} "
                f"over {friedman['n_blocks']} repeats: χ² = {_num(friedman['statistic'], '.3f')}, "
                f"p = {_p(friedman['p_value'])}.",
                label="Friedman test:",
            )
        )
    note = comparison.get("min_detectable_note")
    if note:
        too_few = bool(comparison.get("too_few_repeats"))
        blocks.append(
            Paragraph(
                note, label="Warning:" if too_few else None, role="warning" if too_few else "note"
            )
        )
    return blocks


_CLASS_ROWS = (
    ("Normal", "normal"),
    ("Abnormal", "abnormal"),
    ("accuracy", None),
    ("macro avg", "macro"),
    ("weighted avg", "weighted"),
)


def _report_table(fam: FamilyResult) -> Table:
    """Mean ± std of each cell of sklearn's classification report over the finished repeats."""
    s = fam.stat
    total = fam.support_total
    rows = []
    for label, prefix in _CLASS_ROWS:
        if prefix is None:
            rows.append((label, "", "", _pm(s("accuracy")), _pm(total, ".1f")))
            continue
        support = s(f"{prefix}_support") if prefix in ("normal", "abnormal") else total
        rows.append(
            (
                label,
                _pm(s(f"{prefix}_precision")),
                _pm(s(f"{prefix}_recall")),
                _pm(s(f"{prefix}_f1")),
                _pm(support, ".1f"),
            )
        )
    return Table(
        ("", "precision", "recall", "f1-score", "support"), tuple(rows), kind="class-report"
    )


def _repeat_title(family: str, r: Repeat) -> str:
    parts = [f"seed {r.seed}"]
    if r.epochs_trained is not None:
        parts.append(f"{r.epochs_trained} epochs")
    if _is_number(r.train_seconds):
        parts.append(f"{float(r.train_seconds):.1f} s")
    if r.status != "done":
        parts.append(f"status {r.status}")
    return f"{display_family(family)} repeat {r.repeat} ({', '.join(parts)})"


def _no_report(repeat: Repeat) -> str:
    if repeat.status == "done":
        return "(no classification report was recorded)"
    return f"(no classification report yet: status {repeat.status})"


def _family_section(report: Report, family: str, plots: set[str]) -> Section:
    fam = report.families[family]
    name = display_family(family)
    children: list[Block] = [
        Heading(2, f"{name} ({fam.study_name or 'no study yet'})", f"family-{family}"),
        Paragraph(best_params_line(family, fam.best_params), role="best-params"),
        Paragraph(fam.verdict, role="family-verdict"),
    ]
    repeats = fam.by_repeat
    done = fam.done
    if done:
        auc = fam.stat("roc_auc")
        children += [
            Heading(
                3,
                f"{name}: mean ± std over {len(done)} repeat{'s' if len(done) != 1 else ''}",
                f"family-{family}-mean",
            ),
            _report_table(fam),
            Paragraph(
                f"{_pm(auc)} (95% CI {_ci(auc)}, n={auc['n']})",
                label="ROC AUC:",
                role="auc",
            ),
        ]
    else:
        children.append(
            Paragraph(f"{name} has no finished evaluation repeats yet.", role="warning")
        )
    for plot in (f"history_{family}", f"importances_{family}"):
        if plot in plots:
            children.append(Image(plot, plot_alt(plot)))
    if repeats:
        children += [
            Heading(3, f"{name}: classification report per repeat", f"family-{family}-repeats"),
            CodeGroup(
                tuple(
                    Code(_repeat_title(family, r), r.classification_report or _no_report(r))
                    for r in repeats
                )
            ),
        ]
    return Section("family", tuple(children), family=family, anchor=f"section-{family}")


def build_document(report: Report | Mapping[str, Any], plots: Sequence[str] = ()) -> list[Block]:
    """Lay out the report as blocks; ``plots`` names the plots available to embed or link."""
    rep = as_report(report)
    sentence = rep.verdict
    exp = rep.experiment
    available = set(plots)
    placed: set[str] = set()

    doc = _Doc()
    doc.add(Heading(1, f"rnntune report: {exp.get('name', 'experiment')}", "top"))
    if not rep.complete:
        missing = tuple(rep.missing) or ("(not specified)",)
        doc.add(
            Section(
                "incomplete",
                (
                    Heading(2, "Incomplete", "incomplete"),
                    Paragraph(
                        "This experiment is not finished: the following is still missing. "
                        "Everything finished so far is shown below."
                    ),
                    BulletList(missing),
                ),
                anchor="incomplete-section",
            )
        )
    doc.add(Paragraph(sentence, label="Verdict:", role="verdict", anchor="verdict"))
    doc.add(*_experiment(exp))
    doc.add(*_tuning(rep))
    doc.add(*_ledger(rep))
    doc.add(Heading(2, "Results on the test set", "results"))
    doc.add(*_ranking(rep))
    doc.add(*_references(rep))
    doc.add(*_metric_summary(rep))
    for plot in ("test_metrics", "confusion_matrices"):
        if plot in available:
            doc.add(Image(plot, plot_alt(plot)))
            placed.add(plot)
    doc.add(*_comparison(rep.comparison))
    doc.add(Paragraph(sentence, label="Verdict:", role="verdict-repeat"))
    for f in rep.order:
        section = _family_section(rep, f, available)
        placed |= {b.name for b in section.children if isinstance(b, Image)}
        doc.add(section)
    others = [p for p in plots if p not in placed]
    if others:
        doc.add(Heading(2, "Other plots", "other-plots"), *(Image(p, plot_alt(p)) for p in others))
    return doc.blocks
