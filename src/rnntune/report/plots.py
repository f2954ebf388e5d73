"""PNG plots of a report: test metrics, optimisation histories, importances, confusion matrices.

Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``: pyplot
keeps every figure in a global registry (a leak in a long-running server) and may pick an
interactive backend. ``Figure.savefig`` to PNG renders with Agg without touching global state.
matplotlib is imported lazily so that importing the report package (e.g. for ``to_json``)
stays cheap.

A plot whose data are missing (no finished repeats, no completed trials, no importances) is
skipped, not drawn empty: callers get only the plots that exist.
"""

from __future__ import annotations

import io
import logging
import math
import pathlib
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from rnntune.names import PLOT_METRICS, display_family, display_metric, ordered_families
from rnntune.report.stats import family_values, reference_points

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["make_plots", "plot_alt", "plot_pngs", "running_best"]

logger = logging.getLogger(__name__)

_DPI = 100
# One colour per family, stable across every plot (matplotlib's default cycle, fixed here).
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
# Reference points (majority class, classical baseline): grey lines, one dash style each.
_REFERENCE_STYLES = ((0, (2, 2)), (0, (6, 2)), (0, (6, 2, 1, 2)))


def plot_alt(name: str) -> str:
    """Alt text for the plot called ``name`` (as returned by :func:`make_plots`)."""
    if name == "test_metrics":
        return (
            "Test metrics over the evaluation repeats per family (box and strip plot), with the "
            "reference points as horizontal lines"
        )
    if name == "confusion_matrices":
        return "Mean test confusion matrix over the repeats, one panel per family"
    kind, _, family = name.partition("_")
    if kind == "history" and family:
        return (
            f"{display_family(family)} optimisation history: objective value per trial "
            "and running best"
        )
    if kind == "importances" and family:
        return f"{display_family(family)} hyperparameter importances"
    return name.replace("_", " ")


def _ordered(families: Mapping[str, Any]) -> list[str]:
    return ordered_families(families)


def _colour(families: Mapping[str, Any], family: str) -> str:
    return _COLOURS[_ordered(families).index(family) % len(_COLOURS)]


def _new_figure(width: float, height: float, **margins: float) -> Figure:
    """A bare figure with fixed margins: constrained/tight layout would draw every figure
    twice, doubling the time of a report with a dozen plots."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(**({"left": 0.1, "right": 0.97, "bottom": 0.14, "top": 0.9} | margins))
    return fig


# --------------------------------------------------------------------------- figure builders


def _test_metrics(report: Mapping[str, Any]) -> Figure | None:
    families = report.get("families") or {}
    names = _ordered(families)
    panels = []
    for metric in PLOT_METRICS:
        data = {f: list(family_values(families[f], metric).values()) for f in names}
        data = {f: v for f, v in data.items() if v}
        if data:
            panels.append((metric, data))
    if not panels:
        return None
    refs = reference_points(report.get("baselines"))
    width = 4.0 * len(panels)
    # References get a legend row below the panels, where it cannot cover any data.
    height, bottom = (3.9, 0.21) if refs else (3.6, 0.14)
    fig = _new_figure(
        width, height, left=0.75 / width, right=1 - 0.15 / width, wspace=0.35, bottom=bottom
    )
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    rng = np.random.default_rng(0)  # fixed jitter: the same report draws the same image
    for ax, (metric, data) in zip(axes, panels, strict=True):
        labels = list(data)
        ax.boxplot(
            [data[f] for f in labels],
            tick_labels=[display_family(f) for f in labels],
            widths=0.5,
            showfliers=False,  # every point is drawn by the strip plot below
            medianprops={"color": "black"},
        )
        for i, f in enumerate(labels, start=1):
            values = np.asarray(data[f])
            x = i + rng.uniform(-0.12, 0.12, size=values.size)
            ax.scatter(x, values, s=18, alpha=0.75, color=_colour(families, f), zorder=3)
        for point, style in zip(refs, _REFERENCE_STYLES, strict=False):
            value = (point.get("metrics") or {}).get(metric)
            if value is not None and math.isfinite(float(value)):
                ax.axhline(
                    float(value),
                    color="dimgrey",
                    linestyle=style,
                    linewidth=1.2,
                    label=f"{point.get('label', point.get('name'))} ({float(value):.3f})",
                    zorder=1,
                )
        ax.set_title(f"Test {display_metric(metric)}")
        ax.set_ylabel(display_metric(metric))
        ax.grid(axis="y", alpha=0.3)
    if refs:
        handles, labels = axes[0].get_legend_handles_labels()
        names = [label.rsplit(" (", 1)[0] + " baseline" for label in labels]
        fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize="small")
    return fig


def _history(report: Mapping[str, Any], family: str) -> Figure | None:
    from matplotlib.ticker import MaxNLocator

    fam = (report.get("families") or {}).get(family) or {}
    points = [
        (int(t["number"]), float(t["value"]), str(t.get("state", "")).lower())
        for t in fam.get("history") or []
        if t.get("number") is not None
        and t.get("value") is not None
        and math.isfinite(float(t["value"]))
    ]
    complete = sorted((n, v) for n, v, s in points if s == "complete")
    if not complete:
        return None
    pruned = [(n, v) for n, v, s in points if s == "pruned"]
    last = max(int(t["number"]) for t in fam["history"] if t.get("number") is not None)
    # Room on the right for the legend: outside the axes, it never covers a point.
    fig = _new_figure(7.6, 3.6, left=0.1, right=0.74)
    ax = fig.subplots()
    xs, ys = zip(*complete, strict=True)
    ax.scatter(xs, ys, s=16, color=_colour(report["families"], family), label="complete trial")
    if pruned:
        px, py = zip(*pruned, strict=True)
        ax.scatter(px, py, s=16, marker="x", color="grey", label="pruned trial")
    bx, by = running_best(complete, last)
    ax.step(bx, by, where="post", color="black", label="running best")
    objective = (report.get("experiment") or {}).get("objective", "objective")
    ax.set_title(f"{display_family(family)}: optimisation history")
    ax.set_xlabel("trial number")
    locator = ax.xaxis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # matplotlib's default, AutoLocator, is one
        locator.set_params(integer=True)  # no trial 2.5
    ax.set_ylabel(f"validation {display_metric(str(objective))}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
    return fig


def running_best(complete: list[tuple[int, float]], last: int) -> tuple[list[int], list[float]]:
    """The running best (a max: the objective is maximised) as step points, from the first
    complete trial to trial ``last``: a study whose last trials were pruned or failed still
    shows the best it ended with up to its last trial, not only to its last complete one."""
    xs = [n for n, _ in complete]
    best = np.maximum.accumulate([v for _, v in complete]).tolist()
    if xs and last > xs[-1]:
        xs.append(last)
        best.append(best[-1])
    return xs, best


def _importances(report: Mapping[str, Any], family: str) -> Figure | None:
    fam = (report.get("families") or {}).get(family) or {}
    importances = {
        str(k): float(v)
        for k, v in (fam.get("importances") or {}).items()
        if v is not None and math.isfinite(float(v))
    }
    if not importances:
        return None
    items = sorted(importances.items(), key=lambda kv: kv[1])  # largest drawn on top
    height = 0.45 * len(items) + 1.3
    fig = _new_figure(6.0, height, left=0.3, bottom=0.6 / height, top=1 - 0.35 / height)
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color=_colour(report["families"], family))
    ax.set_title(f"{display_family(family)}: hyperparameter importances")
    ax.set_xlabel("importance (share of objective variance)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _mean_confusion(fam: Mapping[str, Any]) -> np.ndarray | None:
    matrices = []
    for r in fam.get("repeats") or []:
        cm = r.get("confusion_matrix")
        if r.get("status") != "done" or cm is None:
            continue
        arr = np.asarray(cm, dtype=float)
        if arr.shape == (2, 2):
            matrices.append(arr)
    return np.mean(matrices, axis=0) if matrices else None


def _confusion_matrices(report: Mapping[str, Any]) -> Figure | None:
    families = report.get("families") or {}
    panels = [(f, m) for f in _ordered(families) if (m := _mean_confusion(families[f])) is not None]
    if not panels:
        return None
    width = 3.6 * len(panels)
    fig = _new_figure(width, 3.6, left=1.0 / width, right=1 - 0.15 / width, wspace=0.7)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    classes = ["Normal", "Abnormal"]
    for ax, (family, cm) in zip(axes, panels, strict=True):
        ax.imshow(cm, cmap="Blues", vmin=0)
        row_share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1e-12)
        for i in range(2):
            for j in range(2):
                dark = cm[i, j] > cm.max() / 2
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:.1f}\n({row_share[i, j]:.1%})",
                    ha="center",
                    va="center",
                    color="white" if dark else "black",
                    fontsize="small",
                )
        ax.set_xticks([0, 1], classes)
        ax.set_yticks([0, 1], classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        n = sum(1 for r in families[family].get("repeats") or [] if r.get("status") == "done")
        ax.set_title(f"{display_family(family)} (mean of {n})")
    return fig


def _builders(report: Mapping[str, Any]) -> Iterator[tuple[str, Callable[[], Figure | None]]]:
    yield "test_metrics", partial(_test_metrics, report)
    yield "confusion_matrices", partial(_confusion_matrices, report)
    for family in _ordered(report.get("families") or {}):
        yield f"history_{family}", partial(_history, report, family)
        yield f"importances_{family}", partial(_importances, report, family)


def _figures(report: Mapping[str, Any]) -> Iterator[tuple[str, Figure]]:
    """Build the figures one at a time (so at most one is alive), skipping those without data."""
    for name, build in _builders(report):
        try:
            fig = build()
        except (KeyError, TypeError, ValueError) as e:
            # A malformed value must not cost the whole report; the log keeps the cause.
            logger.warning("skipping plot %s: %s", name, e, exc_info=True)
            continue
        if fig is not None:
            yield name, fig


def plot_pngs(report: Mapping[str, Any]) -> dict[str, bytes]:
    """``{plot name: PNG bytes}`` for every plot the report has data for (nothing on disk)."""
    out: dict[str, bytes] = {}
    for name, fig in _figures(report):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=_DPI)
        out[name] = buffer.getvalue()
    return out


def make_plots(report: Mapping[str, Any], out_dir: str | pathlib.Path) -> dict[str, str]:
    """Write every plot the report has data for as ``<out_dir>/<name>.png``.

    Returns ``{name: path}`` (paths as given by ``out_dir``, so a relative ``out_dir`` gives
    relative links for Markdown). Names: ``test_metrics``, ``confusion_matrices``,
    ``history_<family>``, ``importances_<family>``.
    """
    directory = pathlib.Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for name, fig in _figures(report):
        path = directory / f"{name}.png"
        fig.savefig(path, format="png", dpi=_DPI)
        written[name] = str(path)
    return written
