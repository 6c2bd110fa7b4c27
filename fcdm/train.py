"""Train one run configuration with accelerate: the same loop on one CPU process or many GPUs.

    fcdm-ablate train ablations/configs/smoke.yaml                   # one process
    accelerate launch --multi_gpu --num_processes 2 -m fcdm.cli train ablations/configs/smoke.yaml

Resume is automatic and exact: rerunning the same config finds its newest checkpoint and restores
step, model, EMA, optimiser, grad scaler and every rank's RNG state; data order is a pure function
of (seed, step), so the data position needs no state. SIGINT/SIGTERM checkpoint and stop (KILLED);
a non-finite loss stops the run (FAILED) without checkpointing the broken weights.
"""
from __future__ import annotations

import copy
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .build import build_dataset, build_model, build_objective, data_info, model_kwargs
from .checkpoint import list_checkpoints, load_latest, save_checkpoint
from .config import RunConfig
from .tracking import TAG_CKPT, Tracker, checkpoint_dir, resolve_store
from .train_state import (StepBatchSampler, ema_decay, rng_as_arrays, rng_from_arrays, rng_state, seed_everything,
                          set_rng_state, update_ema)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was written. `signum` says which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainResult:
    run_id: str | None
    step: int
    status: str  # FINISHED; STOPPED after max_steps; SKIPPED when the run had already finished
    checkpoint_dir: Path
    final_loss: float | None = None
    main_process: bool = True  # False on the other ranks of a multi-process run


# -- the loop ----------------------------------------------------------------------------------------

def train(cfg: RunConfig, store: str | Path | None = None, tracking_uri: str | None = None,
          progress: bool = True, max_steps: int | None = None) -> TrainResult:
    """Train `cfg` to cfg.train.steps (or stop after `max_steps` more steps, for tests and debugging)."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, gather_object

    from .flops import config_gflops, training_gflops

    # The other ranks wait at a collective while the main process measures an evaluation (FID-50K
    # features take minutes at paper scale): allow longer than the default process-group timeout.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.train.mixed_precision,
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=2))])
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    store = resolve_store(store)
    ckpt_dir = checkpoint_dir(store, cfg)

    # Everything that can fail on user input is checked before the store is touched.
    dataset = build_dataset(cfg)
    shape = cfg.data_shape  # build_dataset checked that the data has the declared shape
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, dataset)
    objective = build_objective(cfg)
    state = load_latest(ckpt_dir)
    start = int(state["step"]) if state else 0
    if start >= cfg.train.steps:
        _finish_if_needed(accelerator, cfg, store, tracking_uri)
        return TrainResult(None, start, "SKIPPED", ckpt_dir, main_process=accelerator.is_main_process)
    from .evaluate import Protocol, check_ready, evaluate_in_training, log_sample_grid

    protocol = Protocol.from_config(cfg)
    check_ready(cfg, protocol, store / "cache")
    sampler = StepBatchSampler(len(dataset), cfg.train.batch_size, rank, world, cfg.seed, start, cfg.train.steps)
    params, gflops = config_gflops(cfg.model.name, shape, **model_kwargs(cfg))

    ema = copy.deepcopy(model).float().requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            betas=cfg.train.betas)
    if state:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
    model, opt = accelerator.prepare(model, opt)
    if state and state.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    ema.to(device)
    rng = state.get("rng") if state else None
    if rng is not None and len(rng) == world:
        set_rng_state(rng[rank])
    else:  # a fresh run, or resumed on another process count: per-rank seeds from (seed, step, rank)
        seed_everything(cfg.seed * 1_000_003 + start * 1009 + rank)
    # A private generator: creating the loader's iterator must not draw from the training RNG,
    # or a resumed run would diverge from an uninterrupted one.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        generator=torch.Generator().manual_seed(cfg.seed + start), pin_memory=device.type == "cuda")

    tracker, run_id = None, None
    if accelerator.is_main_process:
        tracker = Tracker(store, tracking_uri)
        run_id, _ = tracker.open(cfg, tags={"fcdm.params": params, "fcdm.gflops": f"{gflops:.6g}",
                                                  "fcdm.model": cfg.model.name, TAG_CKPT: str(ckpt_dir),
                                                  "fcdm.processes": world})
        if state:
            accelerator.print(f"Resumed {run_id} from {list_checkpoints(ckpt_dir)[-1][1]} at step {start}")

    stop = {"signum": 0}
    handlers = _install_signal_handlers(stop)
    eval_steps = set(cfg.eval_steps())
    unwrapped = accelerator.unwrap_model(model)
    step, window, t0, last_loss = start, [], time.perf_counter(), None

    def checkpoint_now() -> None:
        rngs = [rng_from_arrays(r) for r in gather_object([rng_as_arrays(rng_state())])] if world > 1 else [rng_state()]
        if accelerator.is_main_process:
            save_checkpoint({"step": step, "model": unwrapped.state_dict(), "ema": ema.state_dict(),
                             "optimizer": opt.state_dict(), "rng": rngs, "config_hash": cfg.hash,
                             "data": data_info(cfg, dataset), "config": cfg.to_yaml(),
                             "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None},
                            ckpt_dir, step, keep=cfg.log.keep_checkpoints)
        accelerator.wait_for_everyone()

    bar = _progress(accelerator.is_main_process and progress, start, cfg.train.steps)
    try:
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            t = objective.sample_t(len(x), device=device)
            losses = objective.training_losses(lambda xt, tt: model(xt, tt, y), x, t)
            loss = losses["loss"].mean()
            accelerator.backward(loss)
            if cfg.train.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            update_ema(ema, unwrapped, ema_decay(cfg, step))
            step += 1
            # One all-reduce carries the loss (averaged over ranks) and any rank's stop signal.
            packed = accelerator.reduce(torch.stack([loss.detach().float(), torch.tensor(
                float(stop["signum"]), device=device)]), reduction="sum")
            last_loss, signum = packed[0].item() / world, int(packed[1].item())
            if not np.isfinite(last_loss):
                raise TrainingDiverged(f"loss became {last_loss} at step {step} (lr={cfg.train.lr}); the run is "
                                       f"marked FAILED and resumes from {ckpt_dir} if rerun: lower train.lr, set "
                                       "train.grad_clip, or use train.mixed_precision=no")
            window.append(last_loss)
            bar.update(step, last_loss)
            if tracker and (step % cfg.log.every == 0 or step == cfg.train.steps):
                elapsed = time.perf_counter() - t0
                tracker.log_metrics({"loss": float(np.mean(window)), "steps_per_sec": len(window) / elapsed,
                                     "lr": opt.param_groups[0]["lr"],
                                     "train_gflops": training_gflops(gflops, cfg.train.batch_size, step)}, step)
                window, t0 = [], time.perf_counter()
            done = step == cfg.train.steps or (max_steps is not None and step - start >= max_steps)
            if signum or done or step % cfg.log.checkpoint_every == 0 or step in eval_steps:
                checkpoint_now()
                if tracker and not signum:  # a grid per checkpoint; a stopping run exits at once
                    log_sample_grid(tracker, cfg, ema, objective, shape, dataset.num_classes, step, device)
                if step in eval_steps and cfg.eval.metrics:
                    evaluate_in_training(accelerator, tracker, cfg, protocol, ema, objective, shape,
                                         dataset.num_classes, step, store)
            if signum:
                raise TrainingInterrupted(f"stopped by signal {signal.Signals(signum).name} at step {step}; "
                                          f"checkpoint written to {ckpt_dir}; rerun the same command to resume",
                                          signum)
            if done:
                break
    except BaseException as e:
        bar.close()
        if tracker:
            tracker.end("KILLED" if isinstance(e, (TrainingInterrupted, KeyboardInterrupt)) else "FAILED")
        raise
    finally:
        _restore_signal_handlers(handlers)
    bar.close()
    if tracker and step == cfg.train.steps:
        tracker.end("FINISHED")
    elif tracker:
        tracker.end("KILLED")  # stopped early by max_steps: resumable, not finished
    accelerator.wait_for_everyone()
    if world > 1 and torch.distributed.is_initialized():
        # gloo can abort at interpreter exit with a live process group; tear it down explicitly.
        torch.distributed.destroy_process_group()
    return TrainResult(run_id, step, "FINISHED" if step == cfg.train.steps else "STOPPED", ckpt_dir, last_loss,
                       accelerator.is_main_process)


def _finish_if_needed(accelerator, cfg: RunConfig, store: Path, tracking_uri: str | None) -> None:
    if accelerator.is_main_process:
        tracker = Tracker(store, tracking_uri)
        run = tracker.find(cfg.hash, cfg.seed)
        if run is not None and run.info.status != "FINISHED":
            tracker.run_id = run.info.run_id
            tracker.end("FINISHED")
        accelerator.print(f"{cfg.name} (hash {cfg.hash}, seed {cfg.seed}) already finished; nothing to do")


def _install_signal_handlers(stop: dict):
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    def handler(signum, frame):
        stop["signum"] = signum
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers: dict) -> None:
    for s, h in handlers.items():
        signal.signal(s, h)


class _progress:
    """A rich progress bar with step, loss and steps/s (a no-op when disabled)."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} steps/s"),
                                TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), rate=0.0)
            self.start, self.t0 = start, time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        if self.bar:
            rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, completed=step, loss=loss, rate=rate)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None
