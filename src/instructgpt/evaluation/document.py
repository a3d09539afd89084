"""The report's document: neutral blocks (:class:`Para`, :class:`Table`, :class:`Image`) in
:class:`Section` s, rendered to Markdown (figures referenced as PNG files in ``report_files/``) and to
one self-contained HTML page (figures inlined as base64 ``data:`` URIs, inline CSS, a
Content-Security-Policy that forbids scripts and any outside resource). Every text is escaped in both:
it comes from models, prompts and results. What the report says is :mod:`.report`'s.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------- blocks

@dataclass
class Para:
    """A paragraph of plain text (escaped on output)."""
    text: str


@dataclass
class Table:
    """A table of plain-text cells (escaped on output; newlines kept).

    verdict_col: index of a column whose cells are verdicts (coloured in HTML).
    """
    headers: list[str]
    rows: list[list[str]]
    verdict_col: int | None = None


@dataclass
class Image:
    """A PNG figure: ``name`` is its file stem in report_files/."""
    name: str
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[Para | Table | Image] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


# ----------------------------------------------------------------------------- markdown

def _md_cell(text: str) -> str:
    """Escape markdown text: HTML (<, >, &), pipes, brackets, emphasis; newlines -> <br>."""
    s = html.escape(str(text), quote=False)
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")
    s = s.replace("`", "\\`").replace("*", "\\*").replace("_", "\\_")
    return s.replace("\r\n", "\n").replace("\n", "<br>")


def render_markdown(sections: list[Section], files_dir: str = "report_files") -> str:
    """Markdown text; images referenced as ``files_dir/<name>.png``."""
    out = ["# InstructGPT evaluation report", ""]
    for sec in sections:
        out += [f"## {_md_cell(sec.title)}", ""]
        for b in sec.blocks:
            if isinstance(b, Para):
                out += [_md_cell(b.text), ""]
            elif isinstance(b, Image):
                out += [f"![{_md_cell(b.caption)}]({files_dir}/{b.name}.png)", "",
                        f"*{_md_cell(b.caption)}*", ""]
            else:
                out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
                out.append("|" + "---|" * len(b.headers))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
                out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- html

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
 margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.3em .5em;vertical-align:top;text-align:left;
 white-space:pre-wrap;overflow-wrap:break-word;max-width:40em}
th{background:#f3f3f3}
figure{margin:1em 0}figure img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}
.v-reproduced{background:#d7f5dc}.v-not-reproduced{background:#f8d4d4}
.v-inconclusive{background:#fff3c4}.v-not-measured{background:#eee;color:#666}
td[class^="v-"]{white-space:nowrap;font-weight:600}
nav ul{columns:2;font-size:.9em}
"""


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _html_block(b: Para | Table | Image) -> str:
    if isinstance(b, Para):
        return f"<p>{_e(b.text)}</p>"
    if isinstance(b, Image):
        data = base64.b64encode(b.png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(b.caption)}">'
                f"<figcaption>{_e(b.caption)}</figcaption></figure>")
    head = "".join(f"<th>{_e(h)}</th>" for h in b.headers)
    body = []
    for row in b.rows:
        cells = []
        for i, c in enumerate(row):
            cls = ""
            if i == b.verdict_col:
                cls = f' class="v-{re.sub(r"[^a-z]+", "-", str(c).lower())}"'
            cells.append(f"<td{cls}>{_e(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(sections: list[Section], title: str = "InstructGPT evaluation report") -> str:
    """One self-contained HTML page: inline CSS, data: images, no script, strict CSP."""
    toc = "".join(f'<li><a href="#{s.anchor}">{_e(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{_e(s.title)}</h2>'
                   + "".join(_html_block(b) for b in s.blocks) + "</section>"
                   for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
            f"<nav><ul>{toc}</ul></nav>{body}</body></html>\n")
