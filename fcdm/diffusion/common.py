"""What both objectives share: the model-call type, per-sample noise, reductions and progress bars."""
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


def progress_iter(items: Iterable, total: int, description: str, enabled: bool) -> Iterable:
    """Wrap a sampling loop in a rich progress bar when ``enabled``."""
    if not enabled:
        return items
    from rich.progress import track

    return track(items, total=total, description=description)
