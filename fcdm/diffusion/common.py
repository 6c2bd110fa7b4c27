"""What both objectives (fcdm.diffusion.gaussian and fcdm.diffusion.flow) share: the model-call type, the
output check, per-sample noise and the samplers' starting noise, training-time draws, reductions and
progress bars."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

ModelFn = Callable[[Tensor, Tensor], Tensor]
# One generator for the whole batch, or one per batch row (sample-wise reproducible noise).
Generators = torch.Generator | Sequence[torch.Generator] | None


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def resolve_device(
    noise: Tensor | None, generator: Generators, device: torch.device | str | None
) -> torch.device:
    """Where samples live: explicit device, else the noise's, else the generator's, else CPU."""
    if device is not None:
        return torch.device(device)
    if noise is not None:
        return noise.device
    if isinstance(generator, torch.Generator):
        return generator.device
    if generator:
        return generator[0].device
    return torch.device("cpu")


def check_output(out: Tensor, x: Tensor, learn_sigma: bool, expects: str) -> None:
    """ValueError unless the model output ``out`` for x (B, C, H, W) is (B, C, H, W), or (B, 2C, H, W) with
    ``learn_sigma``. ``expects`` words what the objective expects, ``{}`` standing for the channel count."""
    expected = 2 * x.shape[1] if learn_sigma else x.shape[1]
    if out.shape[0] != x.shape[0] or out.shape[1] != expected or out.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"model output has shape {tuple(out.shape)} for input {tuple(x.shape)}; with "
            f"learn_sigma={learn_sigma} {expects.format(expected)}. Set the model's "
            "out_channels / learn_sigma to match the objective."
        )


def generator_draw(
    draw: Callable[[torch.device], Tensor], generator: torch.Generator | None, device: torch.device | str | None
) -> Tensor:
    """``draw(d)`` on the generator's own device ``d`` (so a CPU generator gives the same numbers whatever
    device the result lives on), moved to ``device`` (default: the generator's, else the CPU)."""
    device = resolve_device(None, generator, device)
    draw_device = generator.device if generator is not None else device
    return draw(draw_device).to(device)


def randn(shape: Sequence[int], generator: Generators, device: torch.device) -> Tensor:
    """Standard normal noise of ``shape`` drawn from ``generator`` (on the generator's own device, so
    a CPU generator gives the same numbers whatever device the samples live on), moved to ``device``.

    ``generator`` may also be a sequence of one generator per row (len == shape[0]): row i is drawn
    from generator i alone, so a sample's noise does not depend on the batch it is drawn in.
    """
    if generator is None or isinstance(generator, torch.Generator):
        draw_device = generator.device if generator is not None else device
        return torch.randn(tuple(shape), generator=generator, device=draw_device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}; pass one per row.")
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in generator]
    return torch.stack(rows).to(device)


def initial_noise(
    shape: Sequence[int], noise: Tensor | None, generator: Generators, device: torch.device | str | None
) -> Tensor:
    """A sampler's starting point: ``noise`` when given (it must have ``shape``), else standard normal noise
    drawn from ``generator``; on ``device`` (default: the noise's, else the generator's, else the CPU)."""
    device = resolve_device(noise, generator, device)
    x = noise.to(device) if noise is not None else randn(shape, generator, device)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"noise has shape {tuple(x.shape)}, expected {tuple(shape)}.")
    return x


def progress_iter(items: Iterable, total: int, description: str, enabled: bool) -> Iterable:
    """Wrap a sampling loop in a rich progress bar when ``enabled``."""
    if not enabled:
        return items
    from rich.progress import track  # lazy: `plan` validates configs through fcdm.diffusion and never samples

    return track(items, total=total, description=description)
