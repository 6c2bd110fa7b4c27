"""The report's figures (matplotlib, Agg backend; each written as PNG and PDF).

- fid_vs_steps: one curve per configuration, log x, shaded 95% t-interval over seeds;
- fid_vs_gflops: DiT's bubble chart, forward GFLOPs against FID at one step, bubble area ~ params;
- fid_vs_compute: FID against training compute (GFLOPs x 3 x batch x steps), log x;
- samples: each configuration's last sample grid side by side, labelled.
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

from .aggregate import View  # noqa: E402
from .tables import flop_unit, metric_name  # noqa: E402

MAX_MONTAGE = 48  # sample grids in one montage; more would be unreadable (the caption says so)
LEGEND_MAX = 20


def _caption(fig, text: str, width: int = 150) -> None:
    lines = textwrap.wrap(text, width)
    fig.text(0.01, 0.005, "\n".join(lines), ha="left", va="bottom", fontsize=7, color="0.25")
    fig.subplots_adjust(bottom=0.12 + 0.035 * len(lines))


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


def _plain_ticks(ax) -> None:
    """'200', not '2 x 10^2', on log axes that span a decade or two (the usual range of steps)."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:.3g}")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    lo, hi = ax.get_xlim()
    if hi / max(lo, 1e-12) < 20:  # under ~1.3 decades the majors are too few: label 2x and 5x minors too
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda x, _: fmt(x) if f"{x:.0e}"[0] in "25" else ""))


def _style(view: View, config: str, i: int) -> dict:
    if view.baseline_of(config) == config:
        return {"color": "black", "linestyle": "--", "label": f"{config} (baseline)"}
    return {"color": plt.get_cmap("tab10" if len(view.configs) <= 10 else "viridis")(
        i % 10 if len(view.configs) <= 10 else i / max(1, len(view.configs) - 1)), "label": config}


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _ylabel(view: View) -> str:
    return f"{metric_name(view.metric)} ({'higher' if view.higher_better else 'lower'} is better; unitless)"


def _curve_plot(view: View, out: Path, protocol_text: str, name: str, x_of, xlabel: str, what: str) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for i, c in enumerate(view.configs):
        curve = view.curve(c)
        if not curve:
            continue
        steps = sorted(curve)
        xs = [x_of(c, s) for s in steps]
        if any(x is None for x in xs):
            continue
        mean = np.array([curve[s].mean for s in steps])
        style = _style(view, c, i)
        ax.plot(xs, mean, marker="o" if len(view.configs) <= LEGEND_MAX else None, markersize=3, linewidth=1.4,
                **style)
        lo, hi = np.array([curve[s].ci_low for s in steps]), np.array([curve[s].ci_high for s in steps])
        if np.isfinite(lo).any():
            ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    _plain_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_ylabel(view))
    ax.set_title(f"{metric_name(view.metric)} vs {what}")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(view.configs))
    _caption(fig, f"Lines: mean over seeds; shaded: 95% confidence interval of the mean (Student's t). "
                  f"Protocol: {protocol_text}.")
    return _save(fig, out, name)


def fid_vs_steps(view: View, out: Path, protocol_text: str) -> list[Path]:
    return _curve_plot(view, out, protocol_text, f"{view.metric.split('/')[0]}_vs_steps", lambda c, s: s,
                       "training steps (log scale)", "training steps")


def fid_vs_compute(view: View, out: Path, protocol_text: str) -> list[Path]:
    gf = {c: view.first(c, "gflops") for c in view.configs}
    batch = {c: view.first(c, "batch_size") for c in view.configs}
    known = [gf[c] * 3 * batch[c] * s for c in view.configs if gf[c] and batch[c] for s in view.curve(c)]
    unit, scale = flop_unit(known)
    x_of = lambda c, s: gf[c] * 3 * batch[c] * s / scale if gf[c] and batch[c] else None  # noqa: E731
    return _curve_plot(view, out, protocol_text, f"{view.metric.split('/')[0]}_vs_compute", x_of,
                       f"training compute ({unit}, = GFLOPs x 3 x batch x steps; log scale)", "training compute")


def fid_vs_gflops(view: View, out: Path, protocol_text: str, step: int | None = None) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    params = [view.first(c, "params") or 0 for c in view.configs]
    biggest = max(params + [1])
    for i, c in enumerate(view.configs):
        s = view.final_step(c) if step is None else step
        vals = view.values(c, s) if s is not None else []
        gflops = view.first(c, "gflops")
        if not vals or not gflops:
            continue
        from .stats import summarize

        summ = summarize(vals)
        style = _style(view, c, i)
        size = 60 + 1400 * (params[i] / biggest)
        ax.scatter([gflops], [summ.mean], s=size, alpha=0.55, color=style["color"], edgecolors="black",
                   linewidths=0.6, label=f"{style['label']} ({params[i] / 1e6:.3g} M params)")
        if summ.n > 1:
            ax.errorbar([gflops], [summ.mean], yerr=[[summ.mean - summ.ci_low], [summ.ci_high - summ.mean]],
                        color="black", capsize=3, linewidth=0.8)
        if len(view.configs) <= 20:
            ax.annotate(c, (gflops, summ.mean), fontsize=7, xytext=(6, 6), textcoords="offset points")
    ax.set_xscale("log")
    _plain_ticks(ax)
    ax.set_xlabel("forward GFLOPs per image (batch 1, multiply-add = 1 FLOP; log scale)")
    ax.set_ylabel(_ylabel(view))
    at = "final evaluation" if step is None else f"step {step:,}"
    ax.set_title(f"{metric_name(view.metric)} vs GFLOPs at {at}")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(view.configs))
    _caption(fig, f"Bubble area proportional to parameters; error bars: 95% confidence interval over seeds "
                  f"(Student's t). Protocol: {protocol_text}.")
    return _save(fig, out, f"{view.metric.split('/')[0]}_vs_gflops")


def montage(grids: list[tuple[str, Path]], out: Path, caption: str) -> list[Path]:
    """grids: (label, PNG path) per configuration, side by side (6 per row), MAX_MONTAGE at most.

    The tiles are pasted into one image drawn on one axes: an axes per grid made a 48-grid montage
    cost seconds of layout."""
    from PIL import Image

    shown = grids[:MAX_MONTAGE]
    images = [Image.open(p).convert("RGB") for _, p in shown]
    tile_w, tile_h = max(i.width for i in images), max(i.height for i in images)
    pad, label_h = max(4, tile_w // 16), max(14, tile_h // 6)
    cols = min(len(shown), 6)
    rows = math.ceil(len(shown) / cols)
    cell_w, cell_h = tile_w + pad, tile_h + pad + label_h
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas.paste(img, (c * cell_w + pad // 2, r * cell_h + label_h))
    width = 2.3 * cols  # inches: a tile is ~2.3 in wide whatever its pixels
    fig, ax = plt.subplots(figsize=(max(4.0, width), width * canvas.height / canvas.width + 0.9))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    for i, (label, _) in enumerate(shown):
        r, c = divmod(i, cols)
        ax.text(c * cell_w + cell_w / 2, r * cell_h + label_h - 2, textwrap.fill(label, 30), ha="center",
                va="bottom", fontsize=6.5)
    more = f" Showing the first {MAX_MONTAGE} of {len(grids)} configurations." if len(grids) > MAX_MONTAGE else ""
    ax.set_title("Last sample grid of each configuration (EMA weights; rows: classes)", fontsize=9)
    _caption(fig, caption + more, width=max(60, 22 * cols))
    return _save(fig, out, "samples")
