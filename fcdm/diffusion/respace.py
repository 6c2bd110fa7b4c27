"""Timestep respacing (improved DDPM, Nichol & Dhariwal 2021, section 4).

A model trained on T = 1000 steps can sample with fewer: keep a subset S of timesteps, and define the
new betas from the ORIGINAL alphas_cumprod so that abar at each kept step is unchanged:
beta'_i = 1 - abar[S_i] / abar[S_{i-1}]. The respaced diffusion calls the model with S_i (its
``timestep_map``), the timestep the model saw in training. The paper's evaluation is 250-step DDPM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fcdm.diffusion.gaussian import GaussianDiffusion

Spacing = int | str | Sequence[int]


def space_timesteps(num_timesteps: int, section_counts: Spacing) -> list[int]:
    """The kept timesteps, sorted, exactly as improved-diffusion's / ADM's ``space_timesteps``.

    ``section_counts``: an int N (one section: N steps evenly spaced over [0, T - 1], both ends kept),
    a list of per-section counts or the same as a string "10,15,20" (T split into equal sections, each
    strided separately), or "ddimN" (the DDIM paper's integer stride: range(0, T, stride) of length N).
    The stride is fractional and ACCUMULATED in floating point before rounding (Python's
    round-half-to-even), as ADM does: rounding i * stride instead picks a different step for 278 of
    the 1000 possible N at T = 1000.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            return _ddim_spacing(num_timesteps, section_counts)
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"timestep spacing {section_counts!r} is not an integer, a comma-separated "
                             "list of integers (e.g. '10,15,20') or 'ddimN' (e.g. 'ddim50').") from None
    counts = [section_counts] if isinstance(section_counts, int) else list(section_counts)
    if len(counts) == 1 and not 1 <= counts[0] <= num_timesteps:
        raise ValueError(
            f"cannot respace a {num_timesteps}-step diffusion to {counts[0]} steps; "
            f"choose num_steps between 1 and {num_timesteps}."
        )
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"cannot divide a section of {size} timesteps (of {num_timesteps}) into "
                             f"{count} steps; choose between 1 and {size} per section.")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += stride  # accumulated, not i * stride: the float error decides ADM's rounding
        start += size
    return sorted(set(kept))


def _ddim_spacing(num_timesteps: int, spec: str) -> list[int]:
    """"ddimN": the smallest integer stride whose range(0, T, stride) has exactly N steps."""
    try:
        desired = int(spec[len("ddim"):])
    except ValueError:
        raise ValueError(f"timestep spacing {spec!r} must be 'ddim' followed by a step count, "
                         "e.g. 'ddim50'.") from None
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
            return list(range(0, num_timesteps, stride))
    raise ValueError(f"{spec!r}: no integer stride gives exactly {desired} of {num_timesteps} timesteps; "
                     "use a plain step count instead (fractional stride).")


def respace(diffusion: GaussianDiffusion, num_steps: Spacing) -> GaussianDiffusion:
    """``diffusion`` restricted to the timesteps ``space_timesteps(T, num_steps)`` keeps.

    Composes: respacing a respaced diffusion keeps mapping to the original model timesteps. The fixed
    variance choice and x0 clipping carry over. Returns ``diffusion`` itself when every step is kept.
    """
    if num_steps == diffusion.num_timesteps:
        return diffusion
    kept = torch.tensor(space_timesteps(diffusion.num_timesteps, num_steps), dtype=torch.long)
    if len(kept) == diffusion.num_timesteps:
        return diffusion
    abar = diffusion.alphas_cumprod[kept]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return GaussianDiffusion(
        learn_sigma=diffusion.learn_sigma,
        fixed_variance=diffusion.fixed_variance,
        clip_x0=diffusion.clip_x0,
        betas=1.0 - abar / abar_prev,
        timestep_map=diffusion.timestep_map[kept],
    )
