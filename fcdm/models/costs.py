"""Parameters and GFLOPs of an architecture (preset name, constructor arguments, input shape), fast and
without torch.

    architecture_cost("FCDM-S", kwargs, (4, 32, 32))     # Cost(params, gflops), cached
    architecture_gflops("FCDM-S", kwargs, (4, 32, 32))   # the GFLOPs alone

GFLOPs follow DiT's convention (forward, batch 1, one multiply-add = one FLOP, attention included; README,
"FLOPs") and equal `fcdm.models.flops.model_gflops` exactly; parameters equal the built model's count
(tests/spec/test_matching.py and tests/models/test_registry.py check both on many architectures). Both
come from the closed forms below, with the arguments checked by the same functions the constructors call
(fcdm.models.registry), because importing torch alone takes over a second and `plan` must answer at
once. Architectures the closed forms do not cover (an argument they do not know, or a value of an
unexpected type) fall back to building the model on the meta device and counting a forward pass, so a
new model option is never costed wrongly and a malformed one fails exactly as training would.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fcdm.models.registry import check_dit_arguments, check_fcdm_arguments, family_of

# Constructor arguments the closed forms account for (the others do not change the forward's FLOPs).
_FCDM_ARGS = {"in_channels", "hidden_size", "depth", "mlp_ratio", "kernel_size", "grn", "conditioning",
              "shared_embedders", "class_dropout_prob", "num_classes", "learn_sigma", "gradient_checkpointing",
              "label_dropout"}
_DIT_ARGS = {"input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
             "class_dropout_prob", "num_classes", "learn_sigma", "gradient_checkpointing", "label_dropout"}
_FREQ = 256  # TimestepEmbedder's sinusoidal feature size


@dataclass(frozen=True)
class Cost:
    params: int
    gflops: float  # forward, batch 1, DiT's convention


# -- closed forms (multiply-adds of conv, linear and attention matmuls; norms and activations are free) --

def _fcdm_macs(kw: dict, shape: tuple[int, int, int]) -> int:
    c_in, h, w = shape
    c = kw["hidden_size"]
    depth = list(kw["depth"])
    widths, pixels = [c, 2 * c, 4 * c], [h * w, (h // 2) * (w // 2), (h // 4) * (w // 4)]
    out_ch = 2 * kw["in_channels"] if kw["learn_sigma"] else kw["in_channels"]
    conditioning = "adaln-zero" if kw["conditioning"] == "unconditional" else kw["conditioning"]
    shared = kw["shared_embedders"]
    cond = [c] * 3 if shared else widths
    used = [True, depth[1] + depth[3] > 0, depth[2] > 0]
    embedders = [c] if shared else [wd for wd, u in zip(widths, used) if u]
    macs = sum(_FREQ * e + e * e for e in embedders)  # each timestep MLP runs once per forward

    def block(level: int) -> int:
        d, p = widths[level], pixels[level]
        hidden = int(d * kw["mlp_ratio"])
        chunks = {"adaln-zero": 3, "adaln": 2, "additive": 1}[conditioning]
        return kw["kernel_size"] ** 2 * d * p + 2 * d * hidden * p + cond[level] * chunks * d

    levels = [0, 1, 2, 1, 0]
    macs += sum(n * block(lv) for n, lv in zip(depth, levels))
    macs += 9 * c_in * c * pixels[0]  # stem
    macs += 9 * c * (widths[1] // 4) * pixels[0] + 9 * widths[1] * (widths[2] // 4) * pixels[1]  # downsamples
    macs += 9 * widths[2] * 4 * widths[1] * pixels[2] + 9 * widths[1] * 4 * c * pixels[1]  # upsamples
    macs += 2 * widths[1] * widths[1] * pixels[1] + 2 * c * c * pixels[0]  # 1x1 skip merges
    macs += 9 * c * c * pixels[0] + cond[0] * 2 * c + 9 * c * out_ch * pixels[0]  # output conv, final layer
    return macs


def _dit_macs(kw: dict, shape: tuple[int, int, int]) -> int:
    c_in, h, w = shape
    d, p = kw["hidden_size"], kw["patch_size"]
    tokens = (h // p) * (w // p)
    out_ch = 2 * kw["in_channels"] if kw["learn_sigma"] else kw["in_channels"]
    hidden = int(d * kw["mlp_ratio"])
    macs = tokens * d * c_in * p * p + _FREQ * d + d * d  # patch embedding, timestep MLP
    per_block = 6 * d * d + 4 * tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * hidden
    macs += kw["depth"] * per_block
    return macs + 2 * d * d + tokens * d * p * p * out_ch  # final layer


def _fcdm_params(kw: dict) -> int:
    c, k, depth = kw["hidden_size"], kw["kernel_size"], list(kw["depth"])
    widths = [c, 2 * c, 4 * c]
    out_ch = 2 * kw["in_channels"] if kw["learn_sigma"] else kw["in_channels"]
    conditional = kw["conditioning"] != "unconditional"
    block_conditioning = kw["conditioning"] if conditional else "adaln-zero"
    shared = kw["shared_embedders"]
    cond = [c] * 3 if shared else widths
    used = [True, depth[1] + depth[3] > 0, depth[2] > 0]
    labels = kw["num_classes"] + (kw["class_dropout_prob"] > 0)  # the null class's row
    n = sum(_FREQ * e + e + e * e + e + (labels * e if conditional else 0)  # timestep MLP, label table
            for e in ([c] if shared else [w for w, u in zip(widths, used) if u]))

    def block(level: int) -> int:
        d, cd = widths[level], cond[level]
        hidden = int(d * kw["mlp_ratio"])
        p = d * k * k + d + d * hidden + hidden + hidden * d + d  # depthwise conv, two pointwise convs
        p += 2 * hidden if kw["grn"] else 0
        if block_conditioning == "additive":  # the norm keeps its affine; a projection of c
            return p + 2 * d + cd * d + d
        chunks = 3 if block_conditioning == "adaln-zero" else 2
        return p + cd * chunks * d + chunks * d

    n += sum(count * block(level) for count, level in zip(depth, [0, 1, 2, 1, 0]))
    n += kw["in_channels"] * c * 9 + c  # stem
    n += 9 * c * (widths[1] // 4) + 9 * widths[1] * (widths[2] // 4)  # downsamples (no bias)
    n += 9 * widths[2] * 4 * widths[1] + 9 * widths[1] * 4 * c  # upsamples (no bias)
    n += 2 * widths[1] * widths[1] + widths[1] + 2 * c * c + c  # 1x1 skip merges
    return n + 9 * c * c + c + cond[0] * 2 * c + 2 * c + 9 * c * out_ch + out_ch  # output conv, final layer


def _dit_params(kw: dict) -> int:
    d, p = kw["hidden_size"], kw["patch_size"]
    out_ch = 2 * kw["in_channels"] if kw["learn_sigma"] else kw["in_channels"]
    hidden = int(d * kw["mlp_ratio"])
    tokens = (kw["input_size"] // p) ** 2
    labels = kw["num_classes"] + (kw["class_dropout_prob"] > 0)
    n = kw["in_channels"] * d * p * p + d + _FREQ * d + d + d * d + d + labels * d + tokens * d  # embeddings
    n += kw["depth"] * (4 * d * d + 4 * d + 2 * d * hidden + hidden + d + 6 * d * d + 6 * d)  # attention, MLP, adaLN
    return n + d * p * p * out_ch + p * p * out_ch + 2 * d * d + 2 * d  # final layer


_INTS = {"in_channels", "hidden_size", "kernel_size", "num_classes", "input_size", "patch_size", "num_heads"}
_BOOLS = {"grn", "shared_embedders", "learn_sigma", "gradient_checkpointing"}
_FLOATS = {"mlp_ratio", "class_dropout_prob"}


def _covered(family: str, kw: dict) -> bool:
    """Whether the closed forms apply: every argument known to them and of the type the constructor expects."""
    if set(kw) != (_FCDM_ARGS if family == "fcdm" else _DIT_ARGS):
        return False
    for key, value in kw.items():
        if key in _INTS or (key == "depth" and family == "dit"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return False
        elif key in _BOOLS and not isinstance(value, bool):
            return False
        elif key in _FLOATS and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return False
    return family == "dit" or (isinstance(kw["depth"], (list, tuple)) and isinstance(kw["conditioning"], str))


def closed_form_cost(family: str, kw: dict, shape: tuple[int, int, int]) -> Cost | None:
    """Parameters and GFLOPs from the closed forms, or None when they do not cover these arguments. The
    arguments are checked as the constructor checks them (ValueError)."""
    if not _covered(family, kw):
        return None
    if family == "fcdm":
        check_fcdm_arguments(kw["conditioning"], kw["label_dropout"], kw["class_dropout_prob"], kw["kernel_size"],
                             kw["depth"], kw["hidden_size"], kw["mlp_ratio"])
        return Cost(_fcdm_params(kw), _fcdm_macs(kw, shape) / 1e9)
    check_dit_arguments(kw["label_dropout"], kw["input_size"], kw["patch_size"], kw["hidden_size"], kw["num_heads"])
    return Cost(_dit_params(kw), _dit_macs(kw, shape) / 1e9)


def closed_form_gflops(family: str, kw: dict, shape: tuple[int, int, int]) -> float | None:
    """GFLOPs from the closed form, or None when an argument is outside what it accounts for."""
    known = _FCDM_ARGS if family == "fcdm" else _DIT_ARGS
    if not set(kw) <= known:
        return None
    macs = _fcdm_macs(kw, shape) if family == "fcdm" else _dit_macs(kw, shape)
    return macs / 1e9


# -- counting on the meta device (architectures the closed forms do not cover) -------------------------

def _meta_model(name: str, kwargs: dict):
    """The model on the meta device without running its initialisers: construction validates the
    arguments (ValueError) and gives the parameter shapes; nn.init on meta tensors would pull in
    torch._dynamo for nothing."""
    import torch  # heavy: only for an architecture the closed forms do not cover
    from torch.overrides import TorchFunctionMode

    from fcdm.models import create_model

    skip = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_}

    class _NoInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in skip or getattr(func, "__module__", "") == "torch.nn.init":
                return args[0] if args else kwargs["tensor"]
            return func(*args, **(kwargs or {}))

    with torch.device("meta"), _NoInit():
        return create_model(name, **kwargs)


@lru_cache(maxsize=None)
def _cost(name: str, kwargs_json: str, shape: tuple[int, int, int]) -> Cost:
    kwargs = json.loads(kwargs_json)
    found = closed_form_cost(family_of(name), kwargs, shape)
    if found is not None:
        return found
    try:
        model = _meta_model(name, kwargs)
    except TypeError as e:  # e.g. a list where the family takes an int: say so as a bad argument
        raise ValueError(f"{name}: {e}") from None
    gflops = closed_form_gflops(family_of(name), kwargs, shape)
    if gflops is None:
        from fcdm.models.flops import model_gflops  # heavy: torch.utils.flop_counter, only for such architectures

        gflops = model_gflops(model, shape)
    # fcdm.models.flops.count_params, without importing it: its torch.utils.flop_counter pulls in
    # triton (~0.2 s) that the closed forms do not need.
    return Cost(sum(p.numel() for p in model.parameters()), gflops)


@lru_cache(maxsize=None)
def _gflops(name: str, kwargs_json: str, shape: tuple[int, int, int]) -> float:
    try:
        g = closed_form_gflops(family_of(name), json.loads(kwargs_json), shape)
    except (TypeError, KeyError):  # malformed arguments: building the model says what is wrong
        g = None
    return _cost(name, kwargs_json, shape).gflops if g is None else g


def _key(kwargs: dict) -> str:
    return json.dumps(kwargs, sort_keys=True)


def architecture_cost(name: str, kwargs: dict[str, Any], shape: tuple[int, int, int]) -> Cost:
    """Parameters and GFLOPs of preset `name` built with `kwargs` (every constructor argument) on inputs
    of `shape` (C, H, W); cached. A bad constructor argument raises ValueError."""
    return _cost(name, _key(kwargs), tuple(shape))


def architecture_gflops(name: str, kwargs: dict[str, Any], shape: tuple[int, int, int]) -> float:
    """GFLOPs alone: the closed form without building anything when it applies; cached."""
    return _gflops(name, _key(kwargs), tuple(shape))


def training_gflops(gflops_per_forward: float, batch_size: int, steps: int) -> float:
    """Training compute in GFLOPs: forward + backward (about 2x forward) per image, times batch, times steps."""
    return gflops_per_forward * 3 * batch_size * steps


def clear_caches() -> None:
    """Forget every cached cost (for timing the cold path)."""
    _cost.cache_clear()
    _gflops.cache_clear()
