"""Precomputed SD-VAE latents (already multiplied by 0.18215) for the paper profile.

Two on-disk formats, both yielding ``x: (C, H, W) float32`` and ``y: () int64``:

``LatentFolderDataset`` -- the layout the public FCDM release writes (star-kwon/FCDM,
``preparation/extract_features.py``, adapted from chuanyangjin/fast-DiT)::

    ROOT/imagenet256_features/{rank}-{step}.npy   float32 (1, 4, 32, 32)   one file per image
    ROOT/imagenet256_labels/{rank}-{step}.npy     int64   (1,)

The folder names say ``imagenet256`` even at 512 px (the script hard-codes them), fast-DiT names the
files ``{step}.npy``, and the release flips at random *once* at extraction time (a single copy per
image; no stored flip twin). Its ``train_gen/train.py`` defaults to ``--feature-path features
--label-path labels``, so ``ROOT/features`` + ``ROOT/labels`` is accepted too. A leading dim k > 1
(some forks store the flip twin in the same file) is read as k rows per file. Files are paired by
name (the release pairs two independently sorted listings, which is the same when names match).

``LatentArrayDataset`` -- our single memory-mapped format, written by ``prepare_latents``::

    DIR/latents.npy   float16|float32 (N, C, H, W)   opened with mmap_mode="r"
    DIR/labels.npy    int64 (N,)
    DIR/meta.json     {"resolution", "scale_factor", "vae", "flip_copies", "num_classes", ...}

With ``flip_copies = 2`` rows [0, N/2) are the images and row i + N/2 is the encoding of image i
flipped horizontally.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fcdm.errors import DataError

PREPARE_HINT = "create it with `fcdm-ablate prepare-latents IMAGE_DIR OUT --vae PATH`"
FOLDER_LAYOUTS = (("imagenet256_features", "imagenet256_labels"), ("features", "labels"))
ARRAY_FILES = ("latents.npy", "labels.npy", "meta.json")


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """np.load that turns every unreadable-file failure into a DataError naming the file."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npy file ({e}); delete it and {PREPARE_HINT}") from e


def _natural_key(name: str) -> tuple:
    """'0-10' sorts after '0-9' (the release names files {rank}-{step})."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


# --------------------------------------------------------------------------------------------
#                                    Release folder layout
# --------------------------------------------------------------------------------------------

class LatentFolderDataset(Dataset):
    """One .npy per image, as the FCDM / fast-DiT feature extractors write: x (C, H, W), y ().

    root: the ``--features-path`` given to the extractor (holding ``imagenet256_features`` and
    ``imagenet256_labels``), or a folder holding ``features`` and ``labels``.
    num_classes: not stored by the release and not inferred (that would open every label file);
    1000 for ImageNet.
    """

    def __init__(self, root: str | Path, num_classes: int = 1000):
        self.root = Path(root)
        self.features_dir, self.labels_dir = self._find_dirs(self.root)
        feats = {p.stem: p for p in self.features_dir.glob("*.npy")}
        labels = {p.stem: p for p in self.labels_dir.glob("*.npy")}
        if not feats and not labels:
            raise DataError(f"{self.features_dir} and {self.labels_dir} hold no .npy files; expected one "
                            f"latent file and one label file per image; {PREPARE_HINT}")
        if feats.keys() != labels.keys():
            odd = sorted(feats.keys() ^ labels.keys(), key=_natural_key)[0]
            where = self.labels_dir if odd in feats else self.features_dir
            raise DataError(f"{self.root}: {len(feats)} feature files but {len(labels)} label files; "
                            f"they must pair by name (e.g. {where / (odd + '.npy')} is missing); "
                            f"re-run the extraction or {PREPARE_HINT}")
        self.names = sorted(feats, key=_natural_key)

        first = _load_npy(self.features_dir / f"{self.names[0]}.npy", mmap=True)
        if first.ndim == 3:
            first = first[None]
        if first.ndim != 4 or first.shape[0] < 1:
            raise DataError(f"{self.features_dir / self.names[0]}.npy has shape {first.shape}; expected "
                            f"(k, C, H, W) or (C, H, W) latents; {PREPARE_HINT}")
        self.copies = int(first.shape[0])  # rows per file: 1 in the release
        self.latent_shape = tuple(int(s) for s in first.shape[1:])
        self.channels, self.image_size = self.latent_shape[0], self.latent_shape[1]
        self.num_classes = int(num_classes)

    @staticmethod
    def _find_dirs(root: Path) -> tuple[Path, Path]:
        for f, l in FOLDER_LAYOUTS:
            if (root / f).is_dir() and (root / l).is_dir():
                return root / f, root / l
        expected = " or ".join(f"{root / f}/*.npy + {root / l}/*.npy" for f, l in FOLDER_LAYOUTS)
        what = "does not exist" if not root.exists() else "lacks the feature/label folders"
        raise DataError(f"latent folder {root} {what}; expected {expected} (the FCDM release layout, "
                        f"preparation/extract_features.py); or {PREPARE_HINT} and use 'latent-array'")

    def __len__(self) -> int:
        return len(self.names) * self.copies

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        file_idx, copy = divmod(i, self.copies)
        name = self.names[file_idx]
        fpath, lpath = self.features_dir / f"{name}.npy", self.labels_dir / f"{name}.npy"
        x = _load_npy(fpath)
        if x.ndim == 3:
            x = x[None]
        if x.shape != (self.copies, *self.latent_shape):
            raise DataError(f"{fpath} has shape {x.shape}; every feature file in {self.features_dir} "
                            f"must be {(self.copies, *self.latent_shape)} like the first one")
        y = _load_npy(lpath).reshape(-1)
        if y.size not in (1, self.copies):
            raise DataError(f"{lpath} holds {y.size} labels; expected 1 (or {self.copies}, one per row)")
        label = int(y[copy if y.size > 1 else 0])
        return torch.from_numpy(np.array(x[copy], dtype=np.float32)), torch.tensor(label, dtype=torch.int64)

    def item(self, i: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example i; `seed` is unused: latents have no random transform (flips are stored copies)."""
        return self[i]

    def __repr__(self) -> str:
        return f"LatentFolderDataset({str(self.root)!r}, n={len(self)}, latent_shape={self.latent_shape})"


# --------------------------------------------------------------------------------------------
#                                   Memory-mapped array
# --------------------------------------------------------------------------------------------

class LatentArrayDataset(Dataset):
    """``latents.npy`` (N, C, H, W) memory-mapped + ``labels.npy`` (N,) + ``meta.json``.

    Yields x (C, H, W) float32 and y () int64. num_classes: override; else meta's, else max + 1.
    """

    def __init__(self, path: str | Path, num_classes: int | None = None):
        self.path = Path(path)
        fmt = ("a directory with latents.npy (N x C x H x W, float16 or float32), labels.npy "
               "(N, int64) and meta.json")
        if not self.path.is_dir():
            raise DataError(f"latent array {self.path} does not exist or is not a directory; expected "
                            f"{fmt}; {PREPARE_HINT}")
        for name in ARRAY_FILES:
            if not (self.path / name).is_file():
                raise DataError(f"latent array {self.path} has no {name}; expected {fmt}; {PREPARE_HINT}")
        try:
            self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text())
            if not isinstance(self.meta, dict):
                raise ValueError("top level is not an object")
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path / 'meta.json'} is not a readable JSON object ({e}); "
                            f"{PREPARE_HINT}") from e

        latents = _load_npy(self.path / "latents.npy", mmap=True)
        self.labels = np.asarray(_load_npy(self.path / "labels.npy"))  # N x 8 bytes: keep in RAM
        if latents.ndim != 4 or latents.dtype not in (np.float16, np.float32):
            raise DataError(f"{self.path / 'latents.npy'} is {latents.dtype} {latents.shape}; expected "
                            f"float16/float32 (N, C, H, W); {PREPARE_HINT}")
        if self.labels.ndim != 1 or self.labels.dtype.kind not in "iu":
            raise DataError(f"{self.path / 'labels.npy'} is {self.labels.dtype} {self.labels.shape}; "
                            f"expected int64 (N,); {PREPARE_HINT}")
        if len(latents) != len(self.labels):
            raise DataError(f"latent array {self.path}: latents.npy has {len(latents)} rows but labels.npy "
                            f"has {len(self.labels)}; the two must match row for row; {PREPARE_HINT}")
        if len(latents) == 0:
            raise DataError(f"latent array {self.path} is empty (0 rows); {PREPARE_HINT}")
        self.flip_copies = int(self.meta.get("flip_copies", 1))
        if self.flip_copies < 1 or len(latents) % self.flip_copies:
            raise DataError(f"{self.path / 'meta.json'}: flip_copies={self.flip_copies} does not divide "
                            f"the {len(latents)} rows; {PREPARE_HINT}")
        if self.labels.min() < 0:
            raise DataError(f"{self.path / 'labels.npy'} holds negative labels; expected 0..num_classes-1")

        self.num_classes = int(num_classes or self.meta.get("num_classes") or int(self.labels.max()) + 1)
        if self.labels.max() >= self.num_classes:
            raise DataError(f"{self.path / 'labels.npy'} holds label {int(self.labels.max())} but "
                            f"num_classes is {self.num_classes}")
        self.latent_shape = tuple(int(s) for s in latents.shape[1:])
        self.channels, self.image_size = self.latent_shape[0], self.latent_shape[1]
        self.resolution = self.meta.get("resolution")
        self.scale_factor = self.meta.get("scale_factor")
        self._latents: np.ndarray | None = latents

    def _array(self) -> np.ndarray:
        if self._latents is None:  # reopened lazily in each DataLoader worker
            self._latents = np.load(self.path / "latents.npy", mmap_mode="r")
        return self._latents

    def __getstate__(self) -> dict[str, Any]:
        # Pickling an np.memmap copies the whole array (spawned DataLoader workers would each get
        # the full dataset): send the path and let each worker map the file itself.
        state = self.__dict__.copy()
        state["_latents"] = None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.array(self._array()[i], dtype=np.float32)  # copies out of the map; float16 -> float32
        return torch.from_numpy(x), torch.tensor(int(self.labels[i]), dtype=torch.int64)

    def item(self, i: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example i; `seed` is unused: latents have no random transform (flips are stored copies)."""
        return self[i]

    def __repr__(self) -> str:
        return (f"LatentArrayDataset({str(self.path)!r}, n={len(self)}, latent_shape={self.latent_shape}, "
                f"flip_copies={self.flip_copies})")
