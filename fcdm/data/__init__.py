"""Training data: the bundled digits smoke set (`fcdm.data.digits`), precomputed SD-VAE latents
(`fcdm.data.latents`) and the encoder that writes them (`fcdm.data.prepare`), and what a dataset is for a
run's hash (`fcdm.data.identity`, torch-free).

Every dataset yields ``(x, y)`` with ``x: (C, S, S) float32`` and ``y: () int64`` and exposes
``num_classes``, ``channels`` and ``image_size`` (the spatial side S the denoiser sees: pixels for
digits, latent cells for latents) so a trainer can build the matching model::

    ds = build_dataset("digits", split="train", image_size=8)
    model = create_model("FCDM-S", in_channels=ds.channels, num_classes=ds.num_classes)  # fcdm.models
"""

from __future__ import annotations

import importlib
from typing import Any

from fcdm.errors import DataError

# The dataset classes import torch: load them on first use (PEP 562), so `fcdm.data.identity` (the
# data part of a run's hash) and DataError import in milliseconds.
_LAZY = {"DigitsDataset": "digits", "digits_arrays": "digits", "LatentArrayDataset": "latents",
         "LatentFolderDataset": "latents", "prepare_latents": "prepare"}
_DATASETS = {"digits": "DigitsDataset", "latent-folder": "LatentFolderDataset", "latent-array": "LatentArrayDataset"}


def __getattr__(name: str):
    if name == "DATASETS":
        return {k: __getattr__(v) for k, v in _DATASETS.items()}
    if name in _LAZY:
        return getattr(importlib.import_module(f"fcdm.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fcdm.data' has no attribute {name!r}")


def build_dataset(name: str, **kwargs: Any):
    """Build a dataset by name: ``digits`` (split, image_size, hflip), ``latent-folder`` (root,
    num_classes) or ``latent-array`` (path, num_classes); kwargs go to the class constructor."""
    if name not in _DATASETS:
        allowed = ", ".join(repr(k) for k in _DATASETS)
        raise ValueError(f"unknown dataset {name!r}; allowed values are {allowed}")
    return __getattr__(_DATASETS[name])(**kwargs)


__all__ = [
    "DATASETS",
    "DataError",
    "DigitsDataset",
    "LatentArrayDataset",
    "LatentFolderDataset",
    "build_dataset",
    "digits_arrays",
    "prepare_latents",
]
