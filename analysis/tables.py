"""The report's tables, as data (Table of Cells) that analysis.render writes as Markdown, LaTeX, CSV
and HTML. Every measured cell is a Summary over seeds (mean +- std, 95% t-interval).

- fid_vs_steps: a row per configuration, a column per evaluation step, best per column in bold
  (the FCDM paper's Table 3, DiT's Table 4);
- fid_vs_gflops: params, GFLOPs, training compute, FID / IS / precision / recall at one step, and the
  measured training throughput;
- ablation: the FCDM paper's Table 6 layout, with the difference to the baseline, Welch's test and its
  p-value adjusted (Holm) over the rows compared with one baseline;
- steps_to_match: training steps, compute and wall seconds at which each configuration reaches its
  baseline's final FID (analysis.comparison), with the speed-ups and their intervals over seeds;
- runs: every job with its status, so nothing is silently left out.
Every table says what each row is matched on and how far it landed from its target (column "matched
(vs target)"); a reference row (`reference: true`) is labelled, never bolded or tested.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from analysis.aggregate import View
from analysis.collect import MISSING, base_metric, metric_name
from analysis.comparison import factor
from analysis.stats import Summary, summarize

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
    """The configuration, '(baseline)' or '(reference)' when it is one, and a dagger when a seed is not FINISHED."""
    label = config + (" (baseline)" if view.baseline_of(config) == config else
                      " (reference)" if view.is_reference(config) else "")
    return label + (" †" if view.incomplete(config) else "")


def matched_cell(view: View, config: str) -> Cell:
    """What the row is matched on and how close it landed to its target: 'FLOPs +1.1%', 'size', '–'."""
    dev, on = view.target_text(config), view.matched_on(config)
    if dev != "–":
        return Cell(dev)
    return Cell(on or "–")


MATCHED = "matched (vs target)"


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
    """Bold the best mean of column `col`; reference rows (labelled '(reference)') take no part."""
    cells = [r[col] for r in rows if isinstance(r[col].value, Summary) and not math.isnan(r[col].value.mean)
             and "(reference)" not in str(r[0].value)]
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
        rows.append([Cell(row_label(view, c)), matched_cell(view, c), Cell(len(view.seeds(c)), fmt="{:d}")]
                    + [Cell(curve.get(s), seeds=len(view.seeds(c))) for s in steps])
    for i in range(len(steps)):
        _bold_best(rows, 3 + i, view.higher_better)
    name = metric_name(view.metric)
    return Table(f"{base_metric(view.metric)}_vs_steps", f"{name} vs training steps",
                 ["configuration", MATCHED, "seeds", *[f"{s:,}" for s in steps]], rows,
                 f"{name} at each evaluation step (columns: training steps). {stat_caption(view)} Best per column "
                 f"in bold. Protocol: {protocol_text}.", incomplete_notes(view, view.configs))


def fid_vs_gflops(view: View, protocol_text: str, step: int | None = None) -> Table:
    rows, notes = [], []
    computes = [_compute(view, c, _step_for(view, c, step)) for c in view.configs]
    unit, scale = flop_unit([x for x in computes if x is not None])
    for c, compute in zip(view.configs, computes):
        s = _step_for(view, c, step)
        params, gflops = view.first(c, "params"), view.first(c, "gflops")
        thr, batch = view.throughputs(c), view.first(c, "batch_size")
        rows.append([Cell(row_label(view, c)), matched_cell(view, c),
                     Cell(None if params is None else params / 1e6, fmt="{:.3g}"),
                     Cell(gflops, fmt="{:.3g}"), Cell(s, fmt="{:,d}"),
                     Cell(None if compute is None else compute / scale, fmt="{:.3g}"),
                     _summary_cell(view, c, s, view.metric),
                     *[_summary_cell(view, c, s, companion(view.metric, m), "{:.2f}" if m == "is" else "{:.3f}")
                       for m in COMPANIONS],
                     Cell(summarize(thr) if thr else None, fmt="{:.3g}", seeds=len(view.seeds(c))),
                     Cell(summarize([t * batch for t in thr]) if thr and batch else None, fmt="{:.3g}"),
                     Cell(view.first(c, "peak_memory_mb"), fmt="{:,.0f}")])
    _bold_best(rows, 6, view.higher_better)
    for col in range(7, 7 + len(COMPANIONS)):  # IS, precision, recall: higher is better
        _bold_best(rows, col, True)
    at = "its final evaluation" if step is None else f"step {step:,}"
    name = metric_name(view.metric)
    return Table(f"{base_metric(view.metric)}_vs_gflops", f"{name} vs GFLOPs",
                 ["configuration", MATCHED, "params (M)", "GFLOPs", "step", f"train compute ({unit})", name,
                  *[metric_name(m) for m in COMPANIONS], "train steps/s", "train img/s", "peak memory (MiB)"], rows,
                 f"Each configuration at {at}. GFLOPs: forward pass, batch 1, one multiply-add = one FLOP (DiT's "
                 f"convention); training compute = GFLOPs x 3 x batch x steps. Train steps/s: median of the logged "
                 f"throughput (this machine, under whatever load it had), img/s = steps/s x batch; peak memory: the "
                 f"trainer's (allocated on a GPU, resident on the CPU). {stat_caption(view)} Protocol: "
                 f"{protocol_text}.", notes + incomplete_notes(view, view.configs))


def ablation(view: View, protocol_text: str, results: list, step: int | None = None) -> Table:
    """results: analysis.comparison.compare(view, step), for the Holm-adjusted p-values."""
    rows = []
    is_key = companion(view.metric, "is")
    by_config = {r.config: r for r in results}
    for c in view.configs:
        s = _step_for(view, c, step)
        cells = [Cell(row_label(view, c)), matched_cell(view, c), Cell(view.first(c, "gflops"), fmt="{:.3g}"),
                 Cell(s, fmt="{:,d}"), _summary_cell(view, c, s, view.metric), _summary_cell(view, c, s, is_key)]
        r = by_config.get(c)
        if r is None:
            role = ("baseline" if view.baseline_of(c) == c else "reference: not compared" if view.is_reference(c)
                    else "no baseline" if not view.compared(c) else None)
            cells += [Cell(role)] + [Cell(None)] * 4
        else:
            cmp = r.diff
            b_is = view.values(r.baseline, r.baseline_step if step is None else step, is_key)
            d_is = summarize(view.values(c, s, is_key)).mean - summarize(b_is).mean if b_is else math.nan
            cells += [Cell(f"{cmp.diff:+.2f}" + (f" [{cmp.ci_low:+.2f}, {cmp.ci_high:+.2f}]" if cmp.tested else "")
                           + ("" if view.baselines_single else f" vs {r.baseline}")),
                      Cell(None if not cmp.tested else cmp.p, fmt="{:.3g}"),
                      Cell(None if math.isnan(r.p_holm) else r.p_holm, fmt="{:.3g}"),
                      Cell(verdict_cell(r)), Cell(None if math.isnan(d_is) else f"{d_is:+.2f}")]
        rows.append(cells)
    _bold_best(rows, 4, view.higher_better)
    name = metric_name(view.metric)
    at = "its final evaluation" if step is None else f"step {step:,}"
    return Table(f"{base_metric(view.metric)}_ablation", f"Ablation ({name}, Table 6 layout)",
                 ["configuration", MATCHED, "GFLOPs", "step", name, "IS", f"Δ{name} vs baseline [95% CI]",
                  "p (Welch)", "p (Holm)", "beyond seed noise?", "ΔIS"], rows,
                 f"Each configuration at {at}, against {view.baseline_note.removeprefix('baseline: ')}. Δ = "
                 f"configuration - baseline; p (Welch): Welch's two-sided t-test over seeds (unequal variances); "
                 f"p (Holm): adjusted with Holm's step-down method across the rows compared with the same baseline "
                 f"(family-wise error 5%); 'yes' when p (Holm) < 0.05, 'n/a' with one seed on either side or no "
                 f"spread on both. {stat_caption(view)} Protocol: {protocol_text}.",
                 incomplete_notes(view, view.configs))


def verdict_cell(r) -> str:
    if not r.diff.tested:
        return f"n/a ({r.diff.why})"
    return "yes" if r.beyond_noise else "no"


def steps_to_match(view: View, protocol_text: str, results: list) -> Table:
    """results: analysis.comparison.compare(view)."""
    unit, scale = flop_unit([r.compute.mean for r in results if r.compute.n])
    rows = []
    for r in results:
        label = [Cell(row_label(view, r.config)), Cell(r.baseline), matched_cell(view, r.config), Cell(r.target),
                 Cell(r.baseline_reach, fmt="{:,.0f}")]
        if r.seeds == 0:  # nothing measured under this protocol: no claim either way
            rows.append(label + [Cell("no evaluations")] + [Cell(None)] * 7)
            continue
        le = "≤ " if r.at_first else ""
        none = "not reached"
        rows.append(label + [
            Cell(f"{le}{r.mean_step:,.0f}" if r.mean_step is not None else none),
            Cell(mean_std(r.steps, "{:,.0f}") if r.reached else None), Cell(f"{r.reached}/{r.seeds}"),
            Cell(factor(r.speedup_steps, r.at_first) if r.reached else none),
            Cell(mean_std(scaled(r.compute, 1 / scale), "{:.3g}") if r.compute.n else None),
            Cell(factor(r.speedup_compute, r.at_first) if r.compute.n else none),
            Cell(mean_std(r.seconds, "{:.3g}") if r.seconds.n else None),
            Cell(factor(r.speedup_time, r.at_first) if r.speedup_time.n else none)])
    name = metric_name(view.metric)
    return Table(f"{base_metric(view.metric)}_steps_to_match",
                 f"Steps, compute and time to match the baseline's final {name}",
                 ["configuration", "baseline", MATCHED, f"target {name} (baseline final)", "baseline's steps",
                  "steps (mean curve)", "steps per seed", "seeds reached", "speed-up: steps [95% CI]",
                  f"compute to match ({unit})", "speed-up: compute", "seconds to match", "speed-up: wall time"], rows,
                 f"Target: the baseline's final {name} (mean over its seeds at its last evaluation). Baseline's "
                 f"steps: where the baseline's own seed-mean curve first reaches it (its final step unless it got "
                 f"there earlier and then plateaued or rose). Steps (mean curve): where this configuration's "
                 f"seed-mean curve first reaches it, interpolated linearly in log(steps) between the two evaluations "
                 f"that bracket it; '≤' when the first evaluation already reaches it (then each speed-up is a lower "
                 f"bound, '≥'). Per seed (mean ± std): each seed's own curve, over the seeds that reach it. "
                 f"Speed-ups = the baseline's (steps, training compute, measured seconds) / this configuration's, "
                 f"per seed; geometric mean over seeds [95% t-interval of the mean log speed-up]. Seconds = steps to match / the run's median "
                 f"logged training steps per second on the machine that trained it (evaluations excluded; machine "
                 f"load included): steps, compute and seconds can disagree, so all three are shown. 'not reached': "
                 f"never within its evaluations. Protocol: {protocol_text}.",
                 incomplete_notes(view, [r.config for r in results]))


def mean_std(s: Summary, fmt: str) -> str:
    """'109 ± 21' (one seed: '109'): a per-seed quantity beside its speed-up, whose interval is the one shown."""
    return fmt.format(s.mean) + (f" ± {fmt.format(s.std)}" if s.n > 1 else "")


def scaled(s: Summary, k: float) -> Summary:
    """A Summary of the values times k (k > 0): GFLOP to the table's unit."""
    return Summary(s.mean * k, s.std * k, s.n, s.ci_low * k, s.ci_high * k)


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
