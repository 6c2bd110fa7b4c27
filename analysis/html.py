"""report.html: the report as one self-contained file (figures embedded as base64 PNG, no external
CSS or scripts), so it can be mailed, attached to an MLflow run or opened offline."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from analysis.render import to_html

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{border-top:1px solid #ccc;border-bottom:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f4} td.l{text-align:left}
.caption{font-size:12px;color:#555;max-width:1100px} .notes{font-size:12px;color:#555}
img{max-width:100%;border:1px solid #eee} h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
"""


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in a summary sentence, escaped otherwise."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html_document(rep, sections, folder: Path, title: str) -> str:
    """rep: analysis.report.Report; sections: its Sections; folder: where the figure PNGs are."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{e(title)}</title><style>{CSS}</style>"
             f"</head><body><h1>{e(title)}</h1>" + (f"<p>{_inline(rep.description)}</p>" if rep.description else ""),
             "<p>" + e(", ".join(f"{v} {k.lower() if k != 'MISSING' else 'not run'}" for k, v in
                                 sorted(rep.counts.items()))) + " jobs.</p><h2>Summary</h2><ul>",
             *[f"<li>{_inline(s)}</li>" for s in rep.summary], "</ul>"]
    for s in sections:
        parts.append(f"<h2>{e(s.heading)}</h2>")
        if s.protocol_text:
            parts.append(f"<p class=caption>Protocol: {_inline(s.protocol_text)}.</p>")
        parts += [to_html(t) for t in s.tables]
        for fig in s.figures:
            data = base64.b64encode((folder / fig).read_bytes()).decode()
            parts.append(f'<figure><img alt="{e(fig.stem)}" src="data:image/png;base64,{data}"></figure>')
    parts.append("</body></html>")
    return "\n".join(parts)
