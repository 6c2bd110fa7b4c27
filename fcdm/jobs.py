"""A job: one run configuration of an ablation spec, at one seed, as the runner, `plan`, `sweep` and
`report` see it. A job's identity is its run's: (configuration hash, seed), never its name, so a
configuration shared by two specs is one run, trained once, and listed by both.

Also here: what the store says about a job (`job_status`: new | partial | finished | failed |
running elsewhere, read without torch or MLflow, so `plan` can call it for every job), where the
runner keeps a job's files (`<store>/jobs/<hash>-s<seed>/`: config.yaml, train.log, runner.json),
and how a job ended in one `run` (JobOutcome) with the run's summary (RunSummary).
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcdm.config import RunConfig

LOG, CONFIG, RECORD = "train.log", "config.yaml", "runner.json"


@dataclass(frozen=True)
class Job:
    spec: str  # the spec's name
    name: str  # "<spec>/<axis=value,...>" (variant first when the spec has variants)
    config: RunConfig  # fully resolved and validated; config.seed is the job's seed
    variant: str | None = None
    axes: dict[str, Any] = field(default_factory=dict)  # dotted key -> value that picked this job
    profile: str | None = None

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def hash(self) -> str:
        return self.config.hash

    @property
    def key(self) -> str:
        """'<hash>-s<seed>': the run's identity, and its folder name in the store."""
        from fcdm.tracking import run_key

        return run_key(self.config)


# -- where a job's files live, and what state it is in ----------------------------------------------

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
            return f"partial at step {self.step}/{self.steps}"
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
    d = job_dir(store, job)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{RECORD}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({**fields, "ended": time.time()}, indent=1, default=str))
    os.replace(tmp, d / RECORD)


def job_status(store: Path, job: Job) -> JobStatus:
    """The job's state from the store alone: its claim, progress sidecar, checkpoints and runner record.

    Cheap (no torch, no MLflow): `plan` calls it for every job. `finished` means the trainer recorded
    the run finished, every evaluation logged; a final checkpoint without that is `partial`.
    """
    from fcdm import claims
    from fcdm.checkpoint import CheckpointError, list_checkpoints, read_progress
    from fcdm.tracking import checkpoint_dir

    store = Path(store)
    steps = job.config.train.steps
    ckpt = checkpoint_dir(store, job.config)
    log = job_dir(store, job) / LOG
    log = log if log.is_file() else None
    try:
        progress = read_progress(ckpt) or {}
    except CheckpointError:
        progress = {}
    saved = list_checkpoints(ckpt)
    step = int(progress.get("step") or (saved[-1][0] if saved else 0))
    run_id, updated = progress.get("run_id"), progress.get("updated")
    holder = claims.holder(store, job.key)
    if claims.is_live(holder) and not claims.is_mine(holder):
        return JobStatus("running", step, steps, holder.describe(), log, run_id, updated)
    if progress.get("status") == "finished":
        return JobStatus("finished", step, steps, None, log, run_id, updated)
    record = read_record(store, job) or {}
    if record.get("state") == "failed" and record.get("ended", 0) >= (updated or 0):
        return JobStatus("failed", step, steps, record.get("reason"), log, run_id, record.get("ended"))
    if progress.get("status") == "failed":
        return JobStatus("failed", step, steps, progress.get("reason"), log, run_id, updated)
    state = "partial" if step > 0 or saved else "new"
    return JobStatus(state, step, steps, None, log, run_id, updated or record.get("ended"))


# -- how a job ended in one run, and the run's summary ----------------------------------------------

OUTCOMES = ("finished", "skipped", "elsewhere", "failed", "stopped", "pending")


@dataclass
class JobOutcome:
    """How one job ended in this invocation.

    state: finished (trained to the end here) | skipped (already finished) | elsewhere (finished by
    another runner meanwhile) | failed | stopped (interrupted; resumes from its checkpoint) | pending
    (never started: the run was stopped first)."""
    job: Job
    state: str
    step: int = 0
    resumed_from: int | None = None  # the checkpoint step a resumed job started from
    reason: str | None = None
    log: Path | None = None
    run_id: str | None = None
    exit_code: int | None = None
    seconds: float = 0.0


@dataclass
class RunSummary:
    outcomes: list[JobOutcome]
    seconds: float
    interrupted: bool = False

    def of(self, state: str) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.state == state]

    @property
    def ok(self) -> bool:
        """No job failed and nothing was left undone."""
        return not self.interrupted and all(o.state in ("finished", "skipped", "elsewhere") for o in self.outcomes)

    def render(self) -> str:
        """The end-of-run summary: counts, then one line per failed or unfinished job."""
        n = len(self.outcomes)
        if n and len(self.of("skipped")) == n:
            return f"all {n} jobs already finished; nothing to train (--force retrains them)"
        resumed = sum(o.resumed_from is not None for o in self.of("finished"))
        counts = [f"{len(self.of(s))} {label}" + (f" ({resumed} resumed)" if s == "finished" and resumed else "")
                  for s, label in (("finished", "finished"), ("skipped", "skipped (already finished)"),
                                   ("elsewhere", "finished by another runner"), ("failed", "failed"),
                                   ("stopped", "stopped (resume by rerunning)"), ("pending", "not started"))
                  if self.of(s)]
        lines = [f"{len(self.outcomes)} jobs in {clock(self.seconds)}: {', '.join(counts)}"]
        for o in self.of("failed"):
            lines.append(f"  FAILED  {o.job.name} at step {o.step}: {o.reason or 'see the log'}  (log: {o.log})")
        for o in self.of("stopped"):
            lines.append(f"  stopped {o.job.name} at step {o.step}/{o.job.config.train.steps}  (log: {o.log})")
        return "\n".join(lines)


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def failure_reason(code: int, log: Path) -> str:
    """Why a trainer failed: its 'error:' line, else the last traceback line, else the exit status."""
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"exit code {code}"
    lines = [ln.strip() for ln in text.split("\n=== ")[-1].splitlines()[1:] if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    return f"exit code {code}: {lines[-1][:300]}" if lines else f"exit code {code}"


def outcome_line(o: JobOutcome) -> str:
    if o.state == "finished":
        how = f" (resumed from step {o.resumed_from})" if o.resumed_from else ""
        return f"  finished {o.job.name} in {clock(o.seconds)}{how}"
    if o.state == "skipped":
        return f"  skipped {o.job.name}: already finished"
    if o.state == "elsewhere":
        return f"  {o.job.name}: finished by another runner"
    if o.state == "stopped":
        return f"  stopped {o.job.name} at step {o.step}: {o.reason}"
    return f"  FAILED {o.job.name} at step {o.step}: {o.reason} (log: {o.log})"
