"""Class-conditional sampling from a trained denoiser: batches, guidance, images, grids.

Every sample's noise comes from its own generator, seeded by (seed, global sample index): sample i is
the same image whatever the batch size, the process count or the process that draws it.
"""
from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from rich.progress import Progress

from fcdm.data.prepare import SD_VAE_SCALE, load_vae
from fcdm.diffusion import guided_model_fn, sample
from fcdm.evaluation.protocol import Protocol
from fcdm.util.cuda import fast_math


def spread_labels(n: int, num_classes: int) -> torch.Tensor:
    """n labels spread evenly over the classes, in contiguous blocks: (n,) long."""
    return (torch.arange(n) * num_classes) // n


def is_unconditional(cfg) -> bool:
    """True for a run trained without class input (`model.args.conditioning: unconditional`)."""
    return cfg.model.args.get("conditioning") == "unconditional"


def sample_labels(n: int, num_classes: int, conditional: bool = True) -> torch.Tensor:
    """Labels (n,) long for n samples: classes spread evenly, or, for an unconditional model, the null
    class (index num_classes) everywhere: it carries no meaning and the model never reads it."""
    return spread_labels(n, num_classes) if conditional else torch.full((n,), num_classes, dtype=torch.long)


def sample_seed(seed: int, index: int) -> int:
    """The 63-bit seed of sample `index` of a run of samples drawn under `seed` (a hash, so nearby seeds
    and indices give unrelated streams and (seed, index) pairs never collide in practice)."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_generators(seed: int, indices: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, global sample index). On "cuda" the noise is drawn on the
    GPU (no host draw and copy per step; other numbers than the CPU's, the same for any batch or process
    count); any other device gets CPU generators, so CPU samples are what they always were."""
    where = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return [torch.Generator(device=where).manual_seed(sample_seed(seed, int(i))) for i in indices]


@torch.no_grad()
def generate(model: nn.Module, objective, shape: tuple[int, int, int], labels: torch.Tensor, *, sampler: str,
             num_steps: int, cfg_scale: float = 1.0, guided_channels: int | None = None, batch_size: int = 256,
             seed: int = 0, device: torch.device | str = "cpu", progress: bool = False,
             indices: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """Samples (N, C, H, W) for labels (N,), in batches of at most `batch_size`.

    indices (N,): the global index of each sample (default 0..N-1); a process drawing a share of a run
    passes the share's indices. Sample i draws all its noise from a generator seeded by (seed, indices[i]),
    so its noise does not depend on the batch size, the process count or the global RNG (which is never
    touched). The denoiser's output for a row can still differ in its last bits between batch sizes
    (kernels round by batch shape); with the same batches it is the same. A batch that does not fit in
    GPU memory is retried at half the size (and says so).
    """
    indices = torch.arange(len(labels)) if indices is None else torch.as_tensor(indices)
    if not len(labels):
        return torch.zeros((0, *shape))
    if len(indices) != len(labels):
        raise ValueError(f"{len(indices)} sample indices for {len(labels)} labels; pass one index per label.")
    was_training = model.training
    model.eval()
    null_class = getattr(model, "num_classes", 0)
    outs, i = [], 0
    with _SampleProgress(progress, len(labels)) as bar:
        while i < len(labels):
            y = labels[i:i + batch_size].to(device)
            fn = guided_model_fn(model, y, cfg_scale, null_class, guided_channels)
            # Fresh generators on every attempt, so a batch retried after an OOM draws the same noise.
            generators = sample_generators(seed, indices[i:i + batch_size].tolist(), device)
            try:
                x = sample(objective, fn, (len(y), *shape), sampler, num_steps, generator=generators, device=device)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                torch.cuda.empty_cache()
                bar.note(f"out of GPU memory: sampling batch size lowered to {batch_size}")
                continue
            outs.append(x.float().cpu())
            i += len(y)
            bar.advance(len(y))
    model.train(was_training)
    return torch.cat(outs)


class _SampleProgress:
    """One rich progress bar over all samples (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if self.enabled:
            self.bar = Progress()
            self.bar.start()
            self.task = self.bar.add_task("sampling", total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self.bar:
            self.bar.advance(self.task, n)

    def note(self, message: str) -> None:
        print(message, file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8, the layout of ADM's .npz and torch-fidelity's input.

    Converted where `x` lives (on the GPU for decoded samples): only the uint8 result crosses to the host."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@lru_cache(maxsize=2)
def make_decoder(vae: str | None, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents (N, 4, h, w) -> images (N, 3, 8h, 8w) in [-1, 1] through the SD-VAE, or identity for pixels.

    Cached: a run decodes at every evaluation step and every sample grid, and loads the VAE once. The
    images stay on `device` (to_uint8 converts them there: float32 images of a FID-50K are 39 GB).
    """
    if vae is None:
        return lambda x: x
    model = load_vae(vae).to(device).eval()

    @torch.no_grad()
    def decode(z: torch.Tensor, batch: int = 32) -> torch.Tensor:
        return torch.cat([model.decode(z[i:i + batch].to(device) / SD_VAE_SCALE).sample.float()
                          for i in range(0, len(z), batch)])
    return decode


def for_display(x: torch.Tensor, cfg, device) -> torch.Tensor:
    """Samples as images in [-1, 1]: pixels as they are; latents decoded by eval.vae when one is set,
    else a normalised view of their first three channels."""
    if cfg.data.name == "digits":
        return x
    return make_decoder(cfg.eval.vae, device)(x) if cfg.eval.vae else latent_preview(x)


def latent_preview(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) latents -> (N, 3, H, W) in [-1, 1]: the first three channels, each normalised, for a
    quick look at latent runs when no VAE is available to decode them."""
    x = x[:, :3]
    lo = x.amin(dim=(0, 2, 3), keepdim=True)
    hi = x.amax(dim=(0, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1


def save_grid(images: np.ndarray, path: Path, nrow: int, scale: int = 1) -> Path:
    """Write (N, H, W, C) uint8 images as one PNG grid of `nrow` images per row."""
    n, h, w, c = images.shape
    rows = -(-n // nrow)
    grid = np.zeros((rows * (h + 1) + 1, nrow * (w + 1) + 1, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = img
    im = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def write_samples(trained, num: int, out: Path, seed: int = 0, progress: bool = True) -> Path:
    """Sample `num` images from a TrainedRun with its config's protocol; write samples.npz and grid.png."""
    cfg = trained.config
    labels = sample_labels(num, trained.num_classes, not is_unconditional(cfg))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fast_math(device)
    x = generate(trained.ema.to(device), trained.objective, trained.shape, labels, sampler=cfg.sampler,
                 num_steps=cfg.eval.sampling_steps, cfg_scale=cfg.eval.cfg_scale,
                 guided_channels=cfg.eval.guided_channels, batch_size=cfg.eval.batch_size, seed=seed,
                 device=device, progress=progress)
    images = to_uint8(for_display(x, cfg, device))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "samples.npz", arr_0=images, labels=labels.numpy())
    save_grid(images, out / "grid.png", nrow=min(num, 10), scale=max(1, 64 // images.shape[1]))
    return out / "samples.npz"


@contextmanager
def preserved_rng():
    """Run a block and put every global RNG stream back as it was: python `random`, numpy, torch CPU and
    (if initialised) every CUDA device. torch-fidelity's DataLoader draws from the torch stream, so an
    evaluation would otherwise shift the noise of every later training step."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def shard_indices(num_samples: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The global sample indices process `rank` of `world` draws, in order: whole batches of the one-process
    run (batch k = samples k*batch_size ... (k+1)*batch_size - 1), every world-th of them from batch rank on.

    Each model call then sees exactly the rows it sees on one process, so N processes reproduce the
    one-process samples bit for bit (a kernel's rounding can depend on the batch it runs in)."""
    starts = range(rank * batch_size, num_samples, world * batch_size)
    return torch.cat([torch.arange(s, min(s + batch_size, num_samples)) for s in starts]) if starts else \
        torch.zeros(0, dtype=torch.long)


def sample_images(model: nn.Module, objective, shape: tuple[int, int, int], num_classes: int, proto: Protocol,
                  batch_size: int, device, decode=None, progress: bool = False, rank: int = 0,
                  world: int = 1, conditional: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """This process's share of proto.num_samples images: (uint8 (n, H, W, C), labels (n,)).

    Classes are spread evenly (or every label is the null class for an unconditional model). The share
    is `shard_indices(...)`; each sample's noise comes from (proto.seed, its global index), so
    `gather_samples` of all shares equals the world = 1 result exactly.
    """
    index = shard_indices(proto.num_samples, batch_size, rank, world)
    labels = sample_labels(proto.num_samples, num_classes, conditional)[index]
    dtype = torch.bfloat16 if proto.precision == "bf16" else None
    kind = torch.device(device).type
    # cuDNN's autotuning (training turns it on) could pick other kernels on other processes: off for samples.
    with torch.autocast(device_type=kind, dtype=dtype, enabled=dtype is not None), \
            torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False,
                                       allow_tf32=torch.backends.cudnn.allow_tf32) if kind == "cuda" else nullcontext():
        x = generate(model, objective, shape, labels, sampler=proto.sampler, num_steps=proto.sampling_steps,
                     cfg_scale=proto.cfg_scale, guided_channels=proto.guided_channels, batch_size=batch_size,
                     seed=proto.seed, device=device, progress=progress, indices=index)
    return decoded_uint8(x, decode, batch_size), labels.numpy()


def decoded_uint8(x: torch.Tensor, decode, batch_size: int) -> np.ndarray:
    """Samples decoded (decode None: as they are) and converted to uint8 (N, H, W, C) batch by batch, so
    the VAE sees the same rows together on any process count and the host holds only uint8 images (one
    FID-50K: 9.8 GB, against 39 GB of float32 decoded at once and ~118 GB with the conversion's copies)."""
    images = None
    for i in range(0, len(x), batch_size):
        chunk = to_uint8(decode(x[i:i + batch_size]) if decode is not None else x[i:i + batch_size])
        if images is None:
            images = np.empty((len(x), *chunk.shape[1:]), dtype=np.uint8)
        images[i:i + len(chunk)] = chunk
    return images if images is not None else to_uint8(x)


def gather_samples(shares: list[tuple[np.ndarray, np.ndarray]], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Put the shares of `sample_images(..., batch_size, rank=r, world=len(shares))` back in global order."""
    world, n = len(shares), sum(len(labels) for _, labels in shares)
    like = next(s for s in shares if len(s[1]))
    images = np.empty((n, *like[0].shape[1:]), dtype=np.uint8)
    labels = np.empty(n, dtype=like[1].dtype)
    for r, (imgs, lbls) in enumerate(shares):
        index = shard_indices(n, batch_size, r, world).numpy()
        images[index], labels[index] = imgs, lbls
    return images, labels
