"""fcdm-ablate: controlled ablations of fully convolutional diffusion models (FCDM) against DiT."""

__version__ = "0.1.0"
