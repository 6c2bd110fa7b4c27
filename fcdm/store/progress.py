"""`progress.json`: where a run stands, beside its checkpoints, read by `plan` and the runner without torch.

    {"config_hash", "seed", "step", "steps", "evals_due": [...], "evals_done": [...],
     "status": "running" | "finished" | "failed" | "killed", "run_id", "updated": unix time, "reason"}

Only the trainer's main process writes it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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
    try:
        current = read_progress(directory) or {}
    except CheckpointError:  # a damaged sidecar is rewritten whole
        current = {}
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
