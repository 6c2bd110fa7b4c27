"""The spec language: an ablation is data, a YAML spec expanded into one job per configuration and seed.

    spec = load_spec("ablations/kernel_size.yaml")             # parse and validate the file (SpecError)
    jobs = expand(spec, "smoke", overrides=["train.steps=50"])  # list[Job]: validated, FLOPs matched

Modules: `strict_yaml` (safe, strict YAML), `sections` (each section of a spec parsed and checked),
`load` (the file, its profiles), `expand` (the grid -> jobs), `matching` (FLOPs matching), `search`
(the sweep's search space), `job` (Job), `errors` (SpecError and its one-line messages).
"""
from fcdm.spec.errors import SpecError
from fcdm.spec.expand import expand
from fcdm.spec.job import Job
from fcdm.spec.load import Spec, load_spec, resolve_profile

__all__ = ["Job", "Spec", "SpecError", "expand", "load_spec", "resolve_profile"]
