"""Reports: built once from the database (``collect``) as one typed object (``model.Report``),
then only formatted: md (``markdown``), html, json / csv (``serialise``) and plots.

Importing this package never imports torch, the writers (tuning, evaluation, worker) or
matplotlib: ``build_report`` and the HTML and plot modules are imported when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnntune.faults import failpoint
from rnntune.report.markdown import to_markdown
from rnntune.report.model import FamilyResult, Repeat, Report, as_report
from rnntune.report.serialise import to_csv, to_json

FORMATS = ("md", "html", "json", "csv")

__all__ = [
    "FORMATS",
    "FamilyResult",
    "Repeat",
    "Report",
    "as_report",
    "build_report",
    "render",
    "to_csv",
    "to_json",
    "to_markdown",
    "write",
    "write_all",
]


def build_report(storage: Any, exp: Any, device: str = "cpu") -> Report:
    """Build the report from the database (``collect`` is imported lazily: it needs Optuna)."""
    from rnntune.report.collect import build_report as _build

    return _build(storage, exp, device=device)


def render(report: Report | Mapping[str, Any], fmt: str) -> str:
    """The report as text in ``fmt`` (Markdown without plots: `write` adds them beside the file)."""
    if fmt == "md":
        return to_markdown(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "html":
        from rnntune.report.html import to_html

        return to_html(report)
    raise ValueError(f"unknown report format {fmt!r}")


def write(report: Report | Mapping[str, Any], fmt: str, path: str | Path) -> Path:
    """Write the report to ``path``; Markdown gets its PNG plots in ``<stem>_plots/`` beside it."""
    out = Path(path)
    report = as_report(report)
    if fmt != "md":
        _atomic_write(out, render(report, fmt))
        return out
    from rnntune.report.plots import plot_pngs

    files = _write_plots(plot_pngs(report), out.parent / f"{out.stem}_plots")
    _write_markdown(report, out, files)
    return out


def write_all(
    report: Report | Mapping[str, Any],
    out_dir: str | Path,
    formats: tuple[str, ...] = ("md", "json", "html"),
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Write ``report.<fmt>`` for each format into ``out_dir``, drawing the plots once.

    Returns the report files by format and the PNG plots (in ``report_plots/``) by name.
    """
    from rnntune.report.html import to_html
    from rnntune.report.plots import plot_pngs

    out = Path(out_dir)
    report = as_report(report)
    pngs = plot_pngs(report)
    plots = _write_plots(pngs, out / "report_plots")
    paths: dict[str, Path] = {}
    for fmt in formats:
        path = out / f"report.{fmt}"
        if fmt == "md":
            _write_markdown(report, path, plots)
        elif fmt == "html":
            _atomic_write(path, to_html(report, images=pngs))
        else:
            _atomic_write(path, render(report, fmt))
        paths[fmt] = path
    failpoint("export.after_write")
    return paths, plots


def _write_plots(pngs: dict[str, bytes], directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, data in pngs.items():
        files[name] = directory / f"{name}.png"
        files[name].write_bytes(data)
    return files


def _write_markdown(report: Report, path: Path, plots: dict[str, Path]) -> None:
    rel = {name: str(p.relative_to(path.parent)) for name, p in plots.items()}
    _atomic_write(path, to_markdown(report, plot_files=rel))


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file of this writer's own, fsynced, then renamed: two jobs writing
    the same report never share a temporary file, and the last rename wins whole."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
