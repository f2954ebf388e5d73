"""Render a report as ONE self-contained HTML file.

The content is :func:`rnntune.report.document.build_document`, the same blocks the Markdown is
made of; plots are embedded as base64 PNG ``data:`` URIs and the CSS is inline, so the file
reads offline and can be mailed or archived as is (no external CSS, JS or fonts).

Stable hooks for browser tests: ``#verdict`` (the verdict sentence), ``section.family-section``
with ``data-family``, ``table.metrics``, ``img.plot`` (with ``alt`` and ``data-plot``), and
``section.incomplete`` when the experiment is not finished.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
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
from rnntune.report.model import Report, as_report

__all__ = ["to_html"]

_CSS = """
:root { --fg: #1d2430; --muted: #5b6472; --line: #d9dee5; --head: #f2f4f7; --accent: #1f5fbf;
        --warn-bg: #fff6e0; --warn-line: #e0a800; --ok-bg: #eaf2ff; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             sans-serif; }
main { max-width: 78rem; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.7rem; margin: 0 0 1rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 0.7rem; padding-bottom: 0.25rem;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.5rem 0 0.5rem; }
nav.toc { font-size: 0.9rem; color: var(--muted); margin-bottom: 1rem; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 0.9rem; }
nav.toc a:hover { text-decoration: underline; }
p.verdict { font-size: 1.12rem; background: var(--ok-bg); border-left: 5px solid var(--accent);
            padding: 0.8rem 1rem; border-radius: 4px; }
p.verdict-repeat { font-weight: 500; }
p.best-params { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
                font-size: 0.9rem; margin: 0.3rem 0; }
p.note { color: var(--muted); }
p.warning, section.incomplete { background: var(--warn-bg); border-left: 5px solid var(--warn-line);
                                padding: 0.6rem 1rem; border-radius: 4px; }
section.incomplete h2 { margin-top: 0.2rem; border: none; }
section.family-section { margin-top: 2.5rem; }
.table-wrap { overflow-x: auto; margin: 0.6rem 0 1rem; }
table.metrics { border-collapse: collapse; font-size: 0.9rem;
                font-variant-numeric: tabular-nums; }
table.metrics th, table.metrics td { border: 1px solid var(--line); padding: 0.3rem 0.6rem;
                                     text-align: left; white-space: nowrap; }
table.metrics td.num { text-align: right; }
table.metrics thead th { background: var(--head); text-align: center; white-space: normal; }
table.metrics tbody th { text-align: left; font-weight: 600; background: #fafbfc; }
table.metrics tbody tr:nth-child(even) td { background: #fafbfc; }
table.experiment td { white-space: normal; word-break: break-all; }
figure { margin: 1rem 0; }
figure.plot-figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.85rem; }
.repeat-reports { display: grid; gap: 0.8rem;
                  grid-template-columns: repeat(auto-fill, minmax(31rem, 1fr)); }
.repeat-report { margin: 0; }
.repeat-report figcaption { font-weight: 600; color: var(--fg); margin-bottom: 0.2rem; }
pre { margin: 0; padding: 0.6rem 0.8rem; background: #f6f8fa; border: 1px solid var(--line);
      border-radius: 4px; font: 0.82rem/1.35 ui-monospace, SFMono-Regular, Menlo, Consolas,
      monospace; overflow-x: auto; }
"""


def _id(anchor: str | None) -> str:
    return f' id="{escape(anchor)}"' if anchor else ""


def _block(block: Block, images: Mapping[str, bytes]) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}{_id(block.anchor)}>{escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        cls = f' class="{escape(block.role)}"' if block.role else ""
        label = f"<strong>{escape(block.label)}</strong> " if block.label else ""
        return f"<p{_id(block.anchor)}{cls}>{label}{escape(block.text)}</p>"
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f'<th scope="col">{escape(h)}</th>' for h in block.header)
        numeric = block.numeric_columns()
        body = []
        for row in block.rows:
            cells = []
            for i, cell in enumerate(row):
                if i == 0 and block.row_header:
                    cells.append(f'<th scope="row">{escape(cell)}</th>')
                elif i < len(numeric) and numeric[i]:
                    cells.append(f'<td class="num">{escape(cell)}</td>')
                else:
                    cells.append(f"<td>{escape(cell)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        cls = f"metrics {block.kind}".strip()
        return (
            f'<div class="table-wrap"><table class="{escape(cls)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
    if isinstance(block, Code):
        return (
            f'<figure class="repeat-report"><figcaption>{escape(block.title)}</figcaption>'
            f"<pre>{escape(block.text.rstrip())}</pre></figure>"
        )
    if isinstance(block, CodeGroup):
        inner = "".join(_block(item, images) for item in block.items)
        return f'<div class="repeat-reports">{inner}</div>'
    if isinstance(block, Image):
        png = images.get(block.name)
        if png is None:
            return ""
        data = base64.b64encode(png).decode("ascii")
        return (
            f'<figure class="plot-figure"><img class="plot" data-plot="{escape(block.name)}" '
            f'alt="{escape(block.alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(block.alt)}</figcaption></figure>"
        )
    if isinstance(block, Section):
        attrs = _id(block.anchor)
        if block.role == "family":
            attrs += f' class="family-section" data-family="{escape(block.family or "")}"'
        else:
            attrs += f' class="{escape(block.role)}"'
        inner = "\n".join(_block(child, images) for child in block.children)
        return f"<section{attrs}>\n{inner}\n</section>"
    raise TypeError(f"unknown block {block!r}")


def _toc(blocks: list[Block]) -> str:
    """Links to every level-2 heading, including those inside sections."""
    links = []
    stack = list(reversed(blocks))
    while stack:
        block = stack.pop()
        if isinstance(block, Section):
            stack.extend(reversed(block.children))
        elif isinstance(block, Heading) and block.level == 2 and block.anchor:
            links.append(f'<a href="#{escape(block.anchor)}">{escape(block.text)}</a>')
    return f'<nav class="toc">{"".join(links)}</nav>' if links else ""


def to_html(
    report: Report | Mapping[str, Any],
    *,
    embed_plots: bool = True,
    images: Mapping[str, bytes] | None = None,
) -> str:
    """The report as one self-contained HTML page (inline CSS, plots as base64 PNGs).

    ``embed_plots=False`` leaves the plots out (faster, smaller), e.g. for a live status page;
    ``images`` passes plots already rendered (``plots.plot_pngs``) so they are drawn once.
    """
    report = as_report(report)
    if images is not None:
        images = dict(images)
    elif not embed_plots:
        images = {}
    else:
        from rnntune.report.plots import plot_pngs  # matplotlib only when plots are wanted

        images = plot_pngs(report)
    blocks = build_document(report, list(images))
    title = blocks[0].text if blocks and isinstance(blocks[0], Heading) else "rnntune report"
    body = [_block(blocks[0], images), _toc(blocks)] if blocks else []
    body += [_block(block, images) for block in blocks[1:]]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(b for b in body if b) + "\n</main>\n</body>\n</html>\n"
    )
