"""The job runner behind `fcdm-ablate run`: train a spec's jobs, each in its own process, skipping
finished ones, resuming partial ones, sharing the work with other runners on the same store.

    from fcdm.spec import expand
    from fcdm.runner import run_jobs
    summary = run_jobs(expand("ablations/kernel_size.yaml"), parallel=2)   # what `run` does
    summary.ok, summary.render()

A job is claimed (fcdm/claims.py) before it starts, so several runners (two terminals, or N nodes
on a shared filesystem with one tracking server) split the jobs and none is trained twice at once;
a runner waits for jobs other runners hold and takes over any whose holder dies. Each job's config
and training log live in `<store>/jobs/<hash>-s<seed>/` (config.yaml, train.log, runner.json).

Decisions: `--force` deletes the job's checkpoints and soft-deletes its old MLflow run(s) (MLflow's
"deleted" lifecycle: hidden, restorable from the UI's trash or `MlflowClient().restore_run(id)`,
purged by `mlflow gc`), so the retrained job gets a new run rather than a second curve mixed into
the old one. Work done by another runner while this one runs (a job finished or failed elsewhere)
is reported, never redone. Every run the runner trains or skips carries the tag
`fcdm.specs` = ",spec_a,spec_b," so the UI lists a shared run under each spec
(filter `tags."fcdm.specs" LIKE '%,kernel_size,%'`).
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import claims
from .jobs import (CONFIG, LOG, OUTCOMES, Job, JobOutcome, RunSummary, failure_reason, job_dir, job_status,
                   outcome_line, write_record)
from .launchers import (EXIT_CLAIM_LOST, Handle, LauncherError, cpu_count, default_parallel, detect_gpus,
                        make_launcher, slot_env)
from .tracking import TAG_HASH, TAG_SEED, checkpoint_dir, resolve_store, resolve_tracking_uri

TAG_SPECS = "fcdm.specs"


@dataclass
class _Running:
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
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def prepare(self, jobs: list[Job]) -> None:
        """Create the tracking database and each experiment once, before any trainer starts: two
        processes creating the same new SQLite database (or experiment) at once fail (DESIGN.md 5)."""
        from mlflow.exceptions import MlflowException

        from .tracking import Tracker

        names = sorted({j.config.log.experiment or j.config.name for j in jobs})
        quiet = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables..."
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        with _store_lock(self.store) if self.uri.startswith("sqlite:") else _nothing():
            tracker = Tracker(self.store, self.uri)
            self._client = tracker.client
            for name in names:
                try:
                    tracker.experiment_id(name)
                except MlflowException:  # created meanwhile by another runner on a tracking server
                    if tracker.client.get_experiment_by_name(name) is None:
                        raise
        quiet.setLevel(level)

    def close(self) -> None:
        self.heartbeat.stop()

    # -- starting and finishing one job ------------------------------------------------------------------
    def begin(self, job: Job, env: dict[str, str], slot: int = 0) -> _Running | JobOutcome | None:
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
        return _Running(job, handle, claim, time.time(), resumed, slot, step=status.step)

    def _fresh(self, status) -> bool:
        """True when the job's newest record was written after this session began (another runner's work)."""
        return (status.updated or 0) >= self.t0

    def _settled(self, job: Job, status) -> JobOutcome | None:
        log = job_dir(self.store, job) / LOG
        if status.state == "finished" and not (self.force and not self._fresh(status)):
            self.tag_spec(job, status.run_id)
            return JobOutcome(job, "elsewhere" if self._fresh(status) else "skipped", status.step,
                              log=log, run_id=status.run_id)
        if status.state == "failed" and self._fresh(status):
            return JobOutcome(job, "failed", status.step, reason=f"{status.reason} (in another runner)", log=log,
                              run_id=status.run_id)
        return None

    def check(self, r: _Running) -> JobOutcome | None:
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
        elif r.claim.lost or code == EXIT_CLAIM_LOST:
            outcome.state, outcome.reason = "stopped", "another runner took the job over"
        elif r.interrupted or code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            outcome.state, outcome.reason = "stopped", "interrupted; its checkpoint resumes it"
        else:
            outcome.reason = getattr(r.handle, "reason", None) or failure_reason(code, log)
        if not r.claim.lost:
            write_record(self.store, r.job, state=outcome.state, exit_code=code, reason=outcome.reason,
                         log=str(log), host=socket.gethostname(), step=outcome.step)
            claims.release(r.claim)
        if outcome.run_id:
            self.tag_spec(r.job, outcome.run_id)
        return outcome

    # -- store and MLflow helpers ------------------------------------------------------------------------
    def _write_config(self, job: Job) -> Path:
        """The job's config as the trainer reads it, with this spec added to its run's fcdm.specs tag."""
        tags = {**job.config.log.tags, TAG_SPECS: self._specs_value(job)}
        cfg = job.config.model_copy(update={"log": job.config.log.model_copy(update={"tags": tags})})
        d = job_dir(self.store, job)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{CONFIG}.{os.getpid()}.tmp"
        tmp.write_text(cfg.to_yaml())
        os.replace(tmp, d / CONFIG)
        return d / CONFIG

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
        from mlflow.exceptions import MlflowException

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
        shutil.rmtree(checkpoint_dir(self.store, job.config), ignore_errors=True)
        (job_dir(self.store, job) / "runner.json").unlink(missing_ok=True)
        for run in self._runs(job):
            self.client.delete_run(run.info.run_id)


@contextmanager
def _store_lock(store: Path):
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".tracking.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def _nothing():
    yield


# -- public entry points --------------------------------------------------------------------------------

class JobRun:
    """One job through the runner without blocking (the sweep drives several): `poll()` claims and
    starts it (None while another runner holds it), then reports its JobOutcome once it ended.

        run = JobRun(job, store); run.poll(); run.progress(); run.interrupt(); outcome = run.wait()

    Call poll() from a thread that lives until the job ends (see launchers.spawn)."""

    def __init__(self, job: Job, store=None, tracking_uri=None, launcher: str = "local", launcher_options=None,
                 env: dict[str, str] | None = None, force: bool = False):
        self.job, self.env = job, dict(env or {})
        self.session = Session(store, tracking_uri, launcher, launcher_options, force)
        self.running: _Running | None = None
        self.outcome: JobOutcome | None = None
        try:
            self.session.prepare([job])
        except BaseException:
            self.session.close()
            raise

    def poll(self) -> JobOutcome | None:
        if self.outcome is None:
            if self.running is None:
                started = self.session.begin(self.job, self.env)
                if isinstance(started, JobOutcome):
                    self._end(started)
                self.running = started if isinstance(started, _Running) else None
            if self.running is not None and (out := self.session.check(self.running)) is not None:
                self._end(out)
        return self.outcome

    def progress(self) -> dict:
        """The job's progress sidecar (step, steps, evals_done, run_id, ...), {} before its first checkpoint."""
        from .checkpoint import CheckpointError, read_progress

        try:
            return read_progress(checkpoint_dir(self.session.store, self.job.config)) or {}
        except CheckpointError:
            return {}

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


def run_jobs(jobs: list[Job], store=None, tracking_uri=None, *, parallel: int | None = None,
             launcher: str = "local", launcher_options=None, force: bool = False, fail_fast: bool = False,
             progress: bool = True, wait_elsewhere: bool = True, poll_s: float = 0.5) -> RunSummary:
    """Run every job: `parallel` at once (default one per GPU, else one per CPU core; Slurm: all),
    each with its share of CPU threads or its own GPU(s). Skips finished jobs, resumes partial ones,
    continues past failures unless `fail_fast`. SIGINT/SIGTERM (Ctrl-C) interrupt the running jobs,
    which checkpoint; a second one kills them. `wait_elsewhere`: wait for jobs other runners hold
    (taking over any whose runner dies) so the summary covers every job."""
    unique = list({j.key: j for j in reversed(jobs)}.values())[::-1]  # first occurrence wins
    if parallel is not None and parallel < 1:
        raise LauncherError(f"--jobs {parallel}: must be at least 1")
    gpus, cpus = detect_gpus(), cpu_count()
    if parallel is None:
        parallel = len(unique) if launcher == "slurm" else default_parallel(gpus, cpus, len(unique))
    session = Session(store, tracking_uri, launcher, launcher_options, force)
    pending, running, outcomes, free = list(unique), [], {}, list(range(parallel))
    stop, handlers = {"n": 0, "signals": 0}, {}
    title = unique[0].spec if unique else "run"
    profiles = sorted({j.profile for j in unique if j.profile})
    from .live import LiveView, Row

    t0, last_scan, dirty = time.time(), 0.0, True
    try:
        session.launcher.check(unique)
        procs = session.launcher.processes_per_job()
        envs = [{} if launcher == "slurm" else slot_env(i, parallel, gpus, cpus, procs) for i in range(parallel)]
        session.prepare(unique)
        handlers = _install_handlers(stop)
        view_steps = sum(j.config.train.steps for j in unique)
        with LiveView(title, len(unique), view_steps, progress) as view:
            view.event(f"{title}{' (profile ' + ', '.join(profiles) + ')' if profiles else ''}: {len(unique)} jobs, "
                       f"{parallel} at a time ({launcher} launcher"
                       f"{', GPUs ' + ','.join(gpus) if gpus and launcher != 'slurm' else ''}); logs in "
                       f"{session.store / 'jobs'}")
            stopping = 0
            while pending or running:
                if stop["n"] > stopping:  # Ctrl-C: first interrupt (checkpoint), then kill
                    stopping = stop["n"]
                    for r in running:
                        r.interrupted = True
                        (r.handle.interrupt if stopping == 1 else r.handle.kill)()
                    if running:
                        view.event(f"stopping: {len(running)} running job(s) checkpoint and stop"
                                   + (" (Ctrl-C again to kill them now)" if stopping == 1 else ""))
                    for j in pending:
                        outcomes[j.key] = JobOutcome(j, "pending")
                    pending = []
                # Look for startable jobs when a slot frees up, and every 2 s for jobs held elsewhere.
                if pending and free and (dirty or time.time() - last_scan >= 2.0):
                    last_scan, dirty = time.time(), False
                    for job in list(pending):
                        if not free:
                            break
                        started = session.begin(job, envs[free[0]], free[0])
                        if started is None:
                            continue  # held by another runner: look again later
                        pending.remove(job)
                        if isinstance(started, JobOutcome):
                            outcomes[job.key] = started
                            view.event(outcome_line(started))
                            continue
                        free.pop(0)
                        running.append(started)
                        what = f"resuming at step {started.resumed_from}" if started.resumed_from else "starting"
                        view.event(f"  {what} {job.name} ({started.handle.describe}, "
                                   f"log {job_dir(session.store, job) / LOG})")
                for r in list(running):
                    outcome = session.check(r)
                    if outcome is None:
                        continue
                    running.remove(r)
                    free.append(r.slot)
                    free.sort()
                    dirty = True
                    outcomes[r.job.key] = outcome
                    view.event(outcome_line(outcome))
                    if outcome.state == "failed" and fail_fast and not stop["n"]:
                        view.event("--fail-fast: stopping the other jobs")
                        stop["n"] = 1
                if pending and not running and not wait_elsewhere:
                    for j in pending:  # every one left is held by another runner
                        outcomes[j.key] = JobOutcome(j, "pending", reason="held by another runner")
                    pending = []
                note = (f"waiting for {len(pending)} job(s) held by other runners" if pending and not running
                        else f"{len(pending)} queued" if pending else "")
                view.update([Row(r.job.name, r.step, r.job.config.train.steps, r.started, r.handle.describe)
                             for r in running], _counts(outcomes), _steps_done(unique, outcomes, running), note)
                if running or pending:
                    time.sleep(poll_s)
    finally:
        for r in running:  # an exception in the loop itself: do not leave trainers behind
            r.handle.kill()
            claims.release(r.claim)
        session.close()
        _restore_handlers(handlers)
    ordered = [outcomes[j.key] for j in unique if j.key in outcomes]
    return RunSummary(ordered, time.time() - t0, interrupted=stop["signals"] > 0)


def _counts(outcomes: dict[str, JobOutcome]) -> dict[str, int]:
    counts = {s: 0 for s in OUTCOMES}
    for o in outcomes.values():
        counts[o.state] += 1
    return counts


def _steps_done(jobs: list[Job], outcomes: dict[str, JobOutcome], running: list[_Running]) -> int:
    now = {r.job.key: r.step for r in running}
    return sum(j.config.train.steps if outcomes.get(j.key) and outcomes[j.key].state in ("finished", "skipped",
               "elsewhere") else (outcomes[j.key].step if j.key in outcomes else now.get(j.key, 0)) for j in jobs)


def _install_handlers(stop: dict) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        stop["n"] += 1
        stop["signals"] += 1
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


def _restore_handlers(handlers: dict) -> None:
    for s, h in handlers.items():
        signal.signal(s, h)
