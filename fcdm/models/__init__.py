"""The FCDM and DiT model families and their registry: published presets, and which constructor
arguments each family takes (every one of them is an ablation axis). The registry is plain data in
`fcdm.models.registry` (no torch: `plan` and the configuration hash read it); the families live in
`fcdm.models.fcdm` and `fcdm.models.dit` (shared layers in `layers`); parameters and FLOPs are counted by
`flops`, given in closed form for `plan` by `costs`, and tabled for `fcdm-ablate models` by `table`.

    from fcdm.models import create_model
    model = create_model("FCDM-XL")                           # the paper's preset
    model = create_model("FCDM-L", kernel_size=3)             # an ablation: any constructor argument
    model = create_model("DiT-XL/2", input_size=64)           # DiT at 512 px (64 x 64 latents)
    model = create_model("FCDM-S", conditioning="unconditional")  # no class input: model(x, t)
    model = create_model("FCDM-S", label_dropout="joint")     # all levels drop the label together

The model classes import torch, so they load on first use (PEP 562): `from fcdm.models import family_of`
costs milliseconds.
"""
from __future__ import annotations

import importlib

from fcdm.models.registry import (
    CONDITIONING_TYPES,
    DIT_PRESETS,
    FCDM_PRESETS,
    LABEL_DROPOUT_TYPES,
    PRESETS,
    check_model_args,
    constructor_args,
    family_of,
    list_models,
    preset_kwargs,
    resolve_kwargs,
)

_LAZY = {"FCDM": "fcdm", "FCDMBlock": "fcdm", "GRN": "fcdm", "DiT": "dit"}


def __getattr__(name: str):
    if name == "FAMILIES":
        return {"fcdm": __getattr__("FCDM"), "dit": __getattr__("DiT")}
    if name in _LAZY:
        return getattr(importlib.import_module(f"fcdm.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fcdm.models' has no attribute {name!r}")


def create_model(name: str, **overrides):
    """Build a preset of either family by name (an nn.Module); keyword overrides replace constructor arguments.

    An override the family's constructor does not take raises a ValueError naming the allowed ones.
    """
    kwargs = preset_kwargs(name, **overrides)
    allowed = list(constructor_args(name))
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{name} does not take argument(s) {', '.join(unknown)}; "
                         f"allowed arguments: {', '.join(allowed)}")
    return __getattr__("FAMILIES")[PRESETS[name][0]](**kwargs)


__all__ = ["CONDITIONING_TYPES", "LABEL_DROPOUT_TYPES", "DiT", "FAMILIES", "FCDM", "FCDMBlock", "GRN", "FCDM_PRESETS",
           "DIT_PRESETS", "PRESETS", "check_model_args", "constructor_args", "create_model", "family_of",
           "list_models", "preset_kwargs", "resolve_kwargs"]
