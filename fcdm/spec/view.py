"""One profile's view of a spec, as typed objects: what `expand`, `Spec.is_baseline` and the report read.

    view = spec.view("smoke")             # ProfileView; its cross-checks raise SpecError
    view.config                           # the base config with the profile's overrides (a nested mapping)
    view.axes, view.variants, view.seeds  # the grid: the profile's sections where it replaces the spec's
    view.path("axes")                     # 'axes', or 'profiles.smoke.axes' where the profile replaces it
    view.origin("train.lr", variant)      # which spec key sets a config key: the variant, the profile or base

`Spec` keeps each section as written (plain mappings and lists, which `sweep` copies and amends); this
module turns what one profile uses into Variant, Match and ProfileView, and checks the keys that
refer to each other (zip and axes, exclude / include / baseline and the grid, match_flops / match_params targets, variants' baselines).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fcdm.config import canonical, merge, resolved_model_kwargs
from fcdm.spec.errors import SpecError, show
from fcdm.spec.sections import ASSIGNMENT_KEYS, MATCH_KINDS, SCOPE_KEYS, Scope

if TYPE_CHECKING:
    from fcdm.spec.load import Spec

MISSING: Any = object()  # what `lookup` answers for a key that is not there (None is a value)


def lookup(tree: Any, key: str) -> Any:
    """The value at dotted `key` in a nested mapping, or MISSING."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return MISSING
        tree = tree[part]
    return tree


def canonical_text(value: Any) -> str:
    """A value as canonical JSON, so 3 and 3.0 (or a tuple and a list) compare equal."""
    return json.dumps(canonical(value), sort_keys=True)


def matches(pattern: dict, variant: str | None, assign: dict) -> bool:
    """Whether a partial assignment (config keys, and 'variant') holds for a job of `variant` whose grid
    point is `assign` (dotted key -> value)."""
    for k, v in pattern.items():
        have = variant if k == "variant" else assign.get(k, MISSING)
        if have is MISSING or canonical_text(have) != canonical_text(v):
            return False
    return True


@dataclass(frozen=True)
class Match:
    """`match_flops` / `match_params`: solve one model argument (then optionally a float ratio) so that a job's
    GFLOPs (or parameters) land within `tolerance` of `target`."""
    target: float | str  # GFLOPs (or parameters), 'base' (the profile's base config) or a variant's name
    solve: str  # the model.args key solved for (the width)
    tolerance: float  # a fraction: 0.02 is 2%
    path: str  # where the spec sets it, e.g. 'match_flops' or 'profiles.paper.variants[k9].match_flops'
    then: str | None = None  # a second model.args key (a float ratio) solved after `solve`, to land closer

    @classmethod
    def of(cls, raw: dict | None, path: str) -> Match | None:
        if raw is None:
            return None
        solve = raw["solve"] if isinstance(raw["solve"], list) else [raw["solve"]]
        return cls(raw["target"], solve[0], raw["tolerance"], path, solve[1] if len(solve) > 1 else None)

    @property
    def kind(self) -> str:
        """'flops' or 'params': what is matched."""
        return "params" if self.path.endswith("match_params") else "flops"

    @property
    def quantity(self) -> str:
        """What is matched, as a table says it: 'FLOPs' or 'parameters'."""
        return "parameters" if self.kind == "params" else "FLOPs"


MatchFlops = Match  # the name it had when only FLOPs were matched


@dataclass(frozen=True)
class Variant:
    """A named set of config overrides, crossed with the grid."""
    name: str
    overrides: dict  # its `set`, nested
    description: str = ""
    reference: bool = False  # a labelled reference row (e.g. the unconditional model): shown, never compared
    own_match: bool = False  # it has a match_flops / match_params of its own, which replaces the profile's
    match: Match | None = None  # its own match_flops or match_params (with own_match; None there: not matched)
    baseline: str | None = None  # the variant it is compared with in the report (None: the profile's rule)

    @classmethod
    def of(cls, raw: dict, path: str) -> Variant:
        """From a parsed variant (fcdm.spec.sections.parse_variants); `path`: its list's key path."""
        kind = next((k for k in MATCH_KINDS if k in raw), None)
        mf = Match.of(raw[kind], f"{path}[{raw['name']}].{kind}") if kind else None
        return cls(raw["name"], raw["set"], raw["description"], raw["reference"], kind is not None, mf,
                   raw.get("baseline"))


@dataclass(frozen=True, eq=False)
class ProfileView(Scope[Variant, Match]):
    """The spec as one profile sees it: its base config with the profile's overrides, and its grid (the
    Scope: each section the profile's where it replaces the spec's). Build it with `Spec.view`."""
    profile: str
    source: str  # the spec file, as error messages name it
    base: dict  # the run config the profile starts from (its own `base`, else the spec's)
    overrides: dict  # the profile's config overrides, nested
    config: dict  # base with the overrides merged in: where every job starts
    paths: dict[str, str] = field(repr=False)  # grid section -> its key path in the file

    @classmethod
    def of(cls, spec: Spec, profile: str) -> ProfileView:
        """The view of `profile` (a name the spec does not declare: the spec as written); SpecError when two
        keys that refer to each other disagree."""
        own = spec.profiles.get(profile, {})
        raw = {k: (own[k] if k in own else getattr(spec, k)) for k in SCOPE_KEYS}
        paths = {k: f"profiles.{profile}.{k}" if k in own else k for k in SCOPE_KEYS}
        base, overrides = own.get("base", spec.base), own.get("config", {})
        raw.update(variants=[Variant.of(v, paths["variants"]) for v in raw["variants"]],
                   match_flops=Match.of(raw["match_flops"], paths["match_flops"]),
                   match_params=Match.of(raw["match_params"], paths["match_params"]))
        if raw["match_flops"] and raw["match_params"]:  # one from the spec, the other from the profile
            raise SpecError(f"{spec.source}: {paths['match_params']}: both match_flops ({paths['match_flops']}) and "
                            "match_params apply to this profile; a row is re-solved on one quantity: keep one")
        view = cls(profile=profile, source=spec.source, base=base, overrides=overrides,
                   config=merge(base, overrides), paths=paths, **raw)
        view._check()
        return view

    def path(self, section: str) -> str:
        """The key path of a grid section in the file: 'axes', or 'profiles.NAME.axes' where the profile sets it."""
        return self.paths[section]

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    @property
    def grid_keys(self) -> list[str]:
        """The config keys the grid sets: each axis, then each zip group's keys."""
        return list(self.axes) + [k for group in self.zip for k in group]

    def is_baseline(self, variant: str | None, axes: dict) -> bool:
        """Whether a job of `variant` at grid point `axes` is (one seed of) the profile's baseline row."""
        return self.baseline is not None and matches(self.baseline, variant, axes)

    def matching(self, variant: Variant | None) -> Match | None:
        """The matching (FLOPs or parameters) of a job of `variant`: the variant's own where it has one, else the
        profile's."""
        if variant is not None and variant.own_match:
            return variant.match
        return self.match_flops or self.match_params

    def origin(self, key: str, variant: Variant | None = None) -> str:
        """The spec key that sets dotted config key `key` for a job of `variant`, before its grid point and
        `--set`: the variant's `set`, else the profile, else base."""
        if variant is not None and lookup(variant.overrides, key) is not MISSING:
            return f"{self.path('variants')}[{variant.name}].set.{key}"
        if lookup(self.overrides, key) is not MISSING:
            return f"profiles.{self.profile}.{key}"
        return f"base.{key}"

    def axis_defaults(self, jobs: list) -> dict[str, Any]:
        """The value each axis key of `jobs` (this profile's) takes in the base config: written there, else
        (for `model.args.*`) the preset's or constructor's default. Keys with neither are left out."""
        out: dict[str, Any] = {}
        for key in dict.fromkeys(k for j in jobs for k in j.axes):
            value = lookup(self.config, key)
            if value is not MISSING:
                out[key] = value
            elif key.startswith("model.args."):
                arg = key.removeprefix("model.args.")
                cfg = next(j.config for j in jobs if key in j.axes)
                args = {k: v for k, v in cfg.model.args.items() if k != arg}
                try:
                    resolved = resolved_model_kwargs(cfg.model_copy(update={"model": cfg.model.model_copy(
                        update={"args": args})}))
                except ValueError:  # ConfigError: the arguments do not resolve without this one; no default
                    continue
                if arg in resolved:
                    out[key] = resolved[arg]
        return out

    # -- cross-checks ------------------------------------------------------------------------------------

    def _check(self) -> None:
        owner = self._owners()
        names = [v.name for v in self.variants]
        for section in ASSIGNMENT_KEYS:
            items = getattr(self, section) if section != "baseline" else ([self.baseline] if self.baseline else [])
            for i, item in enumerate(items):
                w = self.path(section) + (f"[{i}]" if section != "baseline" else "")
                if "variant" in item and item["variant"] not in names:
                    raise SpecError(f"{self.source}: {w}.variant: {show(item['variant'])}: no such variant; allowed "
                                    f"values: {', '.join(names) or '(the spec has no variants)'}")
                if section != "include":
                    for key in item:
                        if key != "variant" and key not in owner:
                            raise SpecError(f"{self.source}: {w}.{key}: not a key of axes or zip; {section} entries "
                                            f"name grid keys ({', '.join(owner) or 'none'}) or variant")
        for mf in [self.match_flops, self.match_params] + [v.match for v in self.variants]:
            if mf and isinstance(mf.target, str) and mf.target != "base" and mf.target not in names:
                unit = "parameters" if mf.kind == "params" else "GFLOPs"
                raise SpecError(f"{self.source}: {mf.path}.target: {mf.target}: not 'base' and not a variant; allowed "
                                f"values: base, a number of {unit}{', ' + ', '.join(names) if names else ''}")
        for v in self.variants:
            if v.baseline is not None and v.baseline not in names:
                raise SpecError(f"{self.source}: {self.path('variants')}[{v.name}].baseline: {v.baseline}: no such "
                                f"variant; allowed values: {', '.join(n for n in names if n != v.name)}")

    def _owners(self) -> dict[str, str]:
        """Grid key -> the axis or zip group that sets it; SpecError for a key set by two."""
        owner = {key: self.path("axes") for key in self.axes}
        for i, group in enumerate(self.zip):
            for key in group:
                if key in owner:
                    raise SpecError(f"{self.source}: {self.path('zip')}[{i}].{key}: set by {owner[key]} too; each "
                                    "key belongs to one axis or one zip group")
                owner[key] = f"{self.path('zip')}[{i}]"
        return owner
