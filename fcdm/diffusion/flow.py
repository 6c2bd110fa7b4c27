"""Flow matching on the linear path with velocity prediction (SiT convention; Ma et al. 2024).

x_t = t * x1 + (1 - t) * x0 with x0 ~ N(0, I) noise and x1 data: t = 0 is noise, t = 1 is data.
The model regresses the velocity u = x1 - x0 with an unweighted MSE, and sampling integrates
dx/dt = v(x, t) from t = 0 to t = 1.

Time scaling: the model is called with ``t * time_scale`` (default 1000), so a sinusoidal timestep
embedder built for DDPM's integer timesteps 0..999 sees the same numeric range and frequencies under
both objectives; an ablation then changes only the objective, not the embedder's effective input.
(SiT itself feeds t in [0, 1]; set ``time_scale=1.0`` to reproduce that.)

x0 clipping (``clip_x0=True``, for pixel data in [-1, 1]): while sampling, the data the velocity
implies, x1_hat = x_t + (1 - t) v, is clamped to [-1, 1] and the step uses the velocity consistent
with it, v' = v + (clamp(x1_hat) - x1_hat) / (1 - t) = (clamp(x1_hat) - x_t) / (1 - t). On the linear
path an Euler step x + h v equals the DDIM step from (x1_hat, implied noise), so this is exactly DDIM's
``clip_denoised`` (clip the data estimate, re-derive the noise from x_t); v' = v where nothing is
clipped. The samplers never evaluate at t = 1, so 1 - t > 0. Training never clips.

A denoiser is ``model_fn(x, t) -> out``, x: (B, C, H, W), t: (B,) float; out is (B, C, H, W), or
(B, 2C, H, W) when ``learn_sigma=True`` (a DDPM-shaped head), of which the first C are the velocity
and the rest are ignored (they receive no gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fcdm.diffusion.common import ModelFn, check_output, generator_draw, initial_noise, mean_flat, progress_iter, randn


class FlowMatching:
    """Linear-path flow matching: losses and Euler ODE / Euler-Maruyama SDE samplers.

    Args:
        time_scale: multiplier applied to t in [0, 1] before calling the model (see module docstring).
        learn_sigma: the model has 2C output channels; only the first C (velocity) are used.
        clip_x0: clamp the implied clean data to [-1, 1] while sampling (see module docstring).
    """

    def __init__(self, time_scale: float = 1000.0, learn_sigma: bool = False, clip_x0: bool = False):
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}; 1000.0 (DDPM's timestep "
                             "range, the default) or 1.0 (SiT's t in [0, 1]).")
        self.time_scale = float(time_scale)
        self.learn_sigma = learn_sigma
        self.clip_x0 = bool(clip_x0)

    def __repr__(self) -> str:
        return (f"FlowMatching(time_scale={self.time_scale}, learn_sigma={self.learn_sigma}, "
                f"clip_x0={self.clip_x0})")

    # ---- helpers ---------------------------------------------------------------------------------

    def velocity(self, model_fn: ModelFn, x: Tensor, t: Tensor) -> Tensor:
        """Model velocity at x (B, C, H, W), t (B,) in [0, 1] -> (B, C, H, W)."""
        out = model_fn(x, t * self.time_scale)
        check_output(out, x, self.learn_sigma, "the flow objective expects {} channels")
        return out[:, :x.shape[1]]

    def sampling_velocity(self, model_fn: ModelFn, x: Tensor, t: Tensor) -> Tensor:
        """The velocity the samplers step with: the model's, or with ``clip_x0`` the one whose implied
        data x_t + (1 - t) v is clamped to [-1, 1]. x: (B, C, H, W), t: (B,) in [0, 1) -> (B, C, H, W)."""
        v = self.velocity(model_fn, x, t)
        if not self.clip_x0:
            return v
        rest = 1.0 - self._bcast(t, x).to(v.dtype)
        x1 = x + rest * v
        return v + (x1.clamp(-1.0, 1.0) - x1) / rest

    @staticmethod
    def _bcast(t: Tensor, x: Tensor) -> Tensor:
        return t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)

    def sample_t(
        self, batch_size: int, device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Uniform training times: (batch_size,) float in [0, 1)."""
        return generator_draw(lambda d: torch.rand((batch_size,), generator=generator, device=d),
                                        generator, device)

    # ---- training --------------------------------------------------------------------------------

    def interpolate(self, x1: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = t x1 + (1 - t) x0. x1, noise: (B, C, H, W); t: (B,) -> (B, C, H, W)."""
        tb = self._bcast(t, x1)
        return tb * x1 + (1.0 - tb) * noise

    def training_losses(
        self, model_fn: ModelFn, x1: Tensor, t: Tensor | None = None, noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Velocity MSE for data x1 (B, C, H, W): returns ``loss`` (B,) and ``mse`` (B,) (equal)."""
        if t is None:
            t = self.sample_t(x1.shape[0], x1.device, generator)
        if noise is None:
            noise = randn(x1.shape, generator, x1.device)
        x_t = self.interpolate(x1, t, noise)
        v = self.velocity(model_fn, x_t, t)
        mse = mean_flat((v.float() - (x1 - noise).float()) ** 2)
        return {"loss": mse, "mse": mse}

    # ---- samplers --------------------------------------------------------------------------------

    def sde_drift(self, model_fn: ModelFn, x: Tensor, t: Tensor, diffusion_norm: float = 1.0) -> Tensor:
        """Drift of the reverse-time-consistent SDE dx = [v + w(t) score] dt + sqrt(2 w(t)) dW with
        SiT's "sigma" diffusion form w(t) = norm * sigma_t = norm * (1 - t).

        For the linear path score = (t v - x) / (1 - t) (SiT's get_score_from_velocity), so
        w * score = norm * (t v - x): the 1 / (1 - t) cancels and the drift is finite at t = 1.
        """
        v = self.sampling_velocity(model_fn, x, t)
        return v + diffusion_norm * (self._bcast(t, x) * v - x)

    def euler_ode_sample(
        self, model_fn: ModelFn, shape: Sequence[int], num_steps: int, noise: Tensor | None = None,
        generator: torch.Generator | None = None, progress: bool = False, *,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Euler integration of dx/dt = v from t = 0 (noise) to 1 (data) in ``num_steps`` equal steps
        (``num_steps`` model evaluations). Returns (B, C, H, W)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
        x = initial_noise(shape, noise, generator, device)
        ts = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
        with torch.no_grad():
            for i in progress_iter(range(num_steps), num_steps, "Euler ODE", progress):
                t = torch.full((shape[0],), float(ts[i]), device=x.device)
                x = x + self.sampling_velocity(model_fn, x, t) * float(ts[i + 1] - ts[i])
        return x

    def euler_sde_sample(
        self, model_fn: ModelFn, shape: Sequence[int], num_steps: int, noise: Tensor | None = None,
        generator: torch.Generator | None = None, progress: bool = False, *,
        diffusion_norm: float = 1.0, last_step_size: float = 0.04, last_step: str = "euler",
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Euler-Maruyama sampling in SiT's layout (``num_steps`` model evaluations in all).

        num_steps - 1 stochastic steps on linspace(0, 1 - last_step_size, num_steps) (0.04 is SiT's
        default), then one deterministic step of size ``last_step_size`` and no noise:
        ``last_step="euler"`` uses the velocity (x + h v; SiT's "Euler"), ``"mean"`` the SDE drift
        (SiT's "Mean", its sample.py default). "euler" is the default here because the SDE drift's
        denoising term is stiff at t = 1 - h: for data dimensions with std comparable to h it
        overshoots and collapses their variance. Returns (B, C, H, W).
        """
        if last_step not in ("euler", "mean"):
            raise ValueError(f"last_step={last_step!r} must be 'euler' (velocity) or 'mean' (SDE drift).")
        if num_steps < 2:
            raise ValueError(f"euler-sde needs num_steps >= 2 (got {num_steps}): one stochastic "
                             "step plus the final deterministic step.")
        if not 0.0 < last_step_size < 1.0:
            raise ValueError(f"last_step_size must lie in (0, 1), got {last_step_size}.")
        x = initial_noise(shape, noise, generator, device)
        t1 = 1.0 - last_step_size
        ts = torch.linspace(0.0, t1, num_steps, dtype=torch.float64)
        dt = float(ts[1] - ts[0])
        with torch.no_grad():
            for i in progress_iter(range(num_steps - 1), num_steps, "Euler SDE", progress):
                ti = float(ts[i])
                t = torch.full((shape[0],), ti, device=x.device)
                drift = self.sde_drift(model_fn, x, t, diffusion_norm)
                g = (2.0 * diffusion_norm * (1.0 - ti) * dt) ** 0.5  # sqrt(2 w(t) dt)
                x = x + drift * dt + g * randn(x.shape, generator, x.device)
            t = torch.full((shape[0],), t1, device=x.device)
            if last_step == "euler":
                x = x + self.sampling_velocity(model_fn, x, t) * last_step_size
            else:
                x = x + self.sde_drift(model_fn, x, t, diffusion_norm) * last_step_size
        return x
