"""What a dataset *is*, independent of where it lies: the data part of a run's hash (fcdm.config.identity).

    data_identity("digits", None, 8, False)             # fixed: dataset, split rule version, size, flips
    data_identity("latent-array", "/data/in256", 32, False)   # a fingerprint read from the files

A latent fingerprint is cheap to take (npy headers, meta.json, the label file and a few latent rows;
never the whole array): shape, count, dtype, VAE, scale factor, flip copies, class count, digests of
meta.json (paths removed) and labels, and of a few evenly spaced rows, so two encodings of the same
images with different VAE noise differ. A moved dataset keeps its fingerprint. Imports no torch.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fcdm.errors import DataError
from fcdm.util.files import sha256_file

# Version of the digits split rule (fcdm.data.digits: stratified 80/20, seed 0, our own permutation).
# Bump it whenever split_indices or the pixel scaling changes.
DIGITS_SPLIT_VERSION = 1
SAMPLED_ROWS = 8  # latent rows / feature files digested per fingerprint
_PATH_KEYS = ("image_dir",)  # meta.json keys that say where, not what
_HINT = "create it with `fcdm-ablate prepare-latents IMAGE_DIR OUT --vae PATH`, or fix data.path"


def data_identity(name: str, path: str | None, image_size: int, hflip: bool) -> dict[str, Any]:
    """The identity of a dataset as a JSON-able dict; latent data must exist (DataError otherwise)."""
    if name == "digits":
        return {"name": "digits", "split_version": DIGITS_SPLIT_VERSION, "image_size": int(image_size),
                "hflip": bool(hflip)}
    root = Path(path or "").expanduser().resolve()
    if name == "latent-array":
        return dict(_array_fingerprint(str(root), _stat_key(root, ("latents.npy", "labels.npy", "meta.json"))))
    if name == "latent-folder":
        return dict(_folder_fingerprint(str(root), _stat_key(root, _folder_dirs(root))))
    raise DataError(f"unknown dataset {name!r}; allowed values: digits, latent-array, latent-folder")


def _stat_key(root: Path, names) -> tuple:
    """(size, mtime) of the files a fingerprint reads: the cache key, so a rewritten dataset is re-read."""
    out = []
    for n in names:
        try:
            st = os.stat(root / n)
            out.append((n, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((n, None, None))
    return tuple(out)


def _rows_digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _sample(n: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n - 1, min(n, SAMPLED_ROWS)).round()})


def _mmap(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npy file ({e}); {_HINT}") from None


@lru_cache(maxsize=64)
def _array_fingerprint(root: str, _stats: tuple) -> tuple:
    path = Path(root)
    for n in ("latents.npy", "labels.npy", "meta.json"):
        if not (path / n).is_file():
            raise DataError(f"latent array {path} has no {n} (its fingerprint is part of the run's hash); {_HINT}")
    try:
        meta = json.loads((path / "meta.json").read_text())
        assert isinstance(meta, dict)
    except (OSError, ValueError, AssertionError):
        raise DataError(f"{path / 'meta.json'} is not a readable JSON object; {_HINT}") from None
    latents, labels = _mmap(path / "latents.npy"), _mmap(path / "labels.npy")
    if latents.ndim != 4 or len(latents) == 0:
        raise DataError(f"{path / 'latents.npy'} has shape {latents.shape}; expected (N, C, H, W), N > 0; {_HINT}")
    what = {k: v for k, v in meta.items() if k not in _PATH_KEYS}
    vae = meta.get("vae")
    return tuple({
        "name": "latent-array", "count": int(latents.shape[0]), "shape": [int(s) for s in latents.shape[1:]],
        "dtype": str(latents.dtype), "vae": Path(str(vae)).name if vae else None,
        "scale_factor": meta.get("scale_factor"), "flip_copies": int(meta.get("flip_copies", 1)),
        "num_classes": meta.get("num_classes"), "resolution": meta.get("resolution"),
        "meta_sha": hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16],
        "labels_sha": sha256_file(path / "labels.npy")[:16], "labels_count": int(labels.shape[0]),
        "rows_sha": _rows_digest(latents[i] for i in _sample(len(latents))),
    }.items())


def _folder_dirs(root: Path) -> tuple[str, str]:
    from fcdm.data.latents import FOLDER_LAYOUTS  # lazy: latents imports torch; a run's hash is taken without it

    for f, l in FOLDER_LAYOUTS:
        if (root / f).is_dir() and (root / l).is_dir():
            return f, l
    return FOLDER_LAYOUTS[0]


@lru_cache(maxsize=64)
def _folder_fingerprint(root: str, _stats: tuple) -> tuple:
    path = Path(root)
    fdir, ldir = (path / d for d in _folder_dirs(path))
    if not (fdir.is_dir() and ldir.is_dir()):
        raise DataError(f"latent folder {path} lacks {fdir.name}/ and {ldir.name}/ (its fingerprint is part of "
                        f"the run's hash); {_HINT}")
    names = sorted(p.name for p in os.scandir(fdir) if p.name.endswith(".npy"))
    if not names:
        raise DataError(f"{fdir} holds no .npy files; {_HINT}")
    first = _mmap(fdir / names[0])
    shape = first.shape if first.ndim == 4 else (1, *first.shape)
    picked = [names[i] for i in _sample(len(names))]
    for n in picked:
        if not (ldir / n).is_file():
            raise DataError(f"{ldir / n} is missing; every feature file needs a label file of the same name; {_HINT}")
    return tuple({
        "name": "latent-folder", "files": len(names), "count": len(names) * int(shape[0]),
        "shape": [int(s) for s in shape[1:]], "dtype": str(first.dtype),
        "names_sha": hashlib.sha256("\n".join(names).encode()).hexdigest()[:16],
        "rows_sha": _rows_digest([*(np.load(fdir / n) for n in picked), *(np.load(ldir / n) for n in picked)]),
    }.items())
