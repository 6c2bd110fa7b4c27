"""From a run configuration to the objects it describes: dataset, denoiser, objective. Nothing else.

    build_model(cfg)             # the denoiser for cfg.data_shape and cfg.num_classes
    build_dataset(cfg)           # the training data, checked against the declared shape and classes
    build_objective(cfg)         # DDPM or flow matching with the config's resolved settings
"""
from __future__ import annotations

from fcdm.config import ConfigError, RunConfig
from fcdm.config.identity import model_kwargs
from fcdm.data import build_dataset as _build
from fcdm.data.identity import data_identity
from fcdm.diffusion import create_objective
from fcdm.models import create_model


def build_model(cfg: RunConfig, dataset=None):
    """The denoiser of a config (an nn.Module); bad model settings raise ConfigError."""
    try:
        return create_model(cfg.model.name, **model_kwargs(cfg, dataset))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model (name={cfg.model.name!r}, args={cfg.model.args}): {e}") from None


def build_dataset(cfg: RunConfig, split: str = "train"):
    """The training data of a config; a shape or class count that differs from the declared one is a ConfigError."""
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
    return {"channels": dataset.channels, "image_size": dataset.image_size, "num_classes": dataset.num_classes,
            "identity": data_identity(cfg.data.name, cfg.data.path, cfg.image_size, cfg.data.hflip)}


def build_objective(cfg: RunConfig):
    """The objective with the config's resolved settings (the same values the hash covers)."""
    return create_objective(cfg.objective.name, **cfg.objective_settings())
