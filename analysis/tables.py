"""The report's tables, as data (Table of Cells) that analysis.render writes as Markdown, LaTeX, CSV
and HTML. Every measured cell is a Summary over seeds (mean +- std, 95% t-interval).

- fid_vs_steps: a row per configuration, a column per evaluation step, best per column in bold
  (the FCDM paper's Table 3, DiT's Table 4);
- fid_vs_gflops: params, GFLOPs, training compute, FID / IS / precision / recall at one step, and the
  measured training throughput;
- ablation: the FCDM paper's Table 6 layout, with the difference to the baseline and Welch's test;
- steps_to_match: training steps and compute at which each configuration reaches its baseline's
  final FID (log-linear interpolation between evaluations), and the speed-up over the baseline;
- runs: every job with its status, so nothing is silently left out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from analysis.aggregate import View
from analysis.collect import MISSING, base_metric, metric_name
from analysis.stats import Summary, first_crossing, summarize, welch

COMPANIONS = ("is", "precision", "recall")


@dataclass
class Cell:
    value: Any = None  # Summary, a number, a string, or None (rendered as a dash)
    bold: bool = False
    fmt: str = "{:.2f}"  # for numbers and a Summary's mean, std and interval
    seeds: int | None = None  # the configuration's seeds: a Summary over fewer shows its n


@dataclass
class Table:
    name: str  # file stem
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    caption: str
    notes: list[str] = field(default_factory=list)  # footnotes under the table


def companion(metric: str, other: str) -> str:
    """The key of `other` measured under `metric`'s protocol ('fid/x' -> 'is/x')."""
    return other + ("/" + metric.split("/", 1)[1] if "/" in metric else "")


def row_label(view: View, config: str) -> str:
    """The configuration, '(baseline)' when it is one, and a dagger when a seed is not FINISHED."""
    label = config + (" (baseline)" if view.baseline_of(config) == config else "")
    return label + (" †" if view.incomplete(config) else "")


def incomplete_notes(view: View, configs: list[str]) -> list[str]:
    notes = [f"† {c}: " + "; ".join(view.incomplete(c)) for c in configs if view.incomplete(c)]
    if notes:
        notes.append("Cells average the seeds that recorded a value at that step (n shown when fewer than "
                     "the configuration's seeds).")
    return notes


def stat_caption(view: View) -> str:
    return (f"Cells: mean ± std over seeds [95% CI, Student's t]; {'higher' if view.higher_better else 'lower'} "
            f"is better.")


def _step_for(view: View, config: str, step: int | None) -> int | None:
    return view.final_step(config) if step is None else step


def _summary_cell(view: View, config: str, step: int | None, metric: str, fmt: str = "{:.2f}") -> Cell:
    if step is None:
        return Cell(None, fmt=fmt)
    vals = view.values(config, step, metric)
    return Cell(summarize(vals) if vals else None, fmt=fmt, seeds=len(view.seeds(config)))


def _bold_best(rows: list[list[Cell]], col: int, higher: bool) -> None:
    cells = [r[col] for r in rows if isinstance(r[col].value, Summary) and not math.isnan(r[col].value.mean)]
    if len(cells) < 2:
        return
    best = (max if higher else min)(c.value.mean for c in cells)
    if all(c.value.mean == best for c in cells):  # all tied: nothing stands out
        return
    for c in cells:
        c.bold = c.value.mean == best


# -- the tables -----------------------------------------------------------------------------------

def fid_vs_steps(view: View, protocol_text: str) -> Table:
    steps = view.steps()
    rows = []
    for c in view.configs:
        curve = view.curve(c)
        rows.append([Cell(row_label(view, c)), Cell(len(view.seeds(c)), fmt="{:d}")]
                    + [Cell(curve.get(s), seeds=len(view.seeds(c))) for s in steps])
    for i in range(len(steps)):
        _bold_best(rows, 2 + i, view.higher_better)
    name = metric_name(view.metric)
    return Table(f"{base_metric(view.metric)}_vs_steps", f"{name} vs training steps",
                 ["configuration", "seeds", *[f"{s:,}" for s in steps]], rows,
                 f"{name} at each evaluation step (columns: training steps). {stat_caption(view)} Best per column "
                 f"in bold. Protocol: {protocol_text}.", incomplete_notes(view, view.configs))


def fid_vs_gflops(view: View, protocol_text: str, step: int | None = None) -> Table:
    rows, notes = [], []
    computes = [_compute(view, c, _step_for(view, c, step)) for c in view.configs]
    unit, scale = flop_unit([x for x in computes if x is not None])
    for c, compute in zip(view.configs, computes):
        s = _step_for(view, c, step)
        params, gflops = view.first(c, "params"), view.first(c, "gflops")
        thr = view.throughputs(c)
        rows.append([Cell(row_label(view, c)), Cell(None if params is None else params / 1e6, fmt="{:.3g}"),
                     Cell(gflops, fmt="{:.3g}"), Cell(s, fmt="{:,d}"),
                     Cell(None if compute is None else compute / scale, fmt="{:.3g}"),
                     _summary_cell(view, c, s, view.metric),
                     *[_summary_cell(view, c, s, companion(view.metric, m), "{:.2f}" if m == "is" else "{:.3f}")
                       for m in COMPANIONS],
                     Cell(summarize(thr) if thr else None, fmt="{:.3g}", seeds=len(view.seeds(c)))])
    _bold_best(rows, 5, view.higher_better)
    for col in range(6, 6 + len(COMPANIONS)):  # IS, precision, recall: higher is better
        _bold_best(rows, col, True)
    at = "its final evaluation" if step is None else f"step {step:,}"
    name = metric_name(view.metric)
    return Table(f"{base_metric(view.metric)}_vs_gflops", f"{name} vs GFLOPs",
                 ["configuration", "params (M)", "GFLOPs", "step", f"train compute ({unit})", name,
                  *[metric_name(m) for m in COMPANIONS], "train steps/s"], rows,
                 f"Each configuration at {at}. GFLOPs: forward pass, batch 1, one multiply-add = one FLOP (DiT's "
                 f"convention); training compute = GFLOPs x 3 x batch x steps. Train steps/s: median of the logged "
                 f"throughput (this machine, under whatever load it had). {stat_caption(view)} Protocol: "
                 f"{protocol_text}.", notes + incomplete_notes(view, view.configs))


def ablation(view: View, protocol_text: str, step: int | None = None) -> Table:
    rows = []
    is_key = companion(view.metric, "is")
    for c in view.configs:
        s = _step_for(view, c, step)
        b = view.baseline_of(c)
        sb = _step_for(view, b, step) if b else None
        cells = [Cell(row_label(view, c)), Cell(view.first(c, "gflops"), fmt="{:.3g}"), Cell(s, fmt="{:,d}"),
                 _summary_cell(view, c, s, view.metric), _summary_cell(view, c, s, is_key)]
        if b is None or b == c or s is None or sb is None:
            cells += [Cell("baseline" if b == c else None)] * 4
        else:
            cmp = welch(view.values(c, s, view.metric), view.values(b, sb, view.metric))
            cmp_is = welch(view.values(c, s, is_key), view.values(b, sb, is_key))
            cells += [Cell(f"{cmp.diff:+.2f}" + (f" [{cmp.ci_low:+.2f}, {cmp.ci_high:+.2f}]" if cmp.tested else "")),
                      Cell(None if not cmp.tested else cmp.p, fmt="{:.3g}"),
                      Cell(verdict(cmp)), Cell(None if math.isnan(cmp_is.diff) else f"{cmp_is.diff:+.2f}")]
        rows.append(cells)
    _bold_best(rows, 3, view.higher_better)
    name = metric_name(view.metric)
    at = "its final evaluation" if step is None else f"step {step:,}"
    return Table(f"{base_metric(view.metric)}_ablation", f"Ablation ({name}, Table 6 layout)",
                 ["configuration", "GFLOPs", "step", name, "IS", f"Δ{name} vs baseline [95% CI]", "p (Welch)",
                  "beyond seed noise?", "ΔIS"], rows,
                 f"Each configuration at {at}, against {view.baseline_note.removeprefix('baseline: ')}. Δ = "
                 f"configuration - baseline; p: Welch's two-sided t-test over seeds (unequal variances); 'yes' when "
                 f"p < 0.05, 'n/a' with one seed on either side. {stat_caption(view)} Protocol: {protocol_text}.",
                 incomplete_notes(view, view.configs))


def verdict(cmp) -> str:
    if not cmp.tested:
        return f"n/a (n={cmp.n_a} vs {cmp.n_b})"
    return "yes" if cmp.significant else "no"


@dataclass
class Match:
    """Where `config` reaches its baseline's final value."""
    config: str
    baseline: str
    target: Summary  # the baseline's final value over seeds
    baseline_step: int
    step: float | None  # on the seed-mean curve; None: not reached
    at_first: bool
    seed_steps: Summary  # over the seeds that reached it
    seeds_reached: int
    seeds: int
    speedup: float | None
    compute: float | None  # training GFLOPs at `step`
    compute_speedup: float | None


def match(view: View, config: str) -> Match | None:
    b = view.baseline_of(config)
    bs = view.final_step(b) if b else None
    if b is None or bs is None:
        return None
    target = summarize(view.values(b, bs))
    curve = view.curve(config)
    steps = sorted(curve)
    hit = first_crossing(steps, [curve[s].mean for s in steps], target.mean, view.higher_better)
    per_seed = [first_crossing(st, vals, target.mean, view.higher_better) for st, vals in view.seed_curves(config).values()]
    reached = [x.step for x in per_seed if x.reached]
    compute = _compute(view, config, hit.step) if hit.reached else None
    b_compute = _compute(view, b, bs)
    return Match(config, b, target, bs, hit.step, hit.at_first, summarize(reached), len(reached), len(per_seed),
                 bs / hit.step if hit.reached else None, compute,
                 b_compute / compute if compute and b_compute else None)


def steps_to_match(view: View, protocol_text: str) -> tuple[Table, list[Match]]:
    matches = [m for m in (match(view, c) for c in view.configs) if m is not None]
    unit, scale = flop_unit([m.compute for m in matches if m.compute])
    rows = []
    for m in matches:
        if m.seeds == 0:  # nothing measured under this protocol: no claim either way
            rows.append([Cell(row_label(view, m.config)), Cell(m.baseline), Cell(m.target),
                         Cell("no evaluations"), *[Cell(None)] * 5])
            continue
        le = "≤ " if m.at_first else ""
        rows.append([Cell(row_label(view, m.config)), Cell(m.baseline), Cell(m.target),
                     Cell(f"{le}{m.step:,.0f}" if m.step is not None else "not reached"),
                     Cell(m.seed_steps if m.seeds_reached else None, fmt="{:,.0f}"),
                     Cell(f"{m.seeds_reached}/{m.seeds}"),
                     Cell(f"{'≥ ' if le else ''}{m.speedup:.2f}x" if m.speedup else "not reached"),
                     Cell(f"{le}{m.compute / scale:.3g}" if m.compute else "not reached"),
                     Cell(f"{'≥ ' if le else ''}{m.compute_speedup:.2f}x" if m.compute_speedup else "not reached")])
    name = metric_name(view.metric)
    return Table(f"{base_metric(view.metric)}_steps_to_match", f"Steps and compute to match the baseline's final {name}",
                 ["configuration", "baseline", f"target {name} (baseline final)", "steps to match",
                  "steps per seed", "seeds reached", "speed-up (steps)", f"compute to match ({unit})",
                  "speed-up (compute)"], rows,
                 f"Training steps at which the seed-mean {name} curve first reaches the baseline's final value "
                 f"(mean over its seeds at its last evaluation), interpolated linearly in log(steps) between the two "
                 f"evaluations that bracket it; '≤' when the first evaluation already reaches it. Steps per seed: each "
                 f"seed's own curve, over the seeds that reach it. Speed-up = baseline's final step (or training "
                 f"compute) / this configuration's. 'not reached': the curve never reaches the target within its "
                 f"evaluations. Protocol: {protocol_text}.", incomplete_notes(view, [m.config for m in matches])), matches


def runs_table(frame) -> Table:
    """Every job of the report, one row per (configuration, seed), with its run's state."""
    jobs: dict[tuple, dict] = {}
    for r in frame[["config", "seed", "status", "last_step", "train_steps", "step", "protocol", "run_name",
                    "hash"]].to_dict("records"):  # plain records: a groupby per job took seconds at 500 runs
        job = jobs.setdefault((r["config"], int(r["seed"])), {**r, "steps": []})
        if r["step"] == r["step"]:  # not NaN
            job["steps"].append(int(r["step"]))
    rows = []
    for (config, seed), x in jobs.items():
        text = lambda v: v if isinstance(v, str) else None  # noqa: E731
        rows.append([Cell(config), Cell(seed, fmt="{:d}"), Cell("not run" if x["status"] == MISSING else x["status"]),
                     Cell(f"{int(x['last_step'] or 0):,}/{int(x['train_steps']):,}"),
                     Cell(", ".join(f"{s:,}" for s in sorted(set(x["steps"]))) or "none"),
                     Cell(text(x["protocol"])), Cell(text(x["run_name"])), Cell(x["hash"])])
    return Table("runs", "Runs", ["configuration", "seed", "status", "last step", "evaluations", "protocol",
                                  "MLflow run", "config hash"], rows,
                 "Every job of the spec: FINISHED, RUNNING (in progress or died without a status), KILLED (stopped; "
                 "rerun to resume), FAILED (diverged or crashed), not run (no MLflow run yet).")


def _compute(view: View, config: str, step: float | None) -> float | None:
    gflops, batch = view.first(config, "gflops"), view.first(config, "batch_size")
    if step is None or gflops is None or batch is None:
        return None
    return float(gflops) * 3 * float(batch) * float(step)


def flop_unit(values: list[float]) -> tuple[str, float]:
    """The largest of GFLOP .. ZFLOP that keeps the smallest value >= 1, and its size in GFLOP."""
    unit, scale = "GFLOP", 1.0
    smallest = min(values) if values else 1.0
    for u, s in (("TFLOP", 1e3), ("PFLOP", 1e6), ("EFLOP", 1e9), ("ZFLOP", 1e12)):
        if smallest >= s:
            unit, scale = u, s
    return unit, scale
