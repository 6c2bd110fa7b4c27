"""The report's figures (matplotlib, Agg backend; each written as PNG and PDF).

- steps_figure: one curve per configuration, log x, shaded 95% t-interval over seeds;
- gflops_figure: DiT's bubble chart, forward GFLOPs against FID at one step, bubble area ~ params;
- compute_figure: FID against training compute (GFLOPs x 3 x batch x steps), log x;
- montage: each configuration's last sample grid side by side, labelled (a PIL image).
Every figure has axis labels with units, a legend and the evaluation protocol in a caption line.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # never a display: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from analysis.aggregate import View  # noqa: E402
from analysis.stats import summarize  # noqa: E402
from analysis.tables import flop_unit, metric_name  # noqa: E402

MAX_MONTAGE = 48  # sample grids in one montage; more would be unreadable (the caption says so)
LEGEND_MAX = 20


def caption(fig, text: str, width: int = 150, adjust: bool = True) -> None:
    """The caption under a figure (the protocol, what lines and bands are); adjust: make room for it below the
    axes (a figure laid out with tight_layout leaves room itself)."""
    lines = textwrap.wrap(text, width)
    fig.text(0.01, 0.005, "\n".join(lines), ha="left", va="bottom", fontsize=7, color="0.25")
    if adjust:
        fig.subplots_adjust(bottom=0.14 + 0.035 * len(lines))


def _axes():
    """A figure with room on the right for the legend and below for the caption."""
    fig, ax = plt.subplots(figsize=(11, 5.2))
    fig.subplots_adjust(left=0.07, right=0.66, top=0.92)
    return fig, ax


def _legend(ax, n: int) -> None:
    """Beside the axes; past LEGEND_MAX entries the rest are summed up in one line (the tables name them):
    a 100-entry legend is unreadable and took most of a 500-run report's time to lay out."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > LEGEND_MAX:
        extra = len(handles) - LEGEND_MAX
        handles = handles[:LEGEND_MAX] + [plt.Line2D([], [], color="none")]
        labels = labels[:LEGEND_MAX] + [f"... {extra} more (unlabelled; see the tables)"]
    ax.legend(handles, labels, fontsize=7 if n > 8 else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)


def plain_ticks(ax, xs=()) -> None:
    """'200', not '2 x 10^2', on log axes; with few distinct x values (evaluation steps), a tick at each."""
    fmt = FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 10 else f"{x:.3g}")
    distinct: list[float] = []
    for x in sorted(set(xs)):  # labels closer than ~12% on a log axis would print over each other
        if not distinct or x > distinct[-1] * 1.12:
            distinct.append(x)
    if 0 < len(distinct) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(distinct))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(fmt)


def _style(view: View, config: str, i: int) -> dict:
    if view.baseline_of(config) == config:
        return {"color": "black", "linestyle": "--", "label": f"{config} (baseline)"}
    if view.is_reference(config):
        return {"color": "0.55", "linestyle": ":", "label": f"{config} (reference)"}
    return {"color": plt.get_cmap("tab10" if len(view.configs) <= 10 else "viridis")(
        i % 10 if len(view.configs) <= 10 else i / max(1, len(view.configs) - 1)), "label": config}


def save(fig, out: Path, name: str, dpi: int = 120) -> list[Path]:
    """Write `fig` as out/name.png (at `dpi`) and out/name.pdf and close it."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    # A fixed layout (no bbox_inches="tight"): "tight" draws every figure twice per file, which was a
    # third of a 500-run report's time.
    fig.savefig(paths[0], dpi=dpi)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _finish(fig, ax, view: View, xs: list[float], xlabel: str, title: str, text: str) -> None:
    """What every plot against a log x axis has: plain ticks, axis labels, title, grid, legend, caption."""
    ax.set_xscale("log")
    plain_ticks(ax, xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel(view))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(view.configs))
    caption(fig, text)


def ylabel(view: View) -> str:
    return f"{metric_name(view.metric)} ({'higher' if view.higher_better else 'lower'} is better; unitless)"


def _curve_plot(view: View, protocol_text: str, x_of, xlabel: str, what: str):
    fig, ax = _axes()
    bands = len(view.configs) <= LEGEND_MAX  # a hundred overlapping bands hide everything (and are slow)
    all_x: list[float] = []
    for i, c in enumerate(view.configs):
        curve = view.curve(c)
        if not curve:
            continue
        steps = sorted(curve)
        xs = [x_of(c, s) for s in steps]
        if any(x is None for x in xs):
            continue
        all_x += xs
        mean = np.array([curve[s].mean for s in steps])
        style = _style(view, c, i)
        ax.plot(xs, mean, marker="o" if len(view.configs) <= LEGEND_MAX else None, markersize=3, linewidth=1.4,
                **style)
        lo, hi = np.array([curve[s].ci_low for s in steps]), np.array([curve[s].ci_high for s in steps])
        if bands and np.isfinite(lo).any():
            ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
    _finish(fig, ax, view, all_x, xlabel, f"{metric_name(view.metric)} vs {what}",
            f"Lines: mean over seeds; shaded: 95% confidence interval of the mean (Student's t)"
            f"{'' if bands else f' (not drawn for more than {LEGEND_MAX} configurations; see the tables)'}. "
            f"Protocol: {protocol_text}.")
    return fig


def steps_figure(view: View, protocol_text: str):
    """The metric against training steps: a line (seed mean) and a band (95% CI) per configuration."""
    return _curve_plot(view, protocol_text, lambda c, s: s, "training steps (log scale)", "training steps")


def compute_figure(view: View, protocol_text: str):
    """The metric against training compute, GFLOPs x 3 x batch x steps, per configuration."""
    gf = {c: view.first(c, "gflops") for c in view.configs}
    batch = {c: view.first(c, "batch_size") for c in view.configs}
    known = [gf[c] * 3 * batch[c] * s for c in view.configs if gf[c] and batch[c] for s in view.curve(c)]
    unit, scale = flop_unit(known)
    x_of = lambda c, s: gf[c] * 3 * batch[c] * s / scale if gf[c] and batch[c] else None  # noqa: E731
    return _curve_plot(view, protocol_text, x_of,
                       f"training compute ({unit}, = GFLOPs x 3 x batch x steps; log scale)", "training compute")


def gflops_figure(view: View, protocol_text: str, step: int | None = None):
    """DiT's bubble chart: forward GFLOPs against the metric at `step` (None: each one's final), area ~ params."""
    fig, ax = _axes()
    params = [view.first(c, "params") or 0 for c in view.configs]
    biggest = max(params + [1])
    pts = []  # (x, summary, size, style): drawn in one scatter and one errorbar call (100 calls took seconds)
    for i, c in enumerate(view.configs):
        s = view.final_step(c) if step is None else step
        vals = view.values(c, s) if s is not None else []
        gflops = view.first(c, "gflops")
        if vals and gflops:
            pts.append((gflops, summarize(vals), 60 + 1400 * params[i] / biggest, _style(view, c, i), params[i], c))
    if pts:
        ax.scatter([p[0] for p in pts], [p[1].mean for p in pts], s=[p[2] for p in pts], alpha=0.55,
                   c=[p[3]["color"] for p in pts], edgecolors="black", linewidths=0.6)
        bars = [p for p in pts if p[1].n > 1]
        if bars:
            ax.errorbar([p[0] for p in bars], [p[1].mean for p in bars], fmt="none", color="black", capsize=3,
                        linewidth=0.8, yerr=[[p[1].mean - p[1].ci_low for p in bars],
                                             [p[1].ci_high - p[1].mean for p in bars]])
    for x, summ, size, style, n_params, c in pts:
        # legend proxies: a marker per configuration, labelled with its parameters
        ax.plot([], [], "o", color=style["color"], markeredgecolor="black", alpha=0.55,
                label=f"{style['label']}, {n_params / 1e6:.3g} M params")
        if len(pts) <= LEGEND_MAX:
            ax.annotate(c, (x, summ.mean), fontsize=7, xytext=(6, 6), textcoords="offset points")
    ax.margins(x=0.15, y=0.15)  # room for the largest bubbles
    at = "final evaluation" if step is None else f"step {step:,}"
    _finish(fig, ax, view, [p[0] for p in pts], "forward GFLOPs per image (batch 1, multiply-add = 1 FLOP; log scale)",
            f"{metric_name(view.metric)} vs GFLOPs at {at}",
            f"Bubble area proportional to parameters; error bars: 95% confidence interval over seeds "
            f"(Student's t). Protocol: {protocol_text}.")
    return fig


def montage(grids: list[tuple[str, Path]], caption: str):
    """grids: (label, PNG path) per configuration, side by side (6 per row, MAX_MONTAGE at most), each
    labelled, with a title and the caption below: a PIL image (RGB), saved by save_image.

    Drawn with PIL, not matplotlib: it is raster anyway, and resampling it through an axes was a
    second of CPU per file. Tiles are scaled by an integer factor (nearest) to ~192 px wide."""
    font_path = font_manager.findfont("DejaVu Sans")
    font, small = ImageFont.truetype(font_path, 13), ImageFont.truetype(font_path, 11)
    shown = grids[:MAX_MONTAGE]
    images = [Image.open(p).convert("RGB") for _, p in shown]
    scale = max(1, 192 // max(i.width for i in images))
    images = [i.resize((i.width * scale, i.height * scale), Image.NEAREST) for i in images]
    tile_w, tile_h = max(i.width for i in images), max(i.height for i in images)
    cols = min(len(shown), 6)
    rows = math.ceil(len(shown) / cols)
    cell_w, cell_h, label_h, top = max(tile_w, 200) + 16, tile_h + 48, 40, 36
    more = f" Showing the first {MAX_MONTAGE} of {len(grids)} configurations." if len(grids) > MAX_MONTAGE else ""
    lines = textwrap.wrap(caption + more, max(60, cols * cell_w // 7))
    canvas = Image.new("RGB", (cols * cell_w, top + rows * cell_h + 16 * len(lines) + 12), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((canvas.width // 2, 10), "Last sample grid of each configuration (EMA weights; rows: classes)",
              fill="black", font=font, anchor="mt")
    for i, (img, (label, _)) in enumerate(zip(images, shown)):
        r, c = divmod(i, cols)
        x, y = c * cell_w + (cell_w - img.width) // 2, top + r * cell_h
        draw.multiline_text((c * cell_w + cell_w // 2, y + label_h - 4), textwrap.fill(label, 30), fill="black",
                            font=small, anchor="md", align="center")
        canvas.paste(img, (x, y + label_h))
    for j, line in enumerate(lines):
        draw.text((8, top + rows * cell_h + 4 + 16 * j), line, fill=(64, 64, 64), font=small)
    return canvas


def save_image(image, out: Path, name: str) -> list[Path]:
    """A PIL image as out/name.png and out/name.pdf."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    image.save(paths[0])
    image.save(paths[1], "PDF", resolution=150)
    return paths
