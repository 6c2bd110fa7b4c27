"""Jobs -> their MLflow runs -> one tidy DataFrame, one row per (run, evaluation step).

A spec's results are found by expanding it and looking each job up by (configuration hash, seed),
never by a parent-run tag: a job's identity is its run's, so a configuration shared by two specs is one
run, trained once, and shows in both.

    frame = collect_spec("ablations/kernel_size.yaml", "smoke", "sqlite:///runs/mlflow.db")
    frame = collect(jobs, tracking_uri)          # jobs: list[fcdm.spec.Job]

Columns (FRAME_COLUMNS, then one per evaluation metric key, then `eval.*` protocol tags):
- identity: spec, profile, config (the row label: variant and axis values), variant, axes (dict),
  `axis.<dotted key>` per axis, hash, seed, job, run_id, experiment_id, run_name;
- state: status (FINISHED, RUNNING, KILLED, FAILED, or MISSING when the job has no run),
  last_step (newest logged step), train_steps (the job's total);
- cost: model, params, gflops (forward GFLOPs, DiT convention), batch_size, train_compute
  (GFLOPs x 3 x batch x step: training GFLOPs spent up to this evaluation), throughput (median
  logged train steps/s);
- step: the evaluation's training step (NaN for a run, or a job, with no evaluation: it keeps one
  row, so nothing is silently dropped);
- protocol: the run's `eval.protocol` tag. Bare keys (`fid`) were measured under it; other protocols
  are logged under suffixed keys (`fid/ddpm-250-...`), each its own column. Every aggregation in
  analysis/ groups by protocol, so no table mixes two protocols in one column.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from analysis.store import TRAINING_METRICS, read_store
from fcdm.spec import Spec, expand, load_spec, resolve_profile
from fcdm.store.tracking import TAG_HASH, TAG_SEED

FRAME_COLUMNS = ["spec", "profile", "config", "variant", "axes", "hash", "seed", "job", "run_id", "experiment_id",
                 "run_name", "status", "last_step", "train_steps", "model", "params", "gflops", "batch_size",
                 "throughput", "step", "train_compute", "protocol", "artifact_uri"]
MISSING = "MISSING"
# Direction of "better" for the metrics the evaluation logs; unknown keys are treated as lower-better.
HIGHER_IS_BETTER = {"is", "precision", "recall", "class_consistency"}


METRIC_NAMES = {"fid": "FID", "is": "IS", "kid": "KID", "precision": "Precision", "recall": "Recall",
                "class_consistency": "Class consistency"}


def metric_name(key: str) -> str:
    """'fid' -> 'FID'; 'fid/ddpm-250-...' -> 'FID [ddpm-250-...]'."""
    name = METRIC_NAMES.get(base_metric(key), base_metric(key))
    return f"{name} [{key.split('/', 1)[1]}]" if "/" in key else name


def base_metric(key: str) -> str:
    """'fid/ddpm-250-cfg1.5-...' -> 'fid'."""
    return key.split("/", 1)[0]


def higher_is_better(key: str) -> bool:
    return base_metric(key) in HIGHER_IS_BETTER


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The evaluation metric columns of a collected frame, bare keys first."""
    return list(frame.attrs.get("metrics", []))


def config_label(job) -> str:
    """The row label of a job's configuration: its name after '<spec>/' (what `plan` and `run` show,
    e.g. 'kernel_size=3'), else 'variant, key=value, ...' with short axis names."""
    if "/" in job.name and job.name.split("/", 1)[1]:
        return job.name.split("/", 1)[1]
    parts = [job.variant] if job.variant else []
    for key, value in job.axes.items():
        parts.append(str(value) if key == "model.name" else f"{key.rsplit('.', 1)[-1]}={_short(value)}")
    if parts:
        return ", ".join(parts)
    return job.name.split("/", 1)[-1] or job.config.name


def _short(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def collect(jobs: list, tracking_uri: str) -> pd.DataFrame:
    """The tidy frame of `jobs` (fcdm.spec.Job) as recorded at `tracking_uri`; see the module docstring.

    A (hash, seed) with several MLflow runs uses the newest, as the trainer does when it resumes.
    """
    jobs = list(jobs)
    hashes = {j.hash for j in jobs}
    runs, metrics = read_store(tracking_uri, hashes=hashes) if jobs else (pd.DataFrame(), pd.DataFrame())
    by_key: dict[tuple[str, int], dict] = {}
    for run in runs.sort_values("start_time").to_dict("records") if len(runs) else []:
        tags = run["tags"]
        try:
            by_key[(tags[TAG_HASH], int(tags.get(TAG_SEED, "0")))] = run  # newest start wins
        except ValueError:
            continue  # a seed tag that is not a number belongs to no job
    evals, keys, throughput, last = _evaluations(metrics)
    labels = _unique_labels(jobs)
    rows = []
    for job in jobs:
        run = by_key.get((job.hash, job.seed))
        base = _job_row(job, labels[(job.hash, job.seed)], run)
        if run is None:
            rows.append(base)
            continue
        base["throughput"] = throughput.get(run["run_id"], np.nan)
        base["last_step"] = last.get(run["run_id"], 0)
        steps = evals.get(run["run_id"], {})
        for step in sorted(steps) or [np.nan]:
            rows.append({**base, "step": step, **steps.get(step, {})})
    frame = pd.DataFrame(rows)
    for col in FRAME_COLUMNS:
        if col not in frame:
            frame[col] = pd.Series(dtype=float)
    ordered = FRAME_COLUMNS + [k for k in keys if k in frame] + sorted(
        c for c in frame if c not in FRAME_COLUMNS and c not in keys)
    frame = frame[ordered]
    frame["train_compute"] = frame["gflops"] * 3 * frame["batch_size"] * frame["step"]
    frame.attrs["metrics"] = [k for k in keys if k in frame]
    frame.attrs["tracking_uri"] = tracking_uri
    return frame


def _evaluations(metrics: pd.DataFrame):
    """({run: {step: {key: value}}}, metric keys (bare first), {run: median steps/s}, {run: last step})."""
    if metrics.empty:
        return {}, [], {}, {}
    last = metrics.groupby("run_id")["step"].max().to_dict()
    train = metrics["key"].isin(TRAINING_METRICS)
    throughput = metrics[metrics["key"] == "steps_per_sec"].groupby("run_id")["value"].median().to_dict()
    ev = metrics[~train]
    # A metric logged twice at one step (an evaluation repeated after a resume): the newest value counts.
    ev = ev.sort_values("timestamp", kind="stable").drop_duplicates(["run_id", "key", "step"], keep="last")
    keys = sorted(ev["key"].unique(), key=lambda k: ("/" in k, k))
    out: dict[str, dict[int, dict]] = {}
    # Plain lists: iterating pandas' (Arrow-backed) columns element by element is several times slower.
    for rid, key, step, value in zip(*(ev[c].tolist() for c in ("run_id", "key", "step", "value"))):
        out.setdefault(rid, {}).setdefault(int(step), {})[key] = value
    return out, keys, throughput, last


def _unique_labels(jobs: list) -> dict[tuple[str, int], str]:
    """config_label per job; two configurations (hashes) with one label get the hash appended."""
    labels = {(j.hash, j.seed): config_label(j) for j in jobs}
    hashes_of: dict[str, set[str]] = {}
    for (h, _), label in labels.items():
        hashes_of.setdefault(label, set()).add(h)
    return {(h, s): f"{label} [{h[:6]}]" if len(hashes_of[label]) > 1 else label for (h, s), label in labels.items()}


def _job_row(job, label: str, run: dict | None) -> dict[str, Any]:
    cfg = job.config
    tags = run["tags"] if run else {}
    row = {"spec": job.spec, "profile": job.profile, "config": label, "variant": job.variant,
           "axes": dict(job.axes), "hash": job.hash, "seed": job.seed, "job": job.name,
           "run_id": run["run_id"] if run else None, "experiment_id": run["experiment_id"] if run else None,
           "run_name": run["run_name"] if run else None, "status": run["status"] if run else MISSING,
           "last_step": 0, "train_steps": cfg.train.steps, "model": cfg.model.name,
           "params": _number(tags.get("fcdm.params")), "gflops": _number(tags.get("fcdm.gflops")),
           "batch_size": cfg.train.batch_size, "throughput": np.nan, "step": np.nan,
           "protocol": tags.get("eval.protocol"), "artifact_uri": run["artifact_uri"] if run else None}
    row.update({f"axis.{k}": v for k, v in job.axes.items()})
    row.update({k: v for k, v in tags.items() if k.startswith("eval.") and k != "eval.protocol"})
    return row


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return np.nan


# -- specs --------------------------------------------------------------------------------------------

def collect_spec(spec, profile: str | None, tracking_uri: str, overrides: tuple[str, ...] = ()) -> pd.DataFrame:
    """Expand `spec` (a path or fcdm.spec.Spec) under `profile` (None: the spec's default) and collect its
    jobs. attrs: `spec` (its name), `profile`, `experiment` (the MLflow experiment its jobs create runs in),
    and `baseline` (labels of the spec's baseline rows, from its `baseline:` key; `baseline_given`: that key)
    or `axis_defaults` (the base config's value of each axis, when the spec names no baseline).

    attrs hold only small plain values: pandas deep-copies attrs on every operation on the frame, and 500
    Jobs there made a report take minutes.

    Raises fcdm.spec.SpecError for a bad spec, analysis.store.StoreError for an unreadable store.
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    profile = resolve_profile(spec, profile)
    jobs = expand(spec, profile=profile, overrides=tuple(overrides))
    view = spec.view(profile)
    frame = collect(jobs, tracking_uri)
    frame.attrs.update(spec=spec.name, profile=profile,
                       experiment=(jobs[0].config.log.experiment if jobs else None) or spec.name)
    labels = _unique_labels(jobs)
    chosen = [labels[(j.hash, j.seed)] for j in jobs if view.is_baseline(j.variant, j.axes)]
    if chosen:
        frame.attrs["baseline"] = list(dict.fromkeys(chosen))
        frame.attrs["baseline_given"] = dict(spec.baseline or {})  # the spec's own key, not a profile's
    else:
        frame.attrs["axis_defaults"] = view.axis_defaults(jobs)
    return frame
