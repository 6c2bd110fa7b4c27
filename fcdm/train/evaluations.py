"""A run's evaluations while it trains (called by fcdm.train.trainer): the evaluation of a step, measured under
the run's protocol and recorded in its ledger once logged, and the final evaluation's re-samplings with each
seed of `eval.noise_seeds` (evaluation noise). Every rank takes part; the main process logs and records.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch.nn as nn
from accelerate import Accelerator

from fcdm.config import RunConfig
from fcdm.evaluation import evaluate as ev
from fcdm.evaluation.protocol import TAG_NOISE_SEEDS, Protocol
from fcdm.store.tracking import Tracker
from fcdm.store.trainlog import eval_line, metrics_text
from fcdm.train.ledger import EvalLedger


class Evaluations:
    """What one run's evaluations measure with (protocol, objective, the data's shape) and where they are
    recorded: MLflow through `tracker` (the main process, once the run is open) and progress.json through
    the ledger."""

    def __init__(self, accelerator: Accelerator, cfg: RunConfig, protocol: Protocol, objective, ledger: EvalLedger,
                 store: Path, log: Callable[[str], None]):
        self.accelerator, self.cfg, self.protocol, self.objective = accelerator, cfg, protocol, objective
        self.ledger, self.store, self.log = ledger, store, log
        self.main = accelerator.is_main_process
        self.tracker: Tracker | None = None

    def _measure(self, weights: nn.Module, at: int, sampling_seed: int | None = None) -> dict | None:
        # Looked up on the module at each call, so a test can stand in for it (a kill during an evaluation).
        return ev.evaluate_in_training(self.accelerator, self.tracker, self.cfg, self.protocol, weights,
                                       self.objective, self.cfg.data_shape, self.cfg.num_classes, step=at,
                                       store=self.store, sampling_seed=sampling_seed)

    def evaluate(self, weights: nn.Module, at: int, step: int) -> None:
        """Measure and log the evaluation of step `at` with `weights` (the run is at `step`), record it as
        done, and at the final evaluation re-sample."""
        began = time.perf_counter()
        values = self._measure(weights, at)
        self.ledger.done.add(at)
        if self.main:
            # the request's protocol digest, recorded in progress.json beside its evaluations (fcdm.train.ledger)
            self.ledger.protocol = self.protocol.resolved(self.store / "cache", self.cfg.eval.fid_weights).digest
            self.ledger.write(step=step)
            self.log(eval_line(at, self.cfg.train.steps, values or {}, time.perf_counter() - began))
        if at == self.ledger.final:
            self.resample(weights, at, step)

    def resample(self, weights: nn.Module, at: int, step: int) -> None:
        """Evaluation noise: the final evaluation's checkpoint evaluated again under the run's protocol with
        each sampling seed of `eval.noise_seeds` not yet logged (`<metric>.eval_seed<S>` at step `at`)."""
        seeds = self.ledger.resamplings_pending(at)
        if seeds and self.tracker:
            self.tracker.set_tags({TAG_NOISE_SEEDS: ",".join(map(str, self.ledger.noise_seeds))})
        for seed in seeds:
            began = time.perf_counter()
            values = self._measure(weights, at, sampling_seed=seed)
            self.ledger.resampled.add(seed)
            if self.main:
                self.ledger.write(step=step)
                self.log(f"evaluation noise at step {at} (sampling seed {seed}): {metrics_text(values or {})}  "
                         f"({time.perf_counter() - began:.1f} s)")
