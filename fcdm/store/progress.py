"""`progress.json`: where a run stands, beside its checkpoints, read by `plan` and the runner without torch.

    {"config_hash", "seed", "step", "steps", "evals_due": [...], "evals_done": [...], "noise_done": [...],
     "eval_key", "evaluations": {eval_key: {"steps": [...], "noise": [...], "protocol": digest, "lost": [...]}},
     "status": "running" | "finished" | "failed" | "killed", "run_id", "updated": unix time, "reason"}

`evaluations` records what was measured per evaluation request (RunConfig.eval_key: the config's eval
section, torch-free), with the protocol digest it resolved to; `evals_done` / `noise_done` are those of the
request the trainer last ran under (`eval_key`).

Only the trainer's main process writes it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fcdm.config.schema import RunConfig
from fcdm.errors import CheckpointError
from fcdm.util.files import atomic_write

PROGRESS = "progress.json"
STATUSES = ("running", "finished", "failed", "killed")


def write_progress(directory: Path, **fields: Any) -> dict:
    """Update `<directory>/progress.json` atomically with `fields` (merged into what is there); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fields.get("status") not in (None, *STATUSES):
        raise ValueError(f"progress status {fields['status']!r}; allowed values: {', '.join(STATUSES)}")
    current = progress_or_empty(directory)  # a damaged sidecar is rewritten whole
    current.update(fields, updated=time.time())
    atomic_write(directory / PROGRESS, json.dumps(current, indent=1, sort_keys=True))
    return current


def read_progress(ckpt_dir: Path) -> dict | None:
    """The run's progress sidecar, or None when there is none (a run that never checkpointed). Cheap: no torch."""
    path = Path(ckpt_dir) / PROGRESS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}); delete it: the next checkpoint rewrites it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; delete it: the next checkpoint rewrites it")
    return data


def progress_or_empty(ckpt_dir: Path) -> dict:
    """The run's progress sidecar, or {} when there is none or it is damaged (the next checkpoint rewrites it):
    for readers that only watch where a run stands."""
    try:
        return read_progress(ckpt_dir) or {}
    except CheckpointError:
        return {}


def evaluation_record(progress: dict, cfg: RunConfig) -> dict:
    """What progress.json records as measured for `cfg`'s evaluation request: {"steps", "noise", "protocol"}
    ({} when nothing). A sidecar from before per-request records (no `evaluations`) stands for whatever was
    asked: its `evals_done` and `noise_done`, with no protocol digest."""
    records = progress.get("evaluations")
    if records is None:
        return {"steps": progress.get("evals_done", []), "noise": progress.get("noise_done", [])}
    return records.get(cfg.eval_key) or {}


def evaluated(progress: dict, cfg: RunConfig) -> bool:
    """Whether every evaluation `cfg` asks for (its steps and re-samplings, under its request) is recorded."""
    if not cfg.eval.metrics:
        return True
    record = evaluation_record(progress, cfg)
    # steps whose checkpoint was gone when they were asked for (the trainer warned) cannot be measured any more
    return set(cfg.eval_steps()) <= set(record.get("steps", ())) | set(record.get("lost", ())) and \
        set(cfg.noise_seeds()) <= set(record.get("noise", ()))
