"""The trainer lock: one holder per run across processes, a bounded wait then exit 75 with one line, the
kernel dropping it at SIGKILL, the lock.log record, and `fcdm-ablate train` refusing to train beside another."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import SMOKE, TINY

from fcdm.store.lock import EXIT_HELD, TrainerLock, TrainerLockHeld, read_lock_log, trainer_lock_held

HOLD = textwrap.dedent("""
    import sys, time
    from fcdm.store.lock import TrainerLock
    TrainerLock(sys.argv[1]).acquire(wait_s=float(sys.argv[2]))
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
""")


def _holder(ckpt, wait_s=0.0, hold_s=60.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(ckpt), str(wait_s), str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_process_waits_then_exits_75_with_one_line_naming_the_holder(tmp_path):
    ckpt = tmp_path / "ckpt"
    with TrainerLock(ckpt) as lock:
        assert lock.held and trainer_lock_held(ckpt)
        other = _holder(ckpt, wait_s=1.0)
        out, err = other.communicate(timeout=60)
        assert other.returncode == EXIT_HELD, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and "another trainer holds this run" in last and f"pid {os.getpid()}" in last
        assert "held" not in out
    assert not trainer_lock_held(ckpt)
    other = _holder(ckpt, hold_s=0.0)  # free now: taken at once
    assert other.communicate(timeout=60)[0].strip() == "held" and other.returncode == 0
    events = [(e["event"], e["pid"]) for e in read_lock_log(ckpt)]
    assert events[:2] == [("acquire", os.getpid()), ("release", os.getpid())]
    assert events[2] == ("acquire", other.pid) and len(events) == 3  # the child ended without releasing


def test_sigkill_frees_the_lock_and_the_next_acquire_names_the_dead_holder(tmp_path):
    ckpt = tmp_path / "ckpt"
    other = _holder(ckpt)
    assert other.stdout.readline().strip() == "held"
    lock = TrainerLock(ckpt)
    with pytest.raises(TrainerLockHeld) as held:
        lock.acquire(wait_s=0.3, poll_s=0.1, say=lambda line: None)
    assert held.value.code == EXIT_HELD and held.value.holder["pid"] == other.pid
    os.kill(other.pid, signal.SIGKILL)
    other.wait()
    lock.acquire(wait_s=5.0, poll_s=0.05, say=lambda line: None)
    last = read_lock_log(ckpt)[-1]
    assert last["event"] == "acquire" and last["pid"] == os.getpid()
    assert last["previous"]["pid"] == other.pid and last["previous_running"] is False
    lock.release()


def test_train_refuses_to_train_a_run_another_trainer_holds(tmp_path):
    """`fcdm-ablate train` (no runner) takes the same lock: nothing written, exit 75, one line."""
    from fcdm.config import load_config
    from fcdm.store.layout import checkpoint_dir

    store = tmp_path / "store"
    cfg = load_config(SMOKE, TINY)
    ckpt = checkpoint_dir(store, cfg)
    with TrainerLock(ckpt):
        before = sorted(p.name for p in ckpt.iterdir())
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "fcdm.cli", "train", str(SMOKE), *[a for s in TINY for a in
                              ("--set", s)], "--store", str(store), "--no-progress"], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "FCDM_LOCK_WAIT_S": "1", "OMP_NUM_THREADS": "1"})
        assert proc.returncode == EXIT_HELD, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in proc.stderr
        assert sorted(p.name for p in ckpt.iterdir()) == before  # no checkpoint, no progress.json
        assert not (store / "mlflow.db").exists() and time.time() - t0 < 120
