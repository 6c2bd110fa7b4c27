"""The Slurm launcher through submitit's local executor (fcdm.launchers.slurm): a spec's jobs go out as
one array, and a job warned of its time limit (SIGUSR2) checkpoints, is requeued and resumes.

The trainer here is a small script with the real trainer's contract (resume from its checkpoint, save
and exit on SIGTERM), so the time limit can be a few seconds; the launcher, submitit, its local
executor's signals and requeue, and the claims are all real.
"""
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import all_runs

from fcdm.launchers import make_launcher
from fcdm.runner import run_jobs
from fcdm.spec.job import Job
from fcdm.store import claims
from fcdm.store.jobs import job_dir
from fcdm.store.layout import checkpoint_dir

TRAINER = r"""
import json, os, signal, subprocess, sys, time
state, total = sys.argv[1], int(sys.argv[2])
# A second rank, as `accelerate launch` starts them: Slurm's warning must reach it directly and at the same
# moment as this one (as the local runner signals a job's whole session), not only through a launcher.
RANK = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (open(sys.argv[1], 'a').write('term\\n'), sys.exit(0))); time.sleep(120)"
rank = subprocess.Popen([sys.executable, "-c", RANK, state + ".rank"])
step = json.load(open(state))["step"] if os.path.exists(state) else 0
with open(state + ".starts", "a") as f:  # one line per start: resumed step, SIGUSR2 ignored?
    f.write(json.dumps({"from": step, "usr2_ignored": signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN}) + "\n")
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while step < total and not stop:
    time.sleep(0.1)
    step += 1
    with open(state + ".tmp", "w") as f:
        json.dump({"step": step}, f)
    os.replace(state + ".tmp", state)  # the checkpoint
try:
    rank.wait(5 if stop else 0)  # a stopped rank has recorded its SIGTERM
except subprocess.TimeoutExpired:
    rank.kill()
sys.exit(0 if step >= total else 143)
"""
STEPS = 40  # 4 s of training: longer than the first start's time before the warning


def test_jobs_go_out_as_one_array_and_a_time_limited_job_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    store = tmp_path / "store"
    trainer = tmp_path / "trainer.py"
    trainer.write_text(TRAINER)
    launcher = make_launcher("slurm", {"cluster": "local", "time": 1})
    # The local executor warns (SIGUSR2) 56 s before its 1 min time limit: 4 s after each start.
    ex = launcher.executor(store)
    ex._executor.parameters["signal_delay_s"] = 56  # not an AutoExecutor parameter: the local executor's own
    batches = []
    real = type(ex._executor)._internal_process_submissions

    def spy(self, submissions):
        batches.append(len(submissions))
        return real(self, submissions)
    monkeypatch.setattr(type(ex._executor), "_internal_process_submissions", spy)
    handles, states, held = [], [], []
    for i in range(2):
        c = claims.try_claim(store, f"job{i}-s0", note="test runner")
        assert isinstance(c, claims.Claim)
        held.append(c)
        state = tmp_path / f"state{i}.json"
        states.append(state)
        handles.append(launcher.queue([sys.executable, str(trainer), str(state), str(STEPS)],
                                      tmp_path / f"train{i}.log", {}, c, "spec"))
    deadline, codes = time.time() + 240, [None, None]
    while None in codes and time.time() < deadline:
        codes = [h.poll() if code is None else code for h, code in zip(handles, codes)]
        time.sleep(0.2)
    logs = "\n".join((tmp_path / f"train{i}.log").read_text() for i in range(2) if (tmp_path / f"train{i}.log").exists())
    assert batches == [2], batches  # both jobs in one submission: one array
    assert codes == [0, 0], ([h.reason for h in handles], logs)
    for state, c in zip(states, held):
        assert json.loads(state.read_text())["step"] == STEPS
        starts = [json.loads(line) for line in Path(f"{state}.starts").read_text().splitlines()]
        assert len(starts) >= 2 and starts[0]["from"] == 0 and starts[-1]["from"] > 0, starts  # resumed
        assert all(s["usr2_ignored"] for s in starts)  # Slurm's warning cannot kill the trainer unsaved
        assert Path(f"{state}.rank").read_text().count("term") == len(starts) - 1  # each stop reached every rank
        h = claims.holder(store, c.key)
        assert h.token == c.token and h.state == "released" and h.note.startswith("slurm job")


@pytest.mark.e2e
def test_a_real_trainer_warned_before_its_time_limit_resumes_into_the_same_run(tmp_path, tiny_config):
    """run_jobs through the Slurm launcher (submitit's local executor) with the real trainer: SIGUSR2 to the
    array task mid-training (what Slurm sends before the time limit) checkpoints, requeues and resumes;
    the job ends FINISHED in one MLflow run."""
    store = tmp_path / "store"
    cfg = tiny_config("train.steps=300", "log.checkpoint_every=10", "name=slurm/k=3", "log.experiment=slurm")
    job = Job("slurm", "slurm/kernel_size=3", cfg, axes={"model.args.kernel_size": 3}, profile="smoke")
    warned = {}

    def warn():  # once the trainer is past step 20: SIGUSR2 to the array task (the claim's adopter)
        progress = checkpoint_dir(store, cfg) / "progress.json"
        deadline = time.time() + 300
        while time.time() < deadline and not warned:
            try:
                side = json.loads(progress.read_text())
            except (OSError, ValueError):
                side = {}
            h = claims.holder(store, job.key)
            if side.get("status") == "running" and side.get("step", 0) > 20 and h and h.note.startswith("slurm"):
                os.kill(h.pid, signal.SIGUSR2)
                warned["step"] = side["step"]
            time.sleep(0.1)
    t = threading.Thread(target=warn, daemon=True)
    t.start()
    summary = run_jobs([job], store, launcher="slurm", launcher_options={"cluster": "local", "time": 10},
                       progress=False)
    t.join(5)
    log = (job_dir(store, job) / "train.log").read_text()
    assert summary.ok and warned, log[-3000:]
    runs = [r for r in all_runs(store) if r.data.tags.get("fcdm.config_hash") == job.hash]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", log[-3000:]
    assert log.count("\n=== ") == 2 and "resumed from" in log.split("\n=== ")[-1], log[-3000:]
    assert claims.holder(store, job.key).state == "released"


def test_more_jobs_than_an_array_holds_go_out_as_several(tmp_path, monkeypatch):
    from fcdm.launchers import slurm

    monkeypatch.setattr(slurm, "ARRAY_MAX", 2)
    launcher = make_launcher("slurm", {"cluster": "local", "time": 1})
    ex = launcher.executor(tmp_path / "store")
    batches, real = [], type(ex._executor)._internal_process_submissions
    monkeypatch.setattr(type(ex._executor), "_internal_process_submissions",
                        lambda self, subs: batches.append(len(subs)) or real(self, subs))
    handles = [launcher.queue([sys.executable, "-c", "pass"], tmp_path / f"l{i}.log", {}) for i in range(3)]
    deadline, codes = time.time() + 120, [None] * 3
    while None in codes and time.time() < deadline:
        codes = [h.poll() if code is None else code for h, code in zip(handles, codes)]
        time.sleep(0.2)
    assert batches == [2, 1] and codes == [0, 0, 0]
