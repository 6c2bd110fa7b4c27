"""The spec language: an ablation is data, a YAML spec expanded into one job per configuration and seed.

    spec = load_spec("ablations/kernel_size.yaml")             # parse and validate the file (SpecError)
    jobs = expand(spec, "smoke", overrides=["train.steps=50"])  # list[Job]: validated, FLOPs matched

    view = spec.view("smoke")                                   # ProfileView: one profile's typed sections

Modules (the strict YAML parser is fcdm.config.strict_yaml, shared with run configs): `sections` (each section of a spec parsed and checked),
`load` (the file, its profiles: Spec), `view` (one profile's view: ProfileView, Variant, Match),
`expansion` (the grid -> jobs: expand), `matching` (FLOPs and parameter matching), `pairs` (which row each row is compared with), `search` (the sweep's search space), `job`
(Job, and the tags its run carries), `errors` (SpecError and its one-line messages).
"""
import importlib

from fcdm.spec.errors import SpecError

# The rest loads on first use (PEP 562): the CLI reads the sweep's sampler and pruner names from
# fcdm.spec.search at import time, and `--help` must not pay for pydantic and the run config.
_LAZY = {"expand": "expansion", "Job": "job", "Spec": "load", "load_spec": "load", "resolve_profile": "load",
         "Match": "view", "MatchFlops": "view", "ProfileView": "view", "Variant": "view"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"fcdm.spec.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fcdm.spec' has no attribute {name!r}")


__all__ = ["Job", "Match", "MatchFlops", "ProfileView", "Spec", "SpecError", "Variant", "expand", "load_spec",
           "resolve_profile"]
