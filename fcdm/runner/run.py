"""The job runner behind `fcdm-ablate run`: train a spec's jobs, each in its own process, skipping
finished ones, resuming partial ones, sharing the work with other runners on the same store.

    from fcdm.spec import expand
    from fcdm.runner import run_jobs
    summary = run_jobs(expand("ablations/kernel_size.yaml"), parallel=2)   # what `run` does
    summary.ok, summary.render()

A job is claimed (fcdm.store.claims) before it starts, so several runners (two terminals, or N nodes
on a shared filesystem with one tracking server) split the jobs and none is trained twice at once;
a runner waits for jobs other runners hold and takes over any whose holder dies. Each job's config
and training log live in `<store>/jobs/<hash>-s<seed>/` (config.yaml, train.log, runner.json).

What each job goes through (claim, start, poll, record, tag) is fcdm.runner.session; this module
schedules: slots, the live view, Ctrl-C, --fail-fast, waiting for jobs other runners hold.

Scheduling (README, "Running specs"): jobs start longest first by the plan's cost model, corrected by
rates the store measured (fcdm.runner.estimate), so the long ones never end alone. On a machine without
GPUs and the local launcher, once nothing is left to start, the cores of finished jobs go to the jobs
still running (fcdm.launchers.resources.hand_over_threads), which take them up at their next log
interval (fcdm.train.threads): no core idles while work remains.
"""
from __future__ import annotations

import signal
import time

from fcdm.launchers import LauncherError
from fcdm.launchers.resources import IdleMeter, cpu_count, default_parallel, detect_gpus, hand_over_threads, slot_envs
from fcdm.runner.estimate import longest_first, measured_rate, remaining_work, seconds_left
from fcdm.runner.live import LiveView, Row
from fcdm.runner.session import RunningJob, Session
from fcdm.runner.summary import OUTCOMES, JobOutcome, RunSummary, outcome_line
from fcdm.spec.job import Job
from fcdm.store import claims
from fcdm.store.jobs import LOG, job_dir, job_status
from fcdm.store.layout import checkpoint_dir
from fcdm.store.lock import trainer_lock_held
from fcdm.store.trainlog import THREADS, THREADS_ENV, parse_tail, read_tail
from fcdm.util.files import atomic_write
from fcdm.util.signals import handled_signals

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # the first checkpoints the jobs, the next kills them
SCAN_S = 2.0  # how often to look again for startable jobs while none ended (jobs held by other runners)


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
    # Threads handed over at the end of a spec: CPU-only machines, one local process per job.
    schedule = Schedule(session, unique, parallel, fail_fast, wait_elsewhere,
                        cpus=cpus if launcher == "local" and not gpus else None)
    t0 = time.time()
    try:
        if schedule.cpus:  # trainers forked from one process that imported their libraries once, meanwhile
            session.launcher.use_fork_server(session.store, now=schedule.work_left())
        session.launcher.check(unique)
        envs = slot_envs(parallel, gpus, cpus, session.launcher.processes_per_job(), cluster=launcher == "slurm")
        session.prepare(unique)
        with handled_signals(schedule.on_signal, STOP_SIGNALS):
            try:
                with LiveView(schedule.title, len(unique), sum(j.config.train.steps for j in unique),
                              progress) as view:
                    view.event(_header(schedule, launcher, gpus))
                    schedule.run(view, envs, poll_s)
            finally:
                schedule.abandon()  # an exception in the loop itself: do not leave trainers behind
    finally:
        session.close()
    return RunSummary(schedule.ordered(), time.time() - t0, interrupted=schedule.signals > 0)


def _header(schedule: Schedule, launcher: str, gpus: list[str]) -> str:
    """The first line of a run: the spec, its profiles, how many jobs, how many at a time, where the logs go."""
    jobs = schedule.jobs
    profiles = sorted({j.profile for j in jobs if j.profile})
    return (f"{schedule.title}{' (profile ' + ', '.join(profiles) + ')' if profiles else ''}: {len(jobs)} jobs, "
            f"{schedule.parallel} at a time, longest first ({launcher} launcher"
            f"{', GPUs ' + ','.join(gpus) if gpus and launcher != 'slurm' else ''}"
            f"{f'; {schedule.cpus} cores, handed to the last jobs as others end' if schedule.cpus else ''}); "
            f"logs in {schedule.session.store / 'jobs'}")


class Schedule:
    """The state of one `run_jobs` call: jobs pending, running (each in a slot) and settled, and the stop
    requests (signals, --fail-fast). `run` loops until no job is pending or running."""

    def __init__(self, session: Session, jobs: list[Job], parallel: int, fail_fast: bool, wait_elsewhere: bool,
                 cpus: int | None = None):
        self.session, self.jobs, self.parallel = session, jobs, parallel
        self.fail_fast, self.wait_elsewhere = fail_fast, wait_elsewhere
        self.cpus = cpus  # cores to hand over as jobs end (None: each slot keeps its resources)
        self.title = jobs[0].spec if jobs else "run"
        self.works = self._estimate(jobs)
        self.pending: list[Job] = longest_first(jobs, self.works)
        self.threads: dict[str, int] = {}  # running job -> its CPU threads (when handing over)
        self.meter = IdleMeter(cpus) if cpus else None
        self.running: list[RunningJob] = []
        self.outcomes: dict[str, JobOutcome] = {}
        self.free = list(range(parallel))  # the concurrency slots no job occupies
        self.stops = 0  # stop requests: signals, and --fail-fast's one
        self.signals = 0  # signals received
        self._stopping = 0  # stop requests acted on
        self._dirty, self._last_scan = True, 0.0  # a slot freed up; when startable jobs were last looked for

    def on_signal(self, signum: int) -> None:
        self.stops += 1
        self.signals += 1

    def _estimate(self, jobs: list[Job]) -> dict:
        """Each job's work left (fcdm.runner.estimate), with the rate a job of the same configuration logged."""
        store = self.session.store
        rates = {}
        for j in jobs:
            if rates.get(j.hash) is None:
                rates[j.hash] = measured_rate(store, j)
        return {j.key: remaining_work(j, job_status(store, j).step, rates[j.hash]) for j in jobs}

    def work_left(self) -> bool:
        """Whether any job has something left to train (a rerun of a finished spec starts nothing)."""
        return any(w.gflop > 0 for w in self.works.values())

    def ordered(self) -> list[JobOutcome]:
        """The outcomes in the jobs' order."""
        return [self.outcomes[j.key] for j in self.jobs if j.key in self.outcomes]

    def run(self, view: LiveView, envs: list[dict[str, str]], poll_s: float) -> None:
        while self.pending or self.running:
            if self.stops > self._stopping:
                self._stop(view)
            # Look for startable jobs when a slot frees up, and every SCAN_S for jobs held elsewhere.
            if self.pending and self.free and (self._dirty or time.time() - self._last_scan >= SCAN_S):
                self._last_scan, self._dirty = time.time(), False
                self._start(view, envs)
            self._collect(view)
            self._hand_over(view)
            if self.pending and not self.running and not self.wait_elsewhere:
                for j in self.pending:  # every one left is held by another runner
                    self.outcomes[j.key] = JobOutcome(j, "pending", reason="held by another runner")
                self.pending = []
            self._show(view)
            if self.running or self.pending:
                time.sleep(poll_s)

    def _stop(self, view: LiveView) -> None:
        """Ctrl-C (or --fail-fast): the first request interrupts the running jobs (they checkpoint), the
        next kills them; pending jobs never start."""
        self._stopping = self.stops
        for r in self.running:
            r.interrupted = True
            (r.handle.interrupt if self._stopping == 1 else r.handle.kill)()
        if self.running:
            view.event(f"stopping: {len(self.running)} running job(s) checkpoint and stop"
                       + (" (Ctrl-C again to kill them now)" if self._stopping == 1 else ""))
        for j in self.pending:
            self.outcomes[j.key] = JobOutcome(j, "pending")
        self.pending = []

    def _start(self, view: LiveView, envs: list[dict[str, str]]) -> None:
        """Start pending jobs in the free slots; settle those with nothing to train; skip those held elsewhere."""
        for job in list(self.pending):
            if not self.free:
                break
            if trainer_lock_held(checkpoint_dir(self.session.store, job.config)):
                continue  # its trainer (of a dead runner, or another machine's) still runs: look again later
            env = self._threads_env(job, envs[self.free[0]])
            started = self.session.begin(job, env, self.free[0])
            if started is None:
                continue  # held by another runner: look again later
            self.pending.remove(job)
            if isinstance(started, JobOutcome):
                self.outcomes[job.key] = started
                view.event(outcome_line(started))
                continue
            self.free.pop(0)
            self.running.append(started)
            if self.cpus:
                self.threads[job.key] = int(env["OMP_NUM_THREADS"])
            what = f"resuming at step {started.resumed_from}" if started.resumed_from else "starting"
            threads = f", {env['OMP_NUM_THREADS']} thread(s)" if "OMP_NUM_THREADS" in env else ""
            view.event(f"  {what} {job.label} ({started.handle.describe}{threads}, "
                       f"log {job_dir(self.session.store, job) / LOG})")

    # -- CPU threads ---------------------------------------------------------------------------------------

    def _threads_env(self, job: Job, env: dict[str, str]) -> dict[str, str]:
        """The slot's environment; when handing over threads, the job's thread count (a share of the free
        cores if it is the last to start) and the file through which it takes more."""
        if not self.cpus:
            return env
        threads = int(env.get("OMP_NUM_THREADS", "1"))
        if self.pending == [job]:  # the last to start: the cores nobody uses are its from the first step
            left = self._seconds_left()
            left[job.key] = seconds_left(self.works)[job.key]
            spare = self._spare(extra=threads)
            threads = hand_over_threads(spare, {**self.threads, job.key: threads}, left)[job.key]
        path = job_dir(self.session.store, job) / THREADS
        atomic_write(path, str(threads))
        return {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), THREADS_ENV: str(path)}

    def _seconds_left(self) -> dict[str, float]:
        """Each running job's estimated seconds left, from its log's newest step and rate."""
        works = {}
        for r in self.running:
            live = parse_tail(read_tail(job_dir(self.session.store, r.job) / LOG))
            works[r.job.key] = remaining_work(r.job, max(r.step, live.step or 0), live.rate)
        return seconds_left(works)

    def _spare(self, extra: int = 0) -> int:
        """Cores neither this runner's jobs (and `extra` threads about to start) nor anything else use."""
        unused = self.cpus - sum(self.threads.values()) - extra
        return min(unused, round(self.meter.idle_cores()) - extra) if unused > 0 else 0

    def _hand_over(self, view: LiveView) -> None:
        """Once nothing is left to start, the cores no job uses go to the jobs that would end last."""
        if not self.cpus or self.pending or not self.running or self.stops:
            return
        spare = self._spare()
        if spare <= 0:
            return
        now = hand_over_threads(spare, self.threads, self._seconds_left())
        for r in self.running:
            old, new = self.threads[r.job.key], now[r.job.key]
            if new != old:
                atomic_write(job_dir(self.session.store, r.job) / THREADS, str(new))
                self.threads[r.job.key] = new
                view.event(f"  {r.job.label}: {old} -> {new} threads (a core is free and nothing is left to start)")

    def _collect(self, view: LiveView) -> None:
        """Settle the running jobs that ended and free their slots; --fail-fast stops the rest at a failure."""
        for r in list(self.running):
            outcome = self.session.check(r)
            if outcome is None:
                continue
            self.running.remove(r)
            self.threads.pop(r.job.key, None)
            self.free.append(r.slot)
            self.free.sort()
            self._dirty = True
            if outcome.state == "pending" and not self.stops:  # held elsewhere (its lock): start it again later
                self.pending.append(r.job)
                view.event(f"  {r.job.label}: {outcome.reason}")
                continue
            self.outcomes[r.job.key] = outcome
            view.event(outcome_line(outcome))
            if outcome.state == "failed" and self.fail_fast and not self.stops:
                view.event("--fail-fast: stopping the other jobs")
                self.stops = 1

    def _show(self, view: LiveView) -> None:
        note = (f"waiting for {len(self.pending)} job(s) held by other runners" if self.pending and not self.running
                else f"{len(self.pending)} queued" if self.pending else "")
        rows = []
        for r in self.running:  # where each stands, from the newest lines of its log
            live = parse_tail(read_tail(job_dir(self.session.store, r.job) / LOG))
            r.step = max(r.step, live.step or 0)
            eta = remaining_work(r.job, r.step, live.rate).seconds if live.rate else None
            last = f"{_first_metric(live.metrics)} @{live.eval_step}" if live.metrics else ""
            rows.append(Row(r.job.label, r.step, r.job.config.train.steps, r.started, r.handle.describe, eta, last,
                            self.threads.get(r.job.key)))
        view.update(rows, _counts(self.outcomes), _steps_done(self.jobs, self.outcomes, self.running), note)

    def abandon(self, grace_s: float = 10.0) -> None:
        """After an error in the loop itself: kill every job still running (its whole process group), record
        how it ended (its MLflow run KILLED) and release its claim; nothing here hides the error."""
        for r in self.running:
            r.interrupted = True
            r.handle.kill()
        deadline = time.time() + grace_s
        for r in self.running:
            try:
                while self.session.check(r) is None and time.time() < deadline:
                    time.sleep(0.1)
            except Exception:  # the error being raised is the one to report
                pass
            finally:
                claims.release(r.claim)


def _first_metric(metrics: dict[str, float]) -> str:
    """'fid 0.4848': the evaluation's first metric (FID when it was measured)."""
    key = "fid" if "fid" in metrics else next(iter(metrics))
    return f"{key} {metrics[key]:.4g}"


def _counts(outcomes: dict[str, JobOutcome]) -> dict[str, int]:
    counts = {s: 0 for s in OUTCOMES}
    for o in outcomes.values():
        counts[o.state] += 1
    return counts


def _steps_done(jobs: list[Job], outcomes: dict[str, JobOutcome], running: list[RunningJob]) -> int:
    now = {r.job.key: r.step for r in running}
    return sum(j.config.train.steps if outcomes.get(j.key) and outcomes[j.key].state in ("finished", "skipped",
               "elsewhere") else (outcomes[j.key].step if j.key in outcomes else now.get(j.key, 0)) for j in jobs)
