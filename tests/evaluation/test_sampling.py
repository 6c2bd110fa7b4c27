"""Sampling: per-sample noise from (seed, global index), so batch size and process count never change a sample."""
import numpy as np
import pytest
import torch

from fcdm.build import build_objective
from fcdm.evaluation.protocol import Protocol
from fcdm.evaluation.sampling import (
    gather_samples,
    generate,
    sample_generators,
    sample_images,
    sample_labels,
    sample_seed,
    spread_labels,
)
from fcdm.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: width-8 models run fastest on one thread


def tiny_model(**kwargs):
    """An untrained-but-not-trivial FCDM on 1 x 8 x 8 (the zero-initialised output layer is randomised)."""
    torch.manual_seed(0)
    model = create_model("FCDM-S", in_channels=1, num_classes=10, hidden_size=8, depth=[1, 0, 1, 0, 1], **kwargs)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model(learn_sigma=True)


def test_a_samples_noise_depends_only_on_seed_and_index():
    from fcdm.diffusion.common import randn

    cpu = torch.device("cpu")
    batch = sample_generators(3, range(20))
    alone = sample_generators(3, [7])
    for _ in range(3):  # the first draw and those of later steps
        assert torch.equal(randn((20, 1, 8, 8), batch, cpu)[7], randn((1, 1, 8, 8), alone, cpu)[0])
    assert not torch.equal(randn((1, 1, 8, 8), sample_generators(4, [7]), cpu),
                           randn((1, 1, 8, 8), sample_generators(3, [7]), cpu))


@pytest.mark.parametrize("sampler", ["ddpm", "euler-sde"])
def test_batch_size_does_not_change_any_sample(model, tiny_config, sampler):
    """ddpm and euler-sde draw fresh noise at every step, the hardest case for per-sample streams."""
    objective = build_objective(tiny_config(f"objective.name={'ddpm' if sampler == 'ddpm' else 'flow'}"))
    if sampler == "euler-sde":
        model = tiny_model(learn_sigma=False)
    labels = spread_labels(20, 10)
    kwargs = dict(sampler=sampler, num_steps=4, cfg_scale=2.0, seed=3)
    a = generate(model, objective, (1, 8, 8), labels, batch_size=7, **kwargs)
    b = generate(model, objective, (1, 8, 8), labels, batch_size=64, **kwargs)
    assert a.shape == (20, 1, 8, 8)
    # Same noise; the denoiser's kernels may round a row's last bit differently in a batch of 7 and of 20.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # The same sample drawn alone, as the 8th of a run, is the 8th sample of the batch.
    c = generate(model, objective, (1, 8, 8), labels[7:8], batch_size=1, indices=[7], **kwargs)
    torch.testing.assert_close(c[0], a[7], rtol=0, atol=1e-5)
    d = generate(model, objective, (1, 8, 8), labels, batch_size=64, **{**kwargs, "seed": 4})
    assert (d - b).abs().max() > 0.1  # another seed, other samples


@pytest.mark.parametrize("num_samples,batch_size,world", [(13, 4, 2), (13, 8, 3)])
def test_process_shares_gather_to_the_one_process_samples_exactly(model, tiny_config, num_samples, batch_size,
                                                                  world):
    """(13, 8, 3): the third process gets no batch at all."""
    cfg = tiny_config("objective.name=ddpm", f"eval.num_samples={num_samples}", "eval.sampler=ddpm",
                      "eval.sampling_steps=3", "eval.cfg_scale=1.5")
    proto = Protocol.from_config(cfg)
    objective = build_objective(cfg)
    one_images, one_labels = sample_images(model, objective, (1, 8, 8), 10, proto, batch_size, device="cpu")
    shares = [sample_images(model, objective, (1, 8, 8), 10, proto, batch_size, device="cpu", rank=r, world=world)
              for r in range(world)]
    assert sum(len(s[1]) for s in shares) == num_samples
    images, labels = gather_samples(shares, batch_size)
    assert np.array_equal(labels, one_labels) and labels.tolist() == spread_labels(num_samples, 10).tolist()
    assert np.array_equal(images, one_images)  # bit for bit: every model call sees the same rows
    assert len(np.unique(images.reshape(num_samples, -1), axis=0)) == num_samples  # all different samples


def test_sampling_is_deterministic_and_leaves_the_global_rng_alone(model, tiny_config):
    objective = build_objective(tiny_config("objective.name=ddpm"))
    labels = spread_labels(10, 10)
    state = torch.get_rng_state()
    a = generate(model, objective, (1, 8, 8), labels, sampler="ddpm", num_steps=2, seed=0, progress=True)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate(model, objective, (1, 8, 8), labels, sampler="ddpm", num_steps=2, seed=0)
    assert torch.equal(a, b)


def test_a_batch_retried_at_half_size_after_out_of_memory_draws_the_same_samples(model, tiny_config, capsys):
    """The GPU OOM path, with a model that runs out of 'memory' above 4 rows (no GPU on the test machine)."""
    objective = build_objective(tiny_config("objective.name=ddpm"))

    class Fits4(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, y):
            if len(x) > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return model(x, t, y)

    labels = spread_labels(10, 10)
    kwargs = dict(sampler="ddpm", num_steps=2, seed=1)
    expected = generate(model, objective, (1, 8, 8), labels, batch_size=10, **kwargs)
    got = generate(Fits4(), objective, (1, 8, 8), labels, batch_size=16, **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert "sampling batch size lowered to 4" in capsys.readouterr().err


def test_sample_seeds_and_unconditional_labels():
    seeds = {sample_seed(s, i) for s in range(3) for i in range(1000)}
    assert len(seeds) == 3000 and all(0 <= x < 2**63 for x in seeds)
    assert sample_seed(0, 1_000_003) != sample_seed(1, 0)  # a linear mix would collide here
    assert sample_labels(5, 10, conditional=False).tolist() == [10] * 5  # the null class: no label at all
    assert sample_labels(5, 10).tolist() == spread_labels(5, 10).tolist()


def test_evaluation_memory_grows_by_the_uint8_images_alone():
    """Issue 18: decoded samples are converted to uint8 chunk by chunk, so the host's peak grows by about the
    uint8 bytes of each sample (49,152 at 3 x 128 x 128), not by float32 copies (x4 each). Measured as the
    peak resident size of fresh processes for 64 and 2,112 samples (a FID-50K at 256 px: 9.8 GB, not ~118)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import ROOT

    script = Path(__file__).with_name("peak_memory.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    peaks = [int(subprocess.run([sys.executable, str(script), str(n), str(ROOT)], env=env, check=True,
                                capture_output=True, text=True).stdout) for n in (64, 2112)]
    per_sample = (peaks[1] - peaks[0]) / 2048
    assert 0.7 * 49152 < per_sample < 1.5 * 49152, per_sample  # float32 kept and copied: ~517 KB a sample


def test_per_sample_generators_follow_the_device_and_cpu_noise_is_unchanged():
    """Issue 18: on CUDA each sample's generator lives on the GPU (noise drawn there, no host copy per step);
    anywhere else CPU generators with the very same seeds as before."""
    for device in ("cpu", torch.device("cpu")):
        (g,) = sample_generators(3, [5], device)
        assert g.device.type == "cpu" and g.initial_seed() == sample_seed(3, 5)
        assert torch.equal(torch.randn(4, generator=g),
                           torch.randn(4, generator=torch.Generator().manual_seed(sample_seed(3, 5))))
