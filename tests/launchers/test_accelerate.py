"""Trainers die with their runner under `accelerate launch`: accelerate dies on the runner's death signal
without passing it on, so the trainer itself must get SIGTERM when accelerate dies (then it checkpoints,
marks its run KILLED and lets go of its lock)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import SMOKE, TINY

from fcdm.store.lock import TrainerLock, trainer_lock_held

# A runner reduced to what matters: it starts the job through the accelerate launcher, prints the pid of
# the trainer once it holds the run's lock, and waits to be killed.
RUNNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fcdm.config import load_config
    from fcdm.launchers.accelerate import AccelerateLauncher
    from fcdm.spec.job import Job
    from fcdm.store.layout import checkpoint_dir
    from fcdm.store.lock import TrainerLock, trainer_lock_held

    store, overrides = Path(sys.argv[1]), sys.argv[2:]
    cfg = load_config({smoke!r}, overrides)
    config = store / "config.yaml"
    store.mkdir(parents=True, exist_ok=True)
    config.write_text(cfg.to_yaml())
    job = Job("t", "t/x", cfg)
    AccelerateLauncher({{}}).start(job, config, store / "train.log", store, f"sqlite:///{{store / 'mlflow.db'}}",
                                   {{"OMP_NUM_THREADS": "1"}})
    ckpt = checkpoint_dir(store, cfg)
    while not (ckpt / "progress.json").exists() or not trainer_lock_held(ckpt):
        time.sleep(0.1)
    print(TrainerLock(ckpt).holder()["pid"], flush=True)
    time.sleep(600)
""")


@pytest.mark.e2e
def test_a_trainer_under_accelerate_stops_when_its_runner_is_sigkilled(tmp_path):
    from fcdm.config import load_config
    from fcdm.store.layout import checkpoint_dir

    overrides = [*TINY, "train.steps=100000", "log.checkpoint_every=50"]
    store = tmp_path / "store"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER.format(smoke=str(SMOKE)), str(store), *overrides],
                              stdout=subprocess.PIPE, text=True)
    trainer = int(runner.stdout.readline())
    runner.kill()  # SIGKILL: accelerate gets SIGTERM (PR_SET_PDEATHSIG) and dies without passing it on
    runner.wait()
    ckpt = checkpoint_dir(store, load_config(SMOKE, overrides))
    deadline = time.time() + 120
    while trainer_lock_held(ckpt) and time.time() < deadline:
        time.sleep(0.2)
    try:
        assert not trainer_lock_held(ckpt), "the trainer trains on as an orphan"
        assert json.loads((ckpt / "progress.json").read_text())["status"] == "killed"
        assert TrainerLock(ckpt).holder()["pid"] == trainer
    finally:
        try:
            os.kill(trainer, signal.SIGKILL)
        except ProcessLookupError:
            pass
