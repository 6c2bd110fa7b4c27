"""What a training run carries from step to step, and how it is made reproducible: the data order,
the EMA of the weights, and the RNG states saved in every checkpoint."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from fcdm.config import ConfigError, RunConfig


class StepBatchSampler:
    """Index batches for one rank, from `start_step` on; batch k of the run is a pure function of (seed, k).

    Each epoch is a fresh permutation from a generator seeded by (seed, epoch); the global batch is
    cut from it in order and rank r takes slice r, so the order is the same for any world size.

    with_step: yield [(step, index), ...] instead of [index, ...], for `SeededItems`.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int, start_step: int, steps: int,
                 with_step: bool = False):
        if global_batch % world:
            raise ConfigError(f"train.batch_size={global_batch} is not divisible by the {world} processes; "
                              "choose a multiple of the process count")
        if global_batch > n:
            raise ConfigError(f"train.batch_size={global_batch} exceeds the {n} training examples; lower it")
        self.n, self.batch, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.start, self.steps = start_step, steps
        self.per_epoch = n // global_batch
        self.with_step = with_step

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self):
        epoch, perm = -1, None
        local = self.batch // self.world
        for step in range(self.start, self.steps):
            e, i = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, perm = e, torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + e))
            lo = i * self.batch + self.rank * local
            batch = perm[lo:lo + local].tolist()
            yield [(step, j) for j in batch] if self.with_step else batch


def item_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit seed for the random transforms of example `index` in batch `step` of a run seeded `seed`."""
    digest = hashlib.blake2b(f"{seed}/{step}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededItems(Dataset):
    """Item (step, i) is example i with its random transforms seeded from (seed, step, i).

    Random augmentations (the digits' flips) then depend only on which example is drawn at which step:
    identical for any number of DataLoader workers, any process count, and after a resume, which
    re-creates the workers (their own seeds would otherwise restart). Datasets with an
    `item(i, seed)` method take the seed directly (cheap); any other runs under torch's RNG seeded with it
    and then restored, so loading in the main process (num_workers=0) never touches the training RNG.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        step, i = key
        if hasattr(self.dataset, "item"):
            return self.dataset.item(i, item_seed(self.seed, step, i))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, step, i))
            return self.dataset[i]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- ema + (1 - decay) (model - ema), every parameter in one foreach call (a launch or a few on the
    GPU, not one per tensor); the same numbers as a per-tensor lerp_."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach().float() for p in model.parameters()], 1 - decay)


def make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """The run's AdamW: fused kernels on CUDA (the parameters must already be there), torch's default
    (foreach) elsewhere, so CPU runs keep their numbers."""
    t = cfg.train
    return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=t.betas,
                             fused=True if device.type == "cuda" else None)


def ema_decay(cfg: RunConfig, updates: int) -> float:
    d = cfg.train.ema_decay
    return min(d, (1 + updates) / (10 + updates)) if cfg.train.ema_warmup else d


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy_keys": torch.from_numpy(np_state[1].copy()), "numpy_rest": (np_state[0], *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def rng_as_arrays(state: dict) -> dict:
    # Tensors do not survive gather_object's pickling over gloo; numpy arrays do.
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def rng_from_arrays(state: dict) -> dict:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, *rest = state["numpy_rest"]
    np.random.set_state((name, state["numpy_keys"].numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
