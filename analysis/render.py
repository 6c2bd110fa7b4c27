"""Write analysis.tables.Table as Markdown, LaTeX (booktabs), CSV and HTML, and for the terminal (rich).

A Summary cell reads 'mean ± std [ci_low, ci_high]' (one seed: the value alone; fewer seeds than the
configuration has: '(n=k)' appended). CSV keeps the numbers, not the text: a column of Summaries
becomes five (`<col>`, `<col>_std`, `<col>_ci_low`, `<col>_ci_high`, `<col>_n`).
"""
from __future__ import annotations

import csv
import html
import io
import math
import re

from rich.markup import escape
from rich.table import Table as RichTable

from analysis.stats import Summary
from analysis.tables import Cell, Table


def _num(fmt: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if fmt.endswith("d}") and isinstance(v, float):
        v = int(round(v))
    return fmt.format(v)


def cell_text(c: Cell, ci: bool = True) -> str:
    """The cell as text; ci=False leaves out the interval (the terminal's narrow tables)."""
    v = c.value
    if v is None:
        return "–"
    if isinstance(v, Summary):
        if v.n == 0:
            return "–"
        text = _num(c.fmt, v.mean)
        if v.n > 1:
            text += f" ± {_num(c.fmt, v.std)}" + (f" [{_num(c.fmt, v.ci_low)}, {_num(c.fmt, v.ci_high)}]" if ci else "")
        if c.seeds and v.n < c.seeds:
            text += f" (n={v.n})"
        return text
    if isinstance(v, str):
        return v
    return _num(c.fmt, v)


# -- Markdown -------------------------------------------------------------------------------------

def to_markdown(t: Table, heading: str = "###") -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [f"{heading} {t.title}", "", "| " + " | ".join(esc(c) for c in t.columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(t.columns))) + "|"]
    for row in t.rows:
        cells = [esc(cell_text(c)) for c in row]
        lines.append("| " + " | ".join(f"**{x}**" if c.bold and x != "–" else x for c, x in zip(row, cells)) + " |")
    lines += ["", f"*{esc(t.caption)}*"]
    lines += [""] + [f"- {esc(n)}" for n in t.notes] if t.notes else []
    return "\n".join(lines) + "\n"


# -- LaTeX (booktabs) -----------------------------------------------------------------------------

_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_SYMBOLS = {"±": r"$\pm$", "≤": r"$\leq$", "≥": r"$\geq$", "Δ": r"$\Delta$", "†": r"$^\dagger$",
                "–": "--", "×": r"$\times$", "`": ""}


def tex_escape(s: str) -> str:
    s = re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_ESCAPES[m.group()], s)
    for k, v in _TEX_SYMBOLS.items():
        s = s.replace(k, v)
    return s


def to_latex(t: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); the caption carries the protocol."""
    spec = "l" + "r" * (len(t.columns) - 1)
    body = [" & ".join(tex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for row in t.rows:
        cells = [tex_escape(cell_text(c)) for c in row]
        body.append(" & ".join(rf"\textbf{{{x}}}" if c.bold and x != "--" else x for c, x in zip(row, cells)) + r" \\")
    notes = "".join(rf"\par\footnotesize {tex_escape(n)}" + "\n" for n in t.notes)
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small",
                      rf"\caption{{{tex_escape(t.title)}. {tex_escape(t.caption)}}}", rf"\label{{tab:{t.name}}}",
                      r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule", *body,
                      r"\bottomrule", r"\end{tabular}}", notes + r"\end{table}"]) + "\n"


# -- CSV ------------------------------------------------------------------------------------------

def to_csv(t: Table) -> str:
    stat_cols = {i for i in range(len(t.columns)) if any(isinstance(r[i].value, Summary) for r in t.rows)}
    header = []
    for i, name in enumerate(t.columns):
        header += [name] + ([f"{name}_std", f"{name}_ci_low", f"{name}_ci_high", f"{name}_n"] if i in stat_cols else [])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    for row in t.rows:
        line = []
        for i, c in enumerate(row):
            v = c.value
            if i in stat_cols:
                s = v if isinstance(v, Summary) else None
                line += ["" if s is None else _raw(x) for x in (s.mean, s.std, s.ci_low, s.ci_high)] if s else [""] * 4
                line.append(s.n if s else 0)
            else:
                line.append(_raw(v))
        w.writerow(line)
    return out.getvalue()


def _raw(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(float(v)) if isinstance(v, float) else str(v)


# -- HTML -----------------------------------------------------------------------------------------

def to_html(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in t.columns)
    rows = []
    for row in t.rows:
        cells = []
        for i, c in enumerate(row):
            x = e(cell_text(c))
            cells.append(f"<td{' class=l' if i == 0 else ''}>{f'<b>{x}</b>' if c.bold and x != '–' else x}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<li>{e(n)}</li>" for n in t.notes)
    return (f'<h3 id="{e(t.name)}">{e(t.title)}</h3>\n<table><thead><tr>{head}</tr></thead><tbody>\n'
            + "\n".join(rows) + f"\n</tbody></table>\n<p class=caption>{e(t.caption)}</p>"
            + (f"<ul class=notes>{notes}</ul>" if notes else "") + "\n")


WRITERS = {"md": to_markdown, "tex": to_latex, "csv": to_csv}


def to_rich(t: Table, max_rows: int | None = None):
    """A rich.table.Table for the terminal: mean ± std without the interval (the files have it), bold
    kept, caption and notes under it; past `max_rows` rows, one line says how many more the files hold
    (a thousand-row table takes seconds to lay out and scrolls past unread)."""
    rows = t.rows if max_rows is None or len(t.rows) <= max_rows else t.rows[:max_rows]
    more = [f"{len(t.rows) - len(rows)} more rows in the report's files."] if len(rows) < len(t.rows) else []
    rt = RichTable(title=escape(t.title), caption=escape(" ".join([t.caption, *t.notes, *more])),
                   caption_justify="left")
    for i, c in enumerate(t.columns):  # 'FID [ddpm-250-...]' is text, not rich markup
        rt.add_column(escape(c), justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        rt.add_row(*[f"[bold]{escape(cell_text(c, ci=False))}[/bold]" if c.bold else escape(cell_text(c, ci=False))
                     for c in row])
    return rt


def rich_line(text: str) -> str:
    """A Markdown sentence of the summary as rich markup for the terminal: **bold** stays bold, the rest is
    escaped."""
    return re.sub(r"\*\*(.+?)\*\*", r"[bold]\1[/bold]", escape(text))
