"""A report as plain data (sections of notes, tables and images), written out twice: as one
self-contained HTML file (images embedded as base64 PNG) and as Markdown (PNG files beside it).

Every piece of text a user controls (run names, class names, config values, paths) goes through
`html.escape` here, in one place, so no section can forget it.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from cifarlab.fileio import atomic_write, atomic_write_text


@dataclass
class Note:
    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list]
    caption: str = ""
    collapsed: bool = False  # long tables (every epoch, every layer) fold away in the HTML


@dataclass
class Image:
    name: str  # file stem in report/ beside report.md; also the <img> id
    png: bytes
    caption: str = ""


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)


@dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section]


_NUMBER = re.compile(r"^[-+]?[\d,.]+(e[-+]?\d+)?[%kMG]?$")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:26px;margin:0 0 4px}.sub{color:#5c6670;margin:0 0 18px}
nav{display:flex;flex-wrap:wrap;gap:6px 14px;font-size:14px;margin-bottom:22px}
nav a{color:#2156a5;text-decoration:none}
section{background:#fff;border:1px solid #e0e3e7;border-radius:8px;padding:14px 20px 18px;margin:0 0 18px}
h2{font-size:19px;margin:4px 0 12px}
table{border-collapse:collapse;font-size:13.5px;margin:6px 0 10px}
th,td{padding:3px 12px 3px 0;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
th{color:#5c6670;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;color:#5c6670;font-size:13px;padding-bottom:4px}
details summary{cursor:pointer;color:#2156a5;font-size:14px;margin:4px 0}
figure{margin:6px 0 12px}figure img{max-width:100%;height:auto}
figcaption{color:#5c6670;font-size:13px}p.note{color:#3c4650;font-size:14px;margin:6px 0}
"""


def _numeric_columns(t: Table) -> set[int]:
    """Columns whose every filled cell is a number: right-aligned, header included."""
    return {j for j in range(len(t.columns))
            if all(_NUMBER.match(str(r[j])) for r in t.rows if j < len(r) and str(r[j]))
            and any(j < len(r) and str(r[j]) for r in t.rows)}


def _table_html(t: Table) -> str:
    num = _numeric_columns(t)
    cls = lambda j: ' class="num"' if j in num else ""  # noqa: E731
    head = "".join(f"<th{cls(j)}>{html.escape(str(c))}</th>" for j, c in enumerate(t.columns))
    head = f"<thead><tr>{head}</tr></thead>" if any(t.columns) else ""  # key/value tables need no header
    body = "".join("<tr>" + "".join(f"<td{cls(j)}>{html.escape(str(v))}</td>" for j, v in enumerate(row)) + "</tr>"
                   for row in t.rows)
    caption = f"<caption>{html.escape(t.caption)}</caption>" if t.caption and not t.collapsed else ""
    table = f"<table>{caption}{head}<tbody>{body}</tbody></table>"
    if t.collapsed:
        return f"<details><summary>{html.escape(t.caption or 'table')} ({len(t.rows)} rows)</summary>{table}</details>"
    return table


def _block_html(b) -> str:
    if isinstance(b, Note):
        return f'<p class="note">{html.escape(b.text)}</p>'
    if isinstance(b, Table):
        return _table_html(b)
    data = base64.b64encode(b.png).decode("ascii")
    cap = f"<figcaption>{html.escape(b.caption)}</figcaption>" if b.caption else ""
    return (f'<figure><img id="{html.escape(b.name)}" alt="{html.escape(b.caption or b.name)}" '
            f'src="data:image/png;base64,{data}">{cap}</figure>')


def to_html(report: Report) -> str:
    nav = "".join(f'<a href="#{html.escape(s.id)}">{html.escape(s.title)}</a>' for s in report.sections)
    sections = "".join(f'<section id="{html.escape(s.id)}"><h2>{html.escape(s.title)}</h2>'
                       + "".join(_block_html(b) for b in s.blocks) + "</section>\n" for s in report.sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><main><h1>{html.escape(report.title)}</h1><p class=\"sub\">{html.escape(report.subtitle)}</p>"
            f"<nav>{nav}</nav>\n{sections}</main></body></html>\n")


def _md(text) -> str:
    """A Markdown table cell or line: escaped like HTML (viewers render raw HTML) and pipes protected."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report, image_dir: str) -> str:
    lines = [f"# {_md(report.title)}", "", _md(report.subtitle), ""]
    for s in report.sections:
        lines += [f"## {_md(s.title)}", ""]
        for b in s.blocks:
            if isinstance(b, Note):
                lines += [_md(b.text), ""]
            elif isinstance(b, Table):
                if b.caption:
                    lines += [f"*{_md(b.caption)}*", ""]
                lines += ["| " + " | ".join(_md(c) for c in b.columns) + " |",
                          "|" + "---|" * len(b.columns)]
                lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in b.rows]
                lines.append("")
            else:
                lines += [f"![{_md(b.caption or b.name)}]({image_dir}/{b.name}.png)", ""]
    return "\n".join(lines)


def write_report(report: Report, out_dir: Path) -> Path:
    """out_dir/report.html, out_dir/report.md and out_dir/report/*.png, each written atomically
    (a report rebuilt while someone has the old one open never shows half a file). Returns the HTML path."""
    out_dir = Path(out_dir)
    images = out_dir / "report"
    images.mkdir(parents=True, exist_ok=True)
    for s in report.sections:
        for b in s.blocks:
            if isinstance(b, Image):
                atomic_write(images / f"{b.name}.png", lambda f, png=b.png: f.write(png))
    atomic_write_text(out_dir / "report.md", to_markdown(report, images.name))
    atomic_write_text(out_dir / "report.html", to_html(report))
    return out_dir / "report.html"
