"""The mechanics of one optimiser step beyond the loop: the batch's gradients accumulated over micro-batches
(train.grad_accum), and the process's peak memory the trainer logs beside its throughput."""
from __future__ import annotations

import contextlib
import resource

import torch
import torch.nn as nn
from accelerate import Accelerator

from fcdm.config import ConfigError


def accumulate_gradients(accelerator: Accelerator, model: nn.Module, objective, x: torch.Tensor, y: torch.Tensor,
                         t: torch.Tensor, noise: torch.Tensor, micro: int) -> torch.Tensor:
    """Backward of the batch's mean loss in `micro` equal micro-batches (train.grad_accum): each micro-batch's
    mean scaled by 1/micro, gradients summed; DDP all-reduces once, on the last. Returns the batch's mean loss."""
    if len(x) % micro:
        raise ConfigError(f"train.grad_accum={micro} does not divide the per-process batch of {len(x)} "
                          "(train.batch_size / processes); choose a grad_accum that divides it")
    total = torch.zeros((), device=x.device)
    for i, (xs, ys, ts, ns) in enumerate(zip(*(v.chunk(micro) for v in (x, y, t, noise)))):
        with contextlib.nullcontext() if i == micro - 1 else accelerator.no_sync(model):
            loss = objective.training_losses(lambda xt, tt, ys=ys: model(xt, tt, ys), xs, ts, ns)["loss"].mean()
            accelerator.backward(loss / micro if micro > 1 else loss)
        total += loss.detach().float()
    return total / micro if micro > 1 else total


def peak_memory_mb(device: torch.device) -> float:
    """The process's peak memory so far in MiB: allocated CUDA memory on a GPU, resident size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
