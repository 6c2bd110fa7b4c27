"""The run configuration: one typed object that describes a training run completely.

    cfg = load_config("ablations/configs/smoke.yaml", overrides=["train.lr=2e-4"])
    cfg.hash          # canonical hash of everything that changes the trained weights (seed excluded)
    cfg.to_yaml()     # round-trips through load_config

Validation errors are ConfigError sentences naming the file, the key, the bad value and the fix.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration a user wrote is invalid; the message says where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """A preset of `fcdm.models` plus constructor overrides (the ablation axes)."""
    name: str = "FCDM-S"
    args: dict[str, Any] = Field(default_factory=dict)


class ObjectiveConfig(_Section):
    name: Literal["ddpm", "flow"] = "ddpm"
    num_timesteps: int = Field(1000, gt=1)  # ddpm only
    learn_sigma: bool | None = None  # None: learned variance for ddpm (as DiT), none for flow


class DataConfig(_Section):
    name: Literal["digits", "latent-folder", "latent-array"] = "digits"
    path: str | None = None  # latent datasets; operational (not hashed)
    image_size: int = 8  # digits only: 8 or 16
    hflip: bool = False  # digits are not flip-invariant; latents store flips as copies
    num_workers: int = Field(0, ge=0)  # operational


class TrainConfig(_Section):
    steps: int = Field(400, gt=0)
    batch_size: int = Field(64, gt=0)  # global batch, split over processes
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(None, gt=0)
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    # decay_n = min(decay, (1 + n) / (10 + n)): a plain 0.999+ EMA is useless for short runs (DESIGN 5).
    ema_warmup: bool = True
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False


class EvalConfig(_Section):
    """The evaluation protocol: when, how samples are drawn, and how they are measured. Not hashed:
    it does not change the trained weights (`fcdm-ablate evaluate` re-measures a run afterwards)."""
    at: list[float] = Field(default_factory=lambda: [1.0])  # fractions (<= 1) of train.steps, or absolute steps
    num_samples: int = Field(1000, gt=0)
    sampler: str | None = None  # None: ddpm for ddpm, euler for flow
    sampling_steps: int = Field(50, gt=0)
    cfg_scale: float = Field(1.0, ge=1.0)
    guided_channels: int | None = Field(None, gt=0)  # None: all latent channels; DiT's published numbers used 3
    precision: Literal["fp32", "bf16"] = "fp32"  # autocast dtype of the denoiser while sampling
    batch_size: int = Field(256, gt=0)
    grid_per_class: int = Field(8, gt=0)
    metrics: list[Literal["fid", "is", "kid", "prc"]] = Field(default_factory=lambda: ["fid", "is", "kid", "prc"])
    extractor: Literal["digits-classifier", "inception-v3-compat"] | None = None  # None: by data
    reference: str | None = None  # None: digits-test for digits; an ADM .npz or image folder otherwise
    vae: str | None = None  # latent runs: diffusers AutoencoderKL folder (or HF cache id) to decode samples
    fid_weights: str | None = None  # Inception weights file; default torch-fidelity's cache


class LogConfig(_Section):
    """Operational: cadence of metrics and checkpoints. Not hashed."""
    every: int = Field(10, gt=0)
    checkpoint_every: int = Field(100, gt=0)
    keep_checkpoints: int = Field(2, ge=1)


class RunConfig(_Section):
    name: str = "run"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        from .diffusion import SAMPLERS

        if self.data.name != "digits" and not self.data.path:
            raise ValueError(f"data.path is required for data.name={self.data.name!r}: point it at the latents "
                             "written by `fcdm-ablate prepare-latents IMAGE_DIR OUT --vae PATH`")
        allowed = SAMPLERS[self.objective.name]
        if self.eval.sampler is not None and self.eval.sampler not in allowed:
            raise ValueError(f"eval.sampler={self.eval.sampler!r} does not apply to objective.name="
                             f"{self.objective.name!r}; allowed values: {', '.join(allowed)}")
        if self.data.name != "digits" and self.eval.metrics and not (self.eval.vae and self.eval.reference):
            raise ValueError("eval.vae and eval.reference are required to measure a latent run (samples are "
                             "decoded by the VAE and compared with reference images, e.g. ADM's "
                             "VIRTUAL_imagenet256_labeled.npz); set them, or set eval.metrics: [] to skip")
        derived = {"in_channels", "num_classes", "learn_sigma", "gradient_checkpointing"} & set(self.model.args)
        if derived:
            raise ValueError(f"model.args.{sorted(derived)[0]} is set from the data and objective sections; "
                             "remove it from model.args (use objective.learn_sigma or train.gradient_checkpointing)")
        return self

    # -- derived values -------------------------------------------------------------------------
    @property
    def learn_sigma(self) -> bool:
        return self.objective.name == "ddpm" if self.objective.learn_sigma is None else self.objective.learn_sigma

    @property
    def sampler(self) -> str:
        return self.eval.sampler or {"ddpm": "ddpm", "flow": "euler"}[self.objective.name]

    @property
    def extractor(self) -> str:
        return self.eval.extractor or ("digits-classifier" if self.data.name == "digits" else "inception-v3-compat")

    @property
    def reference(self) -> str:
        return self.eval.reference or "digits-test"

    def eval_steps(self) -> list[int]:
        """Training steps (1-based, sorted, unique) at which to evaluate."""
        steps = {round(a * self.train.steps) if a <= 1 else int(a) for a in self.eval.at}
        return sorted(s for s in steps if 0 < s <= self.train.steps)

    # -- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def identity(self) -> dict:
        """The part of the config that determines the trained weights (what the hash covers)."""
        d = self.to_dict()
        for key in ("name", "seed", "eval", "log"):
            d.pop(key)
        for key in ("path", "num_workers"):
            d["data"].pop(key)
        return d

    @property
    def hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """Flattened `section.key` -> value, for MLflow params."""
        return dict(_flatten(self.to_dict()))


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


# -- loading ----------------------------------------------------------------------------------------

def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> RunConfig:
    """Read a YAML run config (safe loading), apply `key.path=value` overrides, validate."""
    source = str(path) if path else "<config>"
    data = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: no such config file; pass the path of a YAML run config "
                              "such as ablations/configs/smoke.yaml")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML ({e}); fix the syntax at the line shown") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections (model, objective, data, "
                              f"train, eval, log), not a {type(loaded).__name__}")
        data = _merge(data, loaded or {})
    for item in overrides:
        data = _apply_override(data, item, source)
    return validate_config(data, source)


def validate_config(data: dict, source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, data, source)) from None


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(data: dict, item: str, source: str) -> dict:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set train.lr=2e-4")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return _merge(data, nested)


def _explain(err: ValidationError, data: dict, source: str) -> str:
    """The first validation error as one sentence: file, key, value, what is allowed."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    key = ".".join(loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        section_model = _section_model(loc[:-1])
        allowed = list(section_model.model_fields) if section_model else []
        guess = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean '{'.'.join(loc[:-1] + guess)}'? " if guess else ""
        return f"{source}: unknown key '{key}'; {hint}allowed keys here: {', '.join(allowed)}"
    value = _lookup(data, loc)
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error":
        return f"{source}: {msg}"
    if e["type"] == "missing":
        return f"{source}: key '{key}' is required: add it"
    return f"{source}: {key}={value!r} is invalid: {msg}"


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _lookup(data: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, (list, tuple)) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data
