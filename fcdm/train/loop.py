"""Train one run configuration with accelerate: the same loop on one CPU process or many GPUs.

    fcdm-ablate train ablations/configs/smoke.yaml                   # one process
    accelerate launch --multi_gpu --num_processes 2 -m fcdm.cli train ablations/configs/smoke.yaml

Resume is automatic and exact: rerunning the same config finds its newest checkpoint and restores
step, model, EMA, optimiser, grad scaler and every rank's RNG state; data order is a pure function
of (seed, step) and each item's random flip of (seed, step, index), so the data position needs no
state. A checkpoint records the run's identity (resolved config and data fingerprint): resuming it
under anything else stops. Evaluations due and logged are recorded too, so one a kill interrupted
is performed by the rerun. SIGINT/SIGTERM checkpoint and stop (KILLED); a non-finite loss stops the
run (FAILED) without checkpointing the broken weights. `progress.json` beside the checkpoints says
where the run stands (fcdm.checkpoint.read_progress).
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

from fcdm.build import build_dataset, build_model, build_objective, data_info
from fcdm.config import RunConfig
from fcdm.config.identity import model_kwargs
from fcdm.store.checkpoints import (
    list_checkpoints,
    load_latest,
    save_checkpoint,
)
from fcdm.store.layout import checkpoint_dir, resolve_store
from fcdm.store.progress import read_progress
from fcdm.store.tracking import TAG_CKPT, Tracker
from fcdm.train.ledger import EvalLedger, _ema_at, check_identity
from fcdm.train.state import (
    SeededItems,
    StepBatchSampler,
    ema_decay,
    rng_as_arrays,
    rng_from_arrays,
    rng_state,
    seed_everything,
    set_rng_state,
    update_ema,
)


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
    """Train `cfg` to cfg.train.steps (or stop after `max_steps` more steps, for tests and debugging).

    A rerun first performs any evaluation that is due but not logged (a kill during an evaluation),
    from the checkpoint of that step, then continues; the run is FINISHED once its last one is logged.
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, gather_object

    from fcdm.models.flops import config_gflops, training_gflops

    # The other ranks wait at a collective while the main process measures an evaluation (FID-50K
    # features take minutes at paper scale): allow longer than the default process-group timeout.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.train.mixed_precision,
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=2))])
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    main = accelerator.is_main_process
    store = resolve_store(store)
    ckpt_dir = checkpoint_dir(store, cfg)

    # Everything that can fail on user input is checked before the store is touched.
    dataset = build_dataset(cfg)  # checked against the declared data.image_size and data.num_classes
    identity = cfg.identity()
    shape, num_classes = cfg.data_shape, cfg.num_classes
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg)
    objective = build_objective(cfg)
    state = load_latest(ckpt_dir)
    if state:
        check_identity(state, identity, cfg, list_checkpoints(ckpt_dir)[-1][1])
    start = int(state["step"]) if state else 0
    ledger = EvalLedger(cfg, ckpt_dir, state)
    pending = ledger.pending(start)
    if start >= cfg.train.steps and not pending:
        _finish_if_needed(accelerator, cfg, store, tracking_uri, ckpt_dir, ledger)
        return TrainResult(None, start, "SKIPPED", ckpt_dir, state.get("loss"), main_process=main)
    from fcdm.evaluation import evaluate as ev

    protocol = ev.Protocol.from_config(cfg)
    if ledger.due:
        ev.check_ready(cfg, protocol, store / "cache")
    sampler = StepBatchSampler(len(dataset), cfg.train.batch_size, rank, world, cfg.seed, start, cfg.train.steps,
                               with_step=True)
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

    tracker, run_id = None, None
    if main:
        tracker = Tracker(store, tracking_uri)
        run_id, _ = tracker.open(cfg, tags={"fcdm.params": params, "fcdm.gflops": f"{gflops:.6g}",
                                            "fcdm.model": cfg.model.name, TAG_CKPT: str(ckpt_dir),
                                            "fcdm.processes": world})
        ledger.write(status="running", step=start, run_id=run_id, reason=None)
        if state:
            accelerator.print(f"Resumed {run_id} from {list_checkpoints(ckpt_dir)[-1][1]} at step {start}")

    stop = {"signum": 0}
    handlers = _install_signal_handlers(stop)
    unwrapped = accelerator.unwrap_model(model)
    step, window, t0, last_loss = start, [], time.perf_counter(), state.get("loss") if state else None

    def evaluate(weights: nn.Module, at: int) -> None:
        ev.evaluate_in_training(accelerator, tracker, cfg, protocol, weights, objective, shape, num_classes,
                                step=at, store=store)
        ledger.done.add(at)
        if main:
            ledger.write(step=step)

    def checkpoint_now() -> None:
        rngs = [rng_from_arrays(r) for r in gather_object([rng_as_arrays(rng_state())])] if world > 1 else [rng_state()]
        if main:
            save_checkpoint({"step": step, "model": unwrapped.state_dict(), "ema": ema.state_dict(),
                             "optimizer": opt.state_dict(), "rng": rngs, "config_hash": cfg.hash,
                             "identity": identity, "data": data_info(cfg, dataset), "config": cfg.to_yaml(),
                             "loss": last_loss, "evals_due": ledger.due, "evals_done": sorted(ledger.done),
                             "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None},
                            ckpt_dir, step, keep=cfg.log.keep_checkpoints, protect=ledger.protected())
            ledger.write(step=step)
        accelerator.wait_for_everyone()

    bar = _progress(main and progress, start, cfg.train.steps)
    try:
        # Evaluations a kill interrupted, each with the EMA of its own step, before the training RNG is
        # restored (so they cannot disturb it) and before training moves on.
        for at in pending:
            accelerator.print(f"Evaluating step {at} first: its evaluation was interrupted")
            evaluate(_ema_at(ema, ckpt_dir, at, state, identity, cfg), at)
        rng = state.get("rng") if state else None
        if rng is not None and len(rng) == world:
            set_rng_state(rng[rank])
        else:  # a fresh run, or resumed on another process count: per-rank seeds from (seed, step, rank)
            seed_everything(cfg.seed * 1_000_003 + start * 1009 + rank)
        # Items are seeded from (seed, step, index) (SeededItems), so the loader's own generator only
        # seeds its workers; a private one keeps creating the iterator off the training RNG.
        loader = DataLoader(SeededItems(dataset, cfg.seed), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed + start), pin_memory=device.type == "cuda")
        model.train()
        for x, y in (loader if start < cfg.train.steps else ()):
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
            if signum or done or step % cfg.log.checkpoint_every == 0 or step in ledger.due:
                checkpoint_now()  # before the evaluation: a kill during it loses nothing (see EvalLedger)
                if tracker and not signum:  # a grid per checkpoint; a stopping run exits at once
                    ev.log_sample_grid(tracker, cfg, ema, objective, shape, num_classes, step, device)
                if step in ledger.due:
                    evaluate(ema, step)
            if signum:
                raise TrainingInterrupted(f"stopped by signal {signal.Signals(signum).name} at step {step}; "
                                          f"checkpoint written to {ckpt_dir}; rerun the same command to resume",
                                          signum)
            if done:
                break
    except BaseException as e:
        bar.close()
        if tracker:
            killed = isinstance(e, (TrainingInterrupted, KeyboardInterrupt))
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
            ledger.write(status="killed" if killed else "failed", step=step, reason=reason)
            if not killed:
                tracker.set_tags({"fcdm.failure": reason})
            tracker.end("KILLED" if killed else "FAILED")
        raise
    finally:
        _restore_signal_handlers(handlers)
    bar.close()
    finished = step == cfg.train.steps and not ledger.pending(step)
    if tracker and finished:
        ledger.write(status="finished", step=step, reason=None)
        tracker.end("FINISHED")
    elif tracker:  # stopped early by max_steps: resumable, not finished
        ledger.write(status="killed", step=step, reason=f"stopped after max_steps={max_steps}")
        tracker.end("KILLED")
    accelerator.wait_for_everyone()
    if world > 1 and torch.distributed.is_initialized():
        # gloo can abort at interpreter exit with a live process group; tear it down explicitly.
        torch.distributed.destroy_process_group()
    return TrainResult(run_id, step, "FINISHED" if finished else "STOPPED", ckpt_dir, last_loss, main)


# -- run identity and evaluation bookkeeping ------------------------------------------------------------



def _finish_if_needed(accelerator, cfg: RunConfig, store: Path, tracking_uri: str | None, ckpt_dir: Path,
                      ledger: EvalLedger) -> None:
    if accelerator.is_main_process:
        tracker = Tracker(store, tracking_uri)
        run = tracker.find(cfg.hash, cfg.seed)
        if run is not None and run.info.status != "FINISHED":
            tracker.run_id = run.info.run_id
            tracker.end("FINISHED")
        progress = read_progress(ckpt_dir) or {}
        if progress.get("status") != "finished":
            ledger.write(status="finished", step=cfg.train.steps, reason=None,
                         run_id=run.info.run_id if run is not None else progress.get("run_id"))
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
