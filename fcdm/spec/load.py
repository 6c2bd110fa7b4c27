"""Reading a spec file: the top-level keys, profiles, and which profile a command uses.

    spec = load_spec("ablations/kernel_size.yaml")   # parse and validate the file (SpecError)
    resolve_profile(spec, None)                      # the profile a command uses without --profile
    spec.view("paper")                               # the spec as one profile sees it (fcdm.spec.view)

Top-level keys (README, "Ablation specs"): name, description, base (a run config mapping, or a path
relative to the spec), profiles (name -> partial overrides of base; a profile may also replace base,
seeds, axes, zip, variants, exclude, include, match_flops, match_params, baseline), default_profile, axes (dotted key
-> values; the grid is their product), zip (groups of equal-length lists that move together), variants
(named override sets, crossed with the grid), seeds, exclude / include (partial assignments),
match_flops / match_params (re-solve each job's width to a target's GFLOPs / parameters), baseline (the
row the report compares against; a variant may name its own), search (the sweep's search space,
fcdm.spec.search) and launcher. Override mappings take dotted keys (`train.lr: 1.0e-4`) or nested
sections; both merge into the base.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fcdm.config.strict_yaml import load_yaml_file
from fcdm.errors import SpecError, did_you_mean
from fcdm.spec.errors import show
from fcdm.spec.job import Job
from fcdm.spec.search import parse_search
from fcdm.spec.sections import Scope, parse_base, parse_launcher, parse_profile, parse_scope
from fcdm.spec.view import ProfileView

SPEC_KEYS = ("name", "description", "base", "profiles", "default_profile", "axes", "zip", "variants", "seeds",
             "exclude", "include", "match_flops", "match_params", "baseline", "search", "launcher")
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch: '$' would let "kernel_size\n" through
DEFAULT_PROFILE = "smoke"
IMPLICIT_PROFILE = "default"  # the only profile of a spec that declares none: base as written


@dataclass(frozen=True, eq=False)
class Spec(Scope[dict, dict]):
    """A parsed, validated spec, each section as written (plain data, which `sweep` copies and amends with
    dataclasses.replace; `view` gives one profile's typed view, `expand` the jobs). `profiles` maps each
    name to {"config": nested overrides, and any spec-level key it replaces}; `variants` (of the Scope) are
    {"name", "set" (nested overrides), "description", "reference", and "baseline", "match_flops" or
    "match_params" when given}, and `match_flops` / `match_params` are {"target", "solve", "tolerance"}."""
    name: str
    description: str
    path: Path | None
    base: dict
    profiles: dict[str, dict]
    default_profile: str | None
    search: dict | None
    launcher: dict | None
    source: str = field(default="<spec>", repr=False)

    def view(self, profile: str | None = None) -> ProfileView:
        """The spec as `profile` sees it (None: the profile a command uses without --profile)."""
        return ProfileView.of(self, resolve_profile(self, profile))

    def variant(self, name: str, profile: str | None = None) -> dict | None:
        """A variant as written, by name, under a profile (profiles may replace the list); `view(profile)
        .variant(name)` is the typed one."""
        own = self.profiles.get(resolve_profile(self, profile), {})
        return next((v for v in own.get("variants", self.variants) if v["name"] == name), None)

    def is_baseline(self, job: Job) -> bool:
        """Whether a job is (one seed of) the spec's baseline row under its profile."""
        view = ProfileView.of(self, job.profile or resolve_profile(self, None))
        return view.is_baseline(job.variant, job.axes)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; raises SpecError (one line) for anything wrong with it."""
    path = Path(path)
    raw = load_yaml_file(path, "spec")
    src = str(path)
    _check_top(raw, src)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(f"{src}: name: {show(name)}: required; letters, digits, '_' and '-' only, e.g. "
                        f"name: {path.stem if _NAME.fullmatch(path.stem) else 'kernel_size'}")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise SpecError(f"{src}: description: {show(description)}: must be text")
    base = parse_base(raw.get("base", {}), path, "base")
    scope = parse_scope(raw, path, "")
    profiles_raw = raw.get("profiles") or {}
    if not isinstance(profiles_raw, dict):
        raise SpecError(f"{src}: profiles: {show(profiles_raw)}: must be a mapping of profile names to overrides, "
                        "e.g. profiles: {smoke: {train.steps: 100}, paper: {base: configs/paper.yaml}}")
    profiles = {p: parse_profile(p, v, path) for p, v in profiles_raw.items()}
    default = raw.get("default_profile")
    if default is not None and default not in profiles:
        raise SpecError(f"{src}: default_profile: {show(default)}: not a profile of this spec; allowed values: "
                        f"{', '.join(profiles) or '(none: add a profiles section)'}")
    search = raw.get("search")
    if search is not None:
        parse_search(search, src, None, list(profiles))  # every profile's variant of the search space
    spec = Spec(name=name, description=description, path=path, base=base, profiles=profiles,
                default_profile=default, search=search, launcher=parse_launcher(raw.get("launcher"), src),
                source=src, **scope)
    for p in profiles or [IMPLICIT_PROFILE]:
        ProfileView.of(spec, p)  # cross-checks every profile now, not only the one a command picks
    return spec


def _check_top(raw: dict, src: str) -> None:
    for key in raw:
        if key not in SPEC_KEYS:
            hint = did_you_mean(key, SPEC_KEYS)
            where = "a run config section belongs under base or a profile; " if key in (
                "model", "objective", "data", "train", "eval", "log") else ""
            raise SpecError(f"{src}: {key}: unknown spec key; {where}{hint}allowed keys: {', '.join(SPEC_KEYS)}")


def resolve_profile(spec: Spec, profile: str | None) -> str:
    """The profile a command uses: the one asked for, else default_profile, else 'smoke', else the only one
    (a spec without profiles has the implicit profile 'default': its base as written)."""
    names = list(spec.profiles) or [IMPLICIT_PROFILE]
    if profile is None:
        profile = spec.default_profile or (DEFAULT_PROFILE if DEFAULT_PROFILE in names else None)
        if profile is None:
            if len(names) == 1:
                return names[0]
            raise SpecError(f"{spec.source}: profiles: no --profile given and the spec has no default_profile and "
                            f"no '{DEFAULT_PROFILE}' profile; pass --profile with one of: {', '.join(names)}")
    if profile not in names:
        hint = did_you_mean(profile, names)
        raise SpecError(f"{spec.source}: profiles: {profile!r}: no such profile; {hint}allowed values: "
                        f"{', '.join(names)}")
    return profile
