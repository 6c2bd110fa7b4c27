"""One run's training state and its phases, called in order by fcdm.train.loop.train: setup, resume, the
MLflow run, the step (optimiser, EMA, the loss's periodic all-reduce), checkpoints, and the run's end."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, gather_object
from torch.utils.data import DataLoader

from fcdm.build import build_dataset, build_model, build_objective, data_info
from fcdm.config import ConfigError, RunConfig
from fcdm.config.identity import resolved_model_kwargs
from fcdm.config.schema import TAG_CONFIG_KEY
from fcdm.diffusion.common import randn
from fcdm.evaluation import evaluate as ev
from fcdm.evaluation.protocol import Protocol
from fcdm.models.costs import architecture_cost, training_gflops
from fcdm.store.checkpoints import (
    check_not_empty,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    remove_stale_temps,
    save_checkpoint,
)
from fcdm.store.layout import checkpoint_dir, resolve_store
from fcdm.store.lock import TrainerLock
from fcdm.store.progress import evaluated, read_progress
from fcdm.store.tracking import TAG_CKPT, TAG_THREADS, Tracker
from fcdm.store.trainlog import step_line
from fcdm.train.display import TrainLog
from fcdm.train.evaluations import Evaluations
from fcdm.train.ledger import EvalLedger, check_identity
from fcdm.train.state import (
    SeededItems,
    StepBatchSampler,
    ema_decay,
    make_optimizer,
    rng_as_arrays,
    rng_from_arrays,
    rng_state,
    seed_everything,
    set_rng_state,
    update_ema,
)
from fcdm.train.step import accumulate_gradients, peak_memory_mb
from fcdm.train.stops import agreed_signal, stop_flags
from fcdm.train.threads import ThreadControl
from fcdm.util.cuda import evaluation_precision, fast_math
from fcdm.util.process import started_at


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


# Steps between the all-reduces that read the loss and the stop flag (fewer when log.every is smaller): a
# host sync every step stalls the GPU's queue. So on several processes a SIGTERM stops the run within
# SYNC_EVERY steps (seconds at paper scale, inside a scheduler's grace period); one process stops at once.
SYNC_EVERY = 10


class Trainer:
    """One run's training: the objects it trains and where it stands. `train` calls the phases in order."""

    def __init__(self, cfg: RunConfig, store: str | Path | None):
        """Setup. Everything that can fail on user input is checked before the store is touched."""
        # The other ranks wait at a collective while the main process measures an evaluation (FID-50K
        # features take minutes at paper scale): allow longer than the default process-group timeout.
        self.accelerator = acc = Accelerator(cpu=not torch.cuda.is_available(),
                                             mixed_precision=cfg.train.mixed_precision,
                                             kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=2))])
        self.rank, self.world, self.device = acc.process_index, acc.num_processes, acc.device
        fast_math(self.device, benchmark=True)  # CUDA: TF32 matmuls and convolutions, cuDNN autotuning
        self.main = acc.is_main_process
        self.log = TrainLog(self.main)
        if cfg.train.batch_size % self.world == 0 and (cfg.train.batch_size // self.world) % cfg.train.grad_accum:
            raise ConfigError(f"train.grad_accum={cfg.train.grad_accum} does not divide the per-process batch of "
                              f"{cfg.train.batch_size // self.world} (train.batch_size / {self.world} processes); "
                              "choose a grad_accum that divides it")
        self.step_lines = True  # a step line every log.every steps (not while a terminal bar shows them)
        self.threads = ThreadControl(enabled=self.world == 1)  # threads the runner hands over (fcdm.train.threads)
        self.cfg, self.store = cfg, resolve_store(store)
        self.ckpt_dir = checkpoint_dir(self.store, cfg)
        self.dataset = build_dataset(cfg)  # checked against the declared data.image_size and data.num_classes
        found = list_checkpoints(self.ckpt_dir)
        if found:
            check_not_empty(found[-1][1])  # refused before the lock file is made: bad input writes nothing
        # One trainer per run: the lock before the checkpoint folder, progress.json or MLflow is touched.
        self.lock = TrainerLock(self.ckpt_dir).acquire() if self.main else None
        try:
            self._setup(cfg, acc)
        except BaseException:
            self.release_lock()  # a failed setup (a checkpoint of another configuration...) holds nothing
            raise

    def _setup(self, cfg: RunConfig, acc: Accelerator) -> None:
        """The part of setup that reads the run's files: under the trainer lock."""
        if self.lock:
            remove_stale_temps(self.ckpt_dir)  # temporary files of writers killed mid-write (all dead now)
        acc.wait_for_everyone()  # no rank reads the checkpoints before the lock keeps other writers out
        self.identity = cfg.identity()
        self.shape, self.num_classes = cfg.data_shape, cfg.num_classes
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(cfg)
        self.objective = build_objective(cfg)
        self.state = load_latest(self.ckpt_dir)
        if self.state:
            check_identity(self.state, self.identity, cfg, list_checkpoints(self.ckpt_dir)[-1][1])
        self.start = self.step = int(self.state["step"]) if self.state else 0
        self.ledger = EvalLedger(cfg, self.ckpt_dir, self.state)
        self.last_loss = self.state.get("loss") if self.state else None
        self.tracker: Tracker | None = None
        self.monitor = None  # MLflow's system metrics monitor (log.system_metrics)
        self.run_id: str | None = None
        self.stop_signal = 0  # set by SIGINT/SIGTERM; every rank sees any rank's within SYNC_EVERY steps
        self.pending, self.pending_steps = None, 0  # losses summed on the device since the last sync
        self.reset_window()

    def skip(self, tracking_uri: str | None) -> TrainResult:
        """An already finished run: make sure MLflow and progress.json say so, and train nothing."""
        cfg = self.cfg
        if self.main:
            tracker = Tracker(self.store, tracking_uri)
            run = tracker.find(cfg.hash, cfg.seed)
            if run is not None and run.info.status != "FINISHED":
                tracker.run_id = run.info.run_id
                tracker.end("FINISHED")
            progress = read_progress(self.ckpt_dir) or {}
            if progress.get("status") != "finished" or not evaluated(progress, cfg):  # e.g. steps found lost
                self.ledger.write(status="finished", step=cfg.train.steps, reason=None,
                                  run_id=run.info.run_id if run is not None else progress.get("run_id"))
            self.log(f"{cfg.name} (hash {cfg.hash}, seed {cfg.seed}) already finished; nothing to do")
        return TrainResult(None, self.start, "SKIPPED", self.ckpt_dir, self.state.get("loss"),
                           main_process=self.main)

    def resume(self) -> None:
        """The evaluation protocol and data order checked, then model, EMA, optimiser and grad scaler
        restored from the checkpoint (or fresh) and handed to accelerate."""
        cfg, state = self.cfg, self.state
        protocol = Protocol.from_config(cfg, precision=evaluation_precision(cfg.eval.precision, self.device))
        if self.ledger.due:
            ev.check_ready(cfg, protocol, self.store / "cache")
        self.evals = Evaluations(self.accelerator, cfg, protocol, self.objective, self.ledger, self.store, self.log)
        self.sampler = StepBatchSampler(len(self.dataset), cfg.train.batch_size, self.rank, self.world, cfg.seed,
                                        self.start, cfg.train.steps, with_step=True)
        cost = architecture_cost(cfg.model.name, resolved_model_kwargs(cfg), self.shape)  # closed forms, no meta model
        self.params, self.gflops = cost.params, cost.gflops
        self.ema = copy.deepcopy(self.model).float().requires_grad_(False).eval()
        opt = make_optimizer(self.model.to(self.device), cfg, self.device)
        if state:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        self.model, self.opt = self.accelerator.prepare(self.model, opt)
        if state:
            # After prepare, which would move a loaded state to the GPU, AdamW's `step` counters included (then
            # read with .item(): ~650 host syncs a step). Loaded now, the moments go to their parameters' device
            # and `step` stays on the CPU (on the device for fused AdamW), as in a run that never stopped.
            self.opt.load_state_dict(state["optimizer"])
        if state and state.get("scaler") and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.ema.to(self.device)
        self.unwrapped = self.accelerator.unwrap_model(self.model)

    def open_tracking(self, tracking_uri: str | None) -> None:
        """The main process opens the run's MLflow run (the same one again on resume) and progress.json."""
        cfg = self.cfg
        if self.main:
            self.tracker = Tracker(self.store, tracking_uri)
            self.run_id, _ = self.tracker.open(cfg, tags={
                TAG_CONFIG_KEY: cfg.config_key, "fcdm.params": self.params, "fcdm.gflops": f"{self.gflops:.6g}",
                "fcdm.model": cfg.model.name, TAG_CKPT: str(self.ckpt_dir), "fcdm.processes": self.world, TAG_THREADS: self.threads.describe()})
            self.tracker.log_dataset(cfg, len(self.dataset))
            self.evals.tracker = self.tracker
            if cfg.log.system_metrics:
                self.monitor = self.tracker.system_metrics()
            self.ledger.write(status="running", step=self.start, run_id=self.run_id, reason=None)
            self.log(f"start {cfg.name} (hash {cfg.hash}, seed {cfg.seed}): {cfg.model.name} "
                     f"{self.params / 1e6:.3g}M params, {self.gflops:.4g} GFLOPs; {cfg.train.steps} steps of batch "
                     f"{cfg.train.batch_size}, evaluations at {self.ledger.due or 'none'}; {self.device}, "
                     f"{self.world} process(es), {self.threads.threads} thread(s); MLflow run {self.run_id}")
            if self.state:
                self.log(f"resumed from {list_checkpoints(self.ckpt_dir)[-1][1]} at step {self.start}")
        self.reset_window()

    def log_first_step(self) -> None:
        """How long the trainer took from its process's start to its first step."""
        began = started_at()
        if began is not None:
            self.log(f"first step {time.time() - began:.2f} s after the process started")

    def take_threads(self) -> None:
        """Threads the runner handed over since the last look (fcdm.train.threads), applied and recorded."""
        if self.threads.poll(self.step) is not None and self.main:
            self.log(f"threads: {self.threads.threads} from step {self.step} (handed over by the runner)")
            if self.tracker:
                self.tracker.set_tags({TAG_THREADS: self.threads.describe()})

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def request_stop(self, signum: int) -> None:
        """The signal handler: checkpoint and stop after the current step."""
        self.stop_signal = signum

    # -- evaluations (fcdm.train.evaluations) ---------------------------------------------------------

    def evaluate(self, weights: nn.Module, at: int) -> None:
        """The evaluation of step `at` with `weights` (and the final one's re-samplings), threads the runner
        handed over taken first."""
        self.take_threads()
        self.evals.evaluate(weights, at, self.step)

    def ema_of_step(self, at: int) -> nn.Module:
        """The EMA weights of step `at` (from its checkpoint) in a copy of the EMA's architecture."""
        if int(self.state["step"]) == at:
            snapshot = self.state
        else:
            path = checkpoint_path(self.ckpt_dir, at)
            snapshot = load_checkpoint(path)
            check_identity(snapshot, self.identity, self.cfg, path)
        weights = copy.deepcopy(self.ema)
        weights.load_state_dict(snapshot["ema"])
        return weights

    # -- the step loop -------------------------------------------------------------------------------

    def restore_rng(self) -> None:
        """Every rank's RNG state from the checkpoint; a fresh run, or one resumed on another process
        count, seeds each rank from (seed, step, rank)."""
        rng = self.state.get("rng") if self.state else None
        if rng is not None and len(rng) == self.world:
            set_rng_state(rng[self.rank])
        else:
            seed_everything(self.cfg.seed * 1_000_003 + self.start * 1009 + self.rank)

    def batches(self):
        """This rank's batches from the current step to the last (the model put in training mode)."""
        cfg = self.cfg
        # Items are seeded from (seed, step, index) (SeededItems), so the loader's own generator only
        # seeds its workers; a private one keeps creating the iterator off the training RNG.
        loader = DataLoader(SeededItems(self.dataset, cfg.seed), batch_sampler=self.sampler,
                            num_workers=cfg.data.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed + self.start),
                            pin_memory=self.device.type == "cuda")
        self.model.train()
        return loader if self.start < cfg.train.steps else ()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch, then the EMA; returns this rank's mean loss."""
        cfg, device, model = self.cfg, self.device, self.model
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        t = self.objective.sample_t(len(x), device=device)  # for the whole batch, as without accumulation
        noise = randn(x.shape, None, device)  # drawn here, as training_losses would: micro-batches share one draw
        loss = accumulate_gradients(self.accelerator, model, self.objective, x, y, t, noise, cfg.train.grad_accum)
        if cfg.train.grad_clip:
            self.accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        update_ema(self.ema, self.unwrapped, ema_decay(cfg, self.step))
        self.step += 1
        return loss

    def sync(self, loss: torch.Tensor, force: bool = False) -> int:
        """The step's loss joins the window's sum on the device; every SYNC_EVERY and log.every steps, and
        at every step that checkpoints or ends (`force`), one all-reduce carries the last loss (averaged over
        ranks, kept as `last_loss`), the window's sum and every rank's stop signal (agreed by
        fcdm.train.stops: SIGTERM on all ranks is SIGTERM), read with one host sync.
        Returns the stop signal (0: none). A non-finite loss in the window raises TrainingDiverged, before
        any checkpoint could keep broken weights. On one process a signal is seen at the step it arrives."""
        loss = loss.detach().double()
        self.pending = loss if self.pending is None else self.pending + loss
        self.pending_steps += 1
        local_stop = self.world == 1 and self.stop_signal
        if not (force or local_stop or self.step % SYNC_EVERY == 0 or self.step % self.cfg.log.every == 0):
            return 0
        packed = self.accelerator.reduce(torch.cat([torch.stack([loss, self.pending]), torch.tensor(
            stop_flags(self.stop_signal), dtype=torch.float64, device=self.device)]), reduction="sum").tolist()
        (last, total), signum = packed[:2], agreed_signal(packed[2:])  # stop flags: fcdm.train.stops
        self.last_loss = last / self.world
        self.window_sum, self.window_steps = self.window_sum + total / self.world, self.window_steps + self.pending_steps
        self.pending, self.pending_steps = None, 0
        if not (np.isfinite(self.last_loss) and np.isfinite(total)):
            raise TrainingDiverged(f"loss became {self.last_loss if not np.isfinite(self.last_loss) else total} by "
                                   f"step {self.step} (lr={self.cfg.train.lr}); the run is marked FAILED and resumes "
                                   f"from {self.ckpt_dir} if rerun: lower train.lr, set train.grad_clip, or use "
                                   "train.mixed_precision=no")
        return signum

    def log_metrics(self) -> None:
        """Loss, steps/s, lr and training GFLOPs averaged over the window, every log.every steps."""
        cfg, step = self.cfg, self.step
        if self.tracker and (step % cfg.log.every == 0 or step == cfg.train.steps):  # steps sync reduced
            elapsed = time.perf_counter() - self.t0
            loss, rate = self.window_sum / self.window_steps, self.window_steps / elapsed
            lr = self.opt.param_groups[0]["lr"]
            self.tracker.log_metrics({"loss": loss, "steps_per_sec": rate, "lr": lr,
                                      "train_gflops": training_gflops(self.gflops, cfg.train.batch_size, step),
                                      "img_per_sec": rate * cfg.train.batch_size,
                                      "peak_memory_mb": peak_memory_mb(self.device)}, step)
            if self.step_lines:
                self.log(step_line(step, cfg.train.steps, loss, rate, lr))
            self.take_threads()
            self.reset_window()

    def reset_window(self) -> None:
        """The losses (summed, over ranks) and time since the last logged step."""
        self.window_sum, self.window_steps, self.t0 = 0.0, 0, time.perf_counter()

    # -- checkpoints ---------------------------------------------------------------------------------

    def checkpoint_due(self) -> bool:
        return self.step % self.cfg.log.checkpoint_every == 0 or self.step in self.ledger.due

    def checkpoint_and_evaluate(self, stopping: bool) -> None:
        """A checkpoint, then (unless `stopping`) a sample grid, then the evaluation if one is due here."""
        self.save_checkpoint()  # before the evaluation: a kill during it loses nothing (see EvalLedger)
        if self.tracker and not stopping:  # a grid per checkpoint; a stopping run exits at once
            ev.log_sample_grid(self.tracker, self.cfg, self.ema, self.objective, self.shape, self.num_classes,
                               self.step, self.device)
        if self.step in self.ledger.due:
            self.evaluate(self.ema, self.step)

    def save_checkpoint(self) -> None:
        """Every rank's RNG state gathered; the main process writes the checkpoint and progress.json."""
        rngs = [rng_from_arrays(r) for r in gather_object([rng_as_arrays(rng_state())])] if self.world > 1 \
            else [rng_state()]
        if self.main:
            cfg, ledger, scaler = self.cfg, self.ledger, self.accelerator.scaler
            save_checkpoint({"step": self.step, "model": self.unwrapped.state_dict(), "ema": self.ema.state_dict(),
                             "optimizer": self.opt.state_dict(), "rng": rngs, "config_hash": cfg.hash,
                             "identity": self.identity, "data": data_info(cfg, self.dataset), "config": cfg.to_yaml(),
                             "loss": self.last_loss, "evals_due": ledger.due, "evals_done": sorted(ledger.done),
                             "eval_key": ledger.key,
                             "scaler": scaler.state_dict() if scaler else None},
                            self.ckpt_dir, self.step, keep=cfg.log.keep_checkpoints, protect=ledger.protected())
            ledger.write(step=self.step)
            self.log(f"checkpoint at step {self.step}: {self.ckpt_dir}")
        self.accelerator.wait_for_everyone()

    # -- the end -------------------------------------------------------------------------------------

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    def record_failure(self, e: BaseException) -> None:
        """A stop by signal (KILLED) or an error (FAILED), recorded in progress.json and MLflow."""
        killed = isinstance(e, (TrainingInterrupted, KeyboardInterrupt))
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
        self.log(f"{'KILLED' if killed else 'FAILED'} at step {self.step}: {reason}")
        if not self.tracker:
            return
        # Each record on its own: a full disk or a tracking server down must neither hide the error being
        # recorded nor keep the others from being written (the runner ends a run left RUNNING).
        for record in (self.stop_monitor,
                       lambda: self.ledger.write(status="killed" if killed else "failed", step=self.step, reason=reason),
                       lambda: killed or self.tracker.set_tags({"fcdm.failure": reason}),
                       lambda: self.tracker.end("KILLED" if killed else "FAILED")):
            try:
                record()
            except Exception as failed:
                self.log(f"could not record the run's end ({type(failed).__name__}: {failed})")

    def finish(self, max_steps: int | None) -> TrainResult:
        """FINISHED once the last step and its evaluations are done; else stopped by max_steps (resumable)."""
        finished = self.step == self.cfg.train.steps and not self.ledger.pending(self.step) \
            and not self.ledger.resamplings_pending(self.step)
        self.stop_monitor()
        if self.tracker and finished:
            self.ledger.write(status="finished", step=self.step, reason=None)
            self.tracker.end("FINISHED")
        elif self.tracker:  # stopped early by max_steps: resumable, not finished
            self.ledger.write(status="killed", step=self.step, reason=f"stopped after max_steps={max_steps}")
            self.tracker.end("KILLED")
        began = started_at()
        self.log(f"{'FINISHED' if finished else f'STOPPED after max_steps={max_steps}'} at step {self.step}, loss "
                 f"{self.last_loss:.4f}" + (f", {time.time() - began:.1f} s after the process started" if began else ""))
        self.accelerator.wait_for_everyone()
        if self.world > 1 and torch.distributed.is_initialized():
            # gloo can abort at interpreter exit with a live process group; tear it down explicitly.
            torch.distributed.destroy_process_group()
        return TrainResult(self.run_id, self.step, "FINISHED" if finished else "STOPPED", self.ckpt_dir,
                           self.last_loss, self.main)
