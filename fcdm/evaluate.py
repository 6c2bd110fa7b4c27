"""Sample quality of a denoiser: draw class-conditional samples, decode them, measure them.

The protocol (sampler, steps, guidance, samples, extractor, reference, VAE, precision) comes from the
run config's `eval` section and is logged as tags next to every number. A post-hoc evaluation with
a different protocol logs its metrics under a suffixed name (`fid/ddpm-250-cfg1.5-n50000-fp32-seed0`), so
numbers made differently never share one curve.

    fcdm-ablate evaluate smoke-5f7d8531-s0 --num-samples 1000 --export-npz samples.npz
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .config import RunConfig
from .sampling import generate, make_decoder, spread_labels, to_uint8


@dataclass(frozen=True)
class Protocol:
    """Everything that determines an evaluation's numbers, besides the weights."""
    num_samples: int
    sampler: str
    sampling_steps: int
    cfg_scale: float
    guided_channels: int | None
    precision: str
    extractor: str
    reference: str
    vae: str | None
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: RunConfig, **overrides) -> Protocol:
        e = cfg.eval
        proto = cls(e.num_samples, cfg.sampler, e.sampling_steps, e.cfg_scale, e.guided_channels, e.precision,
                    cfg.extractor, cfg.reference, e.vae, cfg.seed)
        return replace(proto, **{k: v for k, v in overrides.items() if v is not None})

    def metric_suffix(self, default: Protocol) -> str:
        """'' for the run's own protocol, else a short slug of what differs in sampling."""
        if self == default:
            return ""
        guided = "" if self.guided_channels is None else f"-g{self.guided_channels}"
        return (f"/{self.sampler}-{self.sampling_steps}-cfg{self.cfg_scale:g}{guided}-n{self.num_samples}"
                f"-{self.precision}-seed{self.seed}")

    def tags(self, num_channels: int) -> dict[str, str]:
        from .metrics import protocol

        tags = protocol(self.extractor, self.reference, self.num_samples)
        guided = self.guided_channels or num_channels
        tags.update({f"eval.{k}": str(v) for k, v in asdict(self).items() if k not in ("extractor", "reference",
                                                                                        "num_samples")})
        tags["eval.guided_channels"] = f"{guided} of {num_channels}"
        return tags


def sample_images(model: nn.Module, objective, shape: tuple[int, int, int], num_classes: int, proto: Protocol,
                  batch_size: int, device, decode=None, progress: bool = False, rank: int = 0,
                  world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """proto.num_samples images, classes evenly spread: (uint8 (N, H, W, C), labels (N,)).

    With world > 1 this process draws only every world-th sample (from seed + rank); `gather_samples`
    puts the shares back together in order.
    """
    labels = spread_labels(proto.num_samples, num_classes)[rank::world]
    dtype = torch.bfloat16 if proto.precision == "bf16" else None
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        x = generate(model, objective, shape, labels, sampler=proto.sampler, num_steps=proto.sampling_steps,
                     cfg_scale=proto.cfg_scale, guided_channels=proto.guided_channels, batch_size=batch_size,
                     seed=proto.seed * 1000 + rank if world > 1 else proto.seed, device=device, progress=progress)
    if decode is not None:
        x = decode(x)
    return to_uint8(x), labels.numpy()


def gather_samples(shares: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Interleave the per-rank shares of `sample_images(..., rank=r, world=len(shares))` back into order."""
    world = len(shares)
    n = sum(len(labels) for _, labels in shares)
    images = np.empty((n, *shares[0][0].shape[1:]), dtype=np.uint8)
    labels = np.empty(n, dtype=shares[0][1].dtype)
    for r, (imgs, lbls) in enumerate(shares):
        images[r::world], labels[r::world] = imgs, lbls
    return images, labels


def measure(images: np.ndarray, labels: np.ndarray, proto: Protocol, metrics: list[str], cache_dir: Path,
            fid_weights: str | None = None) -> dict[str, float]:
    """FID, IS, KID, precision/recall (and class consistency on digits) through torch-fidelity."""
    from .metrics import compute_metrics

    return compute_metrics(images, labels, reference=proto.reference, extractor=proto.extractor,
                           cache_dir=cache_dir, fid_weights=fid_weights, metrics=tuple(metrics))


def check_ready(cfg: RunConfig, proto: Protocol, cache_dir: Path) -> None:
    """Fail before any work when the evaluation cannot run (e.g. no Inception weights, no VAE)."""
    if not cfg.eval.metrics:
        return
    if proto.extractor == "inception-v3-compat":
        from .metrics.fidelity import inception_weights_path

        inception_weights_path(cfg.eval.fid_weights)
    if proto.vae is not None:
        from .data.prepare import load_vae

        load_vae(proto.vae)


# -- during training -----------------------------------------------------------------------------

def evaluate_in_training(accelerator, tracker, cfg: RunConfig, protocol, ema: nn.Module, objective, shape,
                         num_classes: int, step: int, store: Path) -> None:
    """Every process samples its share; the main process measures and logs at this training step."""
    from accelerate.utils import gather_object

    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    share = sample_images(ema, objective, shape, num_classes, protocol, cfg.eval.batch_size, device,
                          make_decoder(protocol.vae, device), rank=rank, world=world)
    shares = gather_object([share]) if world > 1 else [share]
    if tracker:
        images, labels = gather_samples(shares)
        values = measure(images, labels, protocol, cfg.eval.metrics, store / "cache", cfg.eval.fid_weights)
        tracker.log_metrics(values, step)
        tracker.set_tags(protocol.tags(shape[0]))
    accelerator.wait_for_everyone()


def log_sample_grid(tracker, cfg: RunConfig, ema: nn.Module, objective, shape, num_classes: int,
                    step: int, device) -> None:
    """A grid of EMA samples (grid_per_class per class, up to 10 classes) logged as samples/step_N.png."""
    import tempfile

    from .sampling import for_display, save_grid

    classes = min(num_classes, 10)
    labels = spread_labels(classes, num_classes).repeat_interleave(cfg.eval.grid_per_class)
    x = generate(ema, objective, shape, labels, sampler=cfg.sampler, num_steps=cfg.eval.sampling_steps,
                 cfg_scale=cfg.eval.cfg_scale, guided_channels=cfg.eval.guided_channels,
                 batch_size=cfg.eval.batch_size, seed=cfg.seed, device=device)
    x = for_display(x, cfg, device)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_grid(to_uint8(x), Path(tmp) / f"step_{step:08d}.png", nrow=cfg.eval.grid_per_class,
                         scale=max(1, 64 // shape[-1]))
        tracker.log_artifact(path, "samples")


# -- after training ------------------------------------------------------------------------------

def evaluate_run(run: str, store=None, tracking_uri: str | None = None, step: int | None = None,
                 export_npz: Path | None = None, progress: bool = True, **overrides) -> tuple[dict, str]:
    """Evaluate a run's checkpoint after the fact and log into the same MLflow run at that step.

    overrides: num_samples, cfg_scale, sampler, sampling_steps, guided_channels, seed, fid_weights.
    Returns (metrics as logged, the run id).
    """
    from .runs import open_run
    from .tracking import Tracker, resolve_store

    fid_weights = overrides.pop("fid_weights", None)
    trained = open_run(run, store, tracking_uri, step)
    cfg = trained.config
    default = Protocol.from_config(cfg)
    proto = Protocol.from_config(cfg, **overrides)
    if proto.sampler not in _allowed_samplers(cfg):
        from .config import ConfigError
        raise ConfigError(f"--sampler {proto.sampler!r} does not apply to objective {cfg.objective.name!r}; "
                          f"allowed values: {', '.join(_allowed_samplers(cfg))}")
    store = resolve_store(store)
    cache_dir = store / "cache"
    check_ready(cfg.model_copy(update={"eval": cfg.eval.model_copy(
        update={"fid_weights": fid_weights or cfg.eval.fid_weights})}), proto, cache_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images, labels = sample_images(trained.ema.to(device), trained.objective, trained.shape, trained.num_classes,
                                   proto, cfg.eval.batch_size, device, make_decoder(proto.vae, device), progress)
    if export_npz is not None:
        export_adm_npz(images, labels, export_npz)
    values = measure(images, labels, proto, cfg.eval.metrics, cache_dir, fid_weights or cfg.eval.fid_weights)
    suffix = proto.metric_suffix(default)
    logged = {f"{k}{suffix}": v for k, v in values.items()}
    tracker = Tracker(store, tracking_uri)
    tracker.run_id = trained.run_id
    tracker.log_metrics(logged, trained.step)
    if not suffix:
        tracker.set_tags(proto.tags(trained.shape[0]))
    return logged, trained.run_id


def _allowed_samplers(cfg: RunConfig) -> tuple[str, ...]:
    from .diffusion import SAMPLERS

    return SAMPLERS[cfg.objective.name]


def export_adm_npz(images: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """Samples as ADM's evaluator reads them: `arr_0` uint8 (N, H, W, 3) (grey repeated), plus `labels`."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=images, labels=labels)
    return path
