"""Blocks, the report's content, rendered twice: to self-contained HTML (with its CSS) and to Markdown."""

from __future__ import annotations

import base64
import html as _html
import re
from dataclasses import dataclass, field


@dataclass
class Block:
    kind: str  # heading, para, list, table, image, note, verdict
    text: str = ""
    items: list = field(default_factory=list)  # list items, or table rows
    header: list = field(default_factory=list)
    level: int = 2
    image: bytes | None = None
    file: str | None = None
    collapsed: bool = False  # a long table: folded away in HTML (its ``text`` is the fold's label), as is in Markdown


def note(text: str) -> Block:
    return Block("note", text)


CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.note { color: #666; font-style: italic; }
.verdict { background: #f4f8ff; border-left: 4px solid #3b6fd8; padding: 0.6em 1em; }
.caution { background: #fff7e6; border-left: 4px solid #e69b00; padding: 0.6em 1em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
details { margin: 0.6em 0 1em; } summary { cursor: pointer; color: #3b6fd8; }
"""


def _inline(text: str) -> str:
    """HTML-escape, then **bold** -> <strong>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _html.escape(text))


def render_html(title: str, meta: str, blocks: list[Block]) -> str:
    e = _html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{e(title)}</h1>", f'<p class="meta">{e(meta)}</p>']
    for b in blocks:
        if b.kind == "heading":
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif b.kind == "para":
            out.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "note":
            out.append(f'<p class="note">{e(b.text)}</p>')
        elif b.kind == "verdict":
            label = "Caution." if b.level == 1 else "Answer."
            out.append(f'<p class="{"caution" if b.level == 1 else "verdict"}"><strong>{label}</strong> {_inline(b.text)}</p>')
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.items)
            table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            if b.collapsed:
                table = f"<details><summary>{e(b.text or 'table')} ({len(b.items)} rows)</summary>{table}</details>"
            out.append(table)
        elif b.kind == "image":
            data = base64.b64encode(b.image).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.file)}" data-file="{e(b.file)}">'
                       f"<figcaption>{e(b.text)} ({e(b.file)})</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, meta: str, blocks: list[Block]) -> str:
    out = [f"# {title}", "", meta, ""]
    for b in blocks:
        if b.kind == "heading":
            out += ["#" * b.level + " " + b.text, ""]
        elif b.kind == "para":
            out += [b.text, ""]
        elif b.kind == "note":
            out += [f"_{b.text}_", ""]
        elif b.kind == "verdict":
            out += ["> " + ("**Caution.** " if b.level == 1 else "**Answer.** ") + b.text, ""]
        elif b.kind == "list":
            out += [f"- {i}" for i in b.items] + [""]
        elif b.kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.items]
            out.append("")
        elif b.kind == "image":
            out += [f"![{b.text}]({b.file})", "", f"_{b.text}_", ""]
    return "\n".join(out).rstrip() + "\n"
