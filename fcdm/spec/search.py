"""The typed search space of a spec's `search` section: what `fcdm-ablate sweep --optuna` explores.

    search:
      metric: fid                           # or objectives: [fid, gflops] (Pareto front, NSGA-II)
      params:
        model.args.kernel_size: [3, 5, 7, 9]            # a list: categorical choices
        model.args.mlp_ratio: {low: 2, high: 4}         # ints: an int range (step 1)
        train.lr: {low: 3.0e-4, high: 3.0e-3, log: true} # floats: a float range
        model.args.depth: {choices: [[1, 1, 2, 1, 1], [2, 1, 1, 1, 2]]}
        model.args.patch_size: {choices: [2, 4], when: {model.name: [DiT-S/2]}}  # conditional

Every parameter is a dotted run-config key and is also the Optuna parameter name. A `when` condition
names an earlier search parameter (its suggested value) or any config key (its value in the profile's
base config); the parameter is suggested only when every condition holds. Errors are `SpecError`s:
one line naming the file, the key path, the value and what is allowed.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from fcdm.errors import did_you_mean
from fcdm.spec.errors import SpecError, show, unknown_key

# Direction of the metrics this project logs; any other metric needs an explicit direction.
DIRECTIONS = {"fid": "minimize", "kid": "minimize", "loss": "minimize", "gflops": "minimize", "params": "minimize",
              "is": "maximize", "precision": "maximize", "recall": "maximize", "class_consistency": "maximize"}
# Objectives read from the job's configuration (the run's tags), not from a logged metric curve.
CONFIG_OBJECTIVES = ("gflops", "params")
SAMPLERS = ("tpe", "random", "grid", "nsga2", "cmaes")
PRUNERS = ("median", "hyperband", "none", "always")
_TOP_KEYS = ("params", "metric", "direction", "objectives", "sampler", "pruner", "trials", "profiles")
_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "when")


@dataclass(frozen=True)
class Param:
    """One searched key. Categorical choices that Optuna cannot store (lists, mappings) are kept as
    compact JSON strings in Optuna and decoded back by `decode`."""
    key: str
    kind: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()  # (key, allowed values): all must hold

    def optuna_choices(self) -> tuple:
        return tuple(_encode(c) for c in self.choices)

    def decode(self, value: Any) -> Any:
        if self.kind == "categorical":
            return self.choices[self.optuna_choices().index(value)]
        return value

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this parameter; returns the config value (decoded)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return self.decode(trial.suggest_categorical(self.key, self.optuna_choices()))

    def probe_values(self) -> list:
        """The values that bound this parameter's domain (validated before a sweep starts)."""
        if self.kind == "categorical":
            return list(self.choices)
        high = self.high
        if self.step:  # Optuna rounds high down onto the step grid
            high = self.low + math.floor((self.high - self.low) / self.step + 1e-9) * self.step
        return [self.low] if high == self.low else [self.low, high]

    def grid_values(self, source: str) -> list:
        """The finite set GridSampler walks (Optuna-encoded)."""
        if self.kind == "categorical":
            return list(self.optuna_choices())
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if not self.step:
            raise _err(source, f"search.params.{self.key}", {"low": self.low, "high": self.high}, "no finite grid: "
                       "sampler 'grid' needs a step (e.g. step: 0.001) or choices; or use another sampler")
        n = math.floor((self.high - self.low) / self.step + 1e-9)
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) in allowed for k, allowed in self.when)


@dataclass(frozen=True)
class Objective:
    metric: str  # a logged metric (its value at the final evaluation), or gflops / params
    direction: Literal["minimize", "maximize"]

    @property
    def from_config(self) -> bool:
        return self.metric in CONFIG_OBJECTIVES


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    sampler: str | None = None  # None: tpe for one objective, nsga2 for several
    pruner: str | None = None  # None: median
    trials: int | None = None  # default --trials
    source: str = "<spec>"
    base_keys: tuple[str, ...] = field(default=(), compare=False)  # `when` keys that are not search params

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def fingerprint(self) -> str:
        """Identifies the space and objectives: a study must not silently mix two searches."""
        blob = json.dumps([[p.key, p.kind, p.low, p.high, p.log, p.step, list(p.optuna_choices()),
                            [[k, list(v)] for k, v in p.when]] for p in self.params]
                          + [[o.metric, o.direction] for o in self.objectives], default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def suggest(self, trial, base: dict[str, Any]) -> dict[str, Any]:
        """Suggest every active parameter, in order. base: flattened config values for `when` keys.
        Returns dotted key -> config value (inactive parameters are absent)."""
        values: dict[str, Any] = {k: base.get(k) for k in self.base_keys}
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                chosen[p.key] = values[p.key] = p.suggest(trial)
        return chosen

    def probes(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """Assignments that together try every bound and choice of every parameter once (with its
        conditions made true), for validating the space before the first trial."""
        first = {p.key: p.probe_values()[0] for p in self.params}
        out, seen = [], set()
        for p in self.params:
            for v in p.probe_values():
                fixed = {p.key: v}
                fixed.update({k: allowed[0] for k, allowed in p.when if k in first and k not in fixed})
                values: dict[str, Any] = {k: base.get(k) for k in self.base_keys}
                assignment = {}
                for q in self.params:
                    if q.active(values):
                        assignment[q.key] = values[q.key] = fixed.get(q.key, first[q.key])
                key = json.dumps(assignment, sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    out.append(assignment)
        return out

    def grid(self) -> dict[str, list]:
        return {p.key: p.grid_values(self.source) for p in self.params}


def overrides(values: dict[str, Any]) -> list[str]:
    """Dotted key -> value as `key=value` override strings whose YAML parses back to the same value."""
    return [f"{k}={_yaml(v)}" for k, v in values.items()]


def _yaml(v: Any) -> str:
    if isinstance(v, float):
        r = repr(v)
        if r in ("inf", "-inf", "nan"):
            return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}[r]
        # PyYAML reads '1e-05' as a string: a float needs a dot before its exponent.
        return r.replace("e", ".0e") if "e" in r and "." not in r else r
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_yaml(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)  # str (quoted), bool, int, None: JSON is YAML here


def _encode(c: Any) -> Any:
    if c is None or isinstance(c, (bool, int, float, str)):
        return c
    return json.dumps(c, separators=(",", ":"))


# -- parsing: every error is "<file>: <key path>: <value>: <what is allowed / the fix>" -----------------

def _err(src: str, where: str, value: Any, fix: str) -> SpecError:
    return SpecError(f"{src}: {where}: {show(value)}: {fix}")


def parse_search(raw: Any, source: str = "<spec>", profile: str | None = None,
                 profiles: list[str] | None = None) -> SearchSpace:
    """The spec's `search` mapping -> SearchSpace; raises fcdm.spec.SpecError (one line) when invalid.

    `search.profiles.<name>` holds per-profile changes (a profile's own ranges: the paper's learning
    rates and depth layouts are not the smoke model's); `profile` selects them. `profiles`: the spec's
    profile names, to refuse an unknown one. With profile=None every profile's variant is validated
    and the base space returned (the spec loader's hook)."""
    if not isinstance(raw, dict):
        raise _err(source, "search", raw, "must be a mapping with 'params' (and 'metric' or 'objectives'), e.g. "
                   "search: {metric: fid, params: {train.lr: {low: 1.0e-4, high: 1.0e-3, log: true}}}")
    _check_keys(raw, _TOP_KEYS, source, "search")
    per_profile = raw.get("profiles") or {}
    if not isinstance(per_profile, dict):
        raise _err(source, "search.profiles", per_profile, "must map profile names to partial search sections, "
                   "e.g. profiles: {paper: {params: {train.lr: {low: 5.0e-5, high: 3.0e-4, log: true}}}}")
    for name, part in per_profile.items():
        if profiles is not None and name not in profiles:
            hint = did_you_mean(name, profiles)
            raise _err(source, f"search.profiles.{name}", name, f"no such profile; {hint}the spec's profiles: "
                       f"{', '.join(profiles)}")
        if not isinstance(part, dict):
            raise _err(source, f"search.profiles.{name}", part, "must be a partial search section (a mapping)")
        _check_keys(part, tuple(k for k in _TOP_KEYS if k != "profiles"), source, f"search.profiles.{name}")
    base = {k: v for k, v in raw.items() if k != "profiles"}
    space = _parse(base, source, "search")  # a bad base entry is reported where it is written
    if profile is None:
        for name in per_profile:
            _parse(_merge_search(base, per_profile[name]), source, f"search.profiles.{name}")
        return space
    if profile not in per_profile:
        return space
    return _parse(_merge_search(base, per_profile[profile]), source, f"search.profiles.{profile}")


def _merge_search(base: dict, part: dict) -> dict:
    out = {**base, **{k: v for k, v in part.items() if k != "params"}}
    if "objectives" in part:
        out.pop("metric", None), out.pop("direction", None)
    if "metric" in part:
        out.pop("objectives", None)
    if isinstance(part.get("params"), dict) and isinstance(base.get("params"), dict):
        out["params"] = {**base["params"], **part["params"]}  # same key: replaced; new key: appended
    return out


def _parse(raw: dict, src: str, where: str) -> SearchSpace:
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise _err(src, f"{where}.params", params_raw, "must be a non-empty mapping of dotted config keys to ranges "
                   "or choices, e.g. model.args.kernel_size: [3, 5, 7]")
    params: list[Param] = []
    for key, spec in params_raw.items():
        params.append(_parse_param(key, spec, src, f"{where}.params.{key}"))
    keys = [p.key for p in params]
    for i, p in enumerate(params):
        for k, _ in p.when:
            if k in keys[i:]:
                raise _err(src, f"{where}.params.{p.key}.when.{k}", k, f"{k} is searched after {p.key}: list it "
                           f"before {p.key} in params (a condition reads earlier choices)")
    base_keys = tuple(sorted({k for p in params for k, _ in p.when} - set(keys)))
    objectives = _parse_objectives(raw, src, where)
    sampler, pruner, trials = raw.get("sampler"), raw.get("pruner"), raw.get("trials")
    if sampler is not None and sampler not in SAMPLERS:
        raise _err(src, f"{where}.sampler", sampler, f"unknown sampler; allowed values: {', '.join(SAMPLERS)}")
    if pruner is not None and pruner not in PRUNERS:
        raise _err(src, f"{where}.pruner", pruner, f"unknown pruner; allowed values: {', '.join(PRUNERS)}")
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        raise _err(src, f"{where}.trials", trials, "must be a positive integer (the study's total number of trials)")
    if len(objectives) > 1 and sampler == "cmaes":
        raise _err(src, f"{where}.sampler", sampler, "cannot optimise several objectives; use nsga2, tpe or random")
    return SearchSpace(tuple(params), objectives, sampler, pruner, trials, src, base_keys)


def _check_keys(d: dict, allowed: tuple[str, ...], src: str, where: str) -> None:
    for k in d:
        if k not in allowed:
            raise unknown_key(src, f"{where}.", k, allowed)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v: Any, src: str, where: str) -> int | float:
    if isinstance(v, str):  # PyYAML 1.1 reads 1e-4 (no dot) as a string; it is what the user meant
        try:
            v = float(v)
        except ValueError:
            pass
    if not _is_num(v):
        raise _err(src, where, v, "must be a finite number (e.g. 1.0e-4)")
    return v


def _parse_param(key: Any, spec: Any, src: str, where: str) -> Param:
    if not isinstance(key, str) or "." not in key or not all(part.isidentifier() for part in key.split(".")):
        raise _err(src, where, key, "not a dotted config key; use e.g. model.args.kernel_size or train.lr")
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise _err(src, where, spec, "give a list of choices, {choices: [...]}, or {low: ..., high: ...} "
                   "(optionally log: true or step: ...)")
    _check_keys(spec, _PARAM_KEYS, src, where)
    when = _parse_when(spec.get("when"), src, f"{where}.when", key)
    kind = spec.get("type")
    if kind is not None and kind not in ("float", "int", "categorical"):
        raise _err(src, f"{where}.type", kind, "unknown type; allowed values: float, int, categorical")
    if "choices" in spec or kind == "categorical":
        extra = [k for k in ("low", "high", "log", "step") if k in spec]
        if extra:
            raise _err(src, f"{where}.{extra[0]}", spec[extra[0]], "'choices' and a range exclude each other; "
                       "give either choices or low/high")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(src, f"{where}.choices", choices, "must be a non-empty list of values")
        encoded = [json.dumps(_encode(c)) for c in choices]
        if len(set(encoded)) != len(encoded):
            raise _err(src, f"{where}.choices", choices, "lists a value twice; list each choice once")
        return Param(key, "categorical", choices=tuple(choices), when=when)
    if "low" not in spec or "high" not in spec:
        raise _err(src, where, spec, "needs both low and high (a range) or choices (a list)")
    low, high = _number(spec["low"], src, f"{where}.low"), _number(spec["high"], src, f"{where}.high")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise _err(src, f"{where}.log", log, "must be true or false")
    if step is not None:
        step = _number(step, src, f"{where}.step")
    if kind is None:
        kind = "int" if all(isinstance(v, int) for v in (low, high, step or 1)) else "float"
    if kind == "int":
        for name, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and float(v) != int(v):
                raise _err(src, f"{where}.{name}", v, "an int range needs whole numbers")
        low, high, step = int(low), int(high), int(step) if step is not None else None
    else:
        low, high, step = float(low), float(high), float(step) if step is not None else None
    if low > high:
        raise _err(src, where, spec, f"low {low:g} is greater than high {high:g}; swap them")
    if step is not None and step <= 0:
        raise _err(src, f"{where}.step", step, "must be positive")
    if log and low <= 0:
        raise _err(src, f"{where}.low", low, "a log range needs low > 0")
    if log and step is not None:
        raise _err(src, f"{where}.step", step, "'log' and 'step' exclude each other (a log range is continuous)")
    return Param(key, kind, low, high, log, step, when=when)


def _parse_when(raw: Any, src: str, where: str, key: str) -> tuple[tuple[str, tuple], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise _err(src, where, raw, "must map config keys to a value or a list of values, e.g. "
                   "when: {model.name: [FCDM-S, FCDM-B]}")
    out = []
    for k, v in raw.items():
        if k == key:
            raise _err(src, f"{where}.{k}", k, "a parameter cannot depend on itself")
        if not isinstance(k, str) or "." not in k:
            raise _err(src, f"{where}.{k}", k, "not a dotted config key (e.g. model.name)")
        allowed = tuple(v) if isinstance(v, list) else (v,)
        if not allowed:
            raise _err(src, f"{where}.{k}", v, "list at least one value")
        out.append((k, allowed))
    return tuple(out)


def _parse_objectives(raw: dict, src: str, where: str) -> tuple[Objective, ...]:
    if "objectives" in raw:
        if "metric" in raw or "direction" in raw:
            raise _err(src, f"{where}.objectives", raw["objectives"], "'objectives' and 'metric'/'direction' exclude "
                       "each other; list every objective under objectives, e.g. objectives: [fid, gflops]")
        items = raw["objectives"]
        if not isinstance(items, list) or not items:
            raise _err(src, f"{where}.objectives", items, "must be a list such as [fid, gflops]")
        objs = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                item = {"metric": item}
            if not isinstance(item, dict):
                raise _err(src, f"{where}.objectives[{i}]", item, "must be a metric name or "
                           "{metric: NAME, direction: minimize|maximize}")
            _check_keys(item, ("metric", "direction"), src, f"{where}.objectives[{i}]")
            objs.append(_objective(item.get("metric"), item.get("direction"), src, f"{where}.objectives[{i}]"))
        names = [o.metric for o in objs]
        if len(set(names)) != len(names):
            raise _err(src, f"{where}.objectives", names, "lists a metric twice; list each objective once")
        return tuple(objs)
    return (_objective(raw.get("metric", "fid"), raw.get("direction"), src, where),)


def _objective(metric: Any, direction: Any, src: str, where: str) -> Objective:
    if not isinstance(metric, str) or not metric:
        raise _err(src, f"{where}.metric", metric, "must be a logged metric name such as fid")
    if direction is None:
        if metric not in DIRECTIONS:
            raise _err(src, f"{where}.metric", metric, "no known direction: add direction: minimize or maximize "
                       f"(known metrics: {', '.join(DIRECTIONS)})")
        direction = DIRECTIONS[metric]
    if direction not in ("minimize", "maximize"):
        raise _err(src, f"{where}.direction", direction, "allowed values: minimize, maximize")
    return Objective(metric, direction)
