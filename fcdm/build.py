"""From a run configuration to the objects it describes: dataset, denoiser, objective."""
from __future__ import annotations

import torch.nn as nn

from .config import ConfigError, RunConfig


def build_dataset(cfg: RunConfig, split: str = "train"):
    from .data import build_dataset as _build

    d = cfg.data
    if d.name == "digits":
        return _build("digits", split=split, image_size=d.image_size, hflip=d.hflip)
    return _build(d.name, **({"root": d.path} if d.name == "latent-folder" else {"path": d.path}))


def data_info(dataset) -> dict:
    """What a model needs to know about its data; stored in checkpoints so sampling needs no dataset."""
    return {"channels": dataset.channels, "image_size": dataset.image_size, "num_classes": dataset.num_classes}


def model_kwargs(cfg: RunConfig, dataset) -> dict:
    """Constructor arguments the config resolves to: the preset's overrides plus what data and objective fix."""
    from .models import family_of

    kwargs = dict(cfg.model.args, in_channels=dataset.channels, num_classes=dataset.num_classes,
                  learn_sigma=cfg.learn_sigma, gradient_checkpointing=cfg.train.gradient_checkpointing)
    if family_of(cfg.model.name) == "dit":
        kwargs.setdefault("input_size", dataset.image_size)
    return kwargs


def build_model(cfg: RunConfig, dataset) -> nn.Module:
    """The denoiser of a config for a dataset; bad model settings raise ConfigError."""
    from .models import create_model

    try:
        return create_model(cfg.model.name, **model_kwargs(cfg, dataset))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model (name={cfg.model.name!r}, args={cfg.model.args}): {e}") from None


def build_objective(cfg: RunConfig):
    from .diffusion import create_objective

    if cfg.objective.name == "ddpm":
        return create_objective("ddpm", num_timesteps=cfg.objective.num_timesteps, learn_sigma=cfg.learn_sigma)
    return create_objective("flow", learn_sigma=cfg.learn_sigma)
