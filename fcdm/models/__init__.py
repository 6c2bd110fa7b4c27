"""The FCDM and DiT model families and their registry: published presets, and which constructor
arguments each family takes (every one of them is an ablation axis). The families live in `fcdm.models.fcdm`
and `fcdm.models.dit` (shared layers in `layers`); parameters and FLOPs are counted by `flops`, given in
closed form for `plan` by `costs`, and tabled for `fcdm-ablate models` by `table`.

    from fcdm.models import create_model
    model = create_model("FCDM-XL")                           # the paper's preset
    model = create_model("FCDM-L", kernel_size=3)             # an ablation: any constructor argument
    model = create_model("DiT-XL/2", input_size=64)           # DiT at 512 px (64 x 64 latents)
    model = create_model("FCDM-S", conditioning="unconditional")  # no class input: model(x, t)
    model = create_model("FCDM-S", label_dropout="joint")     # all levels drop the label together
"""
import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from fcdm.errors import did_you_mean
from fcdm.models.dit import DiT
from fcdm.models.fcdm import CONDITIONING_TYPES, FCDM, GRN, LABEL_DROPOUT_TYPES, FCDMBlock

#################################################################################
#                                    Presets                                    #
#################################################################################

# The FCDM paper's model table: width C and stage depths [enc1, enc2, mid, dec2, dec1]; mlp_ratio r = 3 and
# kernel_size k = 7 are the constructor defaults.
FCDM_PRESETS = {
    "FCDM-S": dict(hidden_size=128, depth=[2, 4, 8, 4, 2]),
    "FCDM-B": dict(hidden_size=256, depth=[2, 4, 8, 4, 2]),
    "FCDM-L": dict(hidden_size=512, depth=[2, 4, 8, 4, 2]),
    "FCDM-XL": dict(hidden_size=512, depth=[3, 6, 12, 6, 3]),
}
# DiT Table 1: (hidden size d, depth N, heads h); each at patch sizes 2, 4, 8.
DIT_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
DIT_PRESETS = {
    f"DiT-{size}/{p}": dict(hidden_size=d, depth=n, num_heads=h, patch_size=p)
    for size, (d, n, h) in DIT_SIZES.items() for p in (2, 4, 8)
}
FAMILIES: dict[str, Callable[..., nn.Module]] = {"fcdm": FCDM, "dit": DiT}
PRESETS = {**{k: ("fcdm", v) for k, v in FCDM_PRESETS.items()}, **{k: ("dit", v) for k, v in DIT_PRESETS.items()}}


def list_models() -> list[str]:
    """Every preset name, FCDM first, in table order."""
    return list(PRESETS)


def family_of(name: str) -> str:
    """'fcdm' or 'dit' for a preset name."""
    _check_preset(name)
    return PRESETS[name][0]


def _check_preset(name: str) -> None:
    if name not in PRESETS:
        raise ValueError(f"model={name!r} is not a known preset; allowed values: {', '.join(PRESETS)}")


def preset_kwargs(name: str, **overrides) -> dict:
    """The constructor arguments of a preset with overrides applied."""
    _check_preset(name)
    return {**PRESETS[name][1], **overrides}


def constructor_args(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments the family of preset `name` takes, with their signature defaults."""
    cls = FAMILIES[family_of(name)]
    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_model_args(name: str, args: dict[str, Any]) -> None:
    """ValueError (a config validation message) for a preset or an argument the family does not know."""
    if name not in PRESETS:
        raise ValueError(f"model.name={name!r} is not a known preset; {did_you_mean(name, PRESETS)}allowed values: "
                         f"{', '.join(PRESETS)}")
    allowed = constructor_args(name)
    for key in args:
        if key not in allowed:
            raise ValueError(f"unknown key 'model.args.{key}' for {name}; {did_you_mean(key, allowed, 'model.args.')}"
                             f"allowed keys: {', '.join(allowed)}")


def resolve_kwargs(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every constructor argument of `name`'s family: `given` over the signature defaults. ValueError names
    an argument the family does not take, or a required one nobody set."""
    params = constructor_args(name)
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ValueError(f"model.args.{unknown[0]}: {name} does not take it; allowed keys: {', '.join(params)}")
    resolved = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    resolved.update(given)
    missing = sorted(set(params) - set(resolved))
    if missing:  # a constructor argument without a default that no preset sets
        raise ValueError(f"model.args.{missing[0]} is required by {name}; add it to model.args")
    return resolved


def create_model(name: str, **overrides) -> nn.Module:
    """Build a preset of either family by name; keyword overrides replace constructor arguments.

    An override the family's constructor does not take raises a ValueError naming the allowed ones.
    """
    kwargs = preset_kwargs(name, **overrides)
    allowed = list(constructor_args(name))
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{name} does not take argument(s) {', '.join(unknown)}; "
                         f"allowed arguments: {', '.join(allowed)}")
    return FAMILIES[PRESETS[name][0]](**kwargs)


__all__ = ["CONDITIONING_TYPES", "LABEL_DROPOUT_TYPES", "DiT", "FCDM", "FCDMBlock", "GRN", "FCDM_PRESETS", "DIT_PRESETS",
           "PRESETS", "check_model_args", "constructor_args", "create_model", "family_of", "list_models",
           "preset_kwargs", "resolve_kwargs"]
