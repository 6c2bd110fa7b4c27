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

What each job goes through (claim, start, poll, record, tag) is fcdm/session.py; this module
schedules: slots, the live view, Ctrl-C, --fail-fast, waiting for jobs other runners hold.
"""
from __future__ import annotations

import signal
import threading
import time

from fcdm.launchers import LauncherError
from fcdm.launchers.resources import cpu_count, default_parallel, detect_gpus, slot_env
from fcdm.runner.session import Session, _Running
from fcdm.runner.summary import OUTCOMES, JobOutcome, RunSummary, outcome_line
from fcdm.spec.job import Job
from fcdm.store.jobs import LOG, job_dir

# -- public entry points --------------------------------------------------------------------------------



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
    from fcdm.runner.live import LiveView, Row

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
