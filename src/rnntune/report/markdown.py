"""The report as Markdown (GitHub flavour): the blocks of ``document.py``, written as text."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

from rnntune.report.document import (
    Block,
    BulletList,
    Code,
    CodeGroup,
    Heading,
    Image,
    Paragraph,
    Section,
    Table,
    build_document,
)
from rnntune.report.model import Report

__all__ = ["to_markdown"]


_MD_TAG = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(text: str) -> str:
    """Text from the report, safe in Markdown: a ``<`` that could open raw HTML is escaped."""
    return _MD_TAG.sub(r"\\<", text)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _md_align(table: Table) -> str:
    """Right-align the columns whose cells are all numbers, left-align the rest."""
    return "|" + "|".join("---:" if num else "---" for num in table.numeric_columns()) + "|"


def _md_fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return fence


def _md_block(block: Block, plot_files: Mapping[str, str]) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + _md_text(block.text), ""]
    if isinstance(block, Paragraph):
        prefix = f"**{block.label}** " if block.label else ""
        return [f"{prefix}{_md_text(block.text)}", ""]
    if isinstance(block, BulletList):
        return [*(f"- {_md_text(item)}" for item in block.items), ""]
    if isinstance(block, Table):
        lines = [
            "| " + " | ".join(_md_cell(h) for h in block.header) + " |",
            _md_align(block),
        ]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return [*lines, ""]
    if isinstance(block, Code):
        fence = _md_fence(block.text)
        return [f"**{block.title}**", "", fence, block.text.rstrip("\n"), fence, ""]
    if isinstance(block, CodeGroup):
        return [line for item in block.items for line in _md_block(item, plot_files)]
    if isinstance(block, Image):
        path = plot_files.get(block.name)
        if path is None:
            return []
        target = pathlib.PurePath(path).as_posix()
        if " " in target:  # CommonMark: a destination with spaces must be in <...>
            target = f"<{target}>"
        return [f"![{block.alt}]({target})", ""]
    if isinstance(block, Section):
        return [line for child in block.children for line in _md_block(child, plot_files)]
    raise TypeError(f"unknown block {block!r}")


def to_markdown(
    report: Report | Mapping[str, Any], plot_files: Mapping[str, str] | None = None
) -> str:
    """The report as Markdown (GitHub flavour).

    ``plot_files`` maps plot names (from ``plots.make_plots``) to image paths; they are linked
    as written, so pass paths relative to where the Markdown file will live.
    """
    plot_files = dict(plot_files or {})
    lines: list[str] = []
    for block in build_document(report, list(plot_files)):
        lines += _md_block(block, plot_files)
    return "\n".join(lines).rstrip("\n") + "\n"
