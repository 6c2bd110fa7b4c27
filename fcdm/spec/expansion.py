"""Expanding a spec into jobs: the grid of one profile (axes x zip groups, crossed with the variants; less
exclude, plus include), each point's configuration validated, costed and FLOPs matched, at every seed.

    spec = load_spec("ablations/kernel_size.yaml")             # parse and validate the file (SpecError)
    jobs = expand(spec, "smoke", overrides=["train.steps=50"])  # list[Job]: validated, FLOPs matched

The spec's top-level keys are described in the README ("Ablation specs") and parsed by fcdm.spec.load and
fcdm.spec.sections; `search` is the sweep's (fcdm.spec.search). A job's config is the profile's config
(fcdm.spec.view), then its variant's `set`, then its grid point, then `--set`: the last one wins. Every
error is a SpecError of one line: "<file>: <key path>: <value>: <fix>", naming the key that set the value.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fcdm.config import ConfigError, merge, resolved_model_kwargs, validate_config
from fcdm.spec.errors import SpecError, show
from fcdm.spec.job import (
    TAG_AXES,
    TAG_BASELINE,
    TAG_CONFIG_KEY,
    TAG_JOB,
    TAG_MATCHED_ON,
    TAG_PROFILE,
    TAG_ROLE,
    TAG_SOLVED,
    TAG_SPEC,
    TAG_VARIANT,
    TARGET_TAGS,
    Job,
)
from fcdm.spec.load import Spec, load_spec, resolve_profile
from fcdm.spec.matching import NoFit, cost, solve
from fcdm.spec.pairs import pairs
from fcdm.spec.sections import nest, parse_sets
from fcdm.spec.view import Match, ProfileView, Variant, lookup, matches

# -- the grid ------------------------------------------------------------------------------------------

@dataclass
class _Point:
    variant: Variant | None
    assign: dict[str, Any]  # dotted key -> value: what picked this job
    where: dict[str, str]  # dotted key -> the spec key path that set it (for error messages)


def _grid(view: ProfileView) -> list[_Point]:
    """The profile's points in order: variants x axes x zip groups, less exclude, then include."""
    dims: list[list[tuple[dict, dict]]] = []
    for key, values in view.axes.items():
        dims.append([({key: v}, {key: f"{view.path('axes')}.{key}"}) for v in values])
    for i, group in enumerate(view.zip):
        n = len(next(iter(group.values())))
        dims.append([({k: vs[j] for k, vs in group.items()}, {k: f"{view.path('zip')}[{i}].{k}" for k in group})
                     for j in range(n)])
    points = []
    for variant in view.variants or [None]:
        for combo in itertools.product(*dims):
            assign, where = {}, {}
            for a, w in combo:
                assign.update(a)
                where.update(w)
            points.append(_Point(variant, assign, where))
    kept = _exclude(view, points)
    for i, inc in enumerate(view.include):
        variant = view.variant(inc["variant"]) if "variant" in inc else None
        assign = {k: v for k, v in inc.items() if k != "variant"}
        kept.append(_Point(variant, assign, {k: f"{view.path('include')}[{i}].{k}" for k in assign}))
    return kept


def _exclude(view: ProfileView, points: list[_Point]) -> list[_Point]:
    """The points no exclude entry matches; SpecError for an entry that matches none."""
    used = [0] * len(view.exclude)
    kept = []
    for p in points:
        hits = [i for i, ex in enumerate(view.exclude) if matches(ex, p.variant and p.variant.name, p.assign)]
        for i in hits:
            used[i] += 1
        if not hits:
            kept.append(p)
    for i, n in enumerate(used):
        if n == 0:
            raise SpecError(f"{view.source}: {view.path('exclude')}[{i}]: {show(view.exclude[i])}: matches no job of "
                            "the grid; check its keys and values against axes, zip and variants, or remove it")
    return kept


def label_keys(keys: Sequence[str]) -> dict[str, str]:
    """Axis labels for job names: the last dotted component, or the whole key where two would collide."""
    unique = list(dict.fromkeys(keys))
    last = [k.rsplit(".", 1)[-1] for k in unique]
    return {k: (short if last.count(short) == 1 else k) for k, short in zip(unique, last)}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    return str(v)


def _job_name(spec: str, p: _Point, labels: dict[str, str]) -> str:
    parts = [p.variant.name] if p.variant else []
    parts += [f"{labels[k]}={_fmt(v)}" for k, v in p.assign.items()]
    return f"{spec}/{','.join(parts) or 'base'}"


# -- expansion -----------------------------------------------------------------------------------------

def expand(spec: Spec | str | Path, profile: str | None = None, overrides: Sequence[str] = ()) -> list[Job]:
    """One Job per (variant, grid point, seed), in that order; every config validated and FLOPs matched.

    `overrides` are `--set key=value` strings applied to every job last (they win over the spec).
    Raises SpecError for the first problem, before anything is run or written.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    profile = resolve_profile(spec, profile)
    view = spec.view(profile)
    src = spec.source
    sets, set_where = parse_sets(overrides, src)
    labels = label_keys(view.grid_keys + [k for inc in view.include for k in inc if k != "variant"])
    matcher = _Matcher(view, sets, set_where)
    jobs: list[Job] = []
    seen: dict[tuple[str, int], str] = {}
    names: set[str] = set()
    for p in _grid(view):
        name = _job_name(spec.name, p, labels)
        if name in names:
            raise SpecError(f"{src}: {next(iter(p.where.values()), 'variants')}: {name!r}: two jobs get this name; "
                            "list each value once (include entries must differ from the grid)")
        names.add(name)
        data = merge(view.config, p.variant.overrides if p.variant else {})
        data = merge(merge(data, nest(p.assign, "", check=False)), sets)
        variant = p.variant.name if p.variant else None
        tags = {TAG_SPEC: spec.name, TAG_PROFILE: profile, TAG_VARIANT: variant or "", TAG_JOB: name,
                TAG_AXES: json.dumps(p.assign, separators=(",", ":"), default=str)}
        data = merge(data, {"name": name, "seed": view.seeds[0], "log": {"experiment": spec.name, "tags": tags}})
        cfg = matcher.match(_validate(data, f"{src}: job '{name}'"), data, p, name)
        for seed in view.seeds:
            job_cfg = cfg.model_copy(update={"seed": seed})
            key = (_identity(job_cfg), seed)
            if key in seen:
                raise SpecError(f"{src}: jobs '{seen[key]}' and '{name}' (seed {seed}): the same run: they differ "
                                "only in settings that do not change the trained weights (eval, log) or not at all; "
                                "remove one (e.g. with exclude)")
            seen[key] = name
            jobs.append(Job(spec=spec.name, name=name, config=job_cfg, variant=variant, axes=dict(p.assign),
                            profile=profile))
    if view.baseline is not None and not any(view.is_baseline(j.variant, j.axes) for j in jobs):
        raise SpecError(f"{src}: {view.path('baseline')}: {show(view.baseline)}: matches no job; name a variant "
                        "and/or axis values of one job, e.g. baseline: {model.args.kernel_size: 7}")
    return _with_pairs(view, jobs)


def _with_pairs(view: ProfileView, jobs: list[Job]) -> list[Job]:
    """Each job with its pair (fcdm.spec.pairs) in its config's tags: role, baseline job, what they match on;
    and its configuration key, so its run can be found without its data (RunConfig.config_key)."""
    rows = pairs(view, jobs)
    out = []
    for job in jobs:
        pair = rows[job.name]
        tags = {**job.config.log.tags, TAG_ROLE: pair.role, TAG_BASELINE: pair.baseline or "",
                TAG_MATCHED_ON: pair.matched_on, TAG_CONFIG_KEY: job.config.config_key}
        log = job.config.log.model_copy(update={"tags": tags})
        out.append(dataclasses.replace(job, config=job.config.model_copy(update={"log": log})))
    return out


def _validate(data: dict, source: str):
    """validate_config, its ConfigError as a SpecError (the spec's one kind of error)."""
    try:
        return validate_config(data, source)
    except ConfigError as e:
        raise SpecError(str(e)) from None


def _identity(cfg) -> str:
    """The run's hash, or (latent data not on this machine) what it would cover, with the data's path in
    place of its fingerprint: within one spec, one path is one dataset."""
    h = cfg.try_hash()
    if h is not None:
        return h
    d = cfg.to_dict()
    return json.dumps({"model": [cfg.model.name, resolved_model_kwargs(cfg)], "objective": cfg.objective_settings(),
                       "data": d["data"], "train": d["train"]}, sort_keys=True, default=str)


# -- costs and matching (FLOPs or parameters) -----------------------------------------------------------

class _Matcher:
    """Costs every job (validating its model arguments) and applies match_flops / match_params, computing each
    target once."""

    def __init__(self, view: ProfileView, sets: dict, set_where: dict[str, str]):
        self.view, self.sets, self.set_where = view, sets, set_where
        self.source = view.source
        self.targets: dict[str, float] = {}

    def origin(self, key: str, p: _Point) -> str:
        """The spec key path that set dotted config key `key` for this job (the last layer that did)."""
        if key in self.set_where:
            return self.set_where[key]
        if key in p.where:
            return p.where[key]
        return self.view.origin(key, p.variant)

    def cost(self, cfg, data: dict, p: _Point, name: str, where: str | None = None):
        try:
            return cost(cfg)
        except ValueError as e:
            arg = re.match(r"^(\w+)=", str(e))
            key = f"model.args.{arg.group(1)}" if arg else "model"
            value = lookup(data, key) if arg else cfg.model.name
            where = where or self.origin(key, p)
            raise SpecError(f"{self.source}: {where}: {show(value)} (job '{name}'): {e}") from None

    def target(self, mf: Match, p: _Point, name: str) -> float:
        t = mf.target
        if not isinstance(t, str):
            return float(t)
        variant = self.view.variant(t)
        key = json.dumps([mf.kind, t, p.assign if variant else {}], sort_keys=True, default=str)
        if key not in self.targets:
            data = merge(self.view.config, variant.overrides if variant else {})
            if variant:  # the named variant at this job's grid point
                data = merge(data, nest(p.assign, "", check=False))
            data = merge(data, self.sets)
            cfg = _validate(data, f"{self.source}: {mf.path}.target: {t}")
            c = self.cost(cfg, data, p, name, f"{mf.path}.target")
            self.targets[key] = float(c.params) if mf.kind == "params" else c.gflops
        return self.targets[key]

    def match(self, cfg, data: dict, p: _Point, name: str):
        """cfg costed, with match_flops applied (the solved key re-set and the config re-validated)."""
        mf = self.view.matching(p.variant)
        try:
            self.cost(cfg, data, p, name)
        except SpecError as e:  # an invalid value of the key being solved is fine: it is about to be replaced
            solved = mf and f"{mf.solve.removeprefix('model.args.')}="
            if not solved or f"): {solved}" not in str(e):
                raise
        if not mf:
            return cfg
        target = self.target(mf, p, name)
        try:
            sol = solve(cfg, mf.solve, target, mf.tolerance, mf.kind, mf.then)
        except NoFit as e:
            arg, where = mf.solve.removeprefix("model.args."), mf.path
            then = f" (and {mf.then.removeprefix('model.args.')} after it)" if mf.then else ""
            unit = "parameters" if mf.kind == "params" else "GFLOPs"
            hint = "" if mf.then else f", solve a ratio after it (solve: [{mf.solve}, model.args.mlp_ratio])"
            raise SpecError(f"{self.source}: {where}: job '{name}': no {arg}{then} within {mf.tolerance:.1%} of the "
                            f"target {target:.4g} {unit}; the closest is {arg}={e.value} at {e.amount:.4g} {unit} "
                            f"({e.amount / target - 1:+.1%}): loosen {where}.tolerance{hint} or change the "
                            "target") from None
        except ValueError as e:
            raise SpecError(f"{self.source}: {mf.path}.solve: {mf.solve}: {e}") from None
        # The target travels with the run (an MLflow tag), so plan and report can show what was matched.
        solved = ",".join(f"{k}={v:g}" for k, v in sol.values.items())
        data = merge(data, {"log": {"tags": {TARGET_TAGS[mf.kind]: f"{target:.6g}", TAG_SOLVED: solved}}})
        if not sol.kept:
            data = merge(data, nest({f"model.args.{k}": v for k, v in sol.values.items()}, "", check=False))
        cfg = _validate(data, f"{self.source}: job '{name}' (after {mf.quantity} matching)")
        self.cost(cfg, data, p, name, mf.path)
        return cfg
