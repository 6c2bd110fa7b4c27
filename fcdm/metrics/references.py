"""What generated samples are measured against: a digits split, an ADM-style .npz batch (its images, and
the FID statistics `mu`/`sigma` it may store) or a folder of images; and the uint8 (N, H, W, C) form that
samples and references alike are checked into. fcdm.metrics.fidelity measures with them."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from fcdm.data.digits import IMAGE_SIZES, digits_arrays
from fcdm.errors import MetricsError
from fcdm.util.files import sha256_file

DIGITS_REFERENCES = {"digits-train": "train", "digits-test": "test", "digits-all": "all"}
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def as_nhwc_uint8(images, what: str) -> np.ndarray:
    """Validate/normalise to uint8 (N, H, W, C) with C in {1, 3}; (N, H, W) gains C = 1."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise MetricsError(
            f"{what} must be uint8 images of shape (N, H, W, C) with C = 1 or 3; got dtype {images.dtype} and "
            f"shape {images.shape}. Convert with np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) from [0, 1]."
        )
    if len(images) < 2:
        raise MetricsError(f"{what} holds {len(images)} image(s); FID/KID need at least 2.")
    return images


def _load_image_dir(path: Path, channels: int) -> np.ndarray:
    """A folder of .png/.jpg files (sorted by name, not recursive) -> uint8 (N, H, W, channels)."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise MetricsError(f"reference folder {path} holds no {'/'.join(IMAGE_EXTS)} images.")
    mode = "L" if channels == 1 else "RGB"
    arrays = [np.asarray(Image.open(f).convert(mode)) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        odd = next(f for f, a in zip(files, arrays) if a.shape != arrays[0].shape)
        raise MetricsError(
            f"reference folder {path} mixes image sizes ({sorted(shapes)}, e.g. {odd.name}); resize them to one size."
        )
    out = np.stack(arrays)
    return out[..., None] if out.ndim == 3 else out


def npz_reference(reference: str) -> Path | None:
    """The reference as the path of an existing .npz file (an ADM-style batch), or None."""
    path = Path(reference).expanduser()
    return path if path.is_file() and path.suffix == ".npz" else None


def load_reference(reference: str, image_size: int, channels: int) -> tuple[np.ndarray, str]:
    """Reference name or path -> (uint8 (M, H, W, C), cache key naming its content)."""
    if reference in DIGITS_REFERENCES:
        if image_size not in IMAGE_SIZES:
            raise MetricsError(
                f"reference {reference!r} exists at sizes {IMAGE_SIZES} px, but the samples are {image_size} px; "
                f"generate at one of those sizes or pass an .npz/folder reference."
            )
        images, _ = digits_arrays(DIGITS_REFERENCES[reference], image_size)
        # Content hash: if the data module's split ever changes, cached statistics are not reused.
        return images, f"{reference}-{image_size}px-{hashlib.sha256(images.tobytes()).hexdigest()[:8]}"
    path = npz_reference(reference)
    if path is not None:
        with np.load(path) as npz:
            if "arr_0" not in npz.files:
                raise MetricsError(f"reference {path} has no 'arr_0' array (ADM-style batches store images there).")
            images = npz["arr_0"]
        return as_nhwc_uint8(images, f"reference {path} arr_0"), f"{path.stem}-{sha256_file(path)[:10]}"
    path = Path(reference).expanduser()
    if path.is_dir():
        images = as_nhwc_uint8(_load_image_dir(path, channels), f"reference folder {path}")
        listing = "\n".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(path.iterdir()))
        return images, f"{path.name}-{hashlib.sha256(listing.encode()).hexdigest()[:10]}"
    raise MetricsError(
        f"reference {reference!r} is neither a digits split ({', '.join(DIGITS_REFERENCES)}) nor an existing "
        f".npz file (ADM-style, images in 'arr_0') nor a folder of images."
    )


def fid_reference_kind(reference: str) -> str:
    """What FID is measured against: "stored-statistics" for an .npz carrying `mu` and `sigma` (ADM's
    reference batches), else "images" (the reference images' own features)."""
    path = npz_reference(reference)
    if path is None:
        return "images"
    with np.load(path) as npz:  # reads the zip directory only, not the arrays
        return "stored-statistics" if {"mu", "sigma"} <= set(npz.files) else "images"


def load_stored_statistics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The FID statistics an ADM reference .npz stores: {"mu": (D,), "sigma": (D, D)}, float64."""
    with np.load(path) as npz:
        mu, sigma = np.asarray(npz["mu"]), np.asarray(npz["sigma"])
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise MetricsError(
            f"reference {path}: 'mu' {mu.shape} and 'sigma' {sigma.shape} are not FID statistics (finite mu (D,) "
            f"and sigma (D, D)); regenerate the file, or drop 'mu' and 'sigma' from it to measure FID on its images."
        )
    return {"mu": mu.astype(np.float64), "sigma": sigma.astype(np.float64)}
