"""Sample quality of a denoiser: draw samples, decode them, measure them, log them under the right name.

One curve, one protocol. A protocol is everything besides the weights that determines the numbers:
samples, seed, sampler, steps, guidance scale and channels, precision, extractor and the digest of its
weights, reference and what FID is measured against, VAE. A run's first evaluation records its protocol
as `eval.*` tags with the digest `eval.protocol`; an evaluation under that protocol logs `fid`, `is`, ...
and any other protocol (`eval.*` changed before a resume, a post-hoc `evaluate` with other settings or
other `--fid-weights`) logs under a suffixed name, `fid/ddpm-250-cfg1.5-n50000-fp32-seed0-<digest8>`,
and leaves the recorded tags alone (its own protocol goes to the tag `eval/<suffix>`).

Sample i's noise depends only on (seed, i), and N processes share out whole batches of the one-process
run, so one process and N processes draw the same samples (bit for bit with the same eval.batch_size;
another batch size changes a sample only by kernel rounding), and an in-training and a post-hoc
evaluation with an equal protocol share a curve. Evaluations and sample
grids never touch the global RNG streams (`preserved_rng`), so a run resumed from an evaluation step
continues bit for bit like one that never stopped.

    fcdm-ablate evaluate smoke-5f7d8531-s0 --num-samples 1000 --export-npz samples.npz
"""
from __future__ import annotations

import hashlib
import json
import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fcdm.config import RunConfig
from fcdm.sampling import generate, is_unconditional, make_decoder, sample_labels, to_uint8

TAG_PROTOCOL = "eval.protocol"


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
    extractor_weights: str | None = None  # "sha256:<12 hex>" of the extractor's weights; set by `resolved`
    fid_reference: str | None = None  # "stored-statistics" | "images"; set by `resolved`

    @classmethod
    def from_config(cls, cfg: RunConfig, **overrides) -> Protocol:
        e = cfg.eval
        proto = cls(e.num_samples, cfg.sampler, e.sampling_steps, float(e.cfg_scale), e.guided_channels,
                    e.precision, cfg.extractor, cfg.reference, e.vae, cfg.seed)
        return replace(proto, **{k: v for k, v in overrides.items() if v is not None})

    def resolved(self, cache_dir: Path, fid_weights: str | None = None) -> Protocol:
        """This protocol completed with what only the files tell: the digest of the extractor weights
        (`fid_weights`, else the default file) and whether FID uses stored statistics or images."""
        from fcdm.metrics import extractor_weights_digest, extractor_weights_path, fid_reference_kind

        weights = extractor_weights_path(self.extractor, cache_dir, fid_weights)
        return replace(self, cfg_scale=float(self.cfg_scale),
                       extractor_weights=extractor_weights_digest(self.extractor, weights),
                       fid_reference=fid_reference_kind(self.reference))

    @property
    def digest(self) -> str:
        """12 hex digits naming this (resolved) protocol."""
        if self.extractor_weights is None or self.fid_reference is None:
            raise ValueError("Protocol.digest needs a resolved protocol: call .resolved(cache_dir, fid_weights)")
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def slug(self) -> str:
        """Metric-name suffix of this protocol: the sampling settings to read, the digest to be exact."""
        guided = "" if self.guided_channels is None else f"-g{self.guided_channels}"
        return (f"{self.sampler}-{self.sampling_steps}-cfg{self.cfg_scale:g}{guided}-n{self.num_samples}"
                f"-{self.precision}-seed{self.seed}-{self.digest[:8]}")

    def tags(self, num_channels: int) -> dict[str, str]:
        """The `eval.*` tags that record this protocol as a run's own."""
        from fcdm.metrics import protocol

        tags = protocol(self.extractor, self.reference, self.num_samples, fid_reference=self.fid_reference)
        tags.update({f"eval.{k}": str(v) for k, v in asdict(self).items()
                     if k not in ("extractor", "reference", "num_samples", "fid_reference")})
        tags["eval.guided_channels"] = f"{self.guided_channels or num_channels} of {num_channels}"
        tags[TAG_PROTOCOL] = self.digest
        return tags


def log_evaluation(tracker, proto: Protocol, values: dict[str, float], step: int, num_channels: int) -> dict:
    """Log metric values at `step` under the run's protocol or, if `proto` is another one, suffixed.

    The run's first evaluation records its protocol (tags before metrics: a crash in between leaves a
    recorded protocol without numbers, never numbers under an unrecorded one). Returns what was logged.
    """
    recorded = tracker.client.get_run(tracker.run_id).data.tags.get(TAG_PROTOCOL)
    if recorded is None:
        tracker.set_tags(proto.tags(num_channels))
    suffix = "" if recorded in (None, proto.digest) else f"/{proto.slug}"
    if suffix:
        tracker.set_tags({f"eval{suffix}": json.dumps(asdict(proto), sort_keys=True)})
    logged = {f"{k}{suffix}": v for k, v in values.items()}
    tracker.log_metrics(logged, step)
    return logged


@contextmanager
def preserved_rng():
    """Run a block and put every global RNG stream back as it was: python `random`, numpy, torch CPU and
    (if initialised) every CUDA device. torch-fidelity's DataLoader draws from the torch stream, so an
    evaluation would otherwise shift the noise of every later training step."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def shard_indices(num_samples: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The global sample indices process `rank` of `world` draws, in order: whole batches of the one-process
    run (batch k = samples k*batch_size ... (k+1)*batch_size - 1), every world-th of them from batch rank on.

    Each model call then sees exactly the rows it sees on one process, so N processes reproduce the
    one-process samples bit for bit (a kernel's rounding can depend on the batch it runs in)."""
    starts = range(rank * batch_size, num_samples, world * batch_size)
    return torch.cat([torch.arange(s, min(s + batch_size, num_samples)) for s in starts]) if starts else \
        torch.zeros(0, dtype=torch.long)


def sample_images(model: nn.Module, objective, shape: tuple[int, int, int], num_classes: int, proto: Protocol,
                  batch_size: int, device, decode=None, progress: bool = False, rank: int = 0,
                  world: int = 1, conditional: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """This process's share of proto.num_samples images: (uint8 (n, H, W, C), labels (n,)).

    Classes are spread evenly (or every label is the null class for an unconditional model). The share
    is `shard_indices(...)`; each sample's noise comes from (proto.seed, its global index), so
    `gather_samples` of all shares equals the world = 1 result exactly.
    """
    index = shard_indices(proto.num_samples, batch_size, rank, world)
    labels = sample_labels(proto.num_samples, num_classes, conditional)[index]
    dtype = torch.bfloat16 if proto.precision == "bf16" else None
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        x = generate(model, objective, shape, labels, sampler=proto.sampler, num_steps=proto.sampling_steps,
                     cfg_scale=proto.cfg_scale, guided_channels=proto.guided_channels, batch_size=batch_size,
                     seed=proto.seed, device=device, progress=progress, indices=index)
    if decode is not None and len(x):
        # Batch by batch, so that the VAE too sees the same rows together on any process count.
        x = torch.cat([decode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return to_uint8(x), labels.numpy()


def gather_samples(shares: list[tuple[np.ndarray, np.ndarray]], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Put the shares of `sample_images(..., batch_size, rank=r, world=len(shares))` back in global order."""
    world, n = len(shares), sum(len(labels) for _, labels in shares)
    like = next(s for s in shares if len(s[1]))
    images = np.empty((n, *like[0].shape[1:]), dtype=np.uint8)
    labels = np.empty(n, dtype=like[1].dtype)
    for r, (imgs, lbls) in enumerate(shares):
        index = shard_indices(n, batch_size, r, world).numpy()
        images[index], labels[index] = imgs, lbls
    return images, labels


def measure(images: np.ndarray, labels: np.ndarray | None, proto: Protocol, metrics: list[str], cache_dir: Path,
            fid_weights: str | None = None) -> dict[str, float]:
    """FID, IS, KID, precision/recall (and class consistency on digits, when labels are given)."""
    from fcdm.metrics import compute_metrics

    return compute_metrics(images, labels, reference=proto.reference, extractor=proto.extractor,
                           cache_dir=cache_dir, fid_weights=fid_weights, metrics=tuple(metrics))


def check_ready(cfg: RunConfig, proto: Protocol, cache_dir: Path) -> None:
    """Fail before any work when the evaluation cannot run (no Inception weights, a bad --fid-weights
    file, no VAE). Writes nothing: the digits classifier is trained at the first evaluation."""
    if not cfg.eval.metrics:
        return
    if proto.extractor == "inception-v3-compat" or cfg.eval.fid_weights:
        from fcdm.metrics import extractor_weights_path

        extractor_weights_path(proto.extractor, cache_dir, cfg.eval.fid_weights)
    if proto.vae is not None:
        from fcdm.data.prepare import load_vae

        load_vae(proto.vae)


# -- during training -----------------------------------------------------------------------------

def evaluate_in_training(accelerator, tracker, cfg: RunConfig, protocol, ema: nn.Module, objective, shape,
                         num_classes: int, step: int, store: Path) -> None:
    """Every process samples its share; the main process measures and logs at this training step."""
    from accelerate.utils import gather_object

    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    conditional = not is_unconditional(cfg)
    with preserved_rng():
        share = sample_images(ema, objective, shape, num_classes, protocol, cfg.eval.batch_size, device,
                              make_decoder(protocol.vae, device), rank=rank, world=world, conditional=conditional)
        shares = gather_object([share]) if world > 1 else [share]
        if tracker:
            proto = protocol.resolved(store / "cache", cfg.eval.fid_weights)
            images, labels = gather_samples(shares, cfg.eval.batch_size)
            values = measure(images, labels if conditional else None, proto, cfg.eval.metrics, store / "cache",
                             cfg.eval.fid_weights)
            log_evaluation(tracker, proto, values, step, shape[0])
    accelerator.wait_for_everyone()


def log_sample_grid(tracker, cfg: RunConfig, ema: nn.Module, objective, shape, num_classes: int,
                    step: int, device) -> None:
    """A grid of EMA samples (grid_per_class per class, up to 10 classes) logged as samples/step_N.png."""
    import tempfile

    from fcdm.sampling import for_display, save_grid, spread_labels

    classes = min(num_classes, 10)
    if is_unconditional(cfg):
        labels = sample_labels(classes * cfg.eval.grid_per_class, num_classes, conditional=False)
    else:
        labels = spread_labels(classes, num_classes).repeat_interleave(cfg.eval.grid_per_class)
    with preserved_rng():
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
    The metrics go under the bare names when the protocol equals the run's recorded one, else suffixed.
    Returns (metrics as logged, the run id).
    """
    from fcdm.runs import open_run
    from fcdm.tracking import Tracker, resolve_store

    trained = open_run(run, store, tracking_uri, step)
    cfg = trained.config
    fid_weights = overrides.pop("fid_weights", None) or cfg.eval.fid_weights
    proto = Protocol.from_config(cfg, **overrides)
    if proto.sampler not in _allowed_samplers(cfg):
        from fcdm.config import ConfigError
        raise ConfigError(f"--sampler {proto.sampler!r} does not apply to objective {cfg.objective.name!r}; "
                          f"allowed values: {', '.join(_allowed_samplers(cfg))}")
    store = resolve_store(store)
    cache_dir = store / "cache"
    check_ready(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"fid_weights": fid_weights})}), proto,
                cache_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    conditional = not is_unconditional(cfg)
    with preserved_rng():
        proto = proto.resolved(cache_dir, fid_weights)  # before sampling: a bad weights file fails at once
        images, labels = sample_images(trained.ema.to(device), trained.objective, trained.shape, trained.num_classes,
                                       proto, cfg.eval.batch_size, device, make_decoder(proto.vae, device), progress,
                                       conditional=conditional)
        if export_npz is not None:
            export_adm_npz(images, labels, export_npz)
        values = measure(images, labels if conditional else None, proto, cfg.eval.metrics, cache_dir, fid_weights)
    tracker = Tracker(store, tracking_uri)
    tracker.run_id = trained.run_id
    return log_evaluation(tracker, proto, values, trained.step, trained.shape[0]), trained.run_id


def _allowed_samplers(cfg: RunConfig) -> tuple[str, ...]:
    from fcdm.diffusion import SAMPLERS

    return SAMPLERS[cfg.objective.name]


def export_adm_npz(images: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """Samples as ADM's evaluator reads them: `arr_0` uint8 (N, H, W, 3) (grey repeated), plus `labels`."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=images, labels=labels)
    return path
