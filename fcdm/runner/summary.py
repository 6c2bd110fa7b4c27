"""How each job ended in one `run` (JobOutcome), the run's summary (RunSummary: counts, then a small
table of each job with its seed, status, time and final metric), and the one-line descriptions the live
view prints. Jobs are named by `Job.label` ('kernel_size=3 s0')."""
from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from fcdm.spec.job import Job

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
    metrics: dict[str, float] | None = None  # the job's last evaluation, from its log
    eval_step: int | None = None  # the step of that evaluation


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
        """The end-of-run summary: counts, a table of the jobs, then one line per failed or unfinished job."""
        n = len(self.outcomes)
        if n and len(self.of("skipped")) == n:
            return f"all {n} jobs already finished; nothing to train (--force retrains them)\n{self.table()}"
        resumed = sum(o.resumed_from is not None for o in self.of("finished"))
        counts = [f"{len(self.of(s))} {label}" + (f" ({resumed} resumed)" if s == "finished" and resumed else "")
                  for s, label in (("finished", "finished"), ("skipped", "skipped (already finished)"),
                                   ("elsewhere", "finished by another runner"), ("failed", "failed"),
                                   ("stopped", "stopped (resume by rerunning)"), ("pending", "not started"))
                  if self.of(s)]
        lines = [f"{len(self.outcomes)} jobs in {clock(self.seconds)}: {', '.join(counts)}", self.table()]
        for o in self.of("failed"):
            lines.append(f"  FAILED  {o.job.label} at step {o.step}: {o.reason or 'see the log'}  (log: {o.log})")
        for o in self.of("stopped"):
            lines.append(f"  stopped {o.job.label} at step {o.step}/{o.job.config.train.steps}  (log: {o.log})")
        return "\n".join(lines)

    def table(self) -> str:
        """Each job (its name without the spec), its seed, status, time here and final metric, aligned."""
        rows = [("job", "seed", "status", "time", "final metric")]
        for o in self.outcomes:
            status = o.state + (f" (resumed at {o.resumed_from})" if o.resumed_from and o.state == "finished" else "")
            metric = final_metric(o)
            rows.append((o.job.name.split("/", 1)[-1] or o.job.name, str(o.job.seed), status,
                         clock(o.seconds) if o.seconds else "-", metric))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  " + "  ".join(c.rjust(w) if i == 1 else c.ljust(w) for i, (c, w) in
                                           enumerate(zip(r, widths))).rstrip() for r in rows)


def final_metric(o: JobOutcome) -> str:
    """'fid 0.4848 at step 300' (FID when it was measured, else the first metric), or '-'."""
    if not o.metrics:
        return "-"
    key = "fid" if "fid" in o.metrics else next(iter(o.metrics))
    return f"{key} {o.metrics[key]:.4g} at step {o.eval_step}"


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
        result = f": {final_metric(o)}" if o.metrics else ""
        return f"  finished {o.job.label} in {clock(o.seconds)}{how}{result}"
    if o.state == "skipped":
        return f"  skipped {o.job.label}: already finished"
    if o.state == "elsewhere":
        return f"  {o.job.label}: finished by another runner"
    if o.state == "stopped":
        return f"  stopped {o.job.label} at step {o.step}: {o.reason}"
    return f"  FAILED {o.job.label} at step {o.step}: {o.reason} (log: {o.log})"
