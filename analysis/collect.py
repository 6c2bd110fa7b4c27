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
- protocol_group: the protocol the report groups by: runs whose protocols differ only in the sampling seed
  (`eval.seed`, which older runs took from their training seed) are one protocol, named by the first run's
  digest. A protocol is how a number is made, not which run made it: seeds of one configuration pool.
- evaluation noise: re-samplings of one checkpoint under the same protocol with other sampling seeds,
  `fid.eval_seed<S>` (suffixed: `fid.eval_seed<S>/<slug>`), columns of their own listed in attrs["noise"],
  never among the metrics.
- evaluated_as: a run reused by another spec was evaluated under that spec's protocol from its kept checkpoints,
  logged as `<metric>/<slug>` with the tag `eval/<slug>.digest`. Where that digest is the own protocol of
  another collected run, those values are rows of their own: bare keys, `protocol` that digest, its `eval.*`
  tags, and `evaluated_as` = the slug (None on a run's own rows); so one protocol section holds every
  configuration, and the run's bare metrics stay under its own protocol.

A job is looked up by (configuration hash, seed); a job whose hash needs data that is not on this machine
(latents of runs trained elsewhere) by (`fcdm.config_key`, seed): the hash without the data's fingerprint,
which every run records. So a report needs the tracking store only, never the data.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pandas as pd

from analysis.store import TRAINING_METRICS, read_store
from fcdm.errors import DataError
from fcdm.spec import Spec, expand, load_spec, resolve_profile
from fcdm.spec.job import TAG_BASELINE, TAG_CONFIG_KEY, TAG_FLOPS_TARGET, TAG_MATCHED_ON, TAG_PARAMS_TARGET, TAG_ROLE
from fcdm.store.tracking import TAG_HASH, TAG_SEED

FRAME_COLUMNS = ["spec", "profile", "config", "variant", "axes", "hash", "seed", "job", "run_id", "experiment_id",
                 "run_name", "status", "last_step", "train_steps", "model", "params", "gflops", "batch_size",
                 "throughput", "peak_memory_mb", "step", "train_compute", "protocol", "protocol_group", "artifact_uri"]
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


NOISE = re.compile(r"^(?P<metric>[^/]+)\.eval_seed(?P<seed>\d+)(?P<suffix>/.*)?$")  # fid.eval_seed2[/<slug>]


def is_noise_key(key: str) -> bool:
    """A re-sampling of a checkpoint with another sampling seed (evaluation noise), not a metric of its own."""
    return NOISE.match(key) is not None


def noise_keys(keys, metric: str) -> list[str]:
    """The re-sampling keys of `metric` ('fid' -> fid.eval_seed1, ...; 'fid/x' -> fid.eval_seed1/x, ...)."""
    base, _, suffix = metric.partition("/")
    out = []
    for k in keys:
        m = NOISE.match(k)
        if m and m["metric"] == base and (m["suffix"] or "") == (f"/{suffix}" if suffix else ""):
            out.append(k)
    return sorted(out, key=lambda k: int(NOISE.match(k)["seed"]))


def lookup(job) -> tuple[str, str]:
    """(tag, value) that finds a job's run: its configuration hash, or where the hash needs data that is not on
    this machine, its configuration key."""
    try:
        return TAG_HASH, job.hash  # computed once per job (a report looks each up many times)
    except DataError:
        return TAG_CONFIG_KEY, job.config.config_key


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
    finds = {id(j): lookup(j) for j in jobs}
    hashes = {v for t, v in finds.values() if t == TAG_HASH}
    config_keys = {v for t, v in finds.values() if t == TAG_CONFIG_KEY}
    runs, metrics = read_store(tracking_uri, hashes=hashes, keys=config_keys) if jobs else (
        pd.DataFrame(), pd.DataFrame())
    by_key: dict[tuple[str, str, int], dict] = {}
    for run in runs.sort_values("start_time").to_dict("records") if len(runs) else []:
        tags = run["tags"]
        try:
            seed = int(tags.get(TAG_SEED, "0"))
        except ValueError:
            continue  # a seed tag that is not a number belongs to no job
        for tag in (TAG_HASH, TAG_CONFIG_KEY):
            if tags.get(tag):
                by_key[(tag, tags[tag], seed)] = run  # newest start wins
    evals, keys, throughput, last = _evaluations(metrics)
    peak = metrics[metrics["key"] == "peak_memory_mb"].groupby("run_id")["value"].max().to_dict() \
        if len(metrics) else {}
    labels = _unique_labels(jobs)
    found = [(job, by_key.get((*finds[id(job)], job.seed))) for job in jobs]
    described = _own_protocols(run for _, run in found if run is not None and evals.get(run["run_id"]))
    rows, moved = [], set()  # moved: the bare keys that values logged under another protocol's suffix became
    for job, run in found:
        base = _job_row(job, labels[(_identity(job), job.seed)], run)
        if run is None:
            rows.append(base)
            continue
        base["throughput"] = throughput.get(run["run_id"], np.nan)
        base["peak_memory_mb"] = peak.get(run["run_id"], np.nan)
        base["last_step"] = last.get(run["run_id"], 0)
        steps = evals.get(run["run_id"], {})
        joined = {slug: d for slug, d in reevaluations(run["tags"]).items() if d in described}
        for step in sorted(steps) or [np.nan]:
            rows += _step_rows(base, step, steps.get(step, {}), joined, described, moved)
    frame = pd.DataFrame(rows)
    keys = sorted(set(keys) | moved, key=lambda k: ("/" in k, k))  # bare keys first
    for col in FRAME_COLUMNS:
        if col not in frame:
            frame[col] = pd.Series(dtype=float)
    ordered = FRAME_COLUMNS + [k for k in keys if k in frame] + sorted(
        c for c in frame if c not in FRAME_COLUMNS and c not in keys)
    frame = frame[ordered]
    frame["train_compute"] = frame["gflops"] * 3 * frame["batch_size"] * frame["step"]
    frame["protocol_group"] = frame["protocol"].map(protocol_groups(frame))
    frame.attrs["metrics"] = [k for k in keys if k in frame and not is_noise_key(k)]
    frame.attrs["noise"] = [k for k in keys if k in frame and is_noise_key(k)]
    frame.attrs["tracking_uri"] = tracking_uri
    return frame


# Tags of a run's protocol that do not change how its numbers are made: the digest itself, the sampling seed,
# and how many re-samplings of a checkpoint were made (evaluation noise).
NOT_PROTOCOL = ("eval.protocol", "eval.seed", "eval.noise_seeds")


def protocol_groups(frame: pd.DataFrame) -> dict[str, str]:
    """{protocol digest: the digest that names its group}: digests whose runs' `eval.*` tags agree except for
    NOT_PROTOCOL are one group, named by the first digest seen (so where every seed shares one digest, each
    digest names itself)."""
    tags = [c for c in frame.columns if c.startswith("eval.") and c not in NOT_PROTOCOL]
    named: dict[str, str] = {}
    out: dict[str, str] = {}
    for digest, *values in frame[["protocol", *tags]].drop_duplicates("protocol").itertuples(index=False):
        if not isinstance(digest, str):
            continue
        key = json.dumps([None if isinstance(v, float) and np.isnan(v) else v for v in values], default=str)
        out[digest] = named.setdefault(key, digest)
    return out


REEVALUATED = re.compile(r"^eval/(?P<slug>.+)\.digest$")  # eval/<slug>.digest: a protocol not the run's own
TAKEN_FROM = "evaluated_as"  # column: the suffix a row's metrics were logged under (None: the run's own protocol)


def reevaluations(tags: dict[str, str]) -> dict[str, str]:
    """{slug: protocol digest} of the protocols other than its own a run was evaluated under (its kept checkpoints
    evaluated for another spec that reused it), from its tags `eval/<slug>.digest`."""
    own = tags.get("eval.protocol")
    return {m["slug"]: v for k, v in tags.items() if (m := REEVALUATED.match(k)) and v and v != own}


def _own_protocols(runs) -> dict[str, dict[str, str]]:
    """{digest: its `eval.*` tags (but the digest)} of the protocols the evaluated `runs` record as their own."""
    out: dict[str, dict[str, str]] = {}
    for run in runs:
        tags = run["tags"]
        if tags.get("eval.protocol"):
            out.setdefault(tags["eval.protocol"], {k: v for k, v in tags.items()
                                                   if k.startswith("eval.") and k != "eval.protocol"})
    return out


def _step_rows(base: dict, step, values: dict, joined: dict[str, str], described: dict, moved: set) -> list[dict]:
    """The rows of a run's evaluation step: one under its own protocol (bare keys), and one per other protocol in
    `joined` ({slug: digest}, protocols some collected run records as its own) whose `<metric>/<slug>` values
    (and re-samplings `<metric>.eval_seed<S>/<slug>`) it holds, as bare keys under that protocol's digest and
    `eval.*` tags. Never mixed: a row's metrics are all of one protocol. Adds the moved bare keys to `moved`."""
    if not joined:
        return [{**base, "step": step, **values}]
    own: dict[str, float] = {}
    other: dict[str, dict[str, float]] = {slug: {} for slug in joined}
    for key, value in values.items():
        head, _, slug = key.partition("/")
        if slug in other:
            other[slug][head] = value
        else:
            own[key] = value
    rows = [{**base, "step": step, **own}] if own or not any(other.values()) else []
    unowned = {k: v for k, v in base.items() if not k.startswith("eval.")}  # the run's own protocol tags go
    for slug, vals in other.items():
        if vals:
            moved.update(vals)
            rows.append({**unowned, **described[joined[slug]], "step": step, "protocol": joined[slug],
                         TAKEN_FROM: slug, **vals})
    return rows


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


def _identity(job) -> str:
    """What makes two jobs one configuration: the hash, or without the data the configuration key."""
    return lookup(job)[1]


def _unique_labels(jobs: list) -> dict[tuple[str, int], str]:
    """config_label per job; two configurations (hashes) with one label get the hash appended."""
    labels = {(_identity(j), j.seed): config_label(j) for j in jobs}
    hashes_of: dict[str, set[str]] = {}
    for (h, _), label in labels.items():
        hashes_of.setdefault(label, set()).add(h)
    return {(h, s): f"{label} [{h[:6]}]" if len(hashes_of[label]) > 1 else label for (h, s), label in labels.items()}


def _job_row(job, label: str, run: dict | None) -> dict[str, Any]:
    cfg = job.config
    tags = run["tags"] if run else {}
    # Without the data: the hash the run recorded, else (no run) the configuration key.
    h = job.config.try_hash() or tags.get(TAG_HASH) or f"key {job.config.config_key}"
    row = {"spec": job.spec, "profile": job.profile, "config": label, "variant": job.variant,
           "axes": dict(job.axes), "hash": h, "seed": job.seed, "job": job.name,
           "run_id": run["run_id"] if run else None, "experiment_id": run["experiment_id"] if run else None,
           "run_name": run["run_name"] if run else None, "status": run["status"] if run else MISSING,
           "last_step": 0, "train_steps": cfg.train.steps, "model": cfg.model.name,
           "params": _number(tags.get("fcdm.params")), "gflops": _number(tags.get("fcdm.gflops")),
           "batch_size": cfg.train.batch_size, "throughput": np.nan, "peak_memory_mb": np.nan, "step": np.nan,
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
    jobs. attrs: `spec` (its name), `profile`, `description` (the spec's), `experiment` (the MLflow experiment
    its jobs create runs in), `pairs` (per row label: its role, baseline label, what they are matched on, and
    its target: pair_attrs), and `baseline` (labels of the profile's baseline rows; `baseline_given`: the
    profile's `baseline:` key) or `axis_defaults` (the base config's value of each axis, when the profile
    names no baseline).

    attrs hold only small plain values: pandas deep-copies attrs on every operation on the frame, and 500
    Jobs there made a report take minutes.

    Raises fcdm.spec.SpecError for a bad spec, analysis.store.StoreError for an unreadable store.
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    profile = resolve_profile(spec, profile)
    jobs = expand(spec, profile=profile, overrides=tuple(overrides))
    view = spec.view(profile)
    frame = collect(jobs, tracking_uri)
    frame.attrs.update(spec=spec.name, profile=profile, description=spec.description,
                       experiment=(jobs[0].config.log.experiment if jobs else None) or spec.name)
    labels = _unique_labels(jobs)
    frame.attrs["pairs"] = pair_attrs(jobs, labels)
    chosen = [labels[(_identity(j), j.seed)] for j in jobs if view.is_baseline(j.variant, j.axes)]
    if chosen:
        frame.attrs["baseline"] = list(dict.fromkeys(chosen))
        frame.attrs["baseline_given"] = dict(view.baseline or {})  # the profile's key (issue 15: not the spec's)
    else:
        frame.attrs["axis_defaults"] = view.axis_defaults(jobs)
    return frame


def pair_attrs(jobs: list, labels: dict[tuple[str, int], str]) -> dict[str, dict]:
    """{row label: {"role", "baseline" (label or None), "matched_on", "target_kind" ('FLOPs' / 'parameters' /
    None), "target"}} from the pair each job carries in its tags (fcdm.spec.pairs, written by `expand`)."""
    by_name = {j.name: labels[(_identity(j), j.seed)] for j in jobs}
    out: dict[str, dict] = {}
    for job in jobs:
        tags = job.config.log.tags
        flops, params = tags.get(TAG_FLOPS_TARGET), tags.get(TAG_PARAMS_TARGET)
        out.setdefault(by_name[job.name], {
            "role": tags.get(TAG_ROLE, ""), "baseline": by_name.get(tags.get(TAG_BASELINE, "")),
            "matched_on": tags.get(TAG_MATCHED_ON, ""),
            "target_kind": "FLOPs" if flops else "parameters" if params else None,
            "target": float(flops or params) if (flops or params) else None})
    return out
