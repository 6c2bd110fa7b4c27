"""From the tidy frame to per-configuration curves over seeds: protocols, baselines, summaries.

    view = View.build(frame, "fid")            # the main protocol of `fid`
    view.configs                               # row labels in expansion order
    view.curve("k=3")                          # {step: Summary over seeds}
    view.baseline_of("k=3")                    # the baseline row it is compared with (None: not compared)
    view.matched_on("k=3"), view.target_text("k=3")   # 'FLOPs', 'FLOPs +1.1%'
    view.noise("k=3")                          # {seed: [FID of each re-sampling of its final checkpoint]}

One View holds ONE protocol: a metric's bare key under the run's `eval.protocol` tag, or a suffixed
key (`fid/ddpm-250-...`) under its suffix with the run's extractor and reference. Seeds of one configuration
evaluated under one protocol pool into one cell. Which row each row is compared with comes from the spec's
pairs (fcdm.spec.pairs, in the frame's attrs) unless a baseline is asked for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.collect import MISSING, higher_is_better, metric_name, noise_keys
from analysis.stats import Summary, summarize
from fcdm.errors import UserError

EVAL_DESCRIBE = ("eval.num_samples", "eval.reference", "eval.extractor", "eval.sampler", "eval.sampling_steps",
                 "eval.cfg_scale", "eval.guided_channels", "eval.precision", "eval.seed")


def protocol_keys(frame: pd.DataFrame, metric: str) -> pd.Series:
    """Per row, the protocol `metric`'s value was measured under ('' where the run has none recorded)."""
    ref = frame.get("eval.reference", pd.Series("", index=frame.index)).fillna("")
    ext = frame.get("eval.extractor", pd.Series("", index=frame.index)).fillna("")
    if "/" in metric:
        return metric.split("/", 1)[1] + " vs " + ref.astype(str) + ", " + ext.astype(str)
    group = frame["protocol_group"] if "protocol_group" in frame else frame["protocol"]
    return group.fillna("").astype(str)


def protocols(frame: pd.DataFrame, metric: str) -> list[str]:
    """Protocols under which `metric` has values, the most used first (ties: first seen)."""
    if metric not in frame:
        return []
    keys = protocol_keys(frame, metric)[frame[metric].notna()]
    counts = keys.value_counts(sort=False)
    order = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return sorted(counts.index, key=lambda k: (-counts[k], order[k]))


def describe_protocol(rows: pd.DataFrame, metric: str) -> str:
    """One line a reader can check: samples, reference, features, sampler, guidance, precision."""
    if rows.empty:
        return "no evaluations recorded"
    first = rows.iloc[0]
    get = lambda k: first.get(k) if isinstance(first.get(k), str) else None  # noqa: E731
    if "/" in metric:
        return f"{metric_name(metric.split('/')[0])} logged as `{metric}` (post-hoc protocol) vs {get('eval.reference')}, " \
               f"{get('eval.extractor')} features"
    parts = [f"{metric_name(metric)} of {get('eval.num_samples') or '?'} samples vs {get('eval.reference') or '?'}",
             f"{get('eval.extractor') or '?'} features"]
    if get("eval.sampler"):
        parts.append(f"{get('eval.sampler')} sampler, {get('eval.sampling_steps')} steps, cfg {get('eval.cfg_scale')}"
                     + (f" on {get('eval.guided_channels')} channels" if get("eval.guided_channels") else ""))
    seeds = sorted({str(s) for s in rows.get("eval.seed", pd.Series(dtype=object)).dropna()}, key=_natural)
    if get("eval.precision"):
        parts.append(f"{get('eval.precision')}, sampling seed " + (
            seeds[0] if len(seeds) == 1 else f"each run's own ({', '.join(seeds)})"))
    digests = list(dict.fromkeys(d for d in rows.get("protocol", pd.Series(dtype=object)).dropna()))
    if len(digests) > 1:
        more = f"{len(digests) - 1} more digest" + ("s that differ" if len(digests) > 2 else " that differs")
        return "; ".join(parts) + f" [protocol `{digests[0]}`, and {more} only in the sampling seed]"
    return "; ".join(parts) + (f" [protocol `{digests[0]}`]" if digests else "")


def _natural(text: str):
    return (0, int(text)) if text.isdigit() else (1, text)


class ReportError(UserError, ValueError):
    """The report cannot be made as asked (unknown metric or baseline, a step never evaluated, ...)."""


@dataclass
class View:
    """One metric under one protocol, over every configuration of the frame (rows kept even if empty).

    Built once from the frame into plain dicts: the tables and figures ask for every configuration's
    curve many times, and per-call pandas filtering of a 500-run frame took tens of seconds.
    """
    frame: pd.DataFrame  # the whole frame (status columns), metric NaN outside this protocol
    metric: str
    protocol: str
    configs: list[str]
    baselines: dict[str, str | None] = field(default_factory=dict)
    baseline_note: str = ""
    pairs: dict[str, dict] = field(default_factory=dict)  # config -> the spec's pair (collect.pair_attrs)
    noise_keys: list[str] = field(default_factory=list)  # this metric's re-sampling keys (fid.eval_seed1, ...)
    # config -> metric key -> step -> [(seed, value)], only where `metric` itself has a value
    _values: dict = field(default_factory=dict, repr=False)
    _first: dict = field(default_factory=dict, repr=False)  # config -> column -> first non-null value
    _jobs: dict = field(default_factory=dict, repr=False)  # config -> seed -> (status, last step, steps, throughput)
    _curves: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, frame: pd.DataFrame, metric: str, protocol: str | None = None,
              baseline: Any = None) -> View:
        """`protocol` None: the metric's most used protocol. `baseline`: see choose_baselines."""
        found = protocols(frame, metric)
        protocol = protocol if protocol is not None else (found[0] if found else "")
        f = frame.copy()
        if metric in f:
            f.loc[protocol_keys(f, metric) != protocol, metric] = np.nan
        else:
            f[metric] = np.nan
        configs = list(dict.fromkeys(f["config"]))
        view = cls(f, metric, protocol, configs, pairs=dict(frame.attrs.get("pairs") or {}),
                   noise_keys=noise_keys(frame.attrs.get("noise", []), metric))
        view._index(f)
        paired = baseline is None and any(p["role"] == "compared" for p in view.pairs.values())
        view.baselines, view.baseline_note = (paired_baselines(f, configs, view.pairs) if paired else
                                              choose_baselines(f, configs, baseline))
        if not paired:
            view.pairs = {}  # a baseline asked for replaces the spec's pairs
        return view

    def _index(self, f: pd.DataFrame) -> None:
        keys = [k for k in f.attrs.get("metrics", []) if k in f] + ([self.metric] if self.metric not in
                                                                      f.attrs.get("metrics", []) else [])
        keys += [k for k in self.noise_keys if k in f]
        first_cols = ("params", "gflops", "batch_size", "model", *(["peak_memory_mb"] if "peak_memory_mb" in f else []))
        for r in f[["config", "seed", "step", "status", "last_step", "train_steps", "throughput", *first_cols,
                    *keys]].to_dict("records"):
            c, seed = r["config"], int(r["seed"])
            first = self._first.setdefault(c, {})
            for col in first_cols:
                if first.get(col) is None and not _null(r[col]):
                    first[col] = r[col]
            self._jobs.setdefault(c, {}).setdefault(seed, (r["status"], int(r["last_step"] or 0),
                                                          int(r["train_steps"]), r["throughput"]))
            if _null(r[self.metric]):
                continue
            for k in keys:
                if not _null(r[k]):
                    self._values.setdefault(c, {}).setdefault(k, {}).setdefault(int(r["step"]), []).append(
                        (seed, float(r[k])))

    @property
    def higher_better(self) -> bool:
        return higher_is_better(self.metric)

    def rows(self, config: str) -> pd.DataFrame:
        return self.frame[self.frame["config"] == config]

    def measured(self) -> bool:
        """Whether any configuration has a value of this metric under this protocol."""
        return any(self.metric in v for v in self._values.values())

    def steps(self) -> list[int]:
        """Every evaluation step with a value of this metric, ascending."""
        return sorted({s for v in self._values.values() for s in v.get(self.metric, {})})

    def values(self, config: str, step: int | None, metric: str | None = None) -> list[float]:
        """One value per seed of `config` at `step` (seeds without one are left out); a companion metric
        (IS beside FID) counts only where the main one has a value, i.e. under the same protocol."""
        return [v for _, v in self._values.get(config, {}).get(metric or self.metric, {}).get(step, [])]

    def curve(self, config: str) -> dict[int, Summary]:
        if config not in self._curves:
            by_step = self._values.get(config, {}).get(self.metric, {})
            self._curves[config] = {s: summarize([v for _, v in by_step[s]]) for s in sorted(by_step)}
        return self._curves[config]

    def seed_curves(self, config: str) -> dict[int, tuple[list[int], list[float]]]:
        """{seed: (steps, values)} of `config`."""
        out: dict[int, tuple[list[int], list[float]]] = {}
        for step, pairs in sorted(self._values.get(config, {}).get(self.metric, {}).items()):
            for seed, v in pairs:
                out.setdefault(seed, ([], []))
                out[seed][0].append(step)
                out[seed][1].append(v)
        return dict(sorted(out.items()))

    def final_step(self, config: str | None) -> int | None:
        """The config's last evaluation step with a value."""
        c = self.curve(config) if config else {}
        return max(c) if c else None

    def first(self, config: str, column: str):
        """A per-configuration value (params, gflops, batch_size, model) from its first row that has one."""
        return self._first.get(config, {}).get(column)

    def throughputs(self, config: str) -> list[float]:
        """Median logged train steps/s of each seed's run."""
        return [j[3] for j in self._jobs.get(config, {}).values() if not _null(j[3])]

    def throughput(self, config: str, seed: int) -> float | None:
        """Median logged train steps/s of one seed's run (None: not logged)."""
        job = self._jobs.get(config, {}).get(seed)
        return None if job is None or _null(job[3]) or job[3] <= 0 else float(job[3])

    def baseline_of(self, config: str) -> str | None:
        return self.baselines.get(config)

    @property
    def baselines_single(self) -> bool:
        """Every compared row has the same baseline (a table need not name it per row)."""
        return len({b for c, b in self.baselines.items() if b is not None and b != c}) <= 1

    def compared(self, config: str) -> bool:
        """Whether `config` is compared with a baseline (not a baseline, a reference row or unpaired)."""
        b = self.baseline_of(config)
        return b is not None and b != config

    def is_reference(self, config: str) -> bool:
        """A labelled reference row (`reference: true`): shown, never bolded or tested."""
        return self.pairs.get(config, {}).get("role") == "reference"

    def matched_on(self, config: str) -> str:
        """What `config` and its baseline are matched on: 'FLOPs', 'parameters', 'size' or ''."""
        return self.pairs.get(config, {}).get("matched_on", "")

    def deviation(self, config: str) -> float | None:
        """The row's measured GFLOPs (or parameters) relative to the target it was re-solved to, minus 1."""
        pair = self.pairs.get(config, {})
        column = {"FLOPs": "gflops", "parameters": "params"}.get(pair.get("target_kind") or "")
        have = self.first(config, column) if column else None
        return None if have is None or not pair.get("target") else float(have) / pair["target"] - 1

    def target_text(self, config: str) -> str:
        """What the row was matched to and how close it landed: 'FLOPs +1.1%', 'parameters -0.4%', else '–'."""
        dev = self.deviation(config)
        return "–" if dev is None else f"{self.pairs[config]['target_kind']} {dev:+.1%}"

    def noise(self, config: str, step: int | None = None) -> dict[int, list[float]]:
        """{seed: [the metric, then each re-sampling of the same checkpoint]} at `step` (None: the final
        evaluation), for the seeds whose checkpoint was re-sampled."""
        step = self.final_step(config) if step is None else step
        main = dict(self._values.get(config, {}).get(self.metric, {}).get(step, []))
        out: dict[int, list[float]] = {}
        for key in self.noise_keys:
            for seed, v in self._values.get(config, {}).get(key, {}).get(step, []):
                out.setdefault(seed, [main[seed]] if seed in main else []).append(v)
        return dict(sorted(out.items()))

    def seeds(self, config: str) -> list[int]:
        return sorted(self._jobs.get(config, {}))

    def statuses(self, config: str) -> dict[int, tuple[str, int, int]]:
        """{seed: (status, last step, train steps)} of `config`'s jobs."""
        return {s: j[:3] for s, j in sorted(self._jobs.get(config, {}).items())}

    def incomplete(self, config: str) -> list[str]:
        """'seed 1 FAILED at step 150/400' for every job of `config` that is not FINISHED."""
        out = []
        for seed, (status, last, total) in self.statuses(config).items():
            if status == MISSING:
                out.append(f"seed {seed} not run")
            elif status != "FINISHED":
                out.append(f"seed {seed} {status} at step {last}/{total}")
        return out


def _null(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def paired_baselines(frame: pd.DataFrame, configs: list[str], pairs: dict[str, dict]) -> tuple[dict[str, str | None], str]:
    """The spec's pairs (fcdm.spec.pairs): a compared row -> its baseline, a baseline -> itself, a reference or
    unpaired row -> None; and a sentence saying so, naming the profile's baseline where there is one."""
    out = {}
    for c in configs:
        p = pairs.get(c, {})
        out[c] = p.get("baseline") if p.get("role") == "compared" else c if p.get("role") == "baseline" else None
    bases = list(dict.fromkeys(b for c, b in out.items() if b is not None and b != c))
    given = frame.attrs.get("baseline_given") or {}
    if len(bases) == 1:
        named = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in given.items()) or bases[0]
        how = f"baseline: {named}" + (" (the spec's `baseline`)" if given else " (the row the spec pairs them with)")
    else:
        how = (f"baselines: each row against the row the spec pairs it with ({len(bases)} baselines: "
               f"{', '.join(bases)})")
    return out, how


def choose_baselines(frame: pd.DataFrame, configs: list[str], baseline: Any) -> tuple[dict[str, str | None], str]:
    """Each configuration's baseline row, and a sentence saying how it was chosen.

    baseline: a config label or a list of them; a mapping {dotted axis key: value} (and optionally
    "variant": name), as a spec's `baseline:` key is written; or None: the rows the frame's attrs name
    (`baseline`, set by collect_spec from the spec). A mapping may match several rows (e.g. k=7 at each width):
    each row is then compared with the matching row that agrees with it on the most other axes. None:
    rows whose axis values are their defaults (`axis_defaults` in the frame's attrs: the base config's
    values), preferring no variant or one named baseline/default; else the first row.
    """
    if not configs:
        return {}, "no configurations"
    first = frame.drop_duplicates("config").set_index("config")
    axes_of, variant_of = first["axes"].to_dict(), first["variant"].to_dict()  # dicts: .at per row was slow
    axes = {c: dict(axes_of[c]) if isinstance(axes_of[c], dict) else {} for c in configs}
    variant = {c: None if _null(variant_of[c]) else variant_of[c] for c in configs}
    if baseline is None and frame.attrs.get("baseline"):  # the spec's `baseline:` rows, from collect_spec
        baseline = list(frame.attrs["baseline"])
        given = frame.attrs.get("baseline_given") or {}
        how = "baseline: " + (", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in given.items()) or
                              ", ".join(baseline)) + " (the spec's `baseline`)"
        matches = [c for c in configs if c in baseline]
        if matches:
            return {c: _closest(c, matches, axes) for c in configs}, how
    if isinstance(baseline, str):
        baseline = [baseline]
    if isinstance(baseline, list):
        unknown = [b for b in baseline if b not in configs]
        if unknown or not baseline:
            raise ReportError(f"baseline {unknown[0] if unknown else baseline!r} is not a configuration of this "
                             f"report; configurations: {', '.join(configs)}")
        return {c: _closest(c, baseline, axes) for c in configs}, f"baseline: {', '.join(baseline)} (as requested)"
    if isinstance(baseline, dict) and baseline:
        want = {k: v for k, v in baseline.items() if k != "variant"}
        matches = [c for c in configs if all(_same(axes[c].get(k), v) for k, v in want.items())
                   and ("variant" not in baseline or variant[c] == baseline["variant"])]
        if not matches:
            raise ReportError(f"baseline {baseline} matches no configuration; configurations: {', '.join(configs)}")
        how = "baseline: " + ", ".join(f"{k}={v}" for k, v in baseline.items()) + " (as requested)"
    else:
        defaults = frame.attrs.get("axis_defaults") or {}
        plain = [c for c in configs if variant[c] in (None, "", "baseline", "default")] or configs
        matches = [c for c in plain if all(_same(axes[c].get(k), v) for k, v in defaults.items() if k in axes[c])]
        if defaults and matches:
            how = ("baseline: the base configuration's values (" + ", ".join(
                f"{k.rsplit('.', 1)[-1]}={v}" for k, v in defaults.items()) + "); set `baseline:` in the spec to choose")
        else:
            matches = plain[:1]
            how = f"baseline: {matches[0]} (the first row; set `baseline:` in the spec to choose another)"
    return {c: _closest(c, matches, axes) for c in configs}, how


def _closest(config: str, candidates: list[str], axes: dict[str, dict]) -> str:
    if config in candidates:
        return config
    agree = lambda b: sum(_same(axes[config].get(k), v) for k, v in axes[b].items())  # noqa: E731
    return max(candidates, key=lambda b: (agree(b), -candidates.index(b)))


def _same(a, b) -> bool:
    try:
        return a == b or float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
