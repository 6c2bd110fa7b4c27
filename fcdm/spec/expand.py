"""Ablation specs: a base run config, profiles, axes, zip groups, variants and seeds, expanded into jobs.

    spec = load_spec("ablations/kernel_size.yaml")             # parse and validate the file (SpecError)
    jobs = expand(spec, "smoke", overrides=["train.steps=50"])  # list[Job]: validated, FLOPs matched

Top-level keys (README, "Ablation specs"): name, description, base (a run config mapping, or a path
relative to the spec), profiles (name -> partial overrides of base; a profile may also replace base,
seeds, axes, zip, variants, exclude, include, match_flops, baseline), default_profile, axes (dotted key
-> values; the grid is their product), zip (groups of equal-length lists that move together), variants
(named override sets, crossed with the grid), seeds, exclude / include (partial assignments),
match_flops, baseline (the row the report compares against), search (parsed by fcdm.search_space for
`sweep`) and launcher. Override mappings take dotted keys (`train.lr: 1.0e-4`) or nested sections;
both merge into the base. Every error is a SpecError of one line: "<file>: <key path>: <value>: <fix>".
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fcdm.spec.errors import SpecError
from fcdm.spec.job import Job
from fcdm.spec.load import Spec, load_spec, resolve_profile
from fcdm.spec.sections import _MISSING, effective, label_keys, matches, merge, nest, parse_sets, show

# -- expansion ---------------------------------------------------------------------------------------

@dataclass
class _Point:
    variant: dict | None
    assign: dict[str, Any]  # dotted key -> value: what picked this job
    where: dict[str, str]  # dotted key -> the spec key path that set it (for error messages)


def _grid(eff: dict) -> list[_Point]:
    axes, groups, pre = eff["axes"], eff["zip"], eff["pre"]
    dims: list[list[tuple[dict, dict]]] = []
    for key, values in axes.items():
        dims.append([({key: v}, {key: f"{pre['axes']}axes.{key}"}) for v in values])
    for i, group in enumerate(groups):
        n = len(next(iter(group.values())))
        dims.append([({k: vs[j] for k, vs in group.items()}, {k: f"{pre['zip']}zip[{i}].{k}" for k in group})
                     for j in range(n)])
    points = []
    for variant in eff["variants"] or [None]:
        for combo in itertools.product(*dims):
            assign, where = {}, {}
            for a, w in combo:
                assign.update(a)
                where.update(w)
            points.append(_Point(variant, assign, where))
    used = [0] * len(eff["exclude"])
    kept = []
    for p in points:
        hits = [i for i, ex in enumerate(eff["exclude"]) if matches(ex, p.variant and p.variant["name"], p.assign)]
        for i in hits:
            used[i] += 1
        if not hits:
            kept.append(p)
    for i, n in enumerate(used):
        if n == 0:
            where = f"{eff['pre']['exclude']}exclude[{i}]"
            raise SpecError(f"{eff['source']}: {where}: {show(eff['exclude'][i])}: matches no job of the grid; check "
                            "its keys and values against axes, zip and variants, or remove it")
    for i, inc in enumerate(eff["include"]):
        variant = next(v for v in eff["variants"] if v["name"] == inc["variant"]) if "variant" in inc else None
        assign = {k: v for k, v in inc.items() if k != "variant"}
        kept.append(_Point(variant, assign, {k: f"{pre['include']}include[{i}].{k}" for k in assign}))
    return kept


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
    parts = [p.variant["name"]] if p.variant else []
    parts += [f"{labels[k]}={_fmt(v)}" for k, v in p.assign.items()]
    return f"{spec}/{','.join(parts) or 'base'}"


def expand(spec: Spec | str | Path, profile: str | None = None, overrides: Sequence[str] = ()) -> list[Job]:
    """One Job per (variant, grid point, seed), in that order; every config validated and FLOPs matched.

    `overrides` are `--set key=value` strings applied to every job last (they win over the spec).
    Raises SpecError for the first problem, before anything is run or written.
    """
    from fcdm.config import ConfigError, validate_config

    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    profile = resolve_profile(spec, profile)
    eff = effective(spec, profile)
    src = spec.source
    sets, set_where = parse_sets(overrides, src)
    labels = label_keys([k for p in eff["points_keys"] for k in p])
    points = _grid(eff)
    matcher = _Matcher(spec, eff, sets, set_where)
    jobs: list[Job] = []
    seen: dict[tuple[str, int], str] = {}
    names: set[str] = set()
    for p in points:
        name = _job_name(spec.name, p, labels)
        if name in names:
            raise SpecError(f"{src}: {next(iter(p.where.values()), 'variants')}: {name!r}: two jobs get this name; "
                            "list each value once (include entries must differ from the grid)")
        names.add(name)
        data = merge(eff["config"], p.variant["set"] if p.variant else {})
        data = merge(merge(data, nest(p.assign, "", check=False)), sets)
        tags = {"fcdm.spec": spec.name, "fcdm.profile": profile, "fcdm.variant": p.variant["name"] if p.variant else "",
                "fcdm.job": name, "fcdm.axes": json.dumps(p.assign, separators=(",", ":"), default=str)}
        data = merge(data, {"name": name, "seed": eff["seeds"][0],
                            "log": {"experiment": spec.name, "tags": tags}})
        try:
            cfg = validate_config(data, f"{src}: job '{name}'")
        except ConfigError as e:
            raise SpecError(str(e)) from None
        cfg = matcher.match(cfg, data, p, name)
        for seed in eff["seeds"]:
            job_cfg = cfg.model_copy(update={"seed": seed})
            key = (_identity(job_cfg), seed)
            if key in seen:
                raise SpecError(f"{src}: jobs '{seen[key]}' and '{name}' (seed {seed}): the same run: they differ "
                                "only in settings that do not change the trained weights (eval, log) or not at all; "
                                "remove one (e.g. with exclude)")
            seen[key] = name
            jobs.append(Job(spec=spec.name, name=name, config=job_cfg, variant=p.variant["name"] if p.variant else None,
                            axes=dict(p.assign), profile=profile))
    if eff["baseline"] is not None and not any(matches(eff["baseline"], j.variant, j.axes) for j in jobs):
        raise SpecError(f"{src}: {eff['pre']['baseline']}baseline: {show(eff['baseline'])}: matches no job; name a "
                        "variant and/or axis values of one job, e.g. baseline: {model.args.kernel_size: 7}")
    return jobs


def _identity(cfg) -> str:
    """The run's hash, or (latent data not on this machine) what it would cover, with the data's path in
    place of its fingerprint: within one spec, one path is one dataset."""
    h = cfg.try_hash()
    if h is not None:
        return h
    from fcdm.config.identity import resolved_model_kwargs

    d = cfg.to_dict()
    return json.dumps({"model": [cfg.model.name, resolved_model_kwargs(cfg)], "objective": cfg.objective_settings(),
                       "data": d["data"], "train": d["train"]}, sort_keys=True, default=str)


class _Matcher:
    """Costs every job (validating its model arguments) and applies match_flops, computing each target once."""

    def __init__(self, spec: Spec, eff: dict, sets: dict, set_where: dict[str, str]):
        self.spec, self.eff, self.sets, self.set_where = spec, eff, sets, set_where
        self.targets: dict[str, float] = {}

    def origin(self, key: str, p: _Point) -> str:
        """The spec key path that set dotted config key `key` for this job (the last layer that did)."""
        if key in self.set_where:
            return self.set_where[key]
        if key in p.where:
            return p.where[key]
        if p.variant and _has(p.variant["set"], key):
            return f"{self.eff['pre']['variants']}variants[{p.variant['name']}].set.{key}"
        if _has(self.eff["profile_config"], key):
            return f"profiles.{self.eff['profile_name']}.{key}"
        return f"base.{key}"

    def cost(self, cfg, data: dict, p: _Point, name: str, where: str | None = None):
        from fcdm.spec.matching import cost

        try:
            return cost(cfg)
        except ValueError as e:
            arg = re.match(r"^(\w+)=", str(e))
            key = f"model.args.{arg.group(1)}" if arg else "model"
            value = _lookup(data, key) if arg else cfg.model.name
            where = where or self.origin(key, p)
            raise SpecError(f"{self.spec.source}: {where}: {show(value)} (job '{name}'): {e}") from None

    def target(self, mf: dict, p: _Point, name: str, where: str) -> float:
        from fcdm.config import ConfigError, validate_config

        t = mf["target"]
        if not isinstance(t, str):
            return float(t)
        variant = next((v for v in self.eff["variants"] if v["name"] == t), None)
        key = json.dumps([t, p.assign if variant else {}], sort_keys=True, default=str)
        if key not in self.targets:
            data = merge(self.eff["config"], variant["set"] if variant else {})
            if variant:  # the named variant at this job's grid point
                data = merge(data, nest(p.assign, "", check=False))
            data = merge(data, self.sets)
            try:
                cfg = validate_config(data, f"{self.spec.source}: {where}.target: {t}")
            except ConfigError as e:
                raise SpecError(str(e)) from None
            self.targets[key] = self.cost(cfg, data, p, name, f"{where}.target").gflops
        return self.targets[key]

    def match(self, cfg, data: dict, p: _Point, name: str):
        """cfg costed, with match_flops applied (the solved key re-set and the config re-validated)."""
        from fcdm.config import ConfigError, validate_config
        from fcdm.spec.matching import NoFit, solve

        v = p.variant
        own = bool(v) and "match_flops" in v
        mf = v["match_flops"] if own else self.eff["match_flops"]
        try:
            self.cost(cfg, data, p, name)
        except SpecError as e:  # an invalid value of the key being solved is fine: it is about to be replaced
            solved = mf and f"{mf['solve'].removeprefix('model.args.')}="
            if not solved or f"): {solved}" not in str(e):
                raise
        if not mf:
            return cfg
        pre = self.eff["pre"]["variants" if own else "match_flops"]
        where = f"{pre}variants[{v['name']}].match_flops" if own else f"{pre}match_flops"
        target = self.target(mf, p, name, where)
        try:
            sol = solve(cfg, mf["solve"], target, mf["tolerance"])
        except NoFit as e:
            arg = mf["solve"].removeprefix("model.args.")
            raise SpecError(f"{self.spec.source}: {where}: job '{name}': no {arg} within {mf['tolerance']:.1%} of the "
                            f"target {target:.4g} GFLOPs; the closest is {arg}={e.value} at {e.gflops:.4g} GFLOPs "
                            f"({e.gflops / target - 1:+.1%}): loosen {where}.tolerance or change the target") from None
        except ValueError as e:
            raise SpecError(f"{self.spec.source}: {where}.solve: {mf['solve']}: {e}") from None
        # The target travels with the run (an MLflow tag), so plan and report can show what was matched.
        data = merge(data, {"log": {"tags": {"fcdm.flops_target": f"{target:.6g}"}}})
        if not sol.kept:
            data = merge(data, nest({mf["solve"]: sol.value}, "", check=False))
        try:
            cfg = validate_config(data, f"{self.spec.source}: job '{name}' (after FLOPs matching)")
        except ConfigError as e:
            raise SpecError(str(e)) from None
        self.cost(cfg, data, p, name, where)
        return cfg


def _has(tree: dict, key: str) -> bool:
    return _lookup(tree, key) is not _MISSING


def _lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree
