"""Training objectives and samplers: Gaussian diffusion (DDPM/DDIM, `fcdm.diffusion.gaussian`, respaced
by `respace`) and flow matching (Euler ODE/SDE, `flow`), what both share (`common`), classifier-free
guidance (`guidance`), and the registry below that builds an objective by name.

    obj = create_objective("ddpm", num_timesteps=1000, learn_sigma=True, fixed_variance="large", clip_x0=False)
    obj = create_objective("flow", learn_sigma=False, time_scale=1000.0, clip_x0=False)
    losses = obj.training_losses(lambda x, t: model(x, t, y), x0, obj.sample_t(B, device))
    fn = guided_model_fn(model, y, cfg_scale=1.5, null_class=1000)
    x = sample(obj, fn, (B, 4, 32, 32), sampler="ddpm", num_steps=250, generator=g)
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from fcdm.diffusion.common import ModelFn
    from fcdm.diffusion.flow import FlowMatching
    from fcdm.diffusion.gaussian import GaussianDiffusion

# The objectives and samplers import torch: they load on first use (PEP 562), so SAMPLERS (which the
# configuration checks) imports in milliseconds.
_LAZY = {"ModelFn": "common", "FlowMatching": "flow", "GaussianDiffusion": "gaussian",
         "linear_beta_schedule": "gaussian", "guided_model_fn": "guidance", "respace": "respace",
         "space_timesteps": "respace"}

__all__ = [
    "FlowMatching",
    "GaussianDiffusion",
    "ModelFn",
    "OBJECTIVES",
    "SAMPLERS",
    "create_objective",
    "guided_model_fn",
    "linear_beta_schedule",
    "objective_arguments",
    "respace",
    "sample",
    "space_timesteps",
]

# Which samplers each objective allows, keyed by objective name.
SAMPLERS = {"ddpm": ("ddpm", "ddim"), "flow": ("euler", "euler-sde")}


def __getattr__(name: str):
    if name == "OBJECTIVES":  # objective name -> class
        return {"ddpm": __getattr__("GaussianDiffusion"), "flow": __getattr__("FlowMatching")}
    if name in _LAZY:
        value = getattr(importlib.import_module(f"fcdm.diffusion.{_LAZY[name]}"), name)
        # Importing a submodule binds it on this package under its own name: `respace` the module would
        # then shadow `respace` the function. Bind the name asked for, after that import.
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fcdm.diffusion' has no attribute {name!r}")


def objective_arguments(name: str) -> list[str]:
    """The keyword arguments ``create_objective(name, ...)`` takes (the objective's settings)."""
    objectives = __getattr__("OBJECTIVES")
    if name not in objectives:
        raise ValueError(f"unknown objective {name!r}; allowed values are {sorted(objectives)}.")
    params = inspect.signature(objectives[name].__init__).parameters.values()
    # betas / timestep_map are respacing internals, not settings.
    return [p.name for p in params if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]


def create_objective(name: str, **kwargs: Any) -> GaussianDiffusion | FlowMatching:
    """Build an objective by name with its settings as keyword arguments:

    - "ddpm" -> GaussianDiffusion(num_timesteps=1000, learn_sigma=True, fixed_variance="large",
      clip_x0=False)
    - "flow" -> FlowMatching(time_scale=1000.0, learn_sigma=False, clip_x0=False)

    An argument the objective does not take raises a ValueError naming the allowed ones.
    """
    allowed = objective_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"objective {name!r} does not take {', '.join(unknown)}; "
                         f"allowed arguments: {', '.join(allowed)}.")
    return __getattr__("OBJECTIVES")[name](**kwargs)


def sample(
    objective: GaussianDiffusion | FlowMatching,
    model_fn: ModelFn,
    shape: Sequence[int],
    sampler: str,
    num_steps: int,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    progress: bool = False,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw samples of ``shape`` (B, C, H, W) with ``num_steps`` model evaluations (per batch item).

    "ddpm" / "ddim" respace the Gaussian diffusion to ``num_steps`` (250-step DDPM is the paper's
    evaluation); "euler" / "euler-sde" integrate the flow from noise to data. Both clip the predicted
    clean data to [-1, 1] when the objective was built with ``clip_x0=True``.
    """
    objectives = __getattr__("OBJECTIVES")  # heavy: torch, only when sampling (and never the bare submodules)
    GaussianDiffusion, FlowMatching, respace = objectives["ddpm"], objectives["flow"], __getattr__("respace")
    kind = "ddpm" if isinstance(objective, GaussianDiffusion) else "flow" \
        if isinstance(objective, FlowMatching) else None
    if kind is None:
        raise ValueError(
            f"sample() needs a GaussianDiffusion or FlowMatching, got {type(objective).__name__}."
        )
    if sampler not in SAMPLERS[kind]:
        raise ValueError(
            f"sampler {sampler!r} does not apply to a {type(objective).__name__} objective "
            f"({kind!r}); it allows {list(SAMPLERS[kind])}."
        )
    common = dict(noise=noise, generator=generator, progress=progress, device=device)
    if kind == "ddpm":
        diffusion = respace(objective, num_steps)
        if sampler == "ddpm":
            return diffusion.p_sample_loop(model_fn, shape, **common)
        return diffusion.ddim_sample_loop(model_fn, shape, eta=0.0, **common)
    if sampler == "euler":
        return objective.euler_ode_sample(model_fn, shape, num_steps, **common)
    return objective.euler_sde_sample(model_fn, shape, num_steps, **common)
