"""One job through the runner: `JobRun` (non-blocking, what the sweep drives) and `run_one` (blocking)."""
from __future__ import annotations

import time
from collections.abc import Callable

from fcdm.runner.session import RunningJob, Session
from fcdm.runner.summary import JobOutcome
from fcdm.spec.job import Job
from fcdm.store.layout import checkpoint_dir
from fcdm.store.lock import trainer_lock_held
from fcdm.store.progress import progress_or_empty


class JobRun:
    """One job through the runner without blocking (the sweep drives several): `poll()` claims and
    starts it (None while another runner holds it), then reports its JobOutcome once it ended.

        run = JobRun(job, store); run.poll(); run.progress(); run.interrupt(); outcome = run.wait()

    Call poll() from a thread that lives until the job ends (see fcdm.util.process.spawn)."""

    def __init__(self, job: Job, store=None, tracking_uri=None, launcher: str = "local", launcher_options=None,
                 env: dict[str, str] | None = None, force: bool = False):
        self.job, self.env = job, dict(env or {})
        self.session = Session(store, tracking_uri, launcher, launcher_options, force)
        self.running: RunningJob | None = None
        self.outcome: JobOutcome | None = None
        try:
            self.session.prepare([job])
        except BaseException:
            self.session.close()
            raise

    def poll(self) -> JobOutcome | None:
        if self.outcome is None:
            if self.running is None:
                if trainer_lock_held(checkpoint_dir(self.session.store, self.job.config)):
                    return None  # another trainer still runs it: look again at the next poll
                started = self.session.begin(self.job, self.env)
                if isinstance(started, JobOutcome):
                    self._end(started)
                self.running = started if isinstance(started, RunningJob) else None
            if self.running is not None and (out := self.session.check(self.running)) is not None:
                if out.state == "pending" and not self.running.interrupted:  # held elsewhere: start it again later
                    self.running = None
                    return None
                self._end(out)
        return self.outcome

    def progress(self) -> dict:
        """The job's progress sidecar (step, steps, evals_done, run_id, ...), {} before its first checkpoint."""
        return progress_or_empty(checkpoint_dir(self.session.store, self.job.config))

    def interrupt(self) -> None:
        """Ask the trainer to checkpoint and stop (outcome 'stopped'); a job not started yet never starts."""
        if self.running is not None:
            self.running.interrupted = True
            self.running.handle.interrupt()
        elif self.outcome is None:
            self._end(JobOutcome(self.job, "pending", reason="interrupted before it started"))

    def kill(self) -> None:
        if self.running is not None:
            self.running.interrupted = True
            self.running.handle.kill()

    def wait(self, poll_s: float = 1.0, should_stop: Callable[[dict], bool] | None = None) -> JobOutcome:
        """Block until the job ends; `should_stop(progress)` returning True interrupts it (pruning)."""
        while self.poll() is None:
            if should_stop is not None and self.running is not None and not self.running.interrupted \
                    and should_stop(self.progress()):
                self.interrupt()
            time.sleep(poll_s)
        return self.outcome

    def abandon(self, grace_s: float = 120.0) -> None:
        """Stop now (Ctrl-C, an error in the caller): the trainer checkpoints within `grace_s` or is killed."""
        self.interrupt()
        deadline = time.time() + grace_s
        while self.poll() is None:
            if time.time() > deadline:
                self.kill()
            time.sleep(0.2)

    def _end(self, outcome: JobOutcome) -> None:
        self.outcome = outcome
        self.session.close()


def run_one(job: Job, store=None, tracking_uri=None, launcher: str = "local", launcher_options=None,
            env: dict[str, str] | None = None, force: bool = False,
            should_stop: Callable[[dict], bool] | None = None, poll_s: float = 1.0) -> JobOutcome:
    """Train ONE job in its own process and wait for it. Claims it first (waits while another runner
    holds it); 'skipped' when already finished, 'elsewhere' / 'failed' when another runner settled it
    meanwhile. `should_stop(progress)` is called every `poll_s` with the progress sidecar; True
    interrupts the trainer (it checkpoints) and the outcome is 'stopped'."""
    run = JobRun(job, store, tracking_uri, launcher, launcher_options, env, force)
    try:
        return run.wait(poll_s, should_stop)
    finally:
        if run.outcome is None:  # KeyboardInterrupt or an error while waiting: leave no trainer behind
            run.abandon()
