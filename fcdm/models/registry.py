"""The model registry as plain data, without torch: the published presets, the two families, each family's
constructor arguments with their defaults, and the checks of their values. `plan`, the configuration hash
and FLOPs matching read it; the families themselves (fcdm.models.fcdm, fcdm.models.dit) import torch and
check their arguments with the same functions. tests/models/test_registry.py holds the defaults below
equal to the constructors' signatures.

    family_of("FCDM-L")                          # 'fcdm'
    preset_kwargs("FCDM-L", kernel_size=3)       # the preset's arguments with an override
    resolve_kwargs("FCDM-L", {...})              # every constructor argument, signature defaults filled in
"""
from __future__ import annotations

from typing import Any

from fcdm.errors import did_you_mean

# How the conditioning vector enters an FCDM block; "unconditional" is adaLN-Zero on the timestep alone,
# with no class input anywhere (the model generates unconditionally, and guidance does not apply).
CONDITIONING_TYPES = ("adaln-zero", "adaln", "additive", "unconditional")
BLOCK_CONDITIONING = ("adaln-zero", "adaln", "additive")
# "per-level": each level's label embedder drops labels on its own (the public release); "joint": one
# draw per sample drops the label at every level together (see FCDM.joint_drop_ids).
LABEL_DROPOUT_TYPES = ("per-level", "joint")

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
PRESETS = {**{k: ("fcdm", v) for k, v in FCDM_PRESETS.items()}, **{k: ("dit", v) for k, v in DIT_PRESETS.items()}}

# Each family's constructor arguments in signature order, with their defaults (FCDM.__init__, DiT.__init__).
FAMILY_ARGS: dict[str, dict[str, Any]] = {
    "fcdm": dict(in_channels=4, hidden_size=128, depth=(2, 4, 8, 4, 2), mlp_ratio=3.0, kernel_size=7, grn=True,
                 conditioning="adaln-zero", shared_embedders=False, class_dropout_prob=0.1, num_classes=1000,
                 learn_sigma=True, gradient_checkpointing=False, label_dropout="per-level"),
    "dit": dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0,
                class_dropout_prob=0.1, num_classes=1000, learn_sigma=True, gradient_checkpointing=False,
                label_dropout="per-level"),
}


def list_models() -> list[str]:
    """Every preset name, FCDM first, in table order."""
    return list(PRESETS)


def check_preset(name: str) -> None:
    """ValueError for a name that is not a preset."""
    if name not in PRESETS:
        raise ValueError(f"model={name!r} is not a known preset; allowed values: {', '.join(PRESETS)}")


def family_of(name: str) -> str:
    """'fcdm' or 'dit' for a preset name."""
    check_preset(name)
    return PRESETS[name][0]


def preset_kwargs(name: str, **overrides) -> dict:
    """The constructor arguments of a preset with overrides applied."""
    check_preset(name)
    return {**PRESETS[name][1], **overrides}


def constructor_args(name: str) -> dict[str, Any]:
    """The keyword arguments the family of preset `name` takes, each with its signature default."""
    return dict(FAMILY_ARGS[family_of(name)])


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
    an argument the family does not take."""
    params = constructor_args(name)
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ValueError(f"model.args.{unknown[0]}: {name} does not take it; allowed keys: {', '.join(params)}")
    return {**params, **given}


# -- the values each family accepts (the constructors call these) ---------------------------------------

def check_choice(name: str, value, allowed) -> None:
    """ValueError naming the allowed values when `value` is not one of them."""
    if name == "conditioning" and value == "none":
        raise ValueError("conditioning='none' is now called 'unconditional' (no class input at all: "
                         "unconditional generation, blocks use adaLN-Zero on the timestep alone); allowed "
                         f"values: {', '.join(map(repr, allowed))}")
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}")


def check_fcdm_arguments(conditioning: str, label_dropout: str, class_dropout_prob: float, kernel_size: int,
                         depth, hidden_size: int, mlp_ratio: float) -> None:
    """ValueError naming the allowed values for an FCDM constructor argument outside them."""
    check_choice("conditioning", conditioning, CONDITIONING_TYPES)
    check_choice("label_dropout", label_dropout, LABEL_DROPOUT_TYPES)
    if not 0.0 <= class_dropout_prob < 1.0:
        raise ValueError(f"class_dropout_prob={class_dropout_prob!r} is not supported; allowed values: "
                         "0 <= p < 1 (0 trains no null class, so guidance is unavailable)")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size!r} is not supported; allowed values: odd integers >= 1 "
                         "(3, 5, 7, ...) so that padding k//2 keeps the resolution")
    depth = list(depth)
    if len(depth) != 5 or not all(isinstance(d, int) and d >= 0 for d in depth):
        raise ValueError(f"depth={depth!r} is not supported; allowed values: five non-negative integers "
                         "[enc1, enc2, mid, dec2, dec1], e.g. [2, 4, 8, 4, 2]")
    if hidden_size < 1 or hidden_size % 2:
        raise ValueError(f"hidden_size={hidden_size!r} is not supported; allowed values: positive even numbers "
                         "(level 2 is 2C wide and its downsampling conv produces 2C/4 channels)")
    if mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio={mlp_ratio!r} is not supported; allowed values: > 0")


def check_dit_arguments(label_dropout: str, input_size: int, patch_size: int, hidden_size: int,
                        num_heads: int) -> None:
    """ValueError for a DiT constructor argument outside what the model supports."""
    if label_dropout not in LABEL_DROPOUT_TYPES:
        raise ValueError(f"label_dropout={label_dropout!r} is not supported; allowed values: "
                         f"{', '.join(map(repr, LABEL_DROPOUT_TYPES))}")
    if input_size % patch_size:
        raise ValueError(f"input_size={input_size} is not divisible by patch_size={patch_size}; "
                         "choose a patch size that divides the latent resolution")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
