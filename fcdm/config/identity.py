"""What a run *is*: the resolved, canonical values the configuration hash covers.

    canonical({"lr": 1.0})          # {"lr": 1}: numbers normalised so 3 == 3.0, tuples as lists
    resolved_model_kwargs(cfg)      # every constructor argument of the family, defaults filled in
    digest(cfg.identity())          # the 12 hex digits that name the run (RunConfig.hash)

Needs no dataset: the data's part of the identity is fcdm.data.identity.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from fcdm.errors import ConfigError
from fcdm.models.registry import family_of, preset_kwargs, resolve_kwargs

if TYPE_CHECKING:
    from fcdm.config.schema import RunConfig


def canonical(value: Any) -> Any:
    """Numbers normalised (3.0 -> 3, -0.0 -> 0), tuples as lists, mappings with string keys; for hashing."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return str(value)


def digest(identity: dict) -> str:
    """12 hex digits of sha256 over an identity's canonical JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def identity_differences(stored: dict, current: dict) -> list[str]:
    """'key: stored -> current' for every dotted key where two identities differ, sorted."""
    a, b = dict(flatten(stored)), dict(flatten(current))
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


def flatten(d: dict, prefix: str = ""):
    """(`section.key`, value) for every leaf of a nested mapping (MLflow params, identity diffs)."""
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def model_kwargs(cfg: RunConfig, dataset=None) -> dict:
    """Constructor arguments as given: the preset's, the config's overrides, and what data and objective fix.

    dataset: only for checkpoints of older versions whose stored config does not declare the data shape;
    anything with `channels`, `image_size` and `num_classes` attributes.
    """
    channels, size, _ = cfg.data_shape
    num_classes = cfg.num_classes
    if dataset is not None:
        channels, size, num_classes = dataset.channels, dataset.image_size, dataset.num_classes
    kwargs = preset_kwargs(cfg.model.name, **cfg.model.args)
    kwargs.update(in_channels=channels, num_classes=num_classes, learn_sigma=cfg.learn_sigma,
                  gradient_checkpointing=cfg.train.gradient_checkpointing)
    if family_of(cfg.model.name) == "dit":
        kwargs["input_size"] = size
    return kwargs


def resolved_model_kwargs(cfg: RunConfig) -> dict:
    """Every constructor argument of the family, resolved and canonical (numbers normalised: 3 == 3.0).

    Preset values, the config's overrides, the data shape and classes declared in the config, and the
    constructor's signature defaults for the rest, so an explicit default and an omitted one are equal.
    Needs no dataset. Raises ConfigError for an argument the family does not take.
    """
    try:
        return canonical(resolve_kwargs(cfg.model.name, model_kwargs(cfg)))
    except ValueError as e:
        raise ConfigError(str(e)) from None
