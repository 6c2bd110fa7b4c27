"""A job's files in the store and what state it is in, read without torch or MLflow (so `plan` can ask for
every job): `<store>/jobs/<hash>-s<seed>/` holds the job's config.yaml, train.log and runner.json (the
runner's record of its last attempt); `job_status` joins them with the claim, progress sidecar and
checkpoints into new | partial | finished | failed | running (elsewhere).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fcdm.store import claims
from fcdm.store.checkpoints import list_checkpoints
from fcdm.store.layout import checkpoint_dir
from fcdm.store.progress import evaluated, progress_or_empty
from fcdm.util.files import atomic_write

if TYPE_CHECKING:
    from fcdm.spec.job import Job

LOG, CONFIG, RECORD = "train.log", "config.yaml", "runner.json"


STATES = ("new", "partial", "finished", "failed", "running")


@dataclass
class JobStatus:
    """What the store says about one job. `step` is the newest checkpointed step (0 for a new job)."""
    state: str  # new | partial | finished | failed | running (claimed by a live process elsewhere)
    step: int
    steps: int
    reason: str | None = None  # failed: why; running: who holds it
    log: Path | None = None  # the job's training log, when the runner ever started it
    run_id: str | None = None
    updated: float | None = None  # unix time of the newest record (sidecar or runner record)

    def describe(self) -> str:
        """One phrase for tables: 'new', 'partial at step 120/400', 'failed: ...', 'running elsewhere (...)'."""
        if self.state == "partial":
            return f"partial at step {self.step}/{self.steps}" + (f" ({self.reason})" if self.reason else "")
        if self.state == "failed":
            return f"failed at step {self.step}: {self.reason}" if self.reason else f"failed at step {self.step}"
        if self.state == "running":
            return f"running elsewhere ({self.reason})" if self.reason else "running elsewhere"
        return self.state


def job_dir(store: Path, job: Job) -> Path:
    """`<store>/jobs/<hash>-s<seed>/`: the job's config (`config.yaml`), training log (`train.log`) and the
    runner's record of its last attempt (`runner.json`)."""
    return Path(store) / "jobs" / job.key


def read_record(store: Path, job: Job) -> dict | None:
    """The runner's record of the job's last attempt, or None."""
    try:
        data = json.loads((job_dir(store, job) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(store: Path, job: Job, **fields: Any) -> None:
    """Replace the runner's record of the job's last attempt, atomically."""
    atomic_write(job_dir(store, job) / RECORD, json.dumps({**fields, "ended": time.time()}, indent=1, default=str))


def job_status(store: Path, job: Job) -> JobStatus:
    """The job's state from the store alone: its claim, progress sidecar, checkpoints and runner record.

    Cheap (no torch, no MLflow): `plan` calls it for every job. `finished` means the trainer recorded
    the run finished with every evaluation the job asks for logged under the job's evaluation request
    (its eval section); a final checkpoint without that is `partial` (the trainer then performs the missing
    evaluations from the kept checkpoints of their steps, training nothing).
    """
    store = Path(store)
    steps = job.config.train.steps
    ckpt = checkpoint_dir(store, job.config)
    log = job_dir(store, job) / LOG
    log = log if log.is_file() else None
    progress = progress_or_empty(ckpt)
    saved = list_checkpoints(ckpt)
    step = int(progress.get("step") or (saved[-1][0] if saved else 0))
    run_id, updated = progress.get("run_id"), progress.get("updated")
    holder = claims.holder(store, job.key)
    if claims.is_live(holder) and not claims.is_mine(holder):
        return JobStatus("running", step, steps, holder.describe(), log, run_id, updated)
    if progress.get("status") == "finished" and evaluated(progress, job.config):
        return JobStatus("finished", step, steps, None, log, run_id, updated)
    if progress.get("status") == "finished":  # trained, but not evaluated as this job asks: the trainer does it
        return JobStatus("partial", step, steps, "evaluation under this spec's protocol missing", log, run_id,
                         updated)
    record = read_record(store, job) or {}
    if record.get("state") == "failed" and record.get("ended", 0) >= (updated or 0):
        return JobStatus("failed", step, steps, record.get("reason"), log, run_id, record.get("ended"))
    if progress.get("status") == "failed":
        return JobStatus("failed", step, steps, progress.get("reason"), log, run_id, updated)
    state = "partial" if step > 0 or saved else "new"
    return JobStatus(state, step, steps, None, log, run_id, updated or record.get("ended"))
