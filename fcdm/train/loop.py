"""Train one run configuration with accelerate: the same loop on one CPU process or many GPUs.

    fcdm-ablate train ablations/configs/smoke.yaml                   # one process
    accelerate launch --multi_gpu --num_processes 2 -m fcdm.cli train ablations/configs/smoke.yaml

`train` reads top to bottom as the run's phases: setup (everything a user can get wrong is checked
before the store is touched), resume (weights, EMA, optimiser, the MLflow run), evaluations a kill
interrupted, the step loop with its checkpoints, and finish or fail. `Trainer` (fcdm.train.trainer) holds
what they share, and fcdm.train.evaluations the evaluations during training.

Resume is automatic and exact: rerunning the same config finds its newest checkpoint and restores
step, model, EMA, optimiser, grad scaler and every rank's RNG state; data order is a pure function
of (seed, step) and each item's random flip of (seed, step, index), so the data position needs no
state. A checkpoint records the run's identity (resolved config and data fingerprint): resuming it
under anything else stops. Evaluations due and logged are recorded too, so one a kill interrupted
is performed by the rerun. SIGINT/SIGTERM checkpoint and stop (KILLED); a non-finite loss stops the
run (FAILED) without checkpointing the broken weights. `progress.json` beside the checkpoints says
where the run stands (fcdm.store.progress.read_progress).
"""
from __future__ import annotations

import signal
from pathlib import Path

from fcdm.config import RunConfig
from fcdm.train.display import ProgressBar
from fcdm.train.trainer import Trainer, TrainingDiverged, TrainingInterrupted, TrainResult
from fcdm.util.process import die_with_parent_if_started_so
from fcdm.util.signals import handled_signals

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted", "train"]


def train(cfg: RunConfig, store: str | Path | None = None, tracking_uri: str | None = None,
          progress: bool = True, max_steps: int | None = None) -> TrainResult:
    """Train `cfg` to cfg.train.steps (or stop after `max_steps` more steps, for tests and debugging).

    A rerun first performs any evaluation that is due but not logged (a kill during an evaluation),
    from the checkpoint of that step, then continues; the run is FINISHED once its last one is logged.
    Only one process at a time trains a run (its trainer lock, fcdm.store.lock): another trainer holding
    it makes this one wait, then exit with TrainerLockHeld (code 75).
    """
    die_with_parent_if_started_so()  # under a runner: stop (checkpoint) when the process above dies
    run = Trainer(cfg, store)
    try:
        return _train(run, cfg, tracking_uri, progress, max_steps)
    finally:
        run.release_lock()


def _train(run: Trainer, cfg: RunConfig, tracking_uri: str | None, progress: bool, max_steps: int | None):
    pending = run.ledger.pending(run.start)
    if run.start >= cfg.train.steps and not pending and not run.ledger.resamplings_pending(run.start):
        return run.skip(tracking_uri)
    run.resume()
    run.open_tracking(tracking_uri)
    with handled_signals(run.request_stop, (signal.SIGINT, signal.SIGTERM)):
        bar = ProgressBar(run.main and progress, run.start, cfg.train.steps)
        run.step_lines = not bar.shown  # the bar shows loss and rate itself
        try:
            # Evaluations a kill interrupted, each with the EMA of its own step, before the training RNG
            # is restored (so they cannot disturb it) and before training moves on.
            for at in pending:
                run.log(f"evaluating step {at} first: due and not logged under this protocol (an interrupted "
                        "evaluation, or one another spec asks for)")
                run.evaluate(run.ema_of_step(at), at)
            if run.ledger.resamplings_pending(run.start):  # a kill during the final checkpoint's re-samplings
                run.evals.resample(run.ema_of_step(run.ledger.final), run.ledger.final, run.step)
            run.restore_rng()
            for x, y in run.batches():
                loss = run.train_step(x, y)
                if run.step == run.start + 1:
                    run.log_first_step()
                done = run.step == cfg.train.steps or (max_steps is not None and run.step - run.start >= max_steps)
                signum = run.sync(loss, force=done or run.checkpoint_due())
                bar.update(run.step, float("nan") if run.last_loss is None else run.last_loss)
                run.log_metrics()
                if signum or done or run.checkpoint_due():
                    run.checkpoint_and_evaluate(stopping=bool(signum))
                if signum:
                    raise TrainingInterrupted(f"stopped by signal {signal.Signals(signum).name} at step {run.step}; "
                                              f"checkpoint written to {run.ckpt_dir}; rerun the same command to "
                                              "resume", signum)
                if done:
                    break
        except BaseException as e:
            bar.close()
            run.record_failure(e)
            raise
    bar.close()
    return run.finish(max_steps)
