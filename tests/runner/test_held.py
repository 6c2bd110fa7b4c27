"""The runner and the trainer lock: a trainer that finds its run held exits 75 and the runner takes that as
"held elsewhere" (start again later, nothing failed, nothing recorded in MLflow); a runner waits for a job
whose lock an orphan trainer still holds; an error in the runner's own loop kills every trainer (its
process group), ends their runs and releases every claim, and the error itself is what propagates."""
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import all_runs

from fcdm.runner import run_jobs
from fcdm.runner.run import Schedule
from fcdm.runner.session import HELD_ELSEWHERE, Session
from fcdm.spec.job import Job
from fcdm.store import claims
from fcdm.store.layout import checkpoint_dir
from fcdm.store.lock import EXIT_HELD, WAIT_ENV, read_lock_log

HOLD = textwrap.dedent("""
    import sys, time
    from fcdm.store.lock import TrainerLock
    TrainerLock(sys.argv[1]).acquire(wait_s=0)
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _job(make, k: int, *extra: str) -> Job:
    cfg = make(f"model.args.kernel_size={k}", f"name=held/k={k}", "log.experiment=held", *extra)
    return Job("held", f"held/kernel_size={k}", cfg, axes={"model.args.kernel_size": k}, profile="smoke")


def _hold(ckpt, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(ckpt), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.e2e
def test_a_trainer_finding_its_run_held_exits_75_and_the_runner_takes_it_as_held_elsewhere(tmp_path, tiny_config):
    job = _job(tiny_config, 3)
    holder = _hold(checkpoint_dir(tmp_path, job.config), 120)
    session = Session(tmp_path)
    try:
        session.prepare([job])
        started = session.begin(job, {WAIT_ENV: "1", "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 300
        while (outcome := session.check(started)) is None and time.time() < deadline:
            time.sleep(0.2)
    finally:
        holder.kill()
        session.close()
    assert outcome.exit_code == EXIT_HELD and outcome.state == "pending" and outcome.reason == HELD_ELSEWHERE
    assert not claims.is_live(claims.holder(tmp_path, job.key)) and all_runs(tmp_path) == []


@pytest.mark.e2e
def test_a_runner_waits_while_an_orphan_trainer_holds_the_run_then_trains_it(tmp_path, tiny_config):
    job = _job(tiny_config, 5)
    ckpt = checkpoint_dir(tmp_path, job.config)
    holder = _hold(ckpt, 4)  # the orphan ends on its own
    summary = run_jobs([job], tmp_path, parallel=1, progress=False)
    holder.wait()
    assert [o.state for o in summary.outcomes] == ["finished"]
    events = read_lock_log(ckpt)
    assert events[0]["pid"] == holder.pid and events[1]["event"] == "acquire" and events[1]["pid"] != holder.pid
    assert events[1]["time"] >= time.time() - 600 and events[1]["previous_running"] is False


@pytest.mark.e2e
def test_an_error_in_the_runners_loop_kills_every_trainer_ends_their_runs_and_releases_every_claim(
        tmp_path, tiny_config, monkeypatch):
    jobs = [_job(tiny_config, k, "train.steps=100000") for k in (3, 5)]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    seen = []
    real_show = Schedule._show

    def show(self, view):
        real_show(self, view)
        if len(self.running) == 2 and all(r.step >= 5 for r in self.running):
            seen.extend(self.running)
            raise RuntimeError("disk full while writing a job's config")
    monkeypatch.setattr(Schedule, "_show", show)
    with pytest.raises(RuntimeError, match="disk full"):
        run_jobs(jobs, tmp_path, parallel=2, progress=False)
    assert len(seen) == 2 and all(r.handle.poll() is not None for r in seen)
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert not any(claims.is_live(claims.holder(tmp_path, j.key)) for j in jobs)
    runs = all_runs(tmp_path)
    assert len(runs) == 2 and all(r.info.status == "KILLED" and r.data.tags.get("fcdm.failure") for r in runs)


@pytest.mark.e2e
def test_a_job_whose_trainer_found_the_lock_taken_is_started_again_not_failed(tmp_path, tiny_config, monkeypatch):
    """The lock taken between the runner's look and its trainer's start: the trainer exits 75, the runner
    starts the job again later, and the job ends finished, not failed."""
    import fcdm.runner.run as run_module
    from fcdm.store.jobs import job_dir

    monkeypatch.setattr(run_module, "trainer_lock_held", lambda ckpt: False)  # every look comes too early
    monkeypatch.setenv(WAIT_ENV, "1")
    job = _job(tiny_config, 7)
    holder = _hold(checkpoint_dir(tmp_path, job.config), 300)
    log = job_dir(tmp_path, job) / "train.log"

    def end_holder_after_a_refusal():
        deadline = time.time() + 300
        while time.time() < deadline and "another trainer holds this run" not in (
                log.read_text() if log.exists() else ""):
            time.sleep(0.1)
        holder.kill()
    watcher = threading.Thread(target=end_holder_after_a_refusal)
    watcher.start()
    summary = run_jobs([job], tmp_path, parallel=1, progress=False)
    watcher.join()
    assert [o.state for o in summary.outcomes] == ["finished"] and summary.ok
    text = log.read_text()
    assert "another trainer holds this run" in text and text.count("\n=== ") >= 2
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED"
