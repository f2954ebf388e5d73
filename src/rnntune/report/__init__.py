"""Reports: collect from the database, compare the families, render md / html / json / csv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnntune.report.render import to_csv, to_json, to_markdown

FORMATS = ("md", "html", "json", "csv")

__all__ = ["FORMATS", "build_report", "render", "to_csv", "to_json", "to_markdown", "write"]


def build_report(storage: Any, exp: Any, device: str = "cpu") -> dict[str, Any]:
    """Collect the report from the database (imported lazily: it pulls in torch)."""
    from rnntune.report.collect import build_report as _build

    return _build(storage, exp, device=device)


def render(report: dict[str, Any], fmt: str) -> str:
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


def write(report: dict[str, Any], fmt: str, path: str | Path) -> Path:
    """Write the report to ``path``; Markdown gets its PNG plots in ``<stem>_plots/`` beside it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "md":
        from rnntune.report.plots import make_plots

        plot_dir = out.parent / f"{out.stem}_plots"
        files = make_plots(report, plot_dir)
        rel = {name: str(Path(p).relative_to(out.parent)) for name, p in files.items()}
        text = to_markdown(report, plot_files=rel)
    else:
        text = render(report, fmt)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
