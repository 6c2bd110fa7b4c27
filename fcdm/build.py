"""From a run configuration to the objects it describes: dataset, denoiser, objective.

    resolved_model_kwargs(cfg)   # every constructor argument, from the config alone (no dataset needed)
    build_model(cfg)             # the denoiser for cfg.data_shape and cfg.num_classes
    build_dataset(cfg)           # the training data, checked against the declared shape and classes
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any

from fcdm.config import ConfigError, RunConfig, canonical


def _family(name: str):
    from fcdm.models import FAMILIES, family_of

    try:
        return FAMILIES[family_of(name)]
    except ValueError as e:
        raise ConfigError(f"model.name: {e}") from None


def _constructor_args(cls) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_model_args(name: str, args: dict[str, Any]) -> None:
    """Raise ValueError (a config validation message) for a preset or argument the family does not know."""
    from fcdm.models import PRESETS

    if name not in PRESETS:
        guess = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        raise ValueError(f"model.name={name!r} is not a known preset; {hint}allowed values: {', '.join(PRESETS)}")
    allowed = _constructor_args(_family(name))
    for key in args:
        if key not in allowed:
            guess = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"did you mean 'model.args.{guess[0]}'? " if guess else ""
            raise ValueError(f"unknown key 'model.args.{key}' for {name}; {hint}allowed keys: {', '.join(allowed)}")


def model_kwargs(cfg: RunConfig, dataset=None) -> dict:
    """Constructor arguments as given: the preset's, the config's overrides, and what data and objective fix.

    dataset: only for checkpoints of older versions whose stored config does not declare the data shape;
    anything with `channels`, `image_size` and `num_classes` attributes.
    """
    from fcdm.models import family_of, preset_kwargs

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
    cls = _family(cfg.model.name)
    given = model_kwargs(cfg)
    params = _constructor_args(cls)
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ConfigError(f"model.args.{unknown[0]}: {cfg.model.name} does not take it; allowed keys: "
                          f"{', '.join(params)}")
    resolved = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    resolved.update(given)
    missing = sorted(set(params) - set(resolved))
    if missing:  # a constructor argument without a default that no preset sets
        raise ConfigError(f"model.args.{missing[0]} is required by {cfg.model.name}; add it to model.args")
    return canonical(resolved)


def build_model(cfg: RunConfig, dataset=None):
    """The denoiser of a config (an nn.Module); bad model settings raise ConfigError."""
    from fcdm.models import create_model

    try:
        return create_model(cfg.model.name, **model_kwargs(cfg, dataset))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model (name={cfg.model.name!r}, args={cfg.model.args}): {e}") from None


def build_dataset(cfg: RunConfig, split: str = "train"):
    """The training data of a config; a shape or class count that differs from the declared one is a ConfigError."""
    from fcdm.data import build_dataset as _build

    d = cfg.data
    if d.name == "digits":
        return _build("digits", split=split, image_size=cfg.image_size, hflip=d.hflip)
    if d.name == "latent-folder":  # the release's layout stores no class count: take the declared one
        ds = _build(d.name, root=d.path, num_classes=cfg.num_classes)
    else:
        ds = _build(d.name, path=d.path)
        declared = ds.meta.get("num_classes")
        if declared is not None and int(declared) != cfg.num_classes:
            raise ConfigError(f"data.num_classes={cfg.num_classes} but {d.path}/meta.json says the latents have "
                              f"{declared} classes; set data.num_classes: {declared}")
        if int(ds.labels.max()) >= cfg.num_classes:
            raise ConfigError(f"data.num_classes={cfg.num_classes} but {d.path}/labels.npy holds label "
                              f"{int(ds.labels.max())}; set data.num_classes to the dataset's class count")
        ds.num_classes = cfg.num_classes
    channels, size, _ = cfg.data_shape
    if ds.latent_shape[1] != ds.latent_shape[2]:
        raise ConfigError(f"data.path={d.path}: latents are {ds.latent_shape[1]} x {ds.latent_shape[2]}; only "
                          "square latents are supported; re-encode with prepare-latents")
    if ds.image_size != size:
        key = "data.image_size" + ("" if d.image_size else " (default 32, for 256 px)")
        raise ConfigError(f"{key}={size} but the latents in {d.path} are {ds.image_size} x {ds.image_size}; "
                          f"set data.image_size: {ds.image_size}")
    if ds.channels != channels:
        raise ConfigError(f"data.path={d.path}: latents have {ds.channels} channels, but {d.name} data is "
                          f"declared with {channels} (SD-VAE latents); re-encode them with prepare-latents")
    return ds


def data_info(cfg: RunConfig, dataset) -> dict:
    """What a model needs to know about its data, and what the data is; stored in checkpoints."""
    from fcdm.data.identity import data_identity

    return {"channels": dataset.channels, "image_size": dataset.image_size, "num_classes": dataset.num_classes,
            "identity": data_identity(cfg.data.name, cfg.data.path, cfg.image_size, cfg.data.hflip)}


def build_objective(cfg: RunConfig):
    """The objective with the config's resolved settings (the same values the hash covers)."""
    from fcdm.diffusion import create_objective

    return create_objective(cfg.objective.name, **cfg.objective_settings())
