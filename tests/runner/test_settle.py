"""A run's status always ends true: the trainer's own error path survives a failing record, and the runner
ends a run its trainer left RUNNING (SIGKILL, out of memory) as KILLED / FAILED with the reason, but only
while no other trainer holds the run."""
import subprocess
import sys
import textwrap

import pytest
from helpers import all_runs, client

from fcdm.errors import CheckpointError
from fcdm.runner.settle import discard_checkpoints, end_open_run, ended_status
from fcdm.spec.job import Job
from fcdm.store.layout import checkpoint_dir
from fcdm.store.lock import trainer_lock_held
from fcdm.store.progress import read_progress, write_progress
from fcdm.store.tracking import Tracker
from fcdm.train import TrainingDiverged, train
from fcdm.train.ledger import EvalLedger


def test_a_failing_record_in_the_trainers_error_path_neither_hides_the_error_nor_leaves_the_run_running(
        tmp_path, tiny_config, one_thread, monkeypatch):
    real = EvalLedger.write

    def write(self, **fields):
        if fields.get("status") == "failed":
            raise OSError(28, "No space left on device")
        real(self, **fields)
    monkeypatch.setattr(EvalLedger, "write", write)
    with pytest.raises(TrainingDiverged):  # the error itself, not the OSError of its record
        train(tiny_config("train.lr=1e30"), store=tmp_path, progress=False)
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED" and "loss became" in run.data.tags["fcdm.failure"]


def _running_run(store, cfg) -> str:
    """A run as a trainer SIGKILLed mid-step leaves it: MLflow RUNNING, progress.json 'running'."""
    tracker = Tracker(store)
    run_id, _ = tracker.open(cfg, tags={})
    write_progress(checkpoint_dir(store, cfg), status="running", step=10, run_id=run_id)
    return run_id


def _job(cfg) -> Job:
    return Job(spec="t", name="t/x", config=cfg)


def test_the_runner_ends_a_run_its_killed_trainer_left_running(tmp_path, tiny_config):
    cfg = tiny_config()
    run_id = _running_run(tmp_path, cfg)
    reason = "killed by SIGKILL (out of memory?)"
    assert end_open_run(tmp_path, client(tmp_path), _job(cfg), -9, reason, None) == "KILLED"
    run = client(tmp_path).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["fcdm.failure"] == reason
    progress = read_progress(checkpoint_dir(tmp_path, cfg))
    assert progress["status"] == "killed" and progress["reason"] == reason
    assert ended_status(1) == "FAILED" and ended_status(0) == "FAILED" and ended_status(143) == "KILLED"


HOLD = textwrap.dedent("""
    import sys, time
    from fcdm.store.lock import TrainerLock
    TrainerLock(sys.argv[1]).acquire(wait_s=0)
    print("held", flush=True)
    time.sleep(60)
""")


def _hold(ckpt) -> subprocess.Popen:
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(ckpt)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"
    return other


def test_the_runner_leaves_a_run_another_trainer_holds_alone(tmp_path, tiny_config):
    cfg = tiny_config()
    run_id = _running_run(tmp_path, cfg)
    other = _hold(checkpoint_dir(tmp_path, cfg))
    try:
        assert end_open_run(tmp_path, client(tmp_path), _job(cfg), -9, "killed", run_id) is None
    finally:
        other.kill()
        other.wait()
    assert client(tmp_path).get_run(run_id).info.status == "RUNNING"
    assert read_progress(checkpoint_dir(tmp_path, cfg))["status"] == "running"


def test_force_deletes_the_checkpoints_but_never_a_held_lock(tmp_path, tiny_config):
    cfg = tiny_config()
    ckpt = checkpoint_dir(tmp_path, cfg)
    _running_run(tmp_path, cfg)
    (ckpt / "step_00000010.pt").write_bytes(b"weights")
    other = _hold(ckpt)  # an orphan trainer still trains it
    try:
        with pytest.raises(CheckpointError, match=f"pid {other.pid}"):
            discard_checkpoints(tmp_path, _job(cfg))
        assert (ckpt / "step_00000010.pt").exists() and trainer_lock_held(ckpt)
    finally:
        other.kill()
        other.wait()
    inode = (ckpt / ".trainer.lock").stat().st_ino
    discard_checkpoints(tmp_path, _job(cfg))
    assert sorted(p.name for p in ckpt.iterdir()) == [".trainer.lock", "lock.log"]
    assert (ckpt / ".trainer.lock").stat().st_ino == inode  # the one file every trainer locks
