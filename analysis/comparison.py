"""Each row against its baseline: the difference of final values over seeds (Welch, Holm-adjusted over the
rows of one baseline), and the steps, training compute and wall time each row needs to reach the baseline's
final value, with speed-ups and their intervals over seeds; and the verdict line per pair of the summary.

    results = compare(view)                  # one Result per compared row, in the view's order
    verdict(view, results[0])                # '**fcdm@flops** vs **dit** (matched on FLOPs, +1.1%): ...'

To match: the baseline's final value (mean over its seeds at its last evaluation) is the target. Each seed
of the row reaches it at the step where its own curve first crosses it (linear in log(step) between the two
evaluations that bracket it; an upper bound when the first evaluation already has). The baseline itself
reaches it where its seed-mean curve first does: its final step when the curve falls to the end, earlier
when it had already got there and then plateaued or rose (a speed-up against the final step would then
credit the row with the baseline's wasted steps). Speed-ups per seed: steps = the baseline's steps / the
seed's; compute = the same in training FLOPs (GFLOPs x 3 x batch x steps); time = the baseline's seconds
(its steps / each baseline seed's measured steps per second, averaged) / the seed's (its steps / its run's
measured steps per second, on the machine that trained it).
Each speed-up is summarised over the seeds that reached the target on the log scale, as ratios are: the
geometric mean and the Student-t interval of the mean log speed-up (analysis.stats.summarize_ratios).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.aggregate import View
from analysis.collect import metric_name
from analysis.stats import Comparison, Summary, first_crossing, holm, summarize, summarize_ratios, welch


@dataclass
class Result:
    """One compared row against its baseline."""
    config: str
    baseline: str
    step: int  # the row's step compared (its final evaluation, or the one asked for)
    baseline_step: int  # the baseline's final evaluation step
    baseline_reach: float  # where the baseline's seed-mean curve first reaches its own final value (<= final step)
    diff: Comparison  # row - baseline at those steps, Welch over seeds
    p_holm: float  # diff.p adjusted (Holm) over the rows compared with this baseline
    family: int  # how many tested rows share the baseline (Holm's family)
    target: Summary  # the baseline's final value over its seeds
    mean_step: float | None  # where the seed-mean curve reaches the target (None: never)
    at_first: bool  # some curve (mean or a seed's) reached it at its first evaluation: the steps are upper bounds
    seeds: int  # the row's seeds with a curve
    steps: Summary  # steps to match, over the seeds that reached it
    speedup_steps: Summary  # ratios: geometric mean and interval (summarize_ratios)
    compute: Summary  # training GFLOPs to match
    speedup_compute: Summary
    seconds: Summary  # wall seconds to match (steps / measured steps per second)
    speedup_time: Summary

    @property
    def reached(self) -> int:
        return self.steps.n

    @property
    def beyond_noise(self) -> bool:
        """The difference is larger than the seed noise after Holm's adjustment (p < 0.05)."""
        return not math.isnan(self.p_holm) and self.p_holm < 0.05


def compare(view: View, step: int | None = None) -> list[Result]:
    """A Result per row compared with a baseline that has a value, in the view's order; Holm per baseline."""
    out = [r for r in (_one(view, c, step) for c in view.configs if view.compared(c)) if r is not None]
    for base in dict.fromkeys(r.baseline for r in out):
        family = [r for r in out if r.baseline == base]
        for r, p in zip(family, holm([r.diff.p for r in family])):
            r.p_holm, r.family = p, sum(x.diff.tested for x in family)
    return out


def _one(view: View, config: str, step: int | None) -> Result | None:
    b = view.baseline_of(config)
    bs = view.final_step(b)
    s = view.final_step(config) if step is None else step
    if bs is None or s is None:
        return None
    cmp = welch(view.values(config, s), view.values(b, bs if step is None else step))
    target = summarize(view.values(b, bs))
    b_curve = view.curve(b)
    own = first_crossing(sorted(b_curve), [b_curve[x].mean for x in sorted(b_curve)], target.mean, view.higher_better)
    reach = own.step if own.reached else float(bs)
    curve = view.curve(config)
    mean_hit = first_crossing(sorted(curve), [curve[x].mean for x in sorted(curve)], target.mean, view.higher_better)
    hits = {seed: first_crossing(st, vals, target.mean, view.higher_better)
            for seed, (st, vals) in view.seed_curves(config).items()}
    reached = {seed: h.step for seed, h in hits.items() if h.reached}
    scale = _flops_per_step(view, config)
    b_scale = _flops_per_step(view, b)
    b_seconds = summarize([reach / t for t in view.throughputs(b) if t > 0])
    seconds = {seed: st / view.throughput(config, seed) for seed, st in reached.items()
               if view.throughput(config, seed)}
    return Result(
        config, b, s, bs, reach, cmp, math.nan, 0, target, mean_hit.step, mean_hit.at_first or any(
            h.at_first for h in hits.values()), len(hits), summarize(list(reached.values())),
        summarize_ratios([reach / x for x in reached.values()]),
        summarize([scale * x for x in reached.values()] if scale else []),
        summarize_ratios([b_scale * reach / (scale * x) for x in reached.values()] if scale and b_scale else []),
        summarize(list(seconds.values())),
        summarize_ratios([b_seconds.mean / x for x in seconds.values()] if b_seconds.n else []))


def _flops_per_step(view: View, config: str) -> float | None:
    """Training GFLOPs per step: GFLOPs x 3 x batch (None when the run did not record its cost)."""
    gflops, batch = view.first(config, "gflops"), view.first(config, "batch_size")
    return None if gflops is None or batch is None else float(gflops) * 3 * float(batch)


# -- words ------------------------------------------------------------------------------------------

def factor(s: Summary, bound: bool = False) -> str:
    """'2.31x [1.85, 2.77]' (one seed: '2.31x'); bound: the steps are upper bounds, so the factor is a lower one."""
    if s.n == 0:
        return "–"
    text = f"{'≥ ' if bound else ''}{s.mean:.2f}x"
    return text + (f" [{s.ci_low:.2f}, {s.ci_high:.2f}]" if s.n > 1 else "")


def p_text(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def matched_text(view: View, config: str) -> str:
    """'matched on FLOPs, +1.1% of its target', 'matched on size', 'not matched', or '' (no spec to say)."""
    on, dev = view.matched_on(config), view.deviation(config)
    if not view.pairs:
        return ""
    if not on:
        return "not matched"
    return f"matched on {on}" + (f", {dev:+.1%} of its target" if dev is not None else "")


def verdict(view: View, r: Result, noise: str = "") -> str:
    """The summary's line for one pair: what it is matched on, the final values and their test, and the steps,
    compute and time to reach the baseline's final value (`noise`: the evaluation-noise clause, if measured)."""
    name = metric_name(view.metric)
    d = r.diff
    better = (d.diff > 0) == view.higher_better
    mine = summarize(view.values(r.config, r.step))
    matched = matched_text(view, r.config)
    head = (f"**{r.config}** vs **{r.baseline}**{f' ({matched})' if matched else ''}: {name} {_ms(mine)} at step "
            f"{r.step:,} vs {_ms(r.target)} at step {r.baseline_step:,} ({_seeds(d.n_a)} vs {d.n_b})")
    if math.isnan(d.diff):
        test = "; nothing to compare yet"
    elif d.tested:
        test = (f"; {abs(d.diff):.2f} {'better' if better else 'worse'} [95% CI of the difference {d.ci_low:+.2f}, "
                f"{d.ci_high:+.2f}], Welch p = {p_text(d.p)}, Holm-adjusted p = {p_text(r.p_holm)} over {r.family} "
                f"row{'s' if r.family != 1 else ''} vs {r.baseline}: "
                + ("**beyond seed noise**" if r.beyond_noise else "within seed noise"))
    else:
        test = f"; {abs(d.diff):.2f} {'better' if better else 'worse'}, not tested ({d.why}): no claim"
    if r.seeds == 0:
        reach = ""
    elif r.reached == 0:
        best = _best(view, r.config)
        reach = f". Does not reach {r.baseline}'s final {name} ({r.target.mean:.2f})" + (
            f"; best {best[1]:.2f} at step {best[0]:,}" if best else "")
    else:
        reach = (f". Reaches {r.baseline}'s final {name} ({r.target.mean:.2f}) at step {_ms(r.steps, '{:,.0f}')} "
                 f"({r.reached} of {r.seeds} seeds; {r.baseline} itself at step {r.baseline_reach:,.0f}): speed-up "
                 f"in steps {factor(r.speedup_steps, r.at_first)}, in "
                 f"training compute {factor(r.speedup_compute, r.at_first)}, in wall time "
                 f"{factor(r.speedup_time, r.at_first)}")
        if r.at_first:
            reach += " (already at the first evaluation: lower bounds)"
    tail = " [incomplete runs: see the Runs table]" if view.incomplete(r.config) or view.incomplete(r.baseline) else ""
    return head + test + reach + (f"; {noise}" if noise else "") + tail + "."


def _ms(s: Summary, fmt: str = "{:.2f}") -> str:
    if s.n == 0:
        return "–"
    return fmt.format(s.mean) + (f" ± {fmt.format(s.std)}" if s.n > 1 else "")


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _best(view: View, config: str) -> tuple[int, float] | None:
    curve = view.curve(config)
    if not curve:
        return None
    step = (max if view.higher_better else min)(curve, key=lambda s: curve[s].mean)
    return step, curve[step].mean
