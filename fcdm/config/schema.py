"""The run configuration's schema: its sections as frozen pydantic models, and RunConfig, the one typed
object that describes a training run completely (its derived values, cross-checks and hash).

    cfg.hash          # canonical hash of everything that changes the trained weights (seed excluded)
    cfg.data_shape    # (C, H, W) the denoiser sees, from the config alone (no dataset needed)
    cfg.to_yaml()     # round-trips through fcdm.config.load_config
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fcdm.config.identity import canonical, digest, flatten, resolved_model_kwargs
from fcdm.diffusion import SAMPLERS
from fcdm.errors import DataError
from fcdm.models.registry import check_model_args, family_of

# Bump whenever a code default that changes the trained weights changes (a model or objective default,
# the data split, the flip RNG), so a new default never attaches to an old run's checkpoints.
# 2: resolved, canonical identity; data fingerprints; per-item flip seeds from (seed, step, index).
SCHEMA_VERSION = 2
LATENT_CHANNELS = 4  # SD-VAE latents: 4 channels at 1/8 of the image side
DIGITS_SIZES = (8, 16)
TAG_CONFIG_KEY = "fcdm.config_key"  # the run tag holding RunConfig.config_key (set by the trainer)
# Constructor arguments fixed by other sections; the config refuses them in model.args.
DERIVED_MODEL_ARGS = {"in_channels": "data", "num_classes": "data.num_classes", "input_size": "data.image_size",
                      "learn_sigma": "objective.learn_sigma", "gradient_checkpointing": "train.gradient_checkpointing"}


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
    fixed_variance: Literal["large", "small"] = "large"  # ddpm only, without learn_sigma; DiT's fixed-large
    time_scale: float | None = Field(None, gt=0)  # flow only; None: 1000 (the FCDM release's t * 1000; SiT uses 1)
    clip_x0: bool | None = None  # None: on for pixel data (digits), off for latents


# Keys that apply to one objective only, with their defaults: any other value with the other objective
# is refused, so a setting never silently does nothing.
_OBJECTIVE_ONLY = {"ddpm": {"num_timesteps": 1000, "fixed_variance": "large"}, "flow": {"time_scale": None}}


class DataConfig(_Section):
    name: Literal["digits", "latent-folder", "latent-array"] = "digits"
    path: str | None = None  # latent datasets; where, not what: the hash covers a fingerprint of the files
    # The spatial side the denoiser sees: digits 8 or 16 (None: 8); latents 32 for 256 px, 64 for 512 px
    # (None: 32). Declared so the model's shape is known without the data; training checks the data.
    image_size: int | None = Field(None, gt=0)
    num_classes: int | None = Field(None, gt=1)  # None: 10 for digits, 1000 for latents (ImageNet)
    hflip: bool = False  # digits only: digits are not flip-invariant; latents store flips as copies
    num_workers: int = Field(0, ge=0)  # operational: flips are seeded per item from (seed, step, index)


class TrainConfig(_Section):
    steps: int = Field(400, gt=0)
    batch_size: int = Field(64, gt=0)  # global batch, split over processes
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(None, gt=0)
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    # decay_n = min(decay, (1 + n) / (10 + n)): a plain 0.999+ EMA of a short run is mostly its initial weights.
    ema_warmup: bool = True
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    # Micro-batches per optimiser step: each process's batch is split into this many, their gradients
    # summed, so the global batch (and the data order) is unchanged while activations shrink by the factor.
    # Hashed when above 1 (float sums in another order: equal to the large batch to rounding, not bit for
    # bit), absent from the identity at 1 so earlier runs keep their hashes.
    grad_accum: int = Field(1, gt=0)


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
    # Sampling seed of the evaluation: part of the protocol (and its digest), not of the run, so every training
    # seed of one configuration evaluated the same way shares one protocol and one metric key.
    seed: int = Field(0, ge=0)
    # Evaluation noise: the final checkpoint evaluated this many more times, with sampling seeds seed+1..seed+K,
    # logged as `<metric>.eval_seed<S>` at the final step (not part of the protocol: the same one, reseeded).
    noise_seeds: int = Field(0, ge=0)


class LogConfig(_Section):
    """Operational: cadence of metrics and checkpoints, where the MLflow run lives. Not hashed."""
    every: int = Field(10, gt=0)
    checkpoint_every: int = Field(100, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    experiment: str | None = None  # MLflow experiment a new run is created in; None: the run's name
    tags: dict[str, str] = Field(default_factory=dict)  # set on the MLflow run whenever it is opened
    # MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) every 10 s, as system/*
    system_metrics: bool = False


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
        if not self.name or any(ord(c) < 32 or ord(c) == 127 for c in self.name):
            raise ValueError(f"name={self.name!r}: a run's name is one line of printable text (it names the MLflow "
                             "run and its log lines); remove the newline, tab or control character")
        d, o = self.data, self.objective
        if d.name != "digits" and not d.path:
            raise ValueError(f"data.path is required for data.name={d.name!r}: point it at the latents "
                             "written by `fcdm-ablate prepare-latents IMAGE_DIR OUT --vae PATH`")
        if d.name == "digits" and d.image_size is not None and d.image_size not in DIGITS_SIZES:
            raise ValueError(f"data.image_size={d.image_size} is not available for digits; allowed values: "
                             f"{', '.join(map(str, DIGITS_SIZES))}")
        if d.name == "digits" and d.num_classes not in (None, 10):
            raise ValueError(f"data.num_classes={d.num_classes} does not match digits, which has 10 classes; "
                             "remove data.num_classes")
        if d.name != "digits" and d.hflip:
            raise ValueError(f"data.hflip=true does not apply to data.name={d.name!r}: latents store flips as "
                             "encoded copies (prepare-latents --flip); remove data.hflip")
        for key, default in _OBJECTIVE_ONLY["flow" if o.name == "ddpm" else "ddpm"].items():
            if getattr(o, key) != default:
                raise ValueError(f"objective.{key}={getattr(o, key)!r} does not apply to objective.name="
                                 f"{o.name!r}; remove objective.{key}")
        allowed = SAMPLERS[o.name]
        if self.eval.sampler is not None and self.eval.sampler not in allowed:
            raise ValueError(f"eval.sampler={self.eval.sampler!r} does not apply to objective.name="
                             f"{o.name!r}; allowed values: {', '.join(allowed)}")
        if d.name != "digits" and self.eval.metrics and not (self.eval.vae and self.eval.reference):
            raise ValueError("eval.vae and eval.reference are required to measure a latent run (samples are "
                             "decoded by the VAE and compared with reference images, e.g. ADM's "
                             "VIRTUAL_imagenet256_labeled.npz); set them, or set eval.metrics: [] to skip")
        derived = sorted(set(DERIVED_MODEL_ARGS) & set(self.model.args))
        if derived:
            raise ValueError(f"model.args.{derived[0]} is set from {DERIVED_MODEL_ARGS[derived[0]]}; remove it "
                             f"from model.args (set {DERIVED_MODEL_ARGS[derived[0]]} instead)")
        if self.model.args.get("conditioning") in ("unconditional", "none") and self.eval.cfg_scale > 1:
            raise ValueError(f"eval.cfg_scale={self.eval.cfg_scale:g} needs a class-conditional model, but "
                             f"model.args.conditioning={self.model.args['conditioning']!r} has no class input, so "
                             "guidance would only double the sampling cost; set eval.cfg_scale: 1.0")
        if self.train.batch_size % self.train.grad_accum:
            raise ValueError(f"train.batch_size={self.train.batch_size} is not divisible by train.grad_accum="
                             f"{self.train.grad_accum}; choose a grad_accum that divides the batch")
        check_model_args(self.model.name, self.model.args)
        return self

    # -- derived values -------------------------------------------------------------------------
    @property
    def learn_sigma(self) -> bool:
        return self.objective.name == "ddpm" if self.objective.learn_sigma is None else self.objective.learn_sigma

    @property
    def image_size(self) -> int:
        """The spatial side H = W the denoiser sees."""
        return self.data.image_size or (8 if self.data.name == "digits" else 32)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one training example, from the config alone: (1, S, S) digits, (4, S, S) latents."""
        return (1 if self.data.name == "digits" else LATENT_CHANNELS, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes or (10 if self.data.name == "digits" else 1000)

    @property
    def clip_x0(self) -> bool:
        """Clip predicted x0 to [-1, 1] while sampling: right for pixels, wrong for unbounded latents."""
        return self.data.name == "digits" if self.objective.clip_x0 is None else self.objective.clip_x0

    @property
    def time_scale(self) -> float:
        """Flow matching feeds the model t * time_scale (the FCDM release: 1000)."""
        return 1000.0 if self.objective.time_scale is None else float(self.objective.time_scale)

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

    def objective_settings(self) -> dict[str, Any]:
        """The objective's resolved constructor settings (what `build_objective` passes)."""
        o = self.objective
        if o.name == "ddpm":
            return {"num_timesteps": o.num_timesteps, "learn_sigma": self.learn_sigma,
                    "fixed_variance": o.fixed_variance, "clip_x0": self.clip_x0}
        return {"learn_sigma": self.learn_sigma, "time_scale": self.time_scale, "clip_x0": self.clip_x0}

    def identity(self) -> dict:
        """What determines the trained weights, resolved and canonical (what the hash covers).

        For latent data this reads the dataset's fingerprint (headers, meta.json, a few rows; cached), so
        missing files raise fcdm.data.DataError; `try_hash` answers None instead.
        """
        from fcdm.data.identity import data_identity  # numpy: only when a hash is asked for

        d = self.data
        return {**self.identity_without_data(), "data": canonical(data_identity(d.name, d.path, self.image_size,
                                                                               d.hflip))}

    def identity_without_data(self) -> dict:
        """`identity` less its "data" part: what needs no data files."""
        return canonical({
            "schema": SCHEMA_VERSION,
            "model": {"family": family_of(self.model.name), "args": resolved_model_kwargs(self)},
            "objective": {"name": self.objective.name, **self.objective_settings()},
            "train": _hashed_train(self.to_dict()["train"]),
        })

    @property
    def hash(self) -> str:
        """12 hex digits of sha256 over the canonical identity; latent data: needs its files (DataError)."""
        if self.data.name == "digits":  # pure function of the config: cached on its serialised form
            return _digits_hash(json.dumps(self.to_dict(), sort_keys=True))
        return digest(self.identity())

    @property
    def config_key(self) -> str:
        """12 hex digits over the identity with the data's declared description (name, size, classes, flips) in
        place of its fingerprint: computed from the config alone, recorded by the trainer as the run's tag
        `fcdm.config_key`, so a report finds runs trained elsewhere without their data on this machine."""
        identity = self.identity_without_data()
        d = self.data
        identity["data"] = canonical({"name": d.name, "image_size": self.image_size, "num_classes": self.num_classes,
                                      "hflip": d.hflip})
        return digest(identity)

    @property
    def eval_key(self) -> str:
        """12 hex digits naming the evaluation this config asks for (the protocol's settings as the config states
        them, resolved defaults included): torch-free, so `plan` and the runner can tell whether a run was
        evaluated as a spec asks (progress.json records evaluations per key, with the protocol digest they got)."""
        e = self.eval
        return digest(canonical({"num_samples": e.num_samples, "sampler": self.sampler, "sampling_steps": e.sampling_steps,
                                 "cfg_scale": float(e.cfg_scale), "guided_channels": e.guided_channels,
                                 "precision": e.precision, "extractor": self.extractor, "reference": self.reference,
                                 "vae": e.vae, "fid_weights": e.fid_weights, "seed": e.seed}))

    def noise_seeds(self) -> list[int]:
        """Sampling seeds of the final checkpoint's re-samplings (eval.noise_seeds; none without evaluations)."""
        if not self.eval.metrics or not self.eval_steps():
            return []
        return [self.eval.seed + i for i in range(1, self.eval.noise_seeds + 1)]

    def try_hash(self) -> str | None:
        """The hash, or None when it needs data files that are missing or unreadable (e.g. `plan` on a laptop)."""
        try:
            return self.hash
        except DataError:
            return None

    def flat(self) -> dict[str, Any]:
        """Flattened `section.key` -> value, for MLflow params."""
        return dict(flatten(self.to_dict()))


def _hashed_train(train: dict) -> dict:
    """The train section as the hash covers it: grad_accum only when it accumulates (see TrainConfig)."""
    return {k: v for k, v in train.items() if not (k == "grad_accum" and v == 1)}


@lru_cache(maxsize=1 << 16)  # more than any spec's configurations: a smaller cache thrashed on a 5,000-run report
def _digits_hash(serialised: str) -> str:
    return digest(RunConfig.model_validate(json.loads(serialised)).identity())
