"""The smoke dataset: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

It ships inside scikit-learn, so CPU tests and the default profile run offline. Pixels are integers
in 0..16. ``split`` is a fixed, stratified 80/20 train/test split (seed 0, our own permutation so it
does not move with scikit-learn's splitter), so an evaluator can use the held-out ``test`` split as
the FID reference set while the model trains on ``train``.

Upsampling to 16x16 uses nearest neighbour (each pixel becomes a 2x2 block): it adds no new pixel
values, so the 16x16 task carries exactly the 8x8 information, the value range and both extremes are
kept exactly, and the uint8 reference set from ``digits_arrays`` is bit-identical to what a perfect
generator would emit. Bilinear would invent in-between intensities that no real digit has.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

NUM_CLASSES = 10
CHANNELS = 1
MAX_VALUE = 16  # load_digits pixels are counts of set pixels in 4x4 blocks: 0..16
TEST_FRACTION = 0.2
SPLIT_SEED = 0
SPLITS = ("train", "test", "all")
IMAGE_SIZES = (8, 16)


def bundled_csv() -> Path | None:
    """scikit-learn's `datasets/data/digits.csv.gz` (what `load_digits` reads), found without importing
    scikit-learn (about a second of a trainer's start-up); None where it is not there."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    """All digits: images (1797, 8, 8) uint8 in 0..16 and labels (1797,) int64, as `load_digits` gives them."""
    path = bundled_csv()
    if path is not None:
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",")  # what load_digits does: 64 pixels, then the label, per row
        return data[:, :-1].reshape(-1, 8, 8).astype(np.uint8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # heavy (~1 s): only where the bundled file was not found

    d = load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int64)


@lru_cache(maxsize=None)
def split_indices(split: str) -> np.ndarray:
    """Sorted indices (N,) of ``split`` into the full digits set; train and test are disjoint.

    Stratified: within every class a seeded permutation puts round(20%) of its images in ``test``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; allowed values are {', '.join(SPLITS)}")
    _, labels = _load()
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        n_test = int(round(TEST_FRACTION * len(members)))
        test.append(rng.permutation(members)[:n_test])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def _check_size(image_size: int) -> int:
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"digits image_size must be one of {IMAGE_SIZES}, got {image_size!r}")
    return int(image_size)


def _raw(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, S, S) uint8 in 0..16 (nearest-upsampled) and labels (N,) int64."""
    factor = _check_size(image_size) // 8
    images, labels = _load()
    idx = split_indices(split)
    x = images[idx]
    if factor > 1:
        x = x.repeat(factor, axis=1).repeat(factor, axis=2)
    return x, labels[idx]


def digits_arrays(split: str = "test", image_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The real reference set for an evaluator: images (N, S, S, 1) uint8 in 0..255, labels (N,).

    0..16 maps to 0..255 as round(v * 255 / 16), the same map as ``(x + 1) * 127.5`` applied to the
    training tensors, so generated samples and references are quantised identically.
    """
    x, y = _raw(split, image_size)
    u8 = np.rint(x.astype(np.float64) * (255.0 / MAX_VALUE)).astype(np.uint8)
    return u8[..., None], y.copy()


class DigitsDataset(Dataset):
    """Digits as diffusion training data: x (1, S, S) float32 in [-1, 1], y () int64.

    hflip: random horizontal flip with p = 0.5. Off by default because digits are not
    flip-invariant (a mirrored 2 or 7 is not a digit), unlike ImageNet where DiT flips.
    """

    num_classes = NUM_CLASSES
    channels = CHANNELS

    def __init__(self, split: str = "train", image_size: int = 8, hflip: bool = False):
        x, y = _raw(split, image_size)
        self.split = split
        self.image_size = int(image_size)
        self.hflip = bool(hflip)
        # 0..16 -> [-1, 1] exactly (v / 8 - 1 is exact in float32); whole set is ~1 MB at 16x16.
        self.images = torch.from_numpy(x).float().div_(MAX_VALUE / 2).sub_(1.0).unsqueeze(1)
        self.labels = torch.from_numpy(y)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]

    def item(self, i: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example i with its random flip decided by `seed` (its lowest bit) instead of torch's global RNG:
        the trainer derives the seed from (run seed, step, i), so flips survive a resume and any worker count."""
        x = self.images[i]
        return (x.flip(-1) if self.hflip and seed & 1 else x), self.labels[i]

    def __repr__(self) -> str:
        return (f"DigitsDataset(split={self.split!r}, n={len(self)}, image_size={self.image_size}, "
                f"hflip={self.hflip})")
