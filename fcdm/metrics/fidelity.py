"""Sample-quality metrics (FID, IS, KID, precision/recall) through torch-fidelity, offline.

Two protocols share one code path:

- ``extractor="digits-classifier"`` (default, CPU profile): features of the project's own digits CNN
  (fcdm.metrics.digits_classifier), reference = a digits split, plus `class_consistency` for conditional samples;
- ``extractor="inception-v3-compat"`` (paper profile): torch-fidelity's TF-compatible Inception-v3, as in
  FID-50K of DiT/ADM; the weights must already be on disk (`fid_weights` or torch-fidelity's cache),
  since nothing here may download.

    from fcdm.metrics import compute_metrics, protocol
    m = compute_metrics(samples_uint8_nhwc, labels, reference="digits-test", cache_dir="runs/cache")
    # {'fid': ..., 'is': ..., 'is_std': ..., 'kid': ..., 'kid_std': ..., 'precision': ..., 'recall': ...,
    #  'class_consistency': ...}

An ADM reference batch (`VIRTUAL_imagenet256_labeled.npz`) stores `mu`/`sigma`, the Inception pool3
statistics of the whole training set, beside 10K images in `arr_0`. As in ADM's evaluator (which every
DiT/SiT/FCDM number uses), FID is then taken against the stored statistics and the images serve
precision/recall, KID and IS only (fcdm.metrics.references.fid_reference_kind says which FID reference a
reference gives).

Reference features and FID statistics are cached by torch-fidelity under `<cache_dir>/fidelity`, keyed
by reference, image size and extractor weights; sample features are never cached.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.hub
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import (
    fid_featuresdict_to_statistics,
    fid_featuresdict_to_statistics_cached,
    fid_input_id_to_statistics_cached,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.utils import (
    create_feature_extractor,
    extract_featuresdict_from_input_id_cached,
    get_cacheable_input_name,
    resolve_feature_layer_for_metric,
)

import fcdm.metrics.digits_classifier as dc
from fcdm.errors import MetricsError
from fcdm.metrics.references import (
    as_nhwc_uint8,
    fid_reference_kind,
    load_reference,
    load_stored_statistics,
    npz_reference,
)
from fcdm.util.files import sha256_file

EXTRACTORS = ("digits-classifier", "inception-v3-compat")
METRICS = ("fid", "is", "kid", "prc")
INCEPTION_WEIGHTS_FILE = os.path.basename(urlparse(URL_INCEPTION_V3).path)
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; shrunk to the sample count for small evaluations
ISC_SPLITS = 10  # the Inception Score's customary 10 splits (Salimans et al.)
PRC_NEIGHBORHOOD = 3  # torch-fidelity's default k, as in Kynkaanniemi et al. (2019)

# torch-fidelity result keys -> ours
_KEYS = {
    torch_fidelity.KEY_METRIC_FID: "fid",
    torch_fidelity.KEY_METRIC_ISC_MEAN: "is",
    torch_fidelity.KEY_METRIC_ISC_STD: "is_std",
    torch_fidelity.KEY_METRIC_KID_MEAN: "kid",
    torch_fidelity.KEY_METRIC_KID_STD: "kid_std",
    torch_fidelity.KEY_METRIC_PRECISION: "precision",
    torch_fidelity.KEY_METRIC_RECALL: "recall",
}


class ImageArrayDataset(Dataset):
    """uint8 images (N, H, W, C) -> items uint8 (C', H, W), the only input form torch-fidelity accepts.

    `rgb=True` repeats one grey channel three times (Inception-v3 insists on 3 channels). Items are
    converted one at a time so that 50K x 256 x 256 samples are never copied whole.
    """

    def __init__(self, images: np.ndarray, rgb: bool = False):
        self.images = images
        self.rgb = rgb

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        if self.rgb and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return x.contiguous()


# ----------------------------------------------------------------------------------------------------
# The extractor's weights
# ----------------------------------------------------------------------------------------------------


def inception_weights_path(fid_weights: str | os.PathLike | None = None) -> Path:
    """The Inception-v3 (TF-compat) weights file to use, found without touching the network.

    `fid_weights` wins when given; otherwise torch-fidelity's own cache
    (`torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-6726825d.pth`, i.e. under $TORCH_HOME).
    Raises MetricsError (never downloads) when neither exists.
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if fid_weights is not None:
        path = Path(fid_weights).expanduser()
        if path.is_file():
            return path
        raise MetricsError(
            f"--fid-weights {path}: no such file. It should be torch-fidelity's Inception-v3 weights "
            f"{INCEPTION_WEIGHTS_FILE}, published at {URL_INCEPTION_V3}."
        )
    if cached.is_file():
        return cached
    raise MetricsError(
        f"extractor 'inception-v3-compat' needs torch-fidelity's Inception-v3 weights file {INCEPTION_WEIGHTS_FILE}, "
        f"and it is not in torch-fidelity's cache ({cached}); this machine cannot download it. Either copy the file "
        f"to {cached} or pass --fid-weights PATH (fid_weights=PATH in Python). The file is published at "
        f"{URL_INCEPTION_V3} (fetch it on a machine with network access)."
    )


def extractor_weights_path(extractor: str, cache_dir: str | os.PathLike,
                           fid_weights: str | os.PathLike | None = None) -> Path:
    """The weights file the extractor runs with: `fid_weights` when given, else its default (Inception:
    torch-fidelity's cache, never downloaded; the digits classifier: trained into `cache_dir` on first use)."""
    if extractor == "inception-v3-compat":
        return inception_weights_path(fid_weights)
    if fid_weights is not None:
        return dc.check_weights_file(fid_weights)
    return dc.ensure_digits_classifier(cache_dir)


_DIGESTS: dict[tuple, str] = {}


def extractor_weights_digest(extractor: str, path: str | os.PathLike) -> str:
    """"sha256:<12 hex>" naming the extractor's weights: of the file for Inception, of the tensors for the
    digits classifier (its file also records how long training took). Memoised per file version."""
    path = Path(path).resolve()
    st = path.stat()
    key = (extractor, str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = dc.state_digest(path) if extractor == "digits-classifier" else f"sha256:{sha256_file(path)[:12]}"
    return _DIGESTS[key]


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------


def compute_metrics(
    samples: np.ndarray,
    labels: np.ndarray | None = None,
    reference: str = "digits-test",
    extractor: str = "digits-classifier",
    cache_dir: str | os.PathLike = dc.DEFAULT_CACHE_DIR,
    fid_weights: str | os.PathLike | None = None,
    metrics: tuple[str, ...] = METRICS,
    batch_size: int = 256,
    reference_images: np.ndarray | None = None,
    cuda: bool | None = None,
) -> dict[str, float]:
    """Quality metrics of generated samples against a reference set.

    samples: uint8 (N, H, W, C), C in {1, 3}; labels: optional int (N,) conditioning classes (None for
        unconditional samples).
    reference: "digits-test" | "digits-train" | "digits-all" (rendered at the samples' size), a path to an
        ADM-style .npz (uint8 (M, H, W, C) in `arr_0`; FID against its `mu`/`sigma` when it stores them)
        or a folder of images; `reference_images` (uint8 (M, H, W, C)) overrides it and is not cached.
    fid_weights: the extractor's weights file (Inception-v3 or the digits classifier); default its cache.
    metrics: any of "fid", "is", "kid", "prc" (precision and recall, k = 3 as in Kynkaanniemi et al.).
    Returns floats: fid, is, is_std, kid, kid_std, precision, recall as requested, and class_consistency
    (fraction of samples the digits classifier puts in their conditioning class) when labels are given
    and the extractor is the digits classifier.
    """
    samples = as_nhwc_uint8(samples, "samples")
    _check_request(samples, labels, metrics, extractor)
    cache_dir = Path(cache_dir)
    # Weights first: a missing Inception file must fail here, in milliseconds, not inside torch-fidelity.
    weights = extractor_weights_path(extractor, cache_dir, fid_weights)
    # Keys cached reference features to the exact weights (a retrained classifier never reads stale ones).
    weights_tag = extractor_weights_digest(extractor, weights).removeprefix("sha256:")

    out: dict[str, float] = {}
    if metrics:
        stored = None
        if "fid" in metrics and reference_images is None and fid_reference_kind(reference) == "stored-statistics":
            stored = load_stored_statistics(npz_reference(reference))
        kwargs = _fidelity_inputs(samples, set(metrics), stored, reference, reference_images, extractor, weights,
                                  weights_tag, cache_dir, batch_size, cuda)
        result = _fidelity_metrics(set(metrics), stored, reference, **kwargs)
        out.update({ours: float(result[theirs]) for theirs, ours in _KEYS.items() if theirs in result})

    if labels is not None and extractor == "digits-classifier":
        predicted = dc.classify(samples, dc.load_weights(weights))
        out["class_consistency"] = float((predicted == np.asarray(labels)).mean())
    return out


def _check_request(samples: np.ndarray, labels: np.ndarray | None, metrics: tuple[str, ...], extractor: str) -> None:
    """MetricsError for an unknown metric or extractor, labels that do not match the samples, or too few
    samples for precision/recall."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise MetricsError(f"metrics {sorted(unknown)} are unknown; choose from {list(METRICS)}.")
    if extractor not in EXTRACTORS:
        raise MetricsError(f"extractor {extractor!r} is unknown; choose from {list(EXTRACTORS)}.")
    if labels is not None and len(labels) != len(samples):
        raise MetricsError(f"labels has {len(labels)} entries for {len(samples)} samples.")
    if "prc" in metrics and len(samples) <= PRC_NEIGHBORHOOD:
        raise MetricsError(
            f"precision/recall uses the {PRC_NEIGHBORHOOD}-th nearest neighbour and needs more than "
            f"{PRC_NEIGHBORHOOD} samples; got {len(samples)}. Drop 'prc' from metrics or add samples."
        )


def _fidelity_inputs(samples: np.ndarray, metrics: set[str], stored: dict | None, reference: str,
                     reference_images: np.ndarray | None, extractor: str, weights: Path, weights_tag: str,
                     cache_dir: Path, batch_size: int, cuda: bool | None) -> dict:
    """torch-fidelity's keyword arguments: the samples as input1 and, when a metric needs its images (KID,
    precision/recall, FID without `stored` statistics), the reference as input2 with its cache name."""
    rgb = extractor == "inception-v3-compat"
    kwargs = dict(
        input1=ImageArrayDataset(samples, rgb=rgb),
        feature_extractor=extractor,
        feature_extractor_weights_path=str(weights),
        isc_splits=min(ISC_SPLITS, len(samples)),
        prc_neighborhood=PRC_NEIGHBORHOOD,
        batch_size=batch_size,
        cuda=torch.cuda.is_available() if cuda is None else cuda,
        cache_root=str(cache_dir / "fidelity"),
        # No DataLoader worker processes (the arrays are in memory) and blockwise
        # precision/recall distances instead of one N x M matrix.
        save_cpu_ram=True,
        verbose=False,
    )
    if {"kid", "prc"} & metrics or ("fid" in metrics and stored is None):
        if reference_images is not None:
            ref, ref_key = as_nhwc_uint8(reference_images, "reference_images"), None
        else:
            ref, ref_key = load_reference(reference, samples.shape[1], samples.shape[-1])
        kwargs.update(
            input2=ImageArrayDataset(ref, rgb=rgb),
            # torch-fidelity appends "-<extractor>-features-<layer>".
            input2_cache_name=None if ref_key is None else f"{ref_key}-{weights_tag}",
            kid_subset_size=min(KID_SUBSET_SIZE, len(samples), len(ref)),
        )
    return kwargs


def _fidelity_metrics(metrics: set[str], stored: dict | None, reference: str, **kwargs) -> dict[str, float]:
    """torch-fidelity's `calculate_metrics` taken step by step with its own functions (features of each
    input extracted once), so that FID can be measured against `stored` statistics instead of input2."""
    names = {"is": "isc", "fid": "fid", "kid": "kid", "prc": "prc"}
    layers = {m: resolve_feature_layer_for_metric(names[m], **kwargs) for m in metrics}
    extractor = create_feature_extractor(kwargs["feature_extractor"], sorted(set(layers.values())), **kwargs)
    feats1 = extract_featuresdict_from_input_id_cached(1, extractor, **kwargs)
    feats2 = extract_featuresdict_from_input_id_cached(2, extractor, **kwargs) if {"kid", "prc"} & metrics else None
    out = {}
    if "is" in metrics:
        out.update(isc_featuresdict_to_metric(feats1, layers["is"], **kwargs))
    if "fid" in metrics:
        stats1 = fid_featuresdict_to_statistics(feats1, layers["fid"])
        if stored is not None:
            if stored["mu"].shape != stats1["mu"].shape:
                raise MetricsError(
                    f"reference {reference} stores FID statistics of dimension {len(stored['mu'])}, but extractor "
                    f"{kwargs['feature_extractor']!r} gives {len(stats1['mu'])}-d features; measure with the extractor "
                    f"the statistics came from (inception-v3-compat for ADM's files) or use a reference without them."
                )
            # The stored statistics are float64; the samples' mean is float32: compare both in float64.
            stats1 = {k: v.astype(np.float64) for k, v in stats1.items()}
            stats2 = stored
        elif feats2 is not None:
            stats2 = fid_featuresdict_to_statistics_cached(feats2, get_cacheable_input_name(2, **kwargs), extractor,
                                                           layers["fid"], **kwargs)
        else:  # FID alone: cached reference statistics are enough, no reference features needed
            stats2 = fid_input_id_to_statistics_cached(2, extractor, layers["fid"], **kwargs)
        out.update(fid_statistics_to_metric(stats1, stats2, False))
    if "kid" in metrics:
        out.update(kid_featuresdict_to_metric(feats1, feats2, layers["kid"], **kwargs))
    if "prc" in metrics:
        out.update(prc_featuresdict_to_metric(feats1, feats2, layers["prc"], **kwargs))
    return out


def protocol(
    extractor: str, reference: str, num_samples: int, num_reference: int | None = None,
    fid_reference: str = "images",
) -> dict[str, str]:
    """String tags that say how the numbers were measured, e.g. {"eval.description": "FID-50K vs ..."}.

    Logged beside the metrics so that two FIDs are only compared when their tags agree.
    """
    layer = "feat (64-d penultimate)" if extractor == "digits-classifier" else "2048 (pool3)"
    kid_size = min(KID_SUBSET_SIZE, num_samples, num_reference or num_samples)
    return {
        "eval.description": f"FID-{num_samples / 1000:g}K vs {reference} ({fid_reference}), {extractor}",
        "eval.extractor": extractor,
        "eval.feature_layer": layer,
        "eval.reference": str(reference),
        "eval.fid_reference": fid_reference,
        "eval.num_samples": str(num_samples),
        "eval.kid_subset_size": str(kid_size),
        "eval.isc_splits": str(min(ISC_SPLITS, num_samples)),
        "eval.prc_neighborhood": str(PRC_NEIGHBORHOOD),
        "eval.torch_fidelity": torch_fidelity.__version__,
    }
