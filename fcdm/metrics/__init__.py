"""Sample-quality metrics: torch-fidelity FID/IS/KID/PR with a digits classifier or Inception-v3."""
from fcdm.errors import MetricsError
from fcdm.metrics.digits_classifier import (DigitsCNN, DigitsFeatureExtractor, classify, ensure_digits_classifier,
                                            load_digits_classifier)
from fcdm.metrics.fidelity import (ImageArrayDataset, compute_metrics, extractor_weights_digest,
                                   extractor_weights_path, fid_reference_kind, inception_weights_path,
                                   load_stored_statistics, protocol)

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
