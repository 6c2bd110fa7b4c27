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

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fcdm.config import ConfigError, RunConfig
from fcdm.data.prepare import load_vae
from fcdm.diffusion import SAMPLERS
from fcdm.evaluation.protocol import Protocol, log_evaluation
from fcdm.evaluation.sampling import (
    for_display,
    gather_samples,
    generate,
    is_unconditional,
    make_decoder,
    preserved_rng,
    sample_images,
    sample_labels,
    save_grid,
    spread_labels,
    to_uint8,
)
from fcdm.evaluation.trained import open_run
from fcdm.store.layout import resolve_store
from fcdm.store.tracking import Tracker
from fcdm.util.cuda import evaluation_precision, fast_math


def measure(images: np.ndarray, labels: np.ndarray | None, proto: Protocol, metrics: list[str], cache_dir: Path,
            fid_weights: str | None = None) -> dict[str, float]:
    """FID, IS, KID, precision/recall (and class consistency on digits, when labels are given)."""
    from fcdm.metrics import compute_metrics  # heavy: torch_fidelity (seconds), only when metrics are measured

    return compute_metrics(images, labels, reference=proto.reference, extractor=proto.extractor,
                           cache_dir=cache_dir, fid_weights=fid_weights, metrics=tuple(metrics))


def check_ready(cfg: RunConfig, proto: Protocol, cache_dir: Path) -> None:
    """Fail before any work when the evaluation cannot run (no Inception weights, a bad --fid-weights
    file, no VAE). Writes nothing: the digits classifier is trained at the first evaluation."""
    if not cfg.eval.metrics:
        return
    if proto.extractor == "inception-v3-compat" or cfg.eval.fid_weights:
        from fcdm.metrics import extractor_weights_path  # heavy: torch_fidelity, only when metrics are measured

        extractor_weights_path(proto.extractor, cache_dir, cfg.eval.fid_weights)
    if proto.vae is not None:
        load_vae(proto.vae)


# -- during training -----------------------------------------------------------------------------

def evaluate_in_training(accelerator, tracker, cfg: RunConfig, protocol, ema: nn.Module, objective, shape,
                         num_classes: int, step: int, store: Path, sampling_seed: int | None = None
                         ) -> dict[str, float]:
    """Every process samples its share; the main process measures and logs at this training step, and
    returns the metrics as logged ({} on the other processes). `sampling_seed`: a re-sampling of this
    checkpoint under `protocol` with another sampling seed, logged as `<metric>.eval_seed<S>`."""
    logged: dict[str, float] = {}
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    conditional = not is_unconditional(cfg)
    sampling = protocol if sampling_seed is None else replace(protocol, seed=sampling_seed)
    with preserved_rng():
        share = sample_images(ema, objective, shape, num_classes, sampling, cfg.eval.batch_size, device,
                              make_decoder(protocol.vae, device), rank=rank, world=world, conditional=conditional)
        shares = gather_to_main(share, accelerator.is_main_process, world)
        if tracker:
            proto = protocol.resolved(store / "cache", cfg.eval.fid_weights)
            images, labels = gather_samples(shares, cfg.eval.batch_size)
            values = measure(images, labels if conditional else None, proto, cfg.eval.metrics, store / "cache",
                             cfg.eval.fid_weights)
            logged = log_evaluation(tracker, proto, values, step, shape[0], sampling_seed)
    accelerator.wait_for_everyone()
    return logged


def gather_to_main(share, main: bool, world: int) -> list | None:
    """Every process's `share` in rank order on the main process (None on the others): only the main process
    measures, so only it holds every image (all-gathering a FID-50K put 9.8 GB on every rank)."""
    if world == 1:
        return [share]
    shares = [None] * world if main else None
    torch.distributed.gather_object(share, shares, dst=0)
    return shares


def log_sample_grid(tracker, cfg: RunConfig, ema: nn.Module, objective, shape, num_classes: int,
                    step: int, device) -> None:
    """A grid of EMA samples (grid_per_class per class, up to 10 classes) logged as samples/step_N.png."""
    classes = min(num_classes, 10)
    if is_unconditional(cfg):
        labels = sample_labels(classes * cfg.eval.grid_per_class, num_classes, conditional=False)
    else:
        labels = spread_labels(classes, num_classes).repeat_interleave(cfg.eval.grid_per_class)
    cuda = torch.device(device).type == "cuda"  # a grid is a look, not a measurement: bf16 on a GPU
    with preserved_rng(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
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
    trained = open_run(run, store, tracking_uri, step)
    cfg = trained.config
    fid_weights = overrides.pop("fid_weights", None) or cfg.eval.fid_weights
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fast_math(device)
    proto = Protocol.from_config(cfg, **{"precision": evaluation_precision(cfg.eval.precision, device), **overrides})
    allowed = SAMPLERS[cfg.objective.name]
    if proto.sampler not in allowed:
        raise ConfigError(f"--sampler {proto.sampler!r} does not apply to objective {cfg.objective.name!r}; "
                          f"allowed values: {', '.join(allowed)}")
    store = resolve_store(store)
    cache_dir = store / "cache"
    check_ready(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"fid_weights": fid_weights})}), proto,
                cache_dir)
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


def export_adm_npz(images: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """Samples as ADM's evaluator reads them: `arr_0` uint8 (N, H, W, 3) (grey repeated), plus `labels`."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=images, labels=labels)
    return path
