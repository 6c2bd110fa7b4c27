"""Sample-quality metrics: torch-fidelity FID/IS/KID/PR (`fcdm.metrics.fidelity`) against a reference set
(`fcdm.metrics.references`), with Inception-v3 or the project's own digits classifier
(`fcdm.metrics.digits_classifier`) as the feature extractor."""
from fcdm.errors import MetricsError
from fcdm.metrics.digits_classifier import (
    DigitsCNN,
    DigitsFeatureExtractor,
    classify,
    ensure_digits_classifier,
    load_digits_classifier,
)
from fcdm.metrics.fidelity import (
    ImageArrayDataset,
    compute_metrics,
    extractor_weights_digest,
    extractor_weights_path,
    inception_weights_path,
    protocol,
)
from fcdm.metrics.references import fid_reference_kind, load_stored_statistics

__all__ = [
    "MetricsError",
    "DigitsCNN",
    "DigitsFeatureExtractor",
    "classify",
    "ensure_digits_classifier",
    "load_digits_classifier",
    "ImageArrayDataset",
    "compute_metrics",
    "extractor_weights_digest",
    "extractor_weights_path",
    "fid_reference_kind",
    "inception_weights_path",
    "load_stored_statistics",
    "protocol",
]
