"""How long each job still has to run, for the runner's scheduling: the plan's cost model, corrected by
throughput the store has measured.

    works = {j.key: remaining_work(j, done=0, rate=None) for j in jobs}   # Work(gflop=..., seconds=None)
    order = longest_first(jobs, works)
    seconds_left(works)                       # {key: seconds}, unmeasured ones at the measured scale

The cost model counts what a job computes from its checkpoint on: training (forward GFLOPs x 3 x batch x
steps left) and the sampling of its evaluations still due (GFLOPs x samples x sampling steps, doubled
with guidance). Where the job's own log holds a measured rate (a partial run, resumed), its training
time is steps left / steps per second, and the other jobs' GFLOPs are turned into seconds at the median
seconds per GFLOP of the measured ones. Only the order matters: jobs start longest first (LPT), so the
long ones do not end alone at the end of a spec.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fcdm.models.costs import training_gflops
from fcdm.spec.job import Job
from fcdm.spec.matching import cost
from fcdm.store.jobs import LOG, job_dir
from fcdm.store.trainlog import parse_tail, read_tail


@dataclass(frozen=True)
class Work:
    """What a job has left: in GFLOP from the cost model, and in seconds where a rate was measured."""
    gflop: float
    seconds: float | None = None


def remaining_work(job: Job, done: int = 0, rate: float | None = None) -> Work:
    """The job's work from step `done` on; `rate`: its measured training steps/s, if any."""
    cfg = job.config
    per_forward = cost(cfg).gflops
    steps_left = max(cfg.train.steps - done, 0)
    guidance = 2 if cfg.eval.cfg_scale > 1 else 1
    evals_left = sum(1 for s in cfg.eval_steps() if s > done) if cfg.eval.metrics else 0
    sampling = per_forward * cfg.eval.num_samples * cfg.eval.sampling_steps * guidance * evals_left
    training = training_gflops(per_forward, cfg.train.batch_size, steps_left)
    if rate:
        # A training step costs 3 forwards of a batch; sampling one forward per sample and step.
        seconds_per_gflop = 1 / (rate * training_gflops(per_forward, cfg.train.batch_size, 1))
        return Work(training + sampling, (training + sampling) * seconds_per_gflop)
    return Work(training + sampling)


def measured_rate(store: Path, job: Job) -> float | None:
    """The training steps/s the job's last trainer logged (its train.log), or None."""
    return parse_tail(read_tail(job_dir(store, job) / LOG)).rate or None


def seconds_left(works: dict[str, Work]) -> dict[str, float]:
    """Each job's work in seconds: measured where it was, else its GFLOP at the median seconds per GFLOP
    of the measured ones (in GFLOP when none was measured: the order is all that counts then)."""
    measured = [w.seconds / w.gflop for w in works.values() if w.seconds and w.gflop > 0]
    scale = statistics.median(measured) if measured else 1.0
    return {k: w.seconds if w.seconds is not None else w.gflop * scale for k, w in works.items()}


def longest_first(jobs: Sequence[Job], works: dict[str, Work]) -> list[Job]:
    """`jobs` ordered by estimated seconds left, longest first; ties keep the spec's order."""
    left = seconds_left(works)
    return sorted(jobs, key=lambda j: -left[j.key])
