"""Gaussian diffusion with epsilon prediction and learned variance (improved DDPM, as used by DiT/FCDM).

Conventions (Ho et al. 2020; Nichol & Dhariwal 2021; Peebles & Xie 2023):
- x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t in {0, ..., T-1}, T = 1000 by default.
- The model predicts eps. With ``learn_sigma=True`` it also outputs v in [-1, 1] per channel and the
  reverse variance is exp(frac * log(beta_t) + (1 - frac) * log(beta~_t)) with frac = (v + 1) / 2
  ("learned range").
- Training loss (DiT's LossType.MSE with learned range): mean-flat MSE on eps + L_vlb in bits, where
  L_vlb sees a stop-gradient copy of eps so it only trains the variance.

A denoiser is any callable ``model_fn(x, t) -> out`` with x: (B, C, H, W), t: (B,) long; out is
(B, C, H, W), or (B, 2C, H, W) with learned sigma. The diffusion calls the model with
``timestep_map[t]`` so a respaced diffusion (see ``fcdm.diffusion.respace``) feeds the model the ORIGINAL
timestep indices it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fcdm.diffusion.common import (
    Generators,
    ModelFn,
    check_output,
    generator_draw,
    initial_noise,
    mean_flat,
    progress_iter,
    randn,
)

FIXED_VARIANCES = ("small", "large")


def linear_beta_schedule(num_timesteps: int) -> Tensor:
    """Improved DDPM's "linear" schedule: 1e-4 .. 2e-2 over 1000 steps, endpoints scaled by 1000 / T
    so other T keep the same total noise. Returns (T,) float64."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 2e-2, num_timesteps, dtype=torch.float64)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Tanh approximation of the standard normal CDF (the one improved DDPM's reported NLLs use)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Elementwise log-likelihood (nats) of data ``x`` in [-1, 1], quantised to 256 bins of width 2/255,
    under N(means, exp(log_scales)^2). The two edge bins extend to -inf / +inf."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
    )


# --------------------------------------------------------------------------------------------------
# Gaussian diffusion
# --------------------------------------------------------------------------------------------------


class GaussianDiffusion:
    """DDPM forward process, losses and samplers over ``num_timesteps`` steps.

    Args:
        num_timesteps: T of the linear schedule (ignored in favour of ``len(betas)`` when betas given).
        learn_sigma: model outputs 2C channels (eps, v) and the loss adds L_vlb.
        fixed_variance: reverse variance without learned sigma: "large" = beta_t (the default: DiT's
            and ADM's FIXED_LARGE, with beta~_1 at t = 0), "small" = the posterior variance beta~_t.
        clip_x0: clamp the predicted x_0 to [-1, 1] while sampling (ADM's ``clip_denoised``): right
            for pixel data in [-1, 1], wrong for VAE latents, whose range is wider. Training never clips.
        betas: explicit (T,) schedule; used by respacing.
        timestep_map: (T,) long, the model-facing timestep of each internal index; used by respacing.
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        learn_sigma: bool = True,
        fixed_variance: str = "large",
        clip_x0: bool = False,
        *,
        betas: Tensor | Sequence[float] | None = None,
        timestep_map: Tensor | Sequence[int] | None = None,
    ):
        if fixed_variance not in FIXED_VARIANCES:
            raise ValueError(
                f"fixed_variance={fixed_variance!r} is not one of {FIXED_VARIANCES}; use 'small' "
                "(posterior variance) or 'large' (beta_t)."
            )
        if betas is None:
            if num_timesteps < 1:
                raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
            betas = linear_beta_schedule(num_timesteps)
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1].")
        self.num_timesteps = T = betas.numel()
        self.learn_sigma = learn_sigma
        self.fixed_variance = fixed_variance
        self.clip_x0 = bool(clip_x0)
        if timestep_map is None:
            timestep_map = torch.arange(T)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.long).flatten()
        if self.timestep_map.numel() != T:
            raise ValueError(f"timestep_map has {self.timestep_map.numel()} entries for {T} betas.")

        # All schedule buffers in float64 (improved DDPM does the same in numpy); gathered values are
        # cast to float32 per call, because 1 - abar near t = 0 loses digits in float32.
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta~_t)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 = 0, so its log is clipped to beta~_1 (only matters for the t = 0 decoder term).
        pv_clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]) if T > 1 \
            else self.betas.clone()
        self.posterior_log_variance_clipped = pv_clipped.log()
        one_minus_abar = 1.0 - self.alphas_cumprod
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / one_minus_abar
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / one_minus_abar
        # "large": beta_t, with beta~_1 at t = 0, exactly ADM's FIXED_LARGE
        # (np.append(posterior_variance[1], betas[1:]) for both the variance and its log).
        large = torch.cat([self.posterior_variance[1:2], betas[1:]]) if T > 1 else betas.clone()
        self._fixed_var = self.posterior_variance if fixed_variance == "small" else large
        self._fixed_log_var = (self.posterior_log_variance_clipped if fixed_variance == "small"
                               else large.log())
        self._log_betas = betas.log()

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(num_timesteps={self.num_timesteps}, learn_sigma={self.learn_sigma}, "
                f"fixed_variance={self.fixed_variance!r}, clip_x0={self.clip_x0})")

    # ---- helpers ---------------------------------------------------------------------------------

    def _on_device(self, arr: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        """`arr` as `dtype` on `device`, copied once per device and kept (no host round trip per call). The
        cache holds `arr` itself beside its copy, so a key's id() cannot be reused by another tensor."""
        cache = self.__dict__.setdefault("_device_tables", {})
        key = (id(arr), torch.device(device), dtype)
        hit = cache.get(key)
        if hit is None or hit[0] is not arr:
            hit = cache[key] = (arr, arr.to(device=device, dtype=dtype))
        return hit[1]

    def _extract(self, arr: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """Gather schedule values at t (B,) -> float32 (B, 1, ..., 1) broadcastable to x. The float64 tables
        are cast to float32 once (a cast commutes with the gather: the same values as casting per call)."""
        out = self._on_device(arr, x.device, torch.float32)[t.detach().to(x.device, torch.long)]
        return out.view(-1, *([1] * (x.ndim - 1)))

    def _clip(self, clip_denoised: bool | None) -> bool:
        return self.clip_x0 if clip_denoised is None else bool(clip_denoised)

    def model_timesteps(self, t: Tensor) -> Tensor:
        """Internal indices (B,) -> the timesteps the model was trained on (B,)."""
        return self._on_device(self.timestep_map, t.device, torch.long)[t]

    def sample_t(
        self, batch_size: int, device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Uniform training timesteps: (batch_size,) long in [0, T)."""
        return generator_draw(
            lambda d: torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=d),
            generator, device)

    # ---- forward process -------------------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0). x0, noise: (B, C, H, W); t: (B,) -> (B, C, H, W)."""
        if noise is None:
            noise = randn(x0.shape, generator, x0.device)
        return (self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x_0): (mean (B, C, H, W), variance (B,1,1,1), clipped log variance (B,1,1,1))."""
        mean = (self._extract(self.posterior_mean_coef1, t, x_t) * x0
                + self._extract(self.posterior_mean_coef2, t, x_t) * x_t)
        return (mean, self._extract(self.posterior_variance, t, x_t),
                self._extract(self.posterior_log_variance_clipped, t, x_t))

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """Inverse of ``predict_x0_from_eps``."""
        return ((self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
                / self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t))

    # ---- reverse process -------------------------------------------------------------------------

    def _split_output(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Model output -> (eps (B, C, H, W), v (B, C, H, W) or None), checking the channel count."""
        check_output(out, x, self.learn_sigma,
                     f"it must have {{}} channels ({'eps then variance value v' if self.learn_sigma else 'eps'})")
        C = x.shape[1]
        if self.learn_sigma:
            return out[:, :C], out[:, C:]
        return out, None

    def p_mean_variance_from_output(
        self, out: Tensor, x: Tensor, t: Tensor, clip_denoised: bool = False
    ) -> dict[str, Tensor]:
        """p(x_{t-1} | x_t) from a raw model output (see ``p_mean_variance``)."""
        eps, v = self._split_output(out, x)
        eps = eps.float()
        if v is None:
            var = self._extract(self._fixed_var, t, x).expand_as(x)
            log_var = self._extract(self._fixed_log_var, t, x).expand_as(x)
        else:
            # Interpolate in log space between beta~_t (v = -1) and beta_t (v = +1).
            min_log = self._extract(self.posterior_log_variance_clipped, t, x)
            max_log = self._extract(self._log_betas, t, x)
            frac = (v.float() + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log
            var = log_var.exp()
        x0 = self.predict_x0_from_eps(x, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(x0, x, t)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_x0": x0, "eps": eps}

    def p_mean_variance(
        self, model_fn: ModelFn, x: Tensor, t: Tensor, clip_denoised: bool = False
    ) -> dict[str, Tensor]:
        """Run the model and return p(x_{t-1} | x_t) as a dict of (B, C, H, W) tensors:
        mean, variance, log_variance, pred_x0, eps. x: (B, C, H, W); t: (B,) internal indices."""
        out = model_fn(x, self.model_timesteps(t))
        return self.p_mean_variance_from_output(out, x, t, clip_denoised)

    # ---- losses ----------------------------------------------------------------------------------

    def vb_terms_bpd(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample L_vlb term in bits/dim: (B,). KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
        the discretised decoder NLL -log p(x_0 | x_1) at t == 0 (improved DDPM, eq. 4-5)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance_from_output(out, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self, model_fn: ModelFn, x0: Tensor, t: Tensor, noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample losses for data x0 (B, C, H, W) at timesteps t (B,).

        Returns ``loss`` (B,), ``mse`` (B,) and, with learned sigma, ``vb`` (B,) with loss = mse + vb.
        The vb term uses a detached eps, so it trains only the variance channels (DiT/improved DDPM).
        """
        if noise is None:
            noise = randn(x0.shape, generator, x0.device)
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, self.model_timesteps(t))
        eps, v = self._split_output(out, x_t)
        mse = mean_flat((noise.float() - eps.float()) ** 2)
        terms = {"mse": mse}
        if v is None:
            terms["loss"] = mse
            return terms
        frozen = torch.cat([eps.detach(), v], dim=1)
        terms["vb"] = self.vb_terms_bpd(frozen, x0.float(), x_t.float(), t)
        terms["loss"] = mse + terms["vb"]
        return terms

    # ---- samplers --------------------------------------------------------------------------------

    def p_sample(
        self, model_fn: ModelFn, x: Tensor, t: Tensor, generator: Generators = None,
        clip_denoised: bool | None = None,
    ) -> Tensor:
        """One ancestral step x_t -> x_{t-1}; no noise is added at t == 0. x: (B, C, H, W), t: (B,).
        clip_denoised=None uses the objective's ``clip_x0``."""
        p = self.p_mean_variance(model_fn, x, t, self._clip(clip_denoised))
        noise = randn(x.shape, generator, x.device)
        nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        return p["mean"] + nonzero * torch.exp(0.5 * p["log_variance"]) * noise

    def ddim_sample(
        self, model_fn: ModelFn, x: Tensor, t: Tensor, eta: float = 0.0,
        generator: Generators = None, clip_denoised: bool | None = None,
    ) -> Tensor:
        """One DDIM step x_t -> x_{t-1} (Song et al. 2021, eq. 12); eta = 0 is deterministic.
        clip_denoised=None uses the objective's ``clip_x0``."""
        p = self.p_mean_variance(model_fn, x, t, self._clip(clip_denoised))
        # Re-derive eps from (possibly clipped) x0 so both stay consistent.
        eps = self.predict_eps_from_x0(x, t, p["pred_x0"])
        abar = self._extract(self.alphas_cumprod, t, x)
        abar_prev = self._extract(self.alphas_cumprod_prev, t, x)
        sigma = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
        mean = p["pred_x0"] * abar_prev.sqrt() + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta == 0.0:
            return mean
        nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        return mean + nonzero * sigma * randn(x.shape, generator, x.device)

    def _loop(self, step, shape, noise, generator, progress, device, desc) -> Tensor:
        x = initial_noise(shape, noise, generator, device)
        device = x.device
        steps = range(self.num_timesteps - 1, -1, -1)
        with torch.no_grad():
            for i in progress_iter(steps, self.num_timesteps, desc, progress):
                t = torch.full((shape[0],), i, device=device, dtype=torch.long)
                x = step(x, t)
        return x

    def p_sample_loop(
        self, model_fn: ModelFn, shape: Sequence[int], noise: Tensor | None = None,
        generator: Generators = None, progress: bool = False, *,
        clip_denoised: bool | None = None, device: torch.device | str | None = None,
    ) -> Tensor:
        """DDPM ancestral sampling over all of this diffusion's steps -> x_0 of ``shape``.
        For 250-step sampling use ``respace(diffusion, 250).p_sample_loop(...)`` (fcdm.diffusion.respace)."""
        step = lambda x, t: self.p_sample(model_fn, x, t, generator, clip_denoised)  # noqa: E731
        return self._loop(step, shape, noise, generator, progress, device, "DDPM")

    def ddim_sample_loop(
        self, model_fn: ModelFn, shape: Sequence[int], eta: float = 0.0, noise: Tensor | None = None,
        generator: Generators = None, progress: bool = False, *,
        clip_denoised: bool | None = None, device: torch.device | str | None = None,
    ) -> Tensor:
        """DDIM sampling over all of this diffusion's steps -> x_0 of ``shape``."""
        step = lambda x, t: self.ddim_sample(model_fn, x, t, eta, generator, clip_denoised)  # noqa: E731
        return self._loop(step, shape, noise, generator, progress, device, "DDIM")
