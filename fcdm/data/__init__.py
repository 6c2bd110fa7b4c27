"""Training data: the bundled digits smoke set and precomputed SD-VAE latents.

Every dataset yields ``(x, y)`` with ``x: (C, S, S) float32`` and ``y: () int64`` and exposes
``num_classes``, ``channels`` and ``image_size`` (the spatial side S the denoiser sees: pixels for
digits, latent cells for latents) so a trainer can build the matching model::

    ds = build_dataset("digits", split="train", image_size=8)
    model = build_model(in_channels=ds.channels, input_size=ds.image_size, num_classes=ds.num_classes)
"""

from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """Missing, empty or corrupt training data; the message names the path and the fix."""


# Defined above the submodule imports on purpose: they import DataError from this package.
from fcdm.data.digits import DigitsDataset, digits_arrays  # noqa: E402
from fcdm.data.latents import LatentArrayDataset, LatentFolderDataset  # noqa: E402
from fcdm.data.prepare import prepare_latents  # noqa: E402

DATASETS: dict[str, type] = {
    "digits": DigitsDataset,
    "latent-folder": LatentFolderDataset,
    "latent-array": LatentArrayDataset,
}


def build_dataset(name: str, **kwargs: Any):
    """Build a dataset by name: ``digits`` (split, image_size, hflip), ``latent-folder`` (root,
    num_classes) or ``latent-array`` (path, num_classes); kwargs go to the class constructor."""
    try:
        cls = DATASETS[name]
    except KeyError:
        allowed = ", ".join(repr(k) for k in DATASETS)
        raise ValueError(f"unknown dataset {name!r}; allowed values are {allowed}") from None
    return cls(**kwargs)


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
