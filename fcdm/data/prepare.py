"""Encode an image folder into SD-VAE latents in the ``latent-array`` format (see fcdm.data.latents).

    prepare_latents("imagenet/train", "runs/data/in256", vae="/models/sd-vae-ft-ema")

is what ``fcdm-ablate prepare-latents IMAGE_DIR OUT --vae PATH`` runs. Preprocessing follows DiT /
the FCDM release: ADM centre crop to ``resolution``, pixels to [-1, 1], ``latent_dist.sample()`` times
0.18215 (the SD-VAE scale, DiT Sec. 4). Unlike the release, which flips each image at random once at
extraction, both the image and its horizontal flip are encoded (``flip_copies = 2``), so training sees
the paper's random flips without re-encoding; row i + N is the flip of image i.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from fcdm.errors import DataError

SD_VAE_SCALE = 0.18215
# The extensions torchvision's ImageFolder accepts (lower-cased match).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VAE_HINT = ("download it on a machine with network access, e.g. `huggingface-cli download "
            "stabilityai/sd-vae-ft-ema --local-dir DIR`, copy DIR here and pass `--vae DIR`")


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM's centre crop (guided-diffusion ``image_datasets.py``, reused by DiT and FCDM).

    Halve with a BOX filter while the short side is >= 2 * image_size (cheap anti-aliasing), then
    BICUBIC-resize so the short side is image_size, then crop the centre square.
    """
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(s * scale) for s in pil_image.size), resample=Image.BICUBIC)
    arr = np.asarray(pil_image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top:top + image_size, left:left + image_size])


def scan_image_folder(image_dir: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """ImageFolder semantics: one subfolder per class, sorted names -> label ids 0..K-1.

    Returns image paths (N,), labels (N,) int64 and the class names (K,).
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; expected {root}/CLASS_NAME/*.jpg|png "
                        f"(one subfolder per class, like ImageNet's train/)")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / name, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    paths.append(Path(dirpath) / f)
                    labels.append(label)
    if not paths:
        raise DataError(f"image folder {root} holds no images in class subfolders; expected "
                        f"{root}/CLASS_NAME/*.jpg|png (extensions: {', '.join(IMG_EXTENSIONS)})")
    return paths, np.asarray(labels, dtype=np.int64), classes


class _CroppedImages(Dataset):
    """Image i as (3, res, res) float32 in [-1, 1] after the ADM centre crop."""

    def __init__(self, paths: list[Path], resolution: int):
        self.paths, self.resolution = paths, resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            with Image.open(self.paths[i]) as im:
                im = center_crop_arr(im.convert("RGB"), self.resolution)
        except OSError as e:
            raise DataError(f"cannot read image {self.paths[i]} ({e}); remove or replace it") from e
        x = torch.from_numpy(np.array(im, dtype=np.float32)).permute(2, 0, 1)
        return x / 127.5 - 1.0


def load_vae(vae: str | Path):
    """``AutoencoderKL`` from a local directory or a repo id already in the local HF cache.

    Never touches the network (``local_files_only``), so a missing VAE fails in well under a second.
    """
    spec = str(vae)
    path = Path(spec).expanduser()
    looks_like_path = path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1
    if looks_like_path and not path.is_dir():
        raise DataError(f"VAE directory {path} does not exist; expected a diffusers AutoencoderKL folder "
                        f"(config.json + diffusion_pytorch_model.safetensors); {VAE_HINT}")
    from diffusers import AutoencoderKL  # imported lazily: diffusers takes seconds to import

    try:
        return AutoencoderKL.from_pretrained(str(path) if path.is_dir() else spec, local_files_only=True)
    except (OSError, ValueError) as e:
        where = (f"directory {path}" if path.is_dir()
                 else f"{spec!r} (neither a directory nor in the local HF cache)")
        raise DataError(f"cannot load the VAE from {where}: {e}; {VAE_HINT}") from e


@torch.inference_mode()
def prepare_latents(
    image_dir: str | Path,
    out_dir: str | Path,
    vae: str,
    resolution: int = 256,
    batch_size: int = 32,
    device: str = "cpu",
    flip: bool = True,
    progress: bool = True,
    *,
    seed: int = 0,
    posterior: Literal["sample", "mean"] = "sample",
    dtype: Literal["float32", "float16"] = "float32",
    scale_factor: float = SD_VAE_SCALE,
    num_workers: int = 0,
    overwrite: bool = False,
) -> Path:
    """Encode ``image_dir`` into ``out_dir`` (latents.npy (F*N, C, res/f, res/f), labels.npy, meta.json).

    F = 2 with ``flip`` (rows [0, N) are the images, [N, 2N) their mirror images), else 1; f is the
    VAE's downsampling factor (8 for SD-VAE). Each batch is encoded as one ``cat([x, x.flip(-1)])``
    forward pass and sampled with a single ``torch.Generator`` seeded with ``seed``, so the output is
    reproducible for a given batch size. ``posterior="mean"`` stores the posterior mean instead.
    Written into a temporary sibling directory and renamed at the end, so OUT is either absent or
    complete. Returns OUT.
    """
    out = Path(out_dir)
    _check_options(out, posterior, dtype, overwrite)
    model = load_vae(vae)  # first: a missing VAE should fail before a slow scan of the image folder
    factor = 2 ** (len(model.config.block_out_channels) - 1)
    if resolution % factor:
        raise ValueError(f"resolution {resolution} is not divisible by the VAE's downsampling "
                         f"factor {factor}")
    paths, labels, classes = scan_image_folder(image_dir)
    model = model.to(device).eval()

    n, copies = len(paths), 2 if flip else 1
    shape = (copies * n, model.config.latent_channels, resolution // factor, resolution // factor)
    loader = DataLoader(_CroppedImages(paths, resolution), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device != "cpu")
    generator = torch.Generator(device=device).manual_seed(seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        latents = np.lib.format.open_memmap(tmp / "latents.npy", mode="w+", dtype=dtype, shape=shape)
        with _progress(progress, n, f"encoding {n} images from {image_dir}") as advance:
            _encode(model, loader, latents, generator, copies, posterior, scale_factor, device, advance)
        latents.flush()
        del latents
        np.save(tmp / "labels.npy", np.tile(labels, copies))
        meta = {
            "format": "fcdm-latent-array", "version": 1, "count": shape[0], "num_images": n,
            "latent_shape": list(shape[1:]), "dtype": dtype, "resolution": resolution,
            "scale_factor": scale_factor, "vae": str(vae), "posterior": posterior, "seed": seed,
            "flip_copies": copies, "copy_layout": "row k * num_images + i is copy k of image i "
                                                  "(k = 0 as is, k = 1 flipped horizontally)",
            "num_classes": len(classes), "class_names": classes, "image_dir": str(image_dir),
            "crop": "adm_center_crop",
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_options(out: Path, posterior: str, dtype: str, overwrite: bool) -> None:
    """ValueError for an unknown posterior or dtype; DataError when OUT exists and may not be replaced."""
    if posterior not in ("sample", "mean"):
        raise ValueError(f"posterior must be 'sample' or 'mean', got {posterior!r}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if out.exists() and not overwrite:
        raise DataError(f"output {out} already exists; choose another OUT or pass overwrite=True")


def _encode(model, loader: DataLoader, latents: np.ndarray, generator: torch.Generator, copies: int,
            posterior: str, scale_factor: float, device: str, advance) -> None:
    """Encode every batch of images into `latents` (F * N rows): row k * N + i is copy k of image i, copy 1
    (when F = 2) its mirror image, encoded in the same forward pass. Calls `advance(batch size)` per batch."""
    n, start = len(latents) // copies, 0
    for x in loader:
        b = len(x)
        x = x.to(device)
        if copies == 2:
            x = torch.cat([x, x.flip(-1)])
        dist = model.encode(x).latent_dist
        z = dist.sample(generator=generator) if posterior == "sample" else dist.mean
        z = (z * scale_factor).float().cpu().numpy()
        for k in range(copies):
            latents[k * n + start:k * n + start + b] = z[k * b:(k + 1) * b]
        start += b
        advance(b)


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished temp dir onto OUT (same filesystem, so the rename is atomic)."""
    if out.exists():  # overwrite=True: move the old one aside first, delete it only once replaced
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextmanager
def _progress(enabled: bool, total: int, description: str):
    """Yield ``advance(k)``: a rich progress bar when enabled, else a no-op."""
    if not enabled:
        yield lambda k: None
        return
    with Progress() as bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)
