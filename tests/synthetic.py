"""Synthetic MLflow runs with known values, shaped like the trainer's: for the report's tests and
`bench/report.py`. Nothing here trains; every number is the caller's (or a closed-form curve).

A run holds what `fcdm.train` records: the job's own tags (log.tags: spec, pair and `fcdm.config_key`), tags
`fcdm.config_hash`, `fcdm.seed`, `fcdm.params`, `fcdm.gflops`, `fcdm.model`, spec tags, `eval.*` protocol
tags; every flattened config key as a param; `loss`, `steps_per_sec`, `lr`, `train_gflops` every
`log.every` steps; the evaluation metrics at evaluation steps, and optionally re-samplings of a checkpoint
(`fid.eval_seed<S>`, `resamplings`); optionally a sample grid `samples/step_XXXXXXXX.png` per evaluation.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from helpers import make_config

from analysis.collect import collect
from fcdm.evaluation.protocol import Protocol
from fcdm.spec.job import Job
from fcdm.store.tracking import TAG_HASH, TAG_SEED

SYNTHETIC_WEIGHTS = "sha256:000000000000"  # the digits classifier's weights digest in every synthetic store


def protocol_tags(num_samples: int = 500, sampler: str = "euler", steps: int = 50, cfg_scale: float = 2.0,
                  digest: str | None = None, seed: int = 0) -> dict[str, str]:
    """`eval.*` tags of a digits run, written by `fcdm.evaluation.protocol.Protocol.tags` itself (digest
    included), so a synthetic store carries exactly the digests the trainer would; `digest` overrides it."""
    proto = Protocol(num_samples, sampler, steps, float(cfg_scale), None, "fp32", "digits-classifier", "digits-test",
                     None, seed, extractor_weights=SYNTHETIC_WEIGHTS, fid_reference="images")
    return {**proto.tags(num_channels=1), **({"eval.protocol": digest} if digest else {})}


def config_protocol_tags(cfg) -> dict[str, str]:
    """The `eval.*` tags the trainer records for a run of `cfg` (Protocol.from_config, the trainer's own path)."""
    proto = replace(Protocol.from_config(cfg), extractor_weights=SYNTHETIC_WEIGHTS, fid_reference="images")
    return proto.tags(num_channels=cfg.data_shape[0])


def experiment(client, name: str, store: Path) -> str:
    """The experiment `name`, created with its artifacts under `store/artifacts` as the Tracker does."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=(Path(store) / "artifacts").as_uri())


def log_run(client, experiment_id: str, job: Job, evals: dict[int, dict[str, float]], *,
            status: str = "FINISHED", params: int = 1000, gflops: float = 0.01, steps_per_sec: float = 10.0,
            protocol: dict[str, str] | None = None, grids: bool = False, last_step: int | None = None,
            extra_metrics: dict[int, dict[str, float]] | None = None) -> str:
    """One run of `job` with metric values `evals` ({step: {key: value}}) and `status`; returns its id.

    last_step: the last logged training step (default: the job's train.steps when FINISHED, else the
    last evaluation step); `loss`, `steps_per_sec`, `lr`, `train_gflops` are logged every log.every
    steps up to it. grids: log a tiny sample-grid PNG at each evaluation step.
    """
    from mlflow.entities import Metric, Param

    cfg = job.config
    tags = {**cfg.log.tags, TAG_HASH: cfg.hash, TAG_SEED: str(cfg.seed), "fcdm.params": str(params), "fcdm.gflops": f"{gflops:.6g}",
            "fcdm.model": cfg.model.name, "fcdm.processes": "1", "fcdm.spec": job.spec,
            "fcdm.profile": job.profile or "", "fcdm.variant": job.variant or "", "fcdm.job": job.name,
            "fcdm.axes": json.dumps(job.axes, sort_keys=True, default=str)}
    if evals:
        tags.update(protocol or config_protocol_tags(cfg))
    run = client.create_run(experiment_id, run_name=f"{cfg.name}-{cfg.hash[:8]}-s{cfg.seed}", tags=tags)
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in list(cfg.flat().items())[:100]])
    now = int(time.time() * 1000)
    if last_step is None:
        last_step = cfg.train.steps if status == "FINISHED" else max(evals, default=0)
    every = cfg.log.every
    metrics = []
    for step in [*range(every, last_step + 1, every)] + ([last_step] if last_step % every else []):
        metrics += [Metric("loss", 1.0 / (1 + step) ** 0.3, now, step), Metric("steps_per_sec", steps_per_sec, now, step),
                    Metric("lr", cfg.train.lr, now, step),
                    Metric("train_gflops", gflops * 3 * cfg.train.batch_size * step, now, step)]
    if last_step:  # the trainer logs it every log.every steps; the report reads its maximum
        metrics.append(Metric("peak_memory_mb", 512.0, now, last_step))
    for source in (evals, extra_metrics or {}):
        for step, values in source.items():
            metrics += [Metric(k, float(v), now, step) for k, v in values.items()]
    for i in range(0, len(metrics), 1000):  # MLflow's log_batch limit
        client.log_batch(rid, metrics=metrics[i:i + 1000])
    if grids and evals:
        _log_grids(client, rid, sorted(evals), seed=cfg.seed + cfg.model.args.get("kernel_size", 0))
    if status != "RUNNING":  # a new run is RUNNING until terminated, as a live (or dead) trainer leaves it
        client.set_terminated(rid, status=status)
    return rid


def _log_grids(client, run_id: str, steps: list[int], seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        for step in steps:
            path = Path(tmp) / f"step_{step:08d}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
            client.log_artifact(run_id, str(path), "samples")


def resamplings(value: float, step: int, spread: float, rng, count: int = 3, metric: str = "fid") -> dict:
    """Evaluation noise as the trainer logs it (/work/notes/protocol_names.md): the checkpoint at `step` evaluated
    `count` more times with sampling seeds 1..count, `<metric>.eval_seed<S>` = value + N(0, spread)."""
    return {step: {f"{metric}.eval_seed{s}": value + float(rng.normal(0, spread)) for s in range(1, count + 1)}}


def fid_curve(step: int, floor: float, scale: float, rate: float = 0.5) -> float:
    """A plausible FID-vs-steps curve, floor + scale * step^-rate (monotone decreasing)."""
    return floor + scale * step ** -rate


def build_store(store: Path, jobs: list[Job], eval_steps: list[int], *, noise: float = 0.2,
                grids: bool = False, spec_experiment: str | None = None) -> Path:
    """An SQLite store at `store/mlflow.db` holding one FINISHED run per job, FID on `fid_curve` with a
    per-job floor (k-dependent for kernel-size jobs) plus Gaussian seed noise; returns the store."""
    from mlflow import MlflowClient

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    exp = experiment(client, spec_experiment or jobs[0].spec, store)
    rng = np.random.default_rng(0)
    for job in jobs:
        k = job.config.model.args.get("kernel_size", 7)
        width = job.config.model.args.get("hidden_size", 32)
        floor = 2.0 + abs(k - 7) * 0.3 + 64 / width
        evals = {}
        for s in eval_steps:
            fid = fid_curve(s, floor, 40.0) + rng.normal(0, noise)
            evals[s] = {"fid": fid, "is": 9.0 - fid / 10, "is_std": 0.1, "kid": fid / 100, "kid_std": 0.01,
                        "precision": 0.8 - fid / 100, "recall": 0.6, "class_consistency": 0.9}
        log_run(client, exp, job, evals, params=int(width * width * 70), gflops=width * width * 5e-7,
                grids=grids and job.seed == 0)
    return store


# -- a store of known values, for the tests ----------------------------------------------------------

SUFFIX = "ddpm-250-cfg1.5-n50000-fp32-seed0"  # a post-hoc protocol, logged under suffixed keys
# FID per (kernel size, seed) at steps 100, 200, 300; the baseline is k=7 (final mean 11, std 1).
KNOWN_FID = {
    (7, 0): [30, 20, 10], (7, 1): [32, 22, 12], (7, 2): [31, 21, 11],
    (3, 0): [25, 12, 8], (3, 1): [27, 14, 9], (3, 2): [26, 13, 10],  # crosses 11 between 200 and 300
    (5, 0): [40, 35, 33], (5, 1): [41, 36, 34], (5, 2): [42],  # never reaches 11; seed 2 FAILED at 150
    (9, 0): [8.5],  # RUNNING at step 120: reaches 11 at its first evaluation
    (1, 0): [50, 45, 44],  # evaluated under another protocol (1000 samples)
}
KNOWN_STATUS = {(5, 2): ("FAILED", 150), (9, 0): ("RUNNING", 120)}
KNOWN_STEPS = [100, 200, 300]
KNOWN_MISSING = [(11, 0)]  # a job with no run at all


def known_jobs(make_config) -> list[Job]:
    """Jobs of a 'known' spec: kernel sizes 7, 3, 5, 9, 1, 11 (that order), seeds as in KNOWN_FID.
    make_config(*overrides) -> RunConfig, e.g. the tests' tiny_config fixture."""
    jobs = []
    for k in (7, 3, 5, 9, 1, 11):
        for key in [key for key in [*KNOWN_FID, *KNOWN_MISSING] if key[0] == k]:
            cfg = make_config(f"model.args.kernel_size={k}", f"seed={key[1]}", "train.steps=300", "name=known",
                              "log.every=50")
            jobs.append(Job(spec="known", name=f"known/k={k}", config=cfg, axes={"model.args.kernel_size": k},
                            profile="smoke"))
    return jobs


def known_store(store: Path, jobs: list[Job]) -> str:
    """Log KNOWN_FID for `jobs` (from known_jobs) into `store`; returns the tracking URI.

    IS = 100 - FID, precision 0.5 + k/100, recall 0.6; params 1000 k, GFLOPs 0.001 k, 4 steps/s + k;
    the k=7 runs also carry `fid/<SUFFIX>` = FID - 1 at step 300 (a second protocol in the same runs).
    """
    from mlflow import MlflowClient

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = experiment(client, "known", store)
    for job in jobs:
        k = job.config.model.args["kernel_size"]
        key = (k, job.seed)
        if key in KNOWN_MISSING:
            continue
        evals = {s: {"fid": f, "is": 100 - f, "precision": 0.5 + k / 100, "recall": 0.6}
                 for s, f in zip(KNOWN_STEPS, KNOWN_FID[key])}
        extra = {300: {f"fid/{SUFFIX}": KNOWN_FID[key][2] - 1}} if k == 7 else None
        status, last = KNOWN_STATUS.get(key, ("FINISHED", None))
        log_run(client, exp, job, evals, status=status, last_step=last, params=1000 * k, gflops=0.001 * k,
                steps_per_sec=4.0 + k, protocol=protocol_tags(1000 if k == 1 else 500), grids=k in (7, 3),
                extra_metrics=extra)
    return uri


def known_store_copy(template: Path, dest: Path, make_config) -> tuple[list[Job], str]:
    """known_jobs + known_store, built once into `template` and copied to `dest` for each user: creating
    an MLflow SQLite database runs its migrations, seconds per store on a busy 2-core machine. The copy's
    experiment keeps its artifact location in the template (read-only use is what the tests make of it)."""
    template, dest = Path(template), Path(dest)
    jobs = known_jobs(make_config)
    if not (template / "done").exists():
        shutil.rmtree(template, ignore_errors=True)
        known_store(template, jobs)
        (template / "done").touch()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template / "mlflow.db", dest / "mlflow.db")
    return jobs, f"sqlite:///{dest / 'mlflow.db'}"


def known_for_tests(tmp_path_factory) -> tuple[list[Job], str, pd.DataFrame]:
    """known_store_copy for a test module, and its collected frame: the template in pytest's base temporary
    folder (one per session), the copy in a new folder, the jobs on the tiny smoke config (helpers.make_config)."""
    jobs, uri = known_store_copy(tmp_path_factory.getbasetemp() / "known-template", tmp_path_factory.mktemp("known"),
                                 make_config)
    return jobs, uri, collect(jobs, uri)
