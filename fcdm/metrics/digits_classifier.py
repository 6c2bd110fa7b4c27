"""An independent digits classifier: the judge for sample quality on the bundled digits data.

A small CNN for 8x8 one-channel digits (sklearn `load_digits`), trained deterministically on the
TRAIN split of `fcdm.data.digits` (the split the generators train on) the first time it is asked for
(a few seconds on one CPU thread), and cached as a `weights_only` checkpoint under the caller's cache
directory (`<store>/cache/digits_classifier.pt`). It plays two roles:

- `classify` judges class-conditional samples (the fraction that land in their conditioning class);
- `DigitsFeatureExtractor`, registered with torch-fidelity as ``"digits-classifier"``, stands in for
  Inception-v3 on digits: FID/KID/precision/recall use its 64-d penultimate layer (``"feat"``), the
  Inception Score its logits (``"logits"``).

    from fcdm.metrics.digits_classifier import load_digits_classifier, classify
    model = load_digits_classifier("runs/cache")           # trains once, then loads from the cache
    labels = classify(images_uint8_nhwc, model)            # (N,) int64
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from fcdm.data.digits import digits_arrays
from fcdm.errors import MetricsError, reason
from fcdm.util.files import atomic_writer, sha256_file

EXTRACTOR_NAME = "digits-classifier"
WEIGHTS_FILE = "digits_classifier.pt"
DEFAULT_CACHE_DIR = Path("runs") / "cache"
NATIVE_SIZE = 8  # load_digits images are 8x8; larger inputs are area-resized down to this
# Bump when the architecture or the training recipe changes: a cached file of another version is retrained.
RECIPE_VERSION = 1
SEED = 0


def _split_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Content hash of a training split: a cached classifier trained on other data is retrained."""
    return hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W), C in {1, 3}, any H, W -> float (N, 1, 8, 8) in [0, 1].

    Sizes that are multiples of 8 are area-averaged, which exactly inverts fcdm.data.digits' nearest
    upsampling (16x16 references and samples are judged on the same 8x8 grid the classifier saw).
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
    x = images.float() / 255.0
    if x.shape[1] == 3:  # torch-fidelity and image folders hand over RGB; digits are grey
        x = x.mean(dim=1, keepdim=True)
    h, w = x.shape[-2:]
    if (h, w) != (NATIVE_SIZE, NATIVE_SIZE):
        if h % NATIVE_SIZE == 0 and w % NATIVE_SIZE == 0:
            x = F.interpolate(x, size=(NATIVE_SIZE, NATIVE_SIZE), mode="area")  # exact box average
        else:
            x = F.interpolate(x, size=(NATIVE_SIZE, NATIVE_SIZE), mode="bilinear", antialias=True)
    return x


class DigitsCNN(nn.Module):
    """Conv(32)-Conv(64)-pool-Conv(64)-pool-Linear(64)-ReLU-Linear(10); about 60k parameters."""

    def __init__(self, num_classes: int = 10, feat_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 4x4
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 2x2
            nn.Flatten(),
            nn.Linear(64 * 2 * 2, feat_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feat_dim, num_classes))
        # Set after training to 1 / RMS of the train-split features, so that features are O(1) like
        # Inception's pool3: KID's cubic kernel (x.y / d + 1)^3 loses float32 precision on large ones.
        self.register_buffer("feat_scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float (N, 1, 8, 8) in [0, 1] -> (feat (N, 64), logits (N, 10)).

        feat is the penultimate layer before its ReLU: post-ReLU, half of the 64 units are dead (always 0)
        and carry nothing to FID.
        """
        pre = self.body(x)
        return pre * self.feat_scale, self.head(pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (N, 1, 8, 8) in [0, 1] -> logits (N, 10)."""
        return self.head(self.body(x))


# ----------------------------------------------------------------------------------------------------
# Training and the weights cache
# ----------------------------------------------------------------------------------------------------


def _train(epochs: int = 20, batch_size: int = 32, lr: float = 3e-3) -> tuple[DigitsCNN, dict]:
    """Train on the digits TRAIN split; bit-reproducible (fixed seed, one thread, deterministic ops).

    20 epochs of Adam (cosine to 0) reach ~98.6% on the held-out split in about 3 s on one thread.
    """
    images, labels = digits_arrays("train", NATIVE_SIZE)
    x = preprocess(torch.from_numpy(images).permute(0, 3, 1, 2))
    y = torch.from_numpy(labels)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    # fork_rng keeps the caller's global RNG stream untouched; one thread fixes the reduction order.
    # enable_grad: the first use may come from inside a no_grad caller (e.g. `classify`).
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(SEED)
        torch.set_num_threads(1)
        try:
            model = DigitsCNN()
            gen = torch.Generator().manual_seed(SEED)
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            steps = epochs * ((len(y) + batch_size - 1) // batch_size)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            model.train()
            for _ in range(epochs):
                perm = torch.randperm(len(y), generator=gen)
                for i in range(0, len(y), batch_size):
                    idx = perm[i : i + batch_size]
                    # No augmentation: +-1 px shifts were measured to cost 1-2 points of test accuracy.
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
            model.eval()
            with torch.no_grad():
                model.feat_scale.fill_(1.0 / model.body(x).pow(2).mean().sqrt().item())
        finally:
            torch.set_num_threads(threads)
    meta = {
        "recipe_version": RECIPE_VERSION,
        "seed": SEED,
        "train_size": int(len(y)),
        "train_fingerprint": _split_fingerprint(images, labels),
        "train_seconds": round(time.perf_counter() - t0, 3),
        "test_accuracy": float(_accuracy(model, "test")),
    }
    return model, meta


def _accuracy(model: DigitsCNN, split: str) -> float:
    images, labels = digits_arrays(split, NATIVE_SIZE)
    return float((classify(images, model) == labels).mean())


def weights_path(cache_dir: str | os.PathLike) -> Path:
    """Where the trained classifier lives: <cache_dir>/digits_classifier.pt."""
    return Path(cache_dir) / WEIGHTS_FILE


def ensure_digits_classifier(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    """Train and cache the classifier unless a current cached file exists; returns its path.

    Current = same recipe version and same digits TRAIN split (by content hash) as this code. A cached file
    that cannot be read (zero bytes, cut short) is a cache miss: retrained and replaced atomically and durably.
    """
    path = weights_path(cache_dir)
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # an unreadable cache (empty, cut short, foreign) is rebuilt, as an outdated one is
            cached = {}
        meta = cached.get("meta", {}) if isinstance(cached, dict) else {}
        if meta.get("recipe_version") == RECIPE_VERSION and meta.get("train_fingerprint") == _split_fingerprint(
            *digits_arrays("train", NATIVE_SIZE)
        ):
            return path
    model, meta = _train()
    # Atomic and durable: two processes training at once both leave a complete (identical) file.
    with atomic_writer(path) as f:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, f)
    return path


def load_digits_classifier(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> DigitsCNN:
    """The trained classifier in eval mode, from <cache_dir>/digits_classifier.pt (trained on first use).

    The returned module carries `.meta` (recipe version, seed, test accuracy, training seconds) and
    `.weights_path`.
    """
    path = ensure_digits_classifier(cache_dir)
    return load_weights(path)


def check_weights_file(path: str | os.PathLike) -> Path:
    """`path` if it holds digits-classifier weights (as `ensure_digits_classifier` writes them), else MetricsError."""
    path = Path(path).expanduser()
    problem = None
    if not path.is_file():
        problem = "no such file"
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            DigitsCNN().load_state_dict(ckpt["state_dict"])
        except Exception as e:  # any unreadable or mismatched file gets the same one-sentence answer
            problem = f"not a digits-classifier weights file ({reason(e, 120)})"
    if problem:
        raise MetricsError(f"--fid-weights {path}: {problem}. For extractor {EXTRACTOR_NAME!r} it should be a file "
                           f"written by ensure_digits_classifier (<store>/cache/{WEIGHTS_FILE}); omit it to use that one.")
    return path


def load_weights(path: str | os.PathLike) -> DigitsCNN:
    """The classifier stored at `path`, in eval mode, with `.meta` and `.weights_path`."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = DigitsCNN()
    model.load_state_dict(ckpt["state_dict"])
    model.requires_grad_(False)
    model.eval()
    model.meta = dict(ckpt.get("meta", {}))
    model.weights_path = Path(path)
    return model


def weights_fingerprint(path: str | os.PathLike) -> str:
    """Short content hash of a weights file; keys cached reference features to the exact weights."""
    return sha256_file(path)[:10]


def state_digest(path: str | os.PathLike) -> str:
    """"sha256:<12 hex>" of the classifier's tensors (names, shapes, values), not of the file: two caches
    holding the same weights agree even though their files record different training times."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return f"sha256:{h.hexdigest()[:12]}"


@torch.no_grad()
def classify(
    images: np.ndarray, model: DigitsCNN | None = None, *, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    batch_size: int = 2048,
) -> np.ndarray:
    """images: uint8 (N, H, W, C) (or (N, H, W)) -> predicted digit labels, int64 (N,)."""
    model = model if model is not None else load_digits_classifier(cache_dir)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).permute(0, 3, 1, 2)
        out.append(model(preprocess(batch).to(device)).argmax(dim=1).cpu())
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------
# torch-fidelity feature extractor
# ----------------------------------------------------------------------------------------------------


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor ``"digits-classifier"``: uint8 (N, 1|3, H, W) -> ("feat" (N, 64), "logits" (N, 10)).

    torch-fidelity builds it as `cls(name, features_list, **calculate_metrics_kwargs)`; the weights come
    from `feature_extractor_weights_path`, or are trained into the default cache when that is None
    (the counterpart of Inception's download).
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path = feature_extractor_weights_path or ensure_digits_classifier(DEFAULT_CACHE_DIR)
        self.net = load_weights(path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return False  # a 60k-parameter CNN: compiling costs more than it could save

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, NATIVE_SIZE, NATIVE_SIZE, dtype=torch.uint8)

    def forward(self, x):
        feat, logits = self.net.features(preprocess(x).to(next(self.net.parameters()).device))
        provided = {"feat": feat, "logits": logits}
        return tuple(provided[name] for name in self.features_list)


# The registry refuses duplicates; the guard keeps importlib.reload and repeated imports harmless.
if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EXTRACTOR_NAME, DigitsFeatureExtractor)
