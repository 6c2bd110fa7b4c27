"""The figures that answer a comparison (matplotlib, Agg backend; saved by analysis.figures.save):

- pair_figure: one row per pair (a row against its baseline; drawn for up to MAX_PAIRS pairs), the metric
  against training steps, training compute and wall-clock training time, seed-mean lines with 95% Student-t bands (the tables' numbers), each
  seed's curve faint, the target (the baseline's final value) dashed and the match point marked;
- noise_figure: every evaluation of each final checkpoint (the evaluation and its re-samplings with other
  sampling seeds) beside the spread between training seeds;
- heatmap: for a grid of two dimensions (two axes, or variants and one axis), the final value of each cell,
  with its seed count.
Seaborn is not used: every band and interval is the one the tables print (analysis.stats), drawn directly.
"""
from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from analysis.aggregate import View
from analysis.comparison import Result, factor, matched_text
from analysis.figures import caption, plain_ticks, ylabel
from analysis.stats import summarize
from analysis.tables import flop_unit, metric_name

MAX_PAIRS = 8  # rows of one pair figure (the paper's 8 pairs); a grid of more rows vs one baseline gets none
PAIR_DPI = 100  # a tall figure: PNG encoding at 120 dpi was half of its cost
BASE_COLOR, ROW_COLOR, TARGET_COLOR = "0.15", "tab:orange", "tab:red"


def pair_figure(view: View, results: list[Result], protocol_text: str):
    """A row per pair: the metric against steps, training compute and wall time, the match point marked."""
    shown = results[:MAX_PAIRS]
    fig, axes = plt.subplots(len(shown), 3, figsize=(15, 3.2 * len(shown) + 1.2), squeeze=False)
    for row, r in zip(axes, shown):
        for ax, (x_of, xlabel, speedup) in zip(row, _x_scales(view, r)):
            for config, color, dashed in ((r.baseline, BASE_COLOR, True), (r.config, ROW_COLOR, False)):
                _draw(ax, view, config, x_of(config), color, dashed)
            ax.axhline(r.target.mean, color=TARGET_COLOR, linestyle=":", linewidth=1)
            _mark(ax, view, r, x_of, speedup)
            ax.set_xscale("log")
            _ticks(ax, view, r, x_of)
            ax.xaxis.set_minor_locator(NullLocator())  # minor ticks on 24 log axes were most of the drawing time
            ax.set_xlabel(xlabel, fontsize=8)
            ax.grid(True, alpha=0.25)
            ax.tick_params(labelsize=7)
        row[0].set_ylabel(ylabel(view), fontsize=8)
        matched = matched_text(view, r.config)
        row[0].set_title(f"{r.config} vs {r.baseline}" + (f" ({matched})" if matched else ""), loc="left",
                         fontsize=9, fontweight="bold")
        row[0].legend(fontsize=7, frameon=False, loc="upper right")
    more = f" Showing {MAX_PAIRS} of {len(results)} pairs; the tables list all." if len(results) > MAX_PAIRS else ""
    fig.suptitle(f"Each row against its baseline: {metric_name(view.metric)} vs training steps, training compute "
                 "and wall-clock time", fontsize=11, y=0.995)
    text = (f"Lines: mean over seeds; bands: 95% confidence interval of the mean (Student's t); faint lines: each "
            f"seed. Dotted red: the target, the baseline's final value; the star marks where the row's seed-mean "
            f"curve reaches it, the circle where the baseline's own does (its final step, unless it got there "
            f"earlier). Compute = GFLOPs x 3 x batch x steps; time = steps / the run's median measured training "
            f"steps per second (evaluations excluded). Speed-ups: geometric mean over seeds [95% CI].{more} "
            f"Protocol: {protocol_text}.")
    height = fig.get_figheight()  # a fixed layout: tight_layout measured every tick label (seconds per figure)
    fig.subplots_adjust(left=0.05, right=0.99, top=1 - 0.6 / height, bottom=_bottom(fig, text, 180) + 0.45 / height,
                        hspace=0.38, wspace=0.16)
    caption(fig, text, width=180, adjust=False)
    return fig


def _bottom(fig, text: str, width: int) -> float:
    """The fraction of the figure's height its caption (7 pt lines) needs below the axes' labels."""
    return (0.1 + 0.13 * len(textwrap.wrap(text, width))) / fig.get_figheight()


def _ticks(ax, view: View, r: Result, x_of) -> None:
    """Plain numbers on a log axis: a tick at each evaluation when the axis is steps, else at 1-2-5 decades."""
    xb = x_of(r.baseline)
    if xb is not None and xb(10) == 10:  # the steps axis: the evaluation steps themselves
        plain_ticks(ax, [s for c in (r.config, r.baseline) for s in view.curve(c)])
        return
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 10 else f"{x:.3g}"))


def _x_scales(view: View, r: Result):
    """(x of a config: step -> x, axis label, speed-up summary) for steps, compute and time."""
    gf = {c: view.first(c, "gflops") for c in (r.config, r.baseline)}
    batch = {c: view.first(c, "batch_size") for c in (r.config, r.baseline)}
    known = [gf[c] * 3 * batch[c] * s for c in gf if gf[c] and batch[c] for s in view.curve(c)]
    unit, scale = flop_unit(known)
    thr = {c: summarize(view.throughputs(c)).mean for c in (r.config, r.baseline)}

    def steps(c):
        return lambda s: s

    def compute(c):
        return (lambda s: gf[c] * 3 * batch[c] * s / scale) if gf[c] and batch[c] else None

    def seconds(c):
        return (lambda s: s / thr[c]) if thr[c] and not math.isnan(thr[c]) else None

    return [(steps, "training steps (log)", r.speedup_steps),
            (compute, f"training compute ({unit}, log)", r.speedup_compute),
            (seconds, "training time on the machine that trained it (s, log)", r.speedup_time)]


def _draw(ax, view: View, config: str, x, color: str, dashed: bool) -> None:
    curve = view.curve(config)
    if x is None or not curve:
        return
    steps = sorted(curve)
    xs = [x(s) for s in steps]
    mean = [curve[s].mean for s in steps]
    label = config + (" (baseline)" if dashed else "")
    ax.plot(xs, mean, color=color, linestyle="--" if dashed else "-", marker="o", markersize=3, linewidth=1.6,
            label=label)
    lo, hi = np.array([curve[s].ci_low for s in steps]), np.array([curve[s].ci_high for s in steps])
    if np.isfinite(lo).any():
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    for seed_steps, values in view.seed_curves(config).values():
        ax.plot([x(s) for s in seed_steps], values, color=color, linewidth=0.6, alpha=0.3)


def _mark(ax, view: View, r: Result, x_of, speedup) -> None:
    xb, xr = x_of(r.baseline), x_of(r.config)
    if xb is not None:
        ax.plot([xb(r.baseline_reach)], [r.target.mean], "o", markersize=9, markerfacecolor="none",
                markeredgecolor=TARGET_COLOR)
    if xr is not None and r.mean_step is not None:
        ax.plot([xr(r.mean_step)], [r.target.mean], "*", markersize=13, color=TARGET_COLOR)
    text = f"speed-up {factor(speedup, r.at_first)}" if speedup.n else "target not reached"
    ax.text(0.02, 0.04, text, transform=ax.transAxes, fontsize=8, color=TARGET_COLOR,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})


def noise_figure(view: View, rows, protocol_text: str):
    """rows: analysis.noise.noise_rows(view). Per configuration: each final checkpoint's evaluations (dots, one
    column per training seed) and the mean over seeds with its 95% interval."""
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 1.3 * len(rows) + 3)), 5.6))
    for i, r in enumerate(rows):
        seeds = sorted(r.values)
        offsets = np.linspace(-0.28, 0.28, len(seeds)) if len(seeds) > 1 else [0.0]
        for off, seed in zip(offsets, seeds):
            vals = r.values[seed]
            ax.plot([i + off] * len(vals), vals, "o", color="tab:blue", alpha=0.55, markersize=4,
                    label="one checkpoint, each evaluation (sampling seeds)" if i == 0 and seed == seeds[0] else None)
            ax.plot([i + off - 0.06, i + off + 0.06], [np.mean(vals)] * 2, color="tab:blue", linewidth=1.2)
        s = summarize(view.values(r.config, r.step))
        if s.n:
            err = [[s.mean - s.ci_low], [s.ci_high - s.mean]] if s.n > 1 else None
            ax.errorbar([i + 0.42], [s.mean], yerr=err, fmt="D", color="black", capsize=4, markersize=5,
                        label="training seeds: mean, 95% CI" if i == 0 else None)
    crowded = len(rows) > 8  # rotated labels, so that each stays under its column
    ax.set_xticks(range(len(rows)), [f"{r.config}\n(step {r.step:,})" for r in rows], fontsize=7 if crowded else 8,
                  rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel(ylabel(view))
    ax.set_title(f"Evaluation noise vs seed noise: {metric_name(view.metric)} of each final checkpoint")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    text = ("Blue: each training seed's final checkpoint (one column per seed) evaluated several times under the "
            "same protocol with different sampling seeds; its spread is evaluation noise. Black: the mean over "
            "training seeds (each seed's evaluation under the protocol's sampling seed) with its 95% Student-t "
            f"interval: the seed noise. Protocol: {protocol_text}.")
    fig.subplots_adjust(left=0.07, right=0.98, top=0.92, bottom=_bottom(fig, text, 130) + (1.1 if crowded else 0.6)
                        / fig.get_figheight())
    caption(fig, text, width=130, adjust=False)
    return fig


def grid_dimensions(frame: pd.DataFrame) -> list[str]:
    """The frame's grid dimensions with more than one value: 'variant' and `axis.<key>` columns."""
    dims = [c for c in ["variant"] + [c for c in frame.columns if c.startswith("axis.")]
            if c in frame and frame[c].dropna().astype(str).nunique() > 1]
    return dims


def heatmap(view: View, dims: list[str], protocol_text: str, step: int | None = None):
    """The final value (or at `step`) of each cell of a two-dimensional grid, with its seed count."""
    first = view.frame.drop_duplicates("config").set_index("config")
    of = {d: first[d].to_dict() for d in dims}  # plain dicts: each .at copied the frame's attrs (seconds per 1,000)
    labels = [[_text(of[d][c]) for d in dims] for c in view.configs]
    rows_v, cols_v = (list(dict.fromkeys(lab[i] for lab in labels)) for i in (0, 1))
    grid = np.full((len(rows_v), len(cols_v)), np.nan)
    notes = [[""] * len(cols_v) for _ in rows_v]
    for c, (rv, cv) in zip(view.configs, labels):
        s_at = view.final_step(c) if step is None else step
        s = summarize(view.values(c, s_at)) if s_at is not None else None
        i, j = rows_v.index(rv), cols_v.index(cv)
        if s is not None and s.n:
            grid[i, j] = s.mean
            notes[i][j] = f"{s.mean:.2f}" + (f"\n± {s.std:.2f}" if s.n > 1 else "") + f"\nn={s.n}"
        else:
            notes[i][j] = "no value"
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cols_v) + 3), max(3.5, 0.9 * len(rows_v) + 2)))
    cmap = plt.get_cmap("viridis" if view.higher_better else "viridis_r")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(rows_v)):
        for j in range(len(cols_v)):
            dark = np.isfinite(grid[i, j]) and ((grid[i, j] > middle) != view.higher_better)
            ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(cols_v)), cols_v, fontsize=8)
    ax.set_yticks(range(len(rows_v)), rows_v, fontsize=8)
    ax.set_xlabel(_dim_name(dims[1]))
    ax.set_ylabel(_dim_name(dims[0]))
    fig.colorbar(im, ax=ax, label=ylabel(view))
    at = "final evaluation" if step is None else f"step {step:,}"
    ax.set_title(f"{metric_name(view.metric)} at each cell's {at}: mean ± std over seeds, n seeds")
    text = f"Each cell: the mean over its seeds (std and seed count below it). Protocol: {protocol_text}."
    fig.subplots_adjust(left=1.6 / fig.get_figwidth(), right=0.97, top=1 - 0.5 / fig.get_figheight(),
                        bottom=_bottom(fig, text, 110) + 0.55 / fig.get_figheight())
    caption(fig, text, width=110, adjust=False)
    return fig


def _text(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _dim_name(dim: str) -> str:
    return dim.removeprefix("axis.") if dim != "variant" else "variant"
