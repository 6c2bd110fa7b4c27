"""Peak resident memory of `sample_images` for N samples, printed in bytes (run by test_sampling.py in a
fresh process, so no other test's allocations blur it): `python peak_memory.py N ROOT`.

A zero denoiser on 1 x 8 x 8 and a decoder that upsamples to 3 x 128 x 128 (float32 196,608 bytes a
sample, uint8 49,152) stand in for the SD-VAE: what grows with N is what the evaluation keeps per sample.
"""
import sys

import torch

from fcdm.build import build_objective
from fcdm.config import load_config
from fcdm.evaluation.protocol import Protocol
from fcdm.evaluation.sampling import sample_images


class Zero(torch.nn.Module):
    num_classes = 10

    def forward(self, x, t, y):
        return torch.zeros(len(x), 2 * x.shape[1], *x.shape[2:])  # epsilon and learned variance


def decode(z):
    return torch.nn.functional.interpolate(z.repeat(1, 3, 1, 1), scale_factor=16)


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    n, root = int(sys.argv[1]), sys.argv[2]
    cfg = load_config(f"{root}/ablations/configs/smoke.yaml", ["objective.name=ddpm", "eval.sampler=ddim",
                                                              "eval.sampling_steps=1"])
    objective = build_objective(cfg)
    sample_images(Zero(), objective, (1, 8, 8), 10, Protocol.from_config(cfg, num_samples=64), 64, "cpu", decode)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident size
    base = peak_rss()
    images, _ = sample_images(Zero(), objective, (1, 8, 8), 10, Protocol.from_config(cfg, num_samples=n), 64,
                              "cpu", decode)
    assert images.shape == (n, 128, 128, 3) and images.dtype == "uint8"
    print(peak_rss() - base)
