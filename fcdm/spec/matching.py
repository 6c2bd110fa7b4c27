"""Cost of a run configuration (parameters, GFLOPs) and matching for ablation specs.

    cost(cfg)                                    # Cost(params, gflops), cached per architecture
    solve(cfg, "model.args.hidden_size", 48.23)  # Solution(values, amount, kept) within 2 %, or NoFit
    solve(cfg, "model.args.hidden_size", 3.7e5, 0.03, quantity="params", then="model.args.mlp_ratio")

The numbers come from fcdm.models.costs (closed forms in DiT's FLOPs convention, no torch).

Matching rule: a job already within `tolerance` of the target keeps its value (so the spec's default
configuration stays the very run other specs train); otherwise the valid value whose GFLOPs (or
parameters) are closest to the target. If that one is not within tolerance and the spec names a second
argument (`then`, a float ratio such as mlp_ratio), the ratio is solved next at that width: the value,
rounded to 4 decimals, whose cost is closest to the target. Valid values: FCDM widths are even (level 2
is 2C wide and its downsampling conv makes 2C/4 channels before PixelUnshuffle(2)), DiT widths multiples
of lcm(num_heads, 4) (whole heads, and the 2-D sin-cos embedding splits the width in four), odd kernel
sizes, any positive integer otherwise. Costs grow with each of these, so a bisection finds the bracket
around the target.
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
    values: dict[str, int | float]  # each solved argument's value (model.args name -> value)
    amount: float  # the GFLOPs (or parameters) it gives
    kept: bool  # the job's own value was already within tolerance

    @property
    def value(self) -> int | float:
        """The first solved argument's value (the width)."""
        return next(iter(self.values.values()))


class NoFit(ValueError):
    """No valid value lands within tolerance; `value` and `amount` are the closest there is."""

    def __init__(self, value: int | float, amount: float, reason: str = ""):
        super().__init__(reason or f"closest value {value} gives {amount:.4g}")
        self.value, self.amount = value, amount


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
        step = 2 if family == "fcdm" else math.lcm(int(kwargs["num_heads"]), 4)
        return step, step
    if arg == "kernel_size":
        return 1, 2
    return 1, 1


def measure(name: str, kwargs: dict, shape: tuple[int, int, int], quantity: str) -> float:
    """GFLOPs (quantity 'flops') or parameters ('params') of an architecture."""
    if quantity == "params":
        return float(architecture_cost(name, kwargs, shape).params)
    return architecture_gflops(name, kwargs, shape)


def solve(cfg: RunConfig, key: str, target: float, tolerance: float, quantity: str = "flops",
          then: str | None = None) -> Solution:
    """The value of `key` (a model.args key), and then of `then` if needed, whose GFLOPs (quantity 'flops') or
    parameters ('params') match `target` within `tolerance` (a fraction); NoFit when none does."""
    name, kwargs, shape = architecture(cfg)
    arg = key.removeprefix("model.args.")
    first, step = value_grid(name, kwargs, arg)

    def g(v: int) -> float:
        return measure(name, {**kwargs, arg: v}, shape, quantity)

    def off(amount: float) -> float:
        return abs(amount / target - 1)

    current = kwargs[arg]
    if off(g(current)) <= tolerance:
        return Solution({arg: current}, g(current), kept=True)
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
    if off(g(best)) <= tolerance:
        return Solution({arg: best}, g(best), kept=False)
    if then is None:
        raise NoFit(best, g(best))
    return _solve_ratio({**kwargs, arg: best}, name, shape, arg, then.removeprefix("model.args."), target,
                        tolerance, quantity)


RATIO_RANGE = (0.25, 16.0)  # where a second, float argument (mlp_ratio) is searched


def _solve_ratio(kwargs: dict, name: str, shape, arg: str, ratio: str, target: float, tolerance: float,
                 quantity: str) -> Solution:
    """The width fixed, the float `ratio` (4 decimals) whose cost is closest to the target; NoFit beyond tolerance."""
    if ratio not in kwargs or isinstance(kwargs[ratio], bool) or not isinstance(kwargs[ratio], (int, float)):
        raise ValueError(f"{name} has no numeric argument '{ratio}' to solve after {arg}")

    def g(r: float) -> float:
        return measure(name, {**kwargs, ratio: r}, shape, quantity)

    lo, hi = RATIO_RANGE
    if not g(lo) <= target <= g(hi):
        r = lo if g(lo) > target else hi
        raise NoFit(kwargs[arg], g(r), f"no {ratio} in [{lo:g}, {hi:g}] reaches the target at {arg}={kwargs[arg]}")
    for _ in range(40):  # the cost is a step function of the ratio (integer hidden widths): bracket its step
        mid = round((lo + hi) / 2, 4)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if g(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda r: abs(g(r) / target - 1))
    if abs(g(best) / target - 1) > tolerance:
        raise NoFit(kwargs[arg], g(best))
    return Solution({arg: kwargs[arg], ratio: best}, g(best), kept=False)
