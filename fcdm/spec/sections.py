"""Parsing and checking the sections of a spec (fcdm.spec): override mappings, axes, zip groups,
variants, seeds, exclude/include, match_flops, baseline, profiles, launcher. Every problem is a
one-line SpecError "<file>: <key path>: <value>: <what is allowed / the fix>".
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic, Sequence, TypeVar

from pydantic import BaseModel

from fcdm.config import RunConfig, merge
from fcdm.config.strict_yaml import load_yaml_file, parse_yaml
from fcdm.errors import did_you_mean
from fcdm.spec.errors import SpecError, show, unknown_key

V, M = TypeVar("V"), TypeVar("M")


@dataclass(frozen=True, eq=False, kw_only=True)
class Scope(Generic[V, M]):
    """The sections that define a grid: the spec's (Spec, each as written: V and M are mappings) or one
    profile's, where it replaces them (ProfileView, typed: Variant and MatchFlops)."""
    axes: dict[str, list]  # dotted key -> values; the grid is their product
    zip: list[dict[str, list]]  # groups of equal-length lists that move together
    variants: list[V]  # named override sets, crossed with the grid
    seeds: list[int]
    exclude: list[dict]  # partial assignments (config keys, and 'variant'): points left out
    include: list[dict]  # partial assignments: points added
    match_flops: M | None
    match_params: M | None  # as match_flops, solved on the parameter count
    baseline: dict | None  # a partial assignment: the row the report compares against


# The grid keys (a profile may replace each), the spec-level keys a profile may replace, and the sections
# whose entries name keys of the grid.
SCOPE_KEYS = tuple(f.name for f in fields(Scope))
PROFILE_KEYS = ("base", "seeds", "axes", "zip", "variants", "exclude", "include", "match_flops", "match_params",
                "baseline")
ASSIGNMENT_KEYS = ("exclude", "include", "baseline")
_VARIANT_KEYS = ("name", "set", "description", "reference", "baseline", "match_flops", "match_params")
MATCH_KINDS = ("match_flops", "match_params")  # what a job's width is re-solved on: GFLOPs, or parameters
SECOND_KNOBS = ("mlp_ratio",)  # float arguments a match may solve after the width, to land closer
_MATCH_KEYS = ("target", "solve", "tolerance")
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+/-]*")  # fullmatch ("k\n" must fail); no ',' '=' or spaces: job names join them
# The keys of fcdm.launchers.LAUNCHERS (a test checks they agree): the spec cannot import the launchers, as
# analysis imports the spec and must never reach the code that starts trainers (pyproject.toml's contracts).
LAUNCHER_NAMES = ("local", "accelerate", "slurm")
# The Slurm options a spec's launcher.slurm may set, and their types (the launcher takes these and more).
_SLURM = {"partition": str, "time": (str, int), "gpus_per_node": int, "cpus_per_task": int, "mem_gb": int,
          "nodes": int, "account": str, "qos": str, "constraint": str, "additional_parameters": dict}


# -- run-config keys and override mappings -------------------------------------------------------------

def check_key(key: Any, src: str, where: str, also: Sequence[str] = ()) -> None:
    """A dotted run-config key such as 'train.lr' or 'model.args.kernel_size'."""
    label = f"{src}: {where}: {show(key)}" if where else src  # where '': src already names the key
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise SpecError(f"{label}: not a dotted config key; write e.g. train.lr or "
                        "model.args.kernel_size")
    parts = key.split(".")
    if parts[0] in ("name", "seed"):
        raise SpecError(f"{label}: set by the spec itself (jobs are named after their axis values and "
                        "seeded from 'seeds'); remove it, or list seeds under seeds")
    model: type[BaseModel] = RunConfig
    for i, part in enumerate(parts):
        fields = [f for f in model.model_fields if model is not RunConfig or f not in ("name", "seed")]
        if part not in fields:
            prefix = ".".join(parts[:i])
            options = fields + list(also) if i == 0 else fields
            hint = did_you_mean(part, options, "".join(p + "." for p in parts[:i]))
            return_msg = f"allowed keys{' in ' + prefix if prefix else ''}: {', '.join(options)}"
            raise SpecError(f"{label}: unknown config key; {hint}{return_msg}")
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        rest = parts[i + 1:]
        free_form = (model.__name__, part) in (("ModelConfig", "args"), ("LogConfig", "tags"))
        if rest and not (free_form and len(rest) == 1):
            head, fix = ".".join(parts[: i + 1]), ".".join(parts[: i + 1 + free_form])
            raise SpecError(f"{label}: '{head}' holds a value, not a section; use {fix}")
        return


def nest(mapping: dict, where: str, src: str = "<spec>", check: bool = True, also: Sequence[str] = ()) -> dict:
    """Top-level dotted keys to nested sections ({'train.lr': 1} -> {'train': {'lr': 1}})."""
    out: dict = {}
    for key, value in mapping.items():
        if check:
            check_key(key, src, f"{where}{key}" if not where.endswith(": ") else key, also)
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"{src}: {where}{key}: {show(value)}: '{part}' is set twice (as a value and as a "
                                "section); keep one")
        leaf = parts[-1]
        if leaf in node and not (isinstance(node[leaf], dict) and isinstance(value, dict)):
            raise SpecError(f"{src}: {where}{key}: {show(value)}: set twice (as a dotted key and inside a mapping); "
                            "keep one")
        node[leaf] = merge(node[leaf], value) if leaf in node else value
    return out


def parse_overrides(raw: Any, src: str, where: str, also: Sequence[str] = ()) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{src}: {where}: {show(raw)}: must be a mapping of config keys to values, e.g. "
                        "{model.args.grn: false}")
    return nest(raw, f"{where}." if where else "", src, also=also)


def parse_base(raw: Any, spec_path: Path, where: str) -> dict:
    """`base`: a run-config mapping, or a path (relative to the spec) to a run-config file."""
    src = str(spec_path)
    if isinstance(raw, str):
        path = (spec_path.parent / raw) if not Path(raw).is_absolute() else Path(raw)
        if not path.is_file():
            raise SpecError(f"{src}: {where}: {raw}: no such run config file (paths are relative to the spec's "
                            f"folder, {spec_path.parent}/); fix the path or give the config inline")
        data = load_yaml_file(path, "run config")
        data.pop("name", None), data.pop("seed", None)  # a config file's own name and seed: the spec sets both
        return nest(data, f"{where}({raw}).", src)
    if not isinstance(raw, dict):
        raise SpecError(f"{src}: {where}: {show(raw)}: must be a run config mapping (model, objective, data, train, "
                        "eval, log) or a path to a run config file such as configs/smoke.yaml")
    return nest(raw, f"{where}.", src)


def parse_sets(overrides: Sequence[str], src: str) -> tuple[dict, dict[str, str]]:
    """`--set key=value` strings -> (nested overrides, dotted key -> '--set key')."""
    flat, where = {}, {}
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected key.path=value, e.g. --set train.steps=100")
        key, text = (s.strip() for s in item.split("=", 1))
        check_key(key, f"--set {item}", "")
        flat[key] = parse_yaml(text, f"--set {key}") if text else None
        where[key] = f"--set {key}"
    return nest(flat, "--set ", src, check=False), where


# -- the grid: axes, zip, variants, seeds, assignments ---------------------------------------------------

def _values(raw: Any, src: str, where: str) -> list:
    if not isinstance(raw, list):
        raise SpecError(f"{src}: {where}: {show(raw)}: must be a list of values, e.g. [3, 5, 7]")
    if not raw:
        raise SpecError(f"{src}: {where}: []: an axis needs at least one value; list the values to try")
    seen = set()
    for v in raw:
        text = json.dumps(v, sort_keys=True, default=str)
        if text in seen:
            raise SpecError(f"{src}: {where}: {show(raw)}: lists {show(v)} twice; list each value once")
        seen.add(text)
    return raw


def parse_axes(raw: Any, src: str, where: str) -> dict[str, list]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{src}: {where}: {show(raw)}: must map dotted config keys to lists of values, e.g. "
                        "axes: {model.args.kernel_size: [3, 5, 7]}")
    for key, values in raw.items():
        check_key(key, src, f"{where}.{key}")
        _values(values, src, f"{where}.{key}")
    return dict(raw)


def parse_zip(raw: Any, src: str, where: str) -> list[dict[str, list]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(f"{src}: {where}: {show(raw)}: must be a list of groups, each mapping keys to equal-length "
                        "lists, e.g. zip: [{model.name: [FCDM-S, DiT-S/2], train.lr: [1.0e-3, 1.0e-4]}]")
    groups = []
    for i, group in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(group, dict) or not group:
            raise SpecError(f"{src}: {w}: {show(group)}: a zip group maps config keys to equal-length lists")
        lengths = {}
        for key, values in group.items():
            check_key(key, src, f"{w}.{key}")
            lengths[key] = len(_values(values, src, f"{w}.{key}"))
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise SpecError(f"{src}: {w}: {sizes}: the lists of one zip group move together and need equal lengths")
        groups.append(dict(group))
    return groups


def parse_match(raw: Any, src: str, where: str) -> dict | None:
    """match_flops / match_params: {target, solve (a list of one or two model.args keys), tolerance}."""
    if raw is None:
        return None
    kind = where.rsplit(".", 1)[-1]
    unit = "parameters" if kind == "match_params" else "GFLOPs"
    if not isinstance(raw, dict):
        raise SpecError(f"{src}: {where}: {show(raw)}: must be a mapping, e.g. {kind}: {{target: base}}")
    for key in raw:
        if key not in _MATCH_KEYS:
            raise unknown_key(src, f"{where}.", key, _MATCH_KEYS)
    target = raw.get("target", "base")
    ok_number = isinstance(target, (int, float)) and not isinstance(target, bool) and 0 < target < float("inf")
    if not (ok_number or (isinstance(target, str) and target)):
        raise SpecError(f"{src}: {where}.target: {show(target)}: allowed values: base (the profile's base config), "
                        f"a positive number of {unit}, or a variant's name")
    solve = raw.get("solve", "model.args.hidden_size")
    keys = solve if isinstance(solve, list) else [solve]
    if not keys or len(keys) > 2 or not all(isinstance(k, str) and k.startswith("model.args.") and k.count(".") == 2
                                            for k in keys):
        raise SpecError(f"{src}: {where}.solve: {show(solve)}: must be one model constructor argument, e.g. "
                        "model.args.hidden_size, or a list of two: the width first, then a float ratio, e.g. "
                        "[model.args.hidden_size, model.args.mlp_ratio]")
    if len(keys) == 2 and (keys[1].removeprefix("model.args.") not in SECOND_KNOBS or keys[0] == keys[1]):
        raise SpecError(f"{src}: {where}.solve[1]: {keys[1]}: the second argument solved is a float ratio that "
                        f"fine-tunes what the first leaves; allowed values: "
                        f"{', '.join('model.args.' + k for k in SECOND_KNOBS)}")
    tol = raw.get("tolerance", 0.02)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise SpecError(f"{src}: {where}.tolerance: {show(tol)}: must be a fraction between 0 and 1, e.g. 0.02 (2%)")
    return {"target": target, "solve": keys[0] if len(keys) == 1 else list(keys), "tolerance": float(tol)}


def _one_match(raw: dict, src: str, where: str) -> dict:
    """match_flops and match_params of one scope (spec, profile or variant): at most one of them."""
    out = {k: parse_match(raw[k], src, f"{where}{k}") for k in MATCH_KINDS if k in raw}
    if all(out.get(k) is not None for k in MATCH_KINDS):
        raise SpecError(f"{src}: {where}match_params: {show(raw['match_params'])}: match_flops is set here too; a "
                        "row is re-solved on one quantity: keep match_flops (GFLOPs) or match_params (parameters)")
    return out


def parse_variants(raw: Any, src: str, where: str) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(f"{src}: {where}: {show(raw)}: must be a list of {{name, set}} mappings, e.g. "
                        "variants: [{name: no-grn, set: {model.args.grn: false}}]")
    out, names = [], set()
    for i, v in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(v, dict):
            raise SpecError(f"{src}: {w}: {show(v)}: a variant is a mapping {{name: ..., set: {{...}}}}")
        for key in v:
            if key not in _VARIANT_KEYS:
                raise unknown_key(src, f"{w}.", key, _VARIANT_KEYS)
        name = v.get("name")
        if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name):
            raise SpecError(f"{src}: {w}.name: {show(name)}: required; letters, digits and _ . @ + / - (no spaces, "
                            "',' or '=': it becomes part of job names)")
        if name in names or name == "base":
            raise SpecError(f"{src}: {w}.name: {name}: " + ("'base' is reserved for match_flops targets; pick another "
                            "name" if name == "base" else "two variants share this name; names must be unique"))
        names.add(name)
        w = f"{where}[{name}]"
        variant = {"name": name, "set": parse_overrides(v.get("set"), src, f"{w}.set"),
                   "description": v.get("description") or "", "reference": v.get("reference", False)}
        if not isinstance(variant["reference"], bool):
            raise SpecError(f"{src}: {w}.reference: {show(variant['reference'])}: must be true or false (true marks a "
                            "labelled reference row, e.g. the unconditional model)")
        if "baseline" in v:
            b = v["baseline"]
            if not isinstance(b, str) or not _VARIANT_NAME.fullmatch(b) or b == name:
                raise SpecError(f"{src}: {w}.baseline: {show(b)}: the name of another variant, the row this one is "
                                "compared with in the report (e.g. baseline: DiT-S/2)")
            variant["baseline"] = b
        variant.update(_one_match(v, src, f"{w}."))
        out.append(variant)
    return out


def parse_seeds(raw: Any, src: str, where: str) -> list[int]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                      for s in raw):
        raise SpecError(f"{src}: {where}: {show(raw)}: must be a non-empty list of non-negative integers, e.g. "
                        "[0, 1, 2]")
    if len(set(raw)) != len(raw):
        raise SpecError(f"{src}: {where}: {show(raw)}: lists a seed twice; list each seed once")
    return list(raw)


def parse_assignments(raw: Any, src: str, where: str) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(f"{src}: {where}: {show(raw)}: must be a list of partial assignments, e.g. "
                        f"{where.split('.')[-1]}: [{{model.args.kernel_size: 3}}]")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not item:
            raise SpecError(f"{src}: {where}[{i}]: {show(item)}: must be a mapping of config keys (and 'variant') to "
                            "single values, e.g. {model.args.kernel_size: 3}")
        for key in item:
            if key != "variant":
                check_key(key, src, f"{where}[{i}].{key}")
        out.append(dict(item))
    return out


def parse_scope(raw: dict, spec_path: Path, prefix: str) -> dict:
    """The grid-defining keys of the spec (prefix '') or of one profile (prefix 'profiles.NAME.')."""
    src = str(spec_path)
    scope = {"axes": parse_axes(raw.get("axes"), src, f"{prefix}axes"),
             "zip": parse_zip(raw.get("zip"), src, f"{prefix}zip"),
             "variants": parse_variants(raw.get("variants"), src, f"{prefix}variants"),
             "seeds": parse_seeds(raw.get("seeds", [0]), src, f"{prefix}seeds"),
             "exclude": parse_assignments(raw.get("exclude"), src, f"{prefix}exclude"),
             "include": parse_assignments(raw.get("include"), src, f"{prefix}include"),
             "match_flops": None, "match_params": None, **_one_match(raw, src, prefix),
             "baseline": None}
    if raw.get("baseline") is not None:
        b = raw["baseline"]
        if not isinstance(b, dict) or not b:
            raise SpecError(f"{src}: {prefix}baseline: {show(b)}: must be a partial assignment naming one row, e.g. "
                            "baseline: {model.args.kernel_size: 7} or baseline: {variant: default}")
        scope["baseline"] = dict(b)
    return {k: v for k, v in scope.items() if k in raw or prefix == ""}


def parse_profile(name: Any, raw: Any, spec_path: Path) -> dict:
    src = str(spec_path)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise SpecError(f"{src}: profiles: {show(name)}: a profile name uses letters, digits, '_' and '-'")
    where = f"profiles.{name}"
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SpecError(f"{src}: {where}: {show(raw)}: must be a mapping of overrides, e.g. {{train.steps: 100}}")
    config = {k: v for k, v in raw.items() if k not in PROFILE_KEYS}
    out = parse_scope(raw, spec_path, f"{where}.")
    out["config"] = nest(config, f"{where}.", src, also=PROFILE_KEYS)
    if "base" in raw:
        out["base"] = parse_base(raw["base"], spec_path, f"{where}.base")
    return out


def parse_launcher(raw: Any, src: str) -> dict | None:
    """`launcher`: defaults for `run` (name, jobs) and the accelerate / slurm settings it passes on."""
    if raw is None:
        return None
    allowed = ("name", "jobs", "accelerate", "slurm")
    if not isinstance(raw, dict):
        raise SpecError(f"{src}: launcher: {show(raw)}: must be a mapping with keys {', '.join(allowed)}")
    for key in raw:
        if key not in allowed:
            raise unknown_key(src, "launcher.", key, allowed)
    if raw.get("name", "local") not in LAUNCHER_NAMES:
        raise SpecError(f"{src}: launcher.name: {show(raw['name'])}: allowed values: {', '.join(LAUNCHER_NAMES)}")
    jobs = raw.get("jobs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise SpecError(f"{src}: launcher.jobs: {show(jobs)}: must be a positive integer (jobs at once)")
    acc = raw.get("accelerate") or {}
    if not isinstance(acc, dict) or any(isinstance(v, (dict, list)) for v in acc.values()):
        raise SpecError(f"{src}: launcher.accelerate: {show(acc)}: must map `accelerate launch` flags to single "
                        "values, e.g. {num_processes: 8, mixed_precision: bf16}")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SpecError(f"{src}: launcher.slurm: {show(slurm)}: must be a mapping, e.g. {{partition: gpu, time: 1440}}")
    for key, value in slurm.items():
        if key not in _SLURM:
            raise unknown_key(src, "launcher.slurm.", key, list(_SLURM))
        if isinstance(value, bool) or not isinstance(value, _SLURM[key]):
            raise SpecError(f"{src}: launcher.slurm.{key}: {show(value)}: wrong type; expected "
                            f"{getattr(_SLURM[key], '__name__', 'text or minutes')}")
    return dict(raw)
