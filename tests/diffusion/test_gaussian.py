"""Gaussian diffusion, respacing, guidance and the objective/sampler factory, checked against closed forms."""

import math

import numpy as np
import pytest
import torch

from fcdm.diffusion import (
    FlowMatching,
    GaussianDiffusion,
    create_objective,
    guided_model_fn,
    respace,
    sample,
    space_timesteps,
)

# Independent reference schedule (improved DDPM "linear", T = 1000), computed in numpy.
BETAS_REF = np.linspace(1e-4, 2e-2, 1000, dtype=np.float64)
ABAR_REF = np.cumprod(1.0 - BETAS_REF)

# Per-dimension Gaussian data N(MU, S^2) in a (1, 1, 2, 2) layout.
MU = torch.tensor([0.5, -0.3, 0.0, 0.2]).view(1, 1, 2, 2)
S = torch.tensor([0.4, 0.6, 1.0, 0.8]).view(1, 1, 2, 2)
N_SAMPLES = 10_000


def _abar(t: torch.Tensor) -> torch.Tensor:
    """Reference abar at ORIGINAL timesteps t (B,) -> (B, 1, 1, 1) float32."""
    return torch.from_numpy(ABAR_REF[t.cpu().numpy()]).float().view(-1, 1, 1, 1)


def optimal_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[eps | x_t] for Gaussian data: (x_t - sqrt(abar) mu) sqrt(1 - abar) / (abar s^2 + 1 - abar)."""
    a = _abar(t)
    return (x - a.sqrt() * MU) * (1 - a).sqrt() / (a * S**2 + 1 - a)


def _check_recovers(x: torch.Tensor, std_tol: float, mean_tol: float = 0.03) -> None:
    mean_err = (x.mean(0, keepdim=True) - MU).abs().max().item()
    std_ratio = x.std(0, keepdim=True) / S
    assert mean_err < mean_tol, mean_err
    assert (std_ratio - 1).abs().max().item() < std_tol, std_ratio.flatten()


# --------------------------------------------------------------------------------------------------
# Schedule, forward process, posterior
# --------------------------------------------------------------------------------------------------


def test_linear_schedule_matches_improved_ddpm():
    d = GaussianDiffusion()
    assert d.betas.dtype == torch.float64 and d.alphas_cumprod.dtype == torch.float64
    np.testing.assert_allclose(d.betas.numpy(), BETAS_REF, rtol=1e-12)
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), ABAR_REF, rtol=1e-10)
    # T = 500 scales both endpoints by 1000 / T.
    d500 = GaussianDiffusion(num_timesteps=500)
    assert d500.betas[0].item() == pytest.approx(2e-4) and d500.betas[-1].item() == pytest.approx(4e-2)


def test_q_sample_statistics():
    d = GaussianDiffusion()
    x0 = torch.tensor([-1.0, -0.2, 0.3, 0.9]).view(1, 1, 2, 2)
    M, t_val = 200_000, 300
    g = torch.Generator().manual_seed(0)
    xt = d.q_sample(x0.expand(M, -1, -1, -1), torch.full((M,), t_val), generator=g)
    a = ABAR_REF[t_val]
    torch.testing.assert_close(xt.mean(0), (math.sqrt(a) * x0)[0], atol=0.01, rtol=0)
    torch.testing.assert_close(xt.var(0), torch.full((1, 2, 2), 1 - a), atol=0.01, rtol=0)


def test_q_posterior_matches_closed_form():
    d = GaussianDiffusion()
    t = torch.tensor([0, 1, 10, 500, 999])
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(5, 2, 3, 3, generator=g), torch.randn(5, 2, 3, 3, generator=g)
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    tn = t.numpy()
    a, b = ABAR_REF[tn], BETAS_REF[tn]
    a_prev = np.where(tn > 0, ABAR_REF[np.maximum(tn - 1, 0)], 1.0)
    c0 = torch.tensor(np.sqrt(a_prev) * b / (1 - a)).float().view(-1, 1, 1, 1)
    ct = torch.tensor(np.sqrt(1 - b) * (1 - a_prev) / (1 - a)).float().view(-1, 1, 1, 1)
    var_ref = (1 - a_prev) / (1 - a) * b
    torch.testing.assert_close(mean, c0 * x0 + ct * xt, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var.flatten(), torch.tensor(var_ref).float(), rtol=1e-5, atol=0)
    assert var[0].item() == 0.0  # q(x_{-1} | x_0, x_0) is a point mass
    # log variance is clipped at t = 0 to the t = 1 value (no log of zero).
    torch.testing.assert_close(log_var.flatten()[1:], torch.tensor(np.log(var_ref[1:])).float())
    assert log_var.flatten()[0].item() == pytest.approx(math.log(var_ref[1]), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def _fixed_output(eps: torch.Tensor, v: float):
    """A model_fn that ignores its input and returns (eps, v) channels."""
    return lambda x, t: torch.cat([eps, torch.full_like(eps, v)], dim=1)


def test_vb_is_zero_for_perfect_predictor():
    """True eps and v = -1 (variance = posterior variance) give p = q exactly, so KL = 0 for t > 0."""
    d = GaussianDiffusion(learn_sigma=True)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(8, 3, 4, 4, generator=g) * 2 - 1  # a point mass per sample
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([1, 2, 50, 200, 400, 700, 900, 999])
    out = d.training_losses(_fixed_output(noise, -1.0), x0, t, noise=noise)
    assert out["vb"].abs().max().item() < 1e-4
    assert out["mse"].abs().max().item() == 0.0
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])


def test_vb_matches_closed_form_kl_for_max_variance():
    """v = +1 predicts beta_t with the exact mean: KL(N(m, beta~) || N(m, beta)) per dim, in bits."""
    d = GaussianDiffusion(learn_sigma=True)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    t = torch.tensor([1, 10, 300, 999])
    vb = d.training_losses(_fixed_output(noise, 1.0), x0, t, noise=noise)["vb"]
    tn = t.numpy()
    b = BETAS_REF[tn]
    bt = (1 - ABAR_REF[tn - 1]) / (1 - ABAR_REF[tn]) * b
    ref = 0.5 * (-1 + np.log(b / bt) + bt / b) / math.log(2)
    torch.testing.assert_close(vb, torch.tensor(ref).float(), rtol=1e-4, atol=1e-7)


def test_decoder_nll_at_t0():
    """At t = 0 the vb term is the discretised Gaussian NLL of x0 (bins of width 2/255), in bits."""
    d = GaussianDiffusion(learn_sigma=True)
    x0 = torch.tensor([-1.0, -0.5, 0.0, 1.0]).view(1, 1, 2, 2)
    noise, delta = torch.zeros_like(x0), 0.3
    t = torch.zeros(1, dtype=torch.long)
    vb = d.training_losses(_fixed_output(noise + delta, 0.0), x0, t, noise=noise)["vb"]
    # Independent computation: predicted mean = x0_hat (coef1 = 1, coef2 = 0 at t = 0).
    a0 = ABAR_REF[0]
    m = x0 - math.sqrt((1 - a0) / a0) * delta
    bt1 = (1 - ABAR_REF[0]) / (1 - ABAR_REF[1]) * BETAS_REF[1]
    sigma = math.exp(0.25 * (math.log(BETAS_REF[0]) + math.log(bt1)))  # v = 0: geometric mean
    cdf = lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # noqa: E731
    upper, lower = cdf((x0 - m + 1 / 255) / sigma), cdf((x0 - m - 1 / 255) / sigma)
    p = torch.where(x0 < -0.999, upper, torch.where(x0 > 0.999, 1 - lower, upper - lower))
    ref = (-torch.log(p) / math.log(2)).mean()
    assert vb.item() == pytest.approx(ref.item(), rel=2e-2)


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_training_losses_shapes_finite_and_gradients(learn_sigma):
    torch.manual_seed(0)
    C = 3
    net = torch.nn.Conv2d(C, 2 * C if learn_sigma else C, 3, padding=1)
    d = GaussianDiffusion(learn_sigma=learn_sigma)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(6, C, 8, 8, generator=g)
    seen = {}

    def model_fn(x, t):
        seen["out"] = out = net(x)
        out.retain_grad()
        return out

    losses = d.training_losses(model_fn, x0, d.sample_t(6, generator=g), generator=g)
    assert set(losses) == ({"loss", "mse", "vb"} if learn_sigma else {"loss", "mse"})
    for v in losses.values():
        assert v.shape == (6,) and torch.isfinite(v).all()
    losses["loss"].mean().backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    if learn_sigma:
        # The vb term is trained with a stop-gradient on eps: only the variance channels see it.
        net.zero_grad()
        losses = d.training_losses(model_fn, x0, torch.randint(1, 1000, (6,), generator=g), generator=g)
        losses["vb"].sum().backward()
        grad = seen["out"].grad
        assert grad[:, :C].abs().max() == 0 and grad[:, C:].abs().max() > 0


def test_wrong_output_channels_raise():
    d = GaussianDiffusion(learn_sigma=True)
    x0 = torch.zeros(2, 4, 4, 4)
    with pytest.raises(ValueError, match="must have 8 channels"):
        d.training_losses(lambda x, t: x, x0, torch.tensor([1, 2]))


# --------------------------------------------------------------------------------------------------
# Respacing
# --------------------------------------------------------------------------------------------------


def adm_space_timesteps(num_timesteps, section_counts):
    """improved-diffusion's respace.space_timesteps (openai/improved-diffusion, MIT), re-typed from the
    published algorithm as the reference: a fractional stride ACCUMULATED in floating point."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired_count = int(section_counts[len("ddim"):])
            for i in range(1, num_timesteps):
                if len(range(0, num_timesteps, i)) == desired_count:
                    return set(range(0, num_timesteps, i))
            raise ValueError("no integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx, taken_steps = 0.0, []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


def test_spacing_matches_adm_for_every_step_count():
    """Rounding i * stride instead of the accumulated stride picks other steps for 278 of these N."""
    for n in range(1, 1001):
        assert space_timesteps(1000, n) == sorted(adm_space_timesteps(1000, [n])), n
    for spec in ["10,15,20", "ddim50", "ddim25", "250"]:
        assert space_timesteps(1000, spec) == sorted(adm_space_timesteps(1000, spec)), spec
    assert space_timesteps(300, [10, 15, 20]) == sorted(adm_space_timesteps(300, [10, 15, 20]))
    kept = space_timesteps(1000, 21)  # one of the 278: not [round(i * 999 / 20) for i in range(21)]
    assert kept != [round(i * 999 / 20) for i in range(21)] and kept[0] == 0 and kept[-1] == 999
    for bad, needle in [("ddim999", "no integer stride"), ("fifty", "comma-separated"), ("500,600", "section of 500")]:
        with pytest.raises(ValueError, match=needle):
            space_timesteps(1000, bad)


def test_respacing_keeps_alphas_cumprod_and_maps_timesteps():
    base = GaussianDiffusion()
    kept = sorted(adm_space_timesteps(1000, "250"))  # DiT passes str(num_sampling_steps)
    assert space_timesteps(1000, 250) == kept and kept[0] == 0 and kept[-1] == 999
    sp = respace(base, 250)
    assert sp.num_timesteps == 250 and sp.timestep_map.tolist() == kept
    np.testing.assert_allclose(sp.alphas_cumprod.numpy(), ABAR_REF[kept], rtol=1e-10)
    # Respacing composes: still maps to original indices with the original abar.
    sp10 = respace(sp, 10)
    assert set(sp10.timestep_map.tolist()) <= set(kept)
    np.testing.assert_allclose(sp10.alphas_cumprod.numpy(), ABAR_REF[sp10.timestep_map.numpy()], rtol=1e-10)
    ddim = respace(base, "ddim50")
    assert ddim.timestep_map.tolist() == list(range(0, 1000, 20))
    assert respace(base, 1000) is base
    with pytest.raises(ValueError, match="between 1 and 1000"):
        respace(base, 2000)


# --------------------------------------------------------------------------------------------------
# Fixed variance without learned sigma, x0 clipping
# --------------------------------------------------------------------------------------------------


def fixed_variances(d: GaussianDiffusion, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(variance, log variance) per internal step (T,) that ``d`` uses with a fixed-variance model."""
    t = torch.arange(d.num_timesteps)
    p = d.p_mean_variance_from_output(torch.zeros(d.num_timesteps, *x.shape[1:]), x.expand(d.num_timesteps,
                                                                                             *x.shape[1:]), t)
    return p["variance"][:, 0, 0, 0].double().numpy(), p["log_variance"][:, 0, 0, 0].double().numpy()


def adm_fixed_variances(betas: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ADM's gaussian_diffusion.py: FIXED_LARGE and FIXED_SMALL (variance, log variance) in numpy."""
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    posterior = betas * (1.0 - abar_prev) / (1.0 - abar)
    large = np.append(posterior[1], betas[1:])
    return {"large": (large, np.log(large)),
            "small": (posterior, np.log(np.append(posterior[1], posterior[1:])))}


def test_fixed_variance_is_adm_fixed_large_by_default_and_small_on_request():
    x = torch.zeros(1, 1, 1, 1)
    ref = adm_fixed_variances(BETAS_REF)
    assert create_objective("ddpm", learn_sigma=False).fixed_variance == "large"
    for kind, d in [("large", GaussianDiffusion(learn_sigma=False)),
                    ("large", create_objective("ddpm", num_timesteps=1000, learn_sigma=False, fixed_variance="large",
                                               clip_x0=False)),
                    ("small", GaussianDiffusion(learn_sigma=False, fixed_variance="small"))]:
        var, log_var = fixed_variances(d, x)
        np.testing.assert_allclose(var, ref[kind][0], rtol=1e-6)
        np.testing.assert_allclose(log_var, ref[kind][1], rtol=1e-6)
    var, _ = fixed_variances(GaussianDiffusion(learn_sigma=False), x)
    np.testing.assert_allclose(var[1:], BETAS_REF[1:], rtol=1e-6)  # beta_t, except t = 0
    # Respacing keeps the choice: the respaced process's own FIXED_LARGE / FIXED_SMALL.
    for kind in ("large", "small"):
        sp = respace(GaussianDiffusion(learn_sigma=False, fixed_variance=kind), 50)
        assert sp.fixed_variance == kind
        kept = sp.timestep_map.numpy()
        betas = 1.0 - ABAR_REF[kept] / np.append(1.0, ABAR_REF[kept][:-1])
        np.testing.assert_allclose(fixed_variances(sp, x)[0], adm_fixed_variances(betas)[kind][0], rtol=1e-6)


def point_mass_eps(value: float):
    """E[eps | x_t] for data that is always ``value``: predicts x0 = value, outside [-1, 1] for 3.0."""
    return lambda x, t: (x - _abar(t).sqrt() * value) / (1 - _abar(t)).sqrt()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clip_x0_clamps_the_predicted_x0_while_sampling(sampler):
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    off = create_objective("ddpm", num_timesteps=1000, learn_sigma=False, fixed_variance="large", clip_x0=False)
    on = create_objective("ddpm", num_timesteps=1000, learn_sigma=False, fixed_variance="large", clip_x0=True)
    assert not GaussianDiffusion().clip_x0 and respace(on, 20).clip_x0  # default off; respacing keeps it
    far = sample(off, point_mass_eps(3.0), (16, 1, 2, 2), sampler, 20, generator=g())
    torch.testing.assert_close(far, torch.full_like(far, 3.0), atol=1e-3, rtol=0)  # unclipped: the data
    clipped = sample(on, point_mass_eps(3.0), (16, 1, 2, 2), sampler, 20, generator=g())
    torch.testing.assert_close(clipped, torch.ones_like(clipped), atol=1e-5, rtol=0)
    # Inside [-1, 1] clipping changes nothing.
    inside = [sample(d, point_mass_eps(0.5), (16, 1, 2, 2), sampler, 20, generator=g()) for d in (off, on)]
    torch.testing.assert_close(inside[0], inside[1], atol=1e-6, rtol=0)
    # An explicit clip_denoised overrides the objective's setting.
    loop = respace(on, 20).p_sample_loop if sampler == "ddpm" else respace(on, 20).ddim_sample_loop
    unclipped = loop(point_mass_eps(3.0), (16, 1, 2, 2), generator=g(), clip_denoised=False)
    torch.testing.assert_close(unclipped, far, atol=1e-5, rtol=0)


def test_respaced_sampler_calls_model_with_original_timesteps():
    sp = respace(GaussianDiffusion(learn_sigma=False), 25)
    calls = []

    def model_fn(x, t):
        calls.append(t.tolist())
        return torch.zeros_like(x)

    sp.p_sample_loop(model_fn, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert [c[0] for c in calls] == sorted(space_timesteps(1000, 25), reverse=True)
    assert all(len(set(c)) == 1 and len(c) == 3 for c in calls)


# --------------------------------------------------------------------------------------------------
# Samplers recover a known Gaussian
# --------------------------------------------------------------------------------------------------


def test_ddpm_with_optimal_variance_recovers_gaussian_exactly():
    """For Gaussian data the reverse conditional is Gaussian with mean c1 E[x0|x_t] + c2 x_t and
    variance beta~ + c1^2 Var(x0|x_t) (Bao et al. 2022), so a learned-range output that encodes this
    variance makes even 50 respaced DDPM steps exact: this exercises eps, v, respacing and the map."""
    sp = respace(GaussianDiffusion(learn_sigma=True), 50)
    orig = sp.timestep_map.numpy()
    index_of = {int(o): i for i, o in enumerate(orig)}

    def model_fn(x, t):
        i = np.array([index_of[int(tt)] for tt in t])
        a, a_prev = ABAR_REF[orig[i]], np.where(i > 0, ABAR_REF[orig[np.maximum(i - 1, 0)]], 1.0)
        beta = 1 - a / a_prev
        beta_tilde = np.where(i > 0, beta * (1 - a_prev) / (1 - a), beta)  # i = 0: no noise anyway
        c1 = beta * np.sqrt(a_prev) / (1 - a)
        view = lambda z: torch.tensor(z).float().view(-1, 1, 1, 1)  # noqa: E731
        a_t = view(a)
        var_x0 = S**2 * (1 - a_t) / (a_t * S**2 + 1 - a_t)
        target = view(beta_tilde) + view(c1) ** 2 * var_x0
        frac = (target.log() - view(np.log(beta_tilde))) / view(np.log(beta) - np.log(beta_tilde))
        v = torch.where(view(i) > 0, 2 * frac - 1, torch.zeros_like(frac))
        return torch.cat([optimal_eps(x, t), v.expand_as(x)], dim=1)

    x = sp.p_sample_loop(model_fn, (N_SAMPLES, 1, 2, 2), generator=torch.Generator().manual_seed(5))
    _check_recovers(x, std_tol=0.03)


def test_ddpm_250_steps_posterior_variance_recovers_gaussian():
    """The paper's evaluation sampler (250 respaced steps), fixed small variance: it slightly
    underestimates the data spread (the missing c1^2 Var(x0|x_t) term), hence the 6% tolerance."""
    d = create_objective("ddpm", learn_sigma=False, fixed_variance="small")
    x = sample(d, optimal_eps, (N_SAMPLES, 1, 2, 2), "ddpm", 250, generator=torch.Generator().manual_seed(6))
    _check_recovers(x, std_tol=0.06)


def test_ddim_recovers_gaussian():
    d = GaussianDiffusion(learn_sigma=True)
    model_fn = lambda x, t: torch.cat([optimal_eps(x, t), torch.zeros_like(x)], 1)  # noqa: E731
    x = sample(d, model_fn, (N_SAMPLES, 1, 2, 2), "ddim", 100, generator=torch.Generator().manual_seed(7))
    _check_recovers(x, std_tol=0.05)


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_same_seed_same_samples(sampler):
    d = GaussianDiffusion(learn_sigma=False)
    draw = lambda seed: sample(d, optimal_eps, (4, 1, 2, 2), sampler, 20,  # noqa: E731
                               generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    sp = respace(d, 20)
    ddim = lambda seed: sp.ddim_sample_loop(optimal_eps, (4, 1, 2, 2), eta=1.0,  # noqa: E731
                                            generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ddim(3), ddim(3)) and not torch.equal(ddim(3), ddim(4))
    t = lambda seed: d.sample_t(16, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(t(0), t(0)) and t(0).dtype == torch.long and 0 <= t(0).min() and t(0).max() < 1000


def test_explicit_noise_and_progress_bar():
    d = GaussianDiffusion(learn_sigma=False)
    noise = torch.randn(2, 1, 2, 2)
    a = sample(d, optimal_eps, (2, 1, 2, 2), "ddim", 5, noise=noise)
    b = sample(d, optimal_eps, (2, 1, 2, 2), "ddim", 5, noise=noise.clone(), progress=True)
    assert a.shape == (2, 1, 2, 2) and torch.equal(a, b)
    with pytest.raises(ValueError, match="expected"):
        sample(d, optimal_eps, (3, 1, 2, 2), "ddim", 5, noise=noise)


# --------------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------------


class ToyConditional:
    """model(x, t, y) -> (B, 2C): eps channels depend on y; counts calls and batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, y):
        self.batches.append(x.shape[0])
        yy = y.float().view(-1, 1, 1, 1)
        C = x.shape[1]
        scale = torch.arange(1, C + 1, dtype=x.dtype).view(1, C, 1, 1)
        return torch.cat([x * scale + yy, x - yy], dim=1)


def test_guidance_refused_for_a_model_without_class_input():
    model = ToyConditional()
    model.class_conditional = False  # as FCDM(conditioning="unconditional") sets it
    y = torch.tensor([2, 5])
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        guided_model_fn(model, y, 2.0, null_class=10)
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([10, 10])
    for scale in (1.0, 0.5):  # allowed, and never a doubled batch: both halves would be the same
        model.batches.clear()
        assert torch.equal(guided_model_fn(model, y, scale, null_class=10)(x, t), model(x, t, y))
        assert model.batches == [2, 2]


def test_cfg_scale_one_is_conditional_model():
    model, y = ToyConditional(), torch.tensor([2, 5])
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([10, 10])
    out = guided_model_fn(model, y, 1.0, null_class=10)(x, t)
    assert torch.equal(out, model(x, t, y)) and model.batches == [2, 2]


def test_cfg_combines_in_one_doubled_batch_and_leaves_unguided_channels():
    model, y, s, null = ToyConditional(), torch.tensor([2, 5]), 4.0, 10
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([7, 7])
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, null))
    model.batches.clear()
    out = guided_model_fn(model, y, s, null, guided_channels=3)(x, t)
    assert model.batches == [4]  # conditional and unconditional in one doubled batch
    torch.testing.assert_close(out[:, :3], uncond[:, :3] + s * (cond[:, :3] - uncond[:, :3]))
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])  # channel 3 and variance: conditional
    full = guided_model_fn(model, y, s, null)(x, t)  # default: all 4 prediction channels
    torch.testing.assert_close(full[:, :4], uncond[:, :4] + s * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(full[:, 4:], cond[:, 4:])
    with pytest.raises(ValueError, match="guided_channels"):
        guided_model_fn(model, y, s, null, guided_channels=5)(x, t)


# --------------------------------------------------------------------------------------------------
# Factory and sampler errors
# --------------------------------------------------------------------------------------------------


def test_create_objective_and_errors():
    assert isinstance(create_objective("ddpm"), GaussianDiffusion)
    flow = create_objective("flow", time_scale=1.0)
    assert isinstance(flow, FlowMatching) and flow.time_scale == 1.0
    # The settings the config layer passes, exactly.
    d = create_objective("ddpm", num_timesteps=500, learn_sigma=True, fixed_variance="small", clip_x0=True)
    assert (d.num_timesteps, d.learn_sigma, d.fixed_variance, d.clip_x0) == (500, True, "small", True)
    f = create_objective("flow", learn_sigma=True, time_scale=1.0, clip_x0=True)
    assert (f.learn_sigma, f.time_scale, f.clip_x0) == (True, 1.0, True)
    with pytest.raises(ValueError, match=r"'flow' does not take num_timesteps; allowed arguments: time_scale"):
        create_objective("flow", num_timesteps=1000)
    with pytest.raises(ValueError, match=r"unknown objective 'edm'.*\['ddpm', 'flow'\]"):
        create_objective("edm")
    with pytest.raises(ValueError, match=r"'euler'.*allows \['ddpm', 'ddim'\]"):
        sample(create_objective("ddpm"), optimal_eps, (1, 1, 2, 2), "euler", 10)
    with pytest.raises(ValueError, match=r"'ddim'.*allows \['euler', 'euler-sde'\]"):
        sample(flow, optimal_eps, (1, 1, 2, 2), "ddim", 10)
    with pytest.raises(ValueError, match="fixed_variance"):
        GaussianDiffusion(fixed_variance="medium")


def test_schedule_tables_are_cast_once_per_device_and_give_the_per_call_values():
    """Issue 18: the float64 tables were gathered on the CPU and copied to the samples' device at every call
    (~14 host round trips a training step); now each is cast to float32 once per device and kept."""
    d = respace(GaussianDiffusion(1000), 50)
    t, x = torch.tensor([0, 7, 49, 7]), torch.zeros(4, 1, 2, 2)
    for table in (d.sqrt_alphas_cumprod, d.posterior_log_variance_clipped, d._fixed_log_var):
        first = d._extract(table, t, x)
        assert first.dtype == torch.float32 and first.shape == (4, 1, 1, 1)
        assert torch.equal(first.flatten(), table[t].float())  # the cast commutes with the gather
        cached = d._on_device(table, x.device, torch.float32)
        d._extract(table, t, x)
        assert d._on_device(table, x.device, torch.float32) is cached  # one copy, reused
    assert torch.equal(d.model_timesteps(t), d.timestep_map[t])
