"""Timestep respacing (improved DDPM, Nichol & Dhariwal 2021, section 4).

A model trained on T = 1000 steps can sample with fewer: keep a subset S of timesteps, and define the
new betas from the ORIGINAL alphas_cumprod so that abar at each kept step is unchanged:
beta'_i = 1 - abar[S_i] / abar[S_{i-1}]. The respaced diffusion calls the model with S_i (its
``timestep_map``), the timestep the model saw in training. The paper's evaluation is 250-step DDPM.
"""

from __future__ import annotations

import torch

from .gaussian import GaussianDiffusion


def space_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` evenly spaced indices in [0, num_timesteps), always including 0 and T - 1
    (improved DDPM's ``space_timesteps`` with a single section, rounded the same way)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"cannot respace a {num_timesteps}-step diffusion to {num_steps} steps; "
            f"choose num_steps between 1 and {num_timesteps}."
        )
    if num_steps == 1:
        return [0]
    stride = (num_timesteps - 1) / (num_steps - 1)
    return [round(i * stride) for i in range(num_steps)]


def respace(diffusion: GaussianDiffusion, num_steps: int) -> GaussianDiffusion:
    """``diffusion`` restricted to ``num_steps`` evenly spaced timesteps.

    Composes: respacing a respaced diffusion keeps mapping to the original model timesteps.
    Returns ``diffusion`` itself when num_steps equals its step count.
    """
    if num_steps == diffusion.num_timesteps:
        return diffusion
    kept = torch.tensor(space_timesteps(diffusion.num_timesteps, num_steps), dtype=torch.long)
    abar = diffusion.alphas_cumprod[kept]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return GaussianDiffusion(
        learn_sigma=diffusion.learn_sigma,
        fixed_variance=diffusion.fixed_variance,
        betas=1.0 - abar / abar_prev,
        timestep_map=diffusion.timestep_map[kept],
    )
