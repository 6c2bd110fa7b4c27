"""Cost of a run configuration (parameters, GFLOPs) and FLOPs matching for ablation specs.

    cost(cfg)                                    # Cost(params, gflops), cached per architecture
    solve(cfg, "model.args.hidden_size", 48.23)  # Solution(value, gflops, kept) within 2 %, or NoFit

The numbers come from fcdm.models.costs (closed forms in DiT's FLOPs convention, no torch).

Matching rule: a job already within `tolerance` of the target keeps its value (so the spec's default
configuration stays the very run other specs train); otherwise the valid value whose GFLOPs are closest
to the target, if that one is within tolerance. Valid values: FCDM widths are multiples of 4 (the
downsampling conv makes width/4 channels; PixelUnshuffle needs integral channel counts), DiT widths
multiples of lcm(num_heads, 4) (whole heads, and the 2-D sin-cos embedding splits the width in four),
odd kernel sizes, any positive integer otherwise. GFLOPs grow with each of these, so a bisection finds
the bracket around the target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fcdm.config import RunConfig, resolved_model_kwargs
from fcdm.models.costs import Cost, architecture_cost, architecture_gflops
from fcdm.models.registry import family_of

MAX_VALUE = 1 << 16  # largest width (or other solved integer) the bisection considers


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


def architecture(cfg: RunConfig) -> tuple[str, dict[str, Any], tuple[int, int, int]]:
    """(preset name, every resolved constructor argument, data shape (C, H, W)): what the cost depends on."""
    return cfg.model.name, resolved_model_kwargs(cfg), tuple(cfg.data_shape)


def cost(cfg: RunConfig) -> Cost:
    """Parameters and GFLOPs of a config's denoiser; a bad constructor argument raises ValueError."""
    name, kwargs, shape = architecture(cfg)
    return architecture_cost(name, kwargs, shape)


# -- solving -------------------------------------------------------------------------------------------

def value_grid(name: str, kwargs: dict, arg: str) -> tuple[int, int]:
    """(first, step) of the valid values of integer argument `arg`; ValueError if it cannot be solved."""
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
        return architecture_gflops(name, {**kwargs, arg: v}, shape)

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
