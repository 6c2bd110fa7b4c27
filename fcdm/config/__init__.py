"""The run configuration: one typed object that describes a training run completely.

    cfg = load_config("ablations/configs/smoke.yaml", overrides=["train.lr=2e-4"])
    cfg.hash          # canonical hash of everything that changes the trained weights (seed excluded)
    cfg.data_shape    # (C, H, W) the denoiser sees, from the config alone (no dataset needed)
    cfg.to_yaml()     # round-trips through load_config

The hash covers the *resolved* run: constructor arguments with preset and signature defaults filled in
(numbers normalised, so 3 == 3.0), the objective's resolved settings, what the data is (a fixed identity
for digits, a fingerprint of the files for latents, never their path) and SCHEMA_VERSION.

Modules: `schema` (the sections and RunConfig), `identity` (what the hash covers), `loading` (YAML,
overrides, error messages), `strict_yaml` (the one YAML 1.2 parser of config files, specs and every `--set`). Validation errors are ConfigErrors naming the file, key, value and fix.
"""
from fcdm.config.identity import canonical, identity_differences, model_kwargs, resolved_model_kwargs
from fcdm.config.loading import load_config, merge, validate_config
from fcdm.config.schema import (
    DERIVED_MODEL_ARGS,
    DIGITS_SIZES,
    LATENT_CHANNELS,
    SCHEMA_VERSION,
    DataConfig,
    EvalConfig,
    LogConfig,
    ModelConfig,
    ObjectiveConfig,
    RunConfig,
    TrainConfig,
)
from fcdm.errors import ConfigError

__all__ = ["ConfigError", "DERIVED_MODEL_ARGS", "DIGITS_SIZES", "DataConfig", "EvalConfig", "LATENT_CHANNELS",
           "LogConfig", "ModelConfig", "ObjectiveConfig", "RunConfig", "SCHEMA_VERSION", "TrainConfig", "canonical",
           "identity_differences", "load_config", "merge", "model_kwargs", "resolved_model_kwargs", "validate_config"]
