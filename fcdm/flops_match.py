"""Cost of a run configuration (parameters, GFLOPs) and FLOPs matching for ablation specs.

    cost(cfg)                                    # Cost(params, gflops), cached per architecture
    solve(cfg, "model.args.hidden_size", 48.23)  # Solution(value, gflops, kept) within 2 %, or NoFit

GFLOPs follow DESIGN.md section 2 (forward, batch 1, one multiply-add = one FLOP, attention included)
and equal `fcdm.flops.model_gflops` exactly: tests/test_spec.py checks them against it. They come from
the closed forms below rather than from a forward pass, because a forward on the meta device imports
torch._dynamo (about 1.4 s of CPU) and `plan` must answer in under 3 s. Parameters come from building
the model on the meta device with initialisation skipped (milliseconds, and it validates the
constructor arguments exactly as training will). Architectures with an argument the closed forms do not
know fall back to counting a meta forward pass, so a new model option is never costed wrongly.

Matching rule: a job already within `tolerance` of the target keeps its value (so the spec's default
configuration stays the very run other specs train); otherwise the valid value whose GFLOPs are closest
to the target, if that one is within tolerance. Valid values: FCDM widths are multiples of 4 (the
downsampling conv makes width/4 channels; PixelUnshuffle needs integral channel counts), DiT widths
multiples of lcm(num_heads, 4) (whole heads, and the 2-D sin-cos embedding splits the width in four),
odd kernel sizes, any positive integer otherwise. GFLOPs grow with each of these, so a bisection finds
the bracket around the target.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fcdm.config import RunConfig

MAX_VALUE = 1 << 16  # largest width (or other solved integer) the bisection considers

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


@dataclass(frozen=True)
class Solution:
    value: int  # the solved argument's value
    gflops: float
    kept: bool  # the job's own value was already within tolerance


class NoFit(ValueError):
    """No valid value lands within tolerance; `value` and `gflops` are the closest there is."""

    def __init__(self, value: int, gflops: float, reason: str = ""):
        super().__init__(reason or f"closest value {value} gives {gflops:.4g} GFLOPs")
        self.value, self.gflops = value, gflops


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


def _formula(family: str, kw: dict, shape: tuple[int, int, int]) -> float | None:
    """GFLOPs from the closed form, or None when an argument is outside what it accounts for."""
    known = _FCDM_ARGS if family == "fcdm" else _DIT_ARGS
    if not set(kw) <= known:
        return None
    macs = _fcdm_macs(kw, shape) if family == "fcdm" else _dit_macs(kw, shape)
    return macs / 1e9


# -- counting on the meta device ----------------------------------------------------------------------

def _meta_model(name: str, kwargs: dict):
    """The model on the meta device without running its initialisers: construction validates the
    arguments (ValueError) and gives the parameter shapes; nn.init on meta tensors would pull in
    torch._dynamo for nothing."""
    import torch
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
    from fcdm.models import family_of

    kwargs = json.loads(kwargs_json)
    try:
        model = _meta_model(name, kwargs)
    except TypeError as e:  # e.g. a list where the family takes an int: say so as a bad argument
        raise ValueError(f"{name}: {e}") from None
    gflops = _formula(family_of(name), kwargs, shape)
    if gflops is None:
        from fcdm.flops import model_gflops

        gflops = model_gflops(model, shape)
    # fcdm.flops.count_params, without importing fcdm.flops: its torch.utils.flop_counter pulls in
    # triton (~0.2 s) that the closed forms do not need.
    return Cost(sum(p.numel() for p in model.parameters()), gflops)


@lru_cache(maxsize=None)
def _gflops(name: str, kwargs_json: str, shape: tuple[int, int, int]) -> float:
    """GFLOPs alone: the closed form without building anything when it applies."""
    from fcdm.models import family_of

    try:
        g = _formula(family_of(name), json.loads(kwargs_json), shape)
    except (TypeError, KeyError):  # malformed arguments: building the model says what is wrong
        g = None
    return _cost(name, kwargs_json, shape).gflops if g is None else g


def architecture(cfg: RunConfig) -> tuple[str, dict[str, Any], tuple[int, int, int]]:
    """(preset name, every resolved constructor argument, data shape (C, H, W)): what the cost depends on."""
    from fcdm.build import resolved_model_kwargs

    return cfg.model.name, resolved_model_kwargs(cfg), tuple(cfg.data_shape)


def _key(kwargs: dict) -> str:
    return json.dumps(kwargs, sort_keys=True)


def cost(cfg: RunConfig) -> Cost:
    """Parameters and GFLOPs of a config's denoiser; a bad constructor argument raises ValueError."""
    name, kwargs, shape = architecture(cfg)
    return _cost(name, _key(kwargs), shape)


# -- solving -------------------------------------------------------------------------------------------

def value_grid(name: str, kwargs: dict, arg: str) -> tuple[int, int]:
    """(first, step) of the valid values of integer argument `arg`; ValueError if it cannot be solved."""
    from fcdm.models import family_of

    family = family_of(name)
    value = kwargs.get(arg)
    if arg not in kwargs:
        raise ValueError(f"{name} has no argument '{arg}'")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}'s {arg} is {value!r}, not an integer; only integer arguments can be solved "
                         "(hidden_size, or DiT's depth)")
    if arg == "hidden_size":
        step = 4 if family == "fcdm" else math.lcm(int(kwargs["num_heads"]), 4)
        return step, step
    if arg == "kernel_size":
        return 1, 2
    return 1, 1


def solve(cfg: RunConfig, key: str, target: float, tolerance: float) -> Solution:
    """The value of `key` (a model.args key) whose GFLOPs match `target` within `tolerance` (a fraction)."""
    name, kwargs, shape = architecture(cfg)
    arg = key.removeprefix("model.args.")
    first, step = value_grid(name, kwargs, arg)

    def g(v: int) -> float:
        return _gflops(name, _key({**kwargs, arg: v}), shape)

    def off(gf: float) -> float:
        return abs(gf / target - 1)

    current = kwargs[arg]
    if off(g(current)) <= tolerance:
        return Solution(current, g(current), kept=True)
    lo, hi = 0, 1  # indices: value = first + i * step; find the first index at or above the target
    while g(first + hi * step) < target:
        lo, hi = hi, hi * 2
        if first + hi * step > MAX_VALUE:
            v = first + lo * step
            raise NoFit(v, g(v))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if g(first + mid * step) < target else (lo, mid)
    candidates = [first + i * step for i in (lo, hi)]
    best = min(candidates, key=lambda v: (off(g(v)), abs(v - current)))
    if off(g(best)) > tolerance:
        raise NoFit(best, g(best))
    return Solution(best, g(best), kept=False)
