"""One runner process's session: its store and tracking, its launcher, the claims it holds, and the
three steps every job goes through (fcdm.runner.run drives them for `run`, fcdm.runner.job_run for the
sweep's trials):

    begin(job)  look at the store, claim the job, start its trainer (or settle it: already finished,
                failed in another runner meanwhile)
    check(run)  poll it; once it ended: its outcome, its record, its claim released, its spec tagged
    discard(job) --force: checkpoints deleted, old MLflow runs soft-deleted

Decisions: `--force` soft-deletes the job's old MLflow run(s) (MLflow's "deleted" lifecycle: hidden,
restorable from the UI's trash or `MlflowClient().restore_run(id)`, purged by `mlflow gc`), so the
retrained job gets a new run rather than a second curve mixed into the old one. Work another runner
did while this session ran (a job finished or failed elsewhere) is reported, never redone. Every run
a session trains or skips carries the tag `fcdm.specs` = ",spec_a,spec_b," so the UI lists a shared
run under each spec (filter `tags."fcdm.specs" LIKE '%,kernel_size,%'`).
"""
from __future__ import annotations

import fcntl
import logging
import signal
import socket
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from fcdm.launchers import make_launcher
from fcdm.launchers.base import EXIT_HELD, Handle
from fcdm.runner.settle import discard_checkpoints, end_open_run
from fcdm.runner.summary import JobOutcome, failure_reason
from fcdm.spec.job import Job
from fcdm.store import claims
from fcdm.store.jobs import CONFIG, LOG, job_dir, job_status, write_record
from fcdm.store.layout import resolve_store, resolve_tracking_uri
from fcdm.store.lock import HELD_MESSAGE
from fcdm.store.tracking import TAG_HASH, TAG_SEED, TAG_SPECS, Tracker
from fcdm.store.trainlog import parse_tail, read_tail
from fcdm.util.files import atomic_write

HELD_ELSEWHERE = "held elsewhere: another trainer holds the run's lock; started again once it is free"


@dataclass
class RunningJob:
    """A job this session started and has not settled yet: what `Session.begin` returns and `Session.check`
    polls. `slot` is the concurrency slot it occupies (its CPU threads / GPUs), `interrupted` that it was
    asked to stop (or killed), `tagged` that its run carries this spec in `fcdm.specs`, `step` the newest
    step the store reported."""
    job: Job
    handle: Handle
    claim: claims.Claim
    started: float
    resumed_from: int | None
    slot: int = 0
    interrupted: bool = False
    tagged: bool = False
    step: int = 0


# -- one session: store, tracking, launcher, claims ------------------------------------------------------

class Session:
    """What run_jobs and run_one share: the store, tracking, the launcher and this process's claims."""

    def __init__(self, store=None, tracking_uri=None, launcher="local", launcher_options=None, force=False):
        self.store = resolve_store(store)
        self.uri = resolve_tracking_uri(self.store, tracking_uri)
        self.launcher = make_launcher(launcher, launcher_options)
        self.force = force
        self.t0 = time.time()
        self.heartbeat = claims.Heartbeat()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient  # heavy: only once a job is looked up in MLflow

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def prepare(self, jobs: list[Job]) -> None:
        """Create the tracking database and each experiment once, before any trainer starts: two
        processes creating the same new SQLite database (or experiment) at once fail."""
        from mlflow.exceptions import MlflowException  # heavy: mlflow only once jobs run

        names = sorted({j.config.log.experiment or j.config.name for j in jobs})
        quiet = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables..."
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with _store_lock(self.store) if self.uri.startswith("sqlite:") else nullcontext():
                tracker = Tracker(self.store, self.uri)
                self._client = tracker.client
                for name in names:
                    try:
                        tracker.experiment_id(name)
                    except MlflowException:  # created meanwhile by another runner on a tracking server
                        if tracker.client.get_experiment_by_name(name) is None:
                            raise
        finally:
            quiet.setLevel(level)

    def close(self) -> None:
        self.heartbeat.stop()
        self.launcher.close()

    # -- starting and finishing one job ------------------------------------------------------------------
    def begin(self, job: Job, env: dict[str, str], slot: int = 0) -> RunningJob | JobOutcome | None:
        """Claim and start `job`; a JobOutcome when there is nothing to train, None when another live
        process holds it (try again later)."""
        status = job_status(self.store, job)
        if status.state == "running":
            return None
        done = self._settled(job, status)
        if done is not None:
            return done
        claim = claims.try_claim(self.store, job.key, note=f"fcdm-ablate run {job.spec}")
        if isinstance(claim, claims.Holder):
            return None
        try:
            status = job_status(self.store, job)  # it may have finished between the look and the claim
            done = self._settled(job, status)
            if done is not None:
                claims.release(claim)
                return done
            if self.force and not self._fresh(status):
                self.discard(job)
                status = job_status(self.store, job)
            config = self._write_config(job)
            handle = self.launcher.start(job, config, job_dir(self.store, job) / LOG, self.store, self.uri,
                                         env, claim)
        except BaseException:
            claims.release(claim)
            raise
        self.heartbeat.add(claim)
        resumed = status.step if status.state in ("partial", "failed") and status.step > 0 else None
        return RunningJob(job, handle, claim, time.time(), resumed, slot, step=status.step)

    def _fresh(self, status) -> bool:
        """True when the job's newest record was written after this session began (another runner's work)."""
        return (status.updated or 0) >= self.t0

    def _settled(self, job: Job, status) -> JobOutcome | None:
        log = job_dir(self.store, job) / LOG
        if status.state == "finished" and not (self.force and not self._fresh(status)):
            self.tag_spec(job, status.run_id)
            return with_results(JobOutcome(job, "elsewhere" if self._fresh(status) else "skipped", status.step,
                                           log=log, run_id=status.run_id))
        if status.state == "failed" and self._fresh(status):
            return JobOutcome(job, "failed", status.step, reason=f"{status.reason} (in another runner)", log=log,
                              run_id=status.run_id)
        return None

    def check(self, r: RunningJob) -> JobOutcome | None:
        """None while `r` runs; its outcome once it ended (claim released, record written, spec tagged)."""
        if r.claim.lost and not r.interrupted:  # another runner took it over: it must not train twice
            r.interrupted = True
            r.handle.kill()
        code = r.handle.poll()
        status = job_status(self.store, r.job)
        r.step = max(r.step, status.step)
        if not r.tagged and status.run_id:
            r.tagged = self.tag_spec(r.job, status.run_id)
        if code is None:
            return None
        self.heartbeat.remove(r.claim)
        log = job_dir(self.store, r.job) / LOG
        outcome = JobOutcome(r.job, "failed", status.step, r.resumed_from, None, log, status.run_id, code,
                             time.time() - r.started)
        if code == 0 and status.state == "finished":
            outcome.state = "finished"
        elif r.claim.lost:
            outcome.state, outcome.reason = "stopped", "another runner took the job over"
        elif code == EXIT_HELD or (code > 0 and HELD_MESSAGE in failure_reason(code, log)):
            # Another trainer holds the run's lock (accelerate reports its rank's 75 as 1): it trained nothing.
            outcome.state, outcome.reason = "pending", HELD_ELSEWHERE
        elif r.interrupted or code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            outcome.state, outcome.reason = "stopped", "interrupted; its checkpoint resumes it"
        elif code == 0:  # e.g. an evaluation still due: the sidecar does not say finished
            outcome.reason = (f"the trainer exited at step {status.step}/{r.job.config.train.steps} without "
                              f"recording the run finished ({status.describe()}); see the log")
        else:
            outcome.reason = getattr(r.handle, "reason", None) or failure_reason(code, log)
        if not r.claim.lost and outcome.state not in ("finished", "pending"):  # the run's status must end true
            end_open_run(self.store, self.client, r.job, code, outcome.reason or "", status.run_id)
        if not r.claim.lost:
            write_record(self.store, r.job, state=outcome.state, exit_code=code, reason=outcome.reason,
                         log=str(log), host=socket.gethostname(), step=outcome.step)
            claims.release(r.claim)
        if outcome.run_id:
            self.tag_spec(r.job, outcome.run_id)
        return with_results(outcome)

    # -- store and MLflow helpers ------------------------------------------------------------------------
    def _write_config(self, job: Job) -> Path:
        """The job's config as the trainer reads it, with this spec added to its run's fcdm.specs tag."""
        tags = {**job.config.log.tags, TAG_SPECS: self._specs_value(job)}
        cfg = job.config.model_copy(update={"log": job.config.log.model_copy(update={"tags": tags})})
        return atomic_write(job_dir(self.store, job) / CONFIG, cfg.to_yaml())

    def _runs(self, job: Job):
        ids = [e.experiment_id for e in self.client.search_experiments()]
        flt = f"tags.`{TAG_HASH}` = '{job.hash}' and tags.`{TAG_SEED}` = '{job.seed}'"
        return self.client.search_runs(ids, filter_string=flt, order_by=["attributes.start_time DESC"]) if ids else []

    def _specs_value(self, job: Job, run=None) -> str:
        runs = [run] if run is not None else self._runs(job)[:1]
        current = runs[0].data.tags.get(TAG_SPECS, ",") if runs else ","
        return current if f",{job.spec}," in current else f"{current}{job.spec},"

    def tag_spec(self, job: Job, run_id: str | None) -> bool:
        """Add job.spec to the run's comma-wrapped fcdm.specs tag; False when the run is not found."""
        from mlflow.exceptions import MlflowException  # heavy: mlflow only once jobs run

        try:
            run = self.client.get_run(run_id) if run_id else (self._runs(job) or [None])[0]
        except MlflowException:
            run = None
        if run is None:
            return False
        value = self._specs_value(job, run)
        if value != run.data.tags.get(TAG_SPECS):
            self.client.set_tag(run.info.run_id, TAG_SPECS, value)
        return True

    def discard(self, job: Job) -> None:
        """--force: delete the job's checkpoints and record; soft-delete its MLflow run(s)."""
        discard_checkpoints(self.store, job)
        (job_dir(self.store, job) / "runner.json").unlink(missing_ok=True)
        for run in self._runs(job):
            self.client.delete_run(run.info.run_id)


def with_results(outcome: JobOutcome) -> JobOutcome:
    """The outcome with the job's last evaluation, read from its log (the trainer's own lines)."""
    if outcome.log is not None:
        live = parse_tail(read_tail(outcome.log))
        outcome.metrics, outcome.eval_step = live.metrics, live.eval_step
    return outcome


@contextmanager
def _store_lock(store: Path):
    """The store's `.tracking.lock`, held exclusively for the block (runners on one machine take turns)."""
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".tracking.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
