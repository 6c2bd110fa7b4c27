"""Linear-path flow matching: path, loss, time scaling, x0 clipping and Euler ODE/SDE samplers on Gaussian data."""

import pytest
import torch

from fcdm.diffusion import FlowMatching, create_objective, sample

MU = torch.tensor([0.5, -0.3, 0.0, 0.2]).view(1, 1, 2, 2)
S = torch.tensor([0.4, 0.6, 1.0, 0.8]).view(1, 1, 2, 2)
N_SAMPLES = 10_000


def optimal_velocity(x: torch.Tensor, t_model: torch.Tensor, time_scale: float = 1000.0) -> torch.Tensor:
    """E[x1 - x0 | x_t] for x1 ~ N(mu, s^2), x0 ~ N(0, 1), x_t = t x1 + (1 - t) x0:
    mu + (t s^2 - (1 - t)) / (t^2 s^2 + (1 - t)^2) * (x_t - t mu)."""
    t = (t_model / time_scale).view(-1, 1, 1, 1)
    var = t**2 * S**2 + (1 - t) ** 2
    return MU + (t * S**2 - (1 - t)) / var * (x - t * MU)


def _check_recovers(x: torch.Tensor, std_tol: float, mean_tol: float = 0.03) -> None:
    mean_err = (x.mean(0, keepdim=True) - MU).abs().max().item()
    std_ratio = x.std(0, keepdim=True) / S
    assert mean_err < mean_tol, mean_err
    assert (std_ratio - 1).abs().max().item() < std_tol, std_ratio.flatten()


def test_path_endpoints_and_target():
    fm = FlowMatching()
    x1, x0 = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert torch.equal(fm.interpolate(x1, torch.zeros(3), x0), x0)  # t = 0 is noise
    assert torch.equal(fm.interpolate(x1, torch.ones(3), x0), x1)  # t = 1 is data
    t = torch.tensor([0.25, 0.5, 0.9])
    tb = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(fm.interpolate(x1, t, x0), tb * x1 + (1 - tb) * x0)


def test_loss_uses_scaled_time_and_velocity_target():
    fm = FlowMatching()
    g = torch.Generator().manual_seed(0)
    x1, noise = torch.randn(5, 2, 4, 4, generator=g), torch.randn(5, 2, 4, 4, generator=g)
    t = torch.tensor([0.0, 0.1, 0.5, 0.7, 0.99])
    seen = {}

    def perfect(x, t_model):
        seen["t"] = t_model
        return x1 - noise

    out = fm.training_losses(perfect, x1, t, noise)
    torch.testing.assert_close(seen["t"], t * 1000.0)
    assert set(out) == {"loss", "mse"} and out["loss"].shape == (5,)
    assert out["loss"].abs().max().item() == 0.0
    # A zero prediction costs exactly mean((x1 - x0)^2) per sample.
    zero = fm.training_losses(lambda x, tm: torch.zeros_like(x), x1, t, noise)["mse"]
    torch.testing.assert_close(zero, ((x1 - noise) ** 2).mean(dim=(1, 2, 3)))


def test_training_losses_finite_gradients_and_learned_sigma_channels():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 6, 3, padding=1)
    fm = FlowMatching(learn_sigma=True)
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(4, 3, 8, 8, generator=g)
    losses = fm.training_losses(lambda x, t: net(x), x1, generator=g)
    assert losses["loss"].shape == (4,) and torch.isfinite(losses["loss"]).all()
    losses["loss"].mean().backward()
    assert net.weight.grad[:3].abs().sum() > 0
    assert net.weight.grad[3:].abs().sum() == 0  # extra (variance) channels are ignored
    with pytest.raises(ValueError, match="expects 3 channels"):
        FlowMatching().training_losses(lambda x, t: net(x), x1)


def test_sample_t_uniform_and_deterministic():
    fm = FlowMatching()
    t = fm.sample_t(50_000, generator=torch.Generator().manual_seed(2))
    assert t.dtype == torch.float32 and 0 <= t.min() and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.01 and abs(t.var().item() - 1 / 12) < 0.005
    assert torch.equal(t, fm.sample_t(50_000, generator=torch.Generator().manual_seed(2)))


def test_sde_drift_equals_velocity_plus_sigma_times_score():
    """SiT: drift = v + w(t) * score with w = 1 - t and score = (t v - x) / (1 - t)."""
    fm = FlowMatching()
    x, t = torch.randn(3, 1, 2, 2), torch.tensor([0.1, 0.5, 0.9])
    v = optimal_velocity(x, t * 1000)
    tb = t.view(-1, 1, 1, 1)
    ref = v + (1 - tb) * (tb * v - x) / (1 - tb)
    torch.testing.assert_close(fm.sde_drift(optimal_velocity, x, t), ref)


def test_euler_ode_recovers_gaussian():
    fm = FlowMatching()
    g = torch.Generator().manual_seed(3)
    x = sample(fm, optimal_velocity, (N_SAMPLES, 1, 2, 2), "euler", 100, generator=g)
    _check_recovers(x, std_tol=0.04)


@pytest.mark.parametrize("last_step", ["euler", "mean"])
def test_euler_sde_recovers_gaussian(last_step):
    fm = FlowMatching()
    x = fm.euler_sde_sample(optimal_velocity, (N_SAMPLES, 1, 2, 2), 100, last_step=last_step,
                            generator=torch.Generator().manual_seed(4))
    _check_recovers(x, std_tol=0.05)


def test_time_scale_one_matches_sit_convention():
    fm = FlowMatching(time_scale=1.0)
    fn = lambda x, t: optimal_velocity(x, t, time_scale=1.0)  # noqa: E731
    x = fm.euler_ode_sample(fn, (N_SAMPLES, 1, 2, 2), 100, generator=torch.Generator().manual_seed(3))
    _check_recovers(x, std_tol=0.04)


@pytest.mark.parametrize("sampler", ["euler", "euler-sde"])
def test_flow_samplers_deterministic_under_seed(sampler):
    fm = FlowMatching()
    draw = lambda seed: sample(fm, optimal_velocity, (4, 1, 2, 2), sampler, 10,  # noqa: E731
                               generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))


def test_step_count_errors():
    fm = FlowMatching()
    with pytest.raises(ValueError, match="num_steps >= 2"):
        fm.euler_sde_sample(optimal_velocity, (1, 1, 2, 2), 1)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        fm.euler_ode_sample(optimal_velocity, (1, 1, 2, 2), 0)


@pytest.mark.parametrize("time_scale", [1000.0, 1.0])
def test_time_scale_is_an_objective_setting(time_scale):
    """create_objective passes time_scale through: the model sees t * time_scale in training and sampling."""
    fm = create_objective("flow", learn_sigma=False, time_scale=time_scale, clip_x0=False)
    seen = []

    def fn(x, t_model):
        seen.append(t_model)
        return optimal_velocity(x, t_model, time_scale)

    t = torch.tensor([0.25, 0.5])
    fm.training_losses(fn, torch.randn(2, 1, 2, 2), t)
    torch.testing.assert_close(seen[-1], t * time_scale)
    seen.clear()
    sample(fm, fn, (4, 1, 2, 2), "euler", 50, generator=torch.Generator().manual_seed(3))
    ts = torch.stack(seen)[:, 0] / time_scale  # the 50 Euler times, as the model saw them, unscaled
    torch.testing.assert_close(ts, torch.linspace(0, 1, 51)[:-1])
    with pytest.raises(ValueError, match="time_scale must be positive, got 0"):
        create_objective("flow", time_scale=0.0)


def point_mass_velocity(value: float, time_scale: float = 1000.0):
    """E[x1 - x0 | x_t] for data that is always ``value``: (value - x_t) / (1 - t)."""
    return lambda x, t_model: (value - x) / (1 - t_model / time_scale).view(-1, 1, 1, 1)


@pytest.mark.parametrize("sampler", ["euler", "euler-sde"])
def test_clip_x0_clamps_the_implied_data_while_sampling(sampler):
    off = create_objective("flow", learn_sigma=False, time_scale=1000.0, clip_x0=False)
    on = create_objective("flow", learn_sigma=False, time_scale=1000.0, clip_x0=True)
    assert not FlowMatching().clip_x0
    draw = lambda fm, value: sample(fm, point_mass_velocity(value), (16, 1, 2, 2), sampler, 20,  # noqa: E731
                                    generator=torch.Generator().manual_seed(0))
    far = draw(off, 3.0)
    torch.testing.assert_close(far, torch.full_like(far, 3.0), atol=1e-4, rtol=0)  # unclipped: the data
    clipped = draw(on, 3.0)
    torch.testing.assert_close(clipped, torch.ones_like(clipped), atol=1e-4, rtol=0)
    assert torch.equal(draw(off, 0.5), draw(on, 0.5))  # nothing to clip: bit for bit the same
    # Training never clips.
    x1, t, noise = torch.full((2, 1, 2, 2), 3.0), torch.tensor([0.3, 0.6]), torch.randn(2, 1, 2, 2)
    fn = point_mass_velocity(3.0)
    assert torch.equal(on.training_losses(fn, x1, t, noise)["loss"], off.training_losses(fn, x1, t, noise)["loss"])


def test_clipped_velocity_is_the_one_whose_implied_data_is_clamped():
    fm = FlowMatching(clip_x0=True)
    g = torch.Generator().manual_seed(1)
    x, t = 2 * torch.randn(4, 1, 2, 2, generator=g), torch.tensor([0.0, 0.3, 0.7, 0.95])
    v = optimal_velocity(x, t * 1000)
    tb = t.view(-1, 1, 1, 1)
    implied = x + (1 - tb) * v
    assert (implied.abs() > 1).any() and (implied.abs() < 1).any()
    torch.testing.assert_close(fm.sampling_velocity(optimal_velocity, x, t), (implied.clamp(-1, 1) - x) / (1 - tb))
