"""Processes that die with their parent: a process below a runner (DIE_ENV set) gets SIGTERM when the
process that started it dies, even when that one (like `accelerate launch`) started it without care."""
import os
import signal
import subprocess
import sys
import textwrap
import time

from fcdm.util.process import DIE_ENV, is_alive

# A: a launcher that starts B with a plain Popen (no PDEATHSIG of its own), prints B's pid, and waits.
# B: what a trainer does at its start, then sleeps.
LAUNCHER = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "armed"
    print(child.pid, flush=True)
    time.sleep(120)
""")
CHILD = textwrap.dedent("""
    import time
    from fcdm.util.process import die_with_parent_if_started_so
    die_with_parent_if_started_so()
    print("armed", flush=True)
    time.sleep(120)
""")


def _chain(die_with_parent: bool) -> int:
    """B's pid, once A was SIGKILLed."""
    env = {k: v for k, v in os.environ.items() if k != DIE_ENV}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, CHILD], stdout=subprocess.PIPE, text=True,
                                env={**env, DIE_ENV: "1"} if die_with_parent else env)
    child = int(launcher.stdout.readline())
    launcher.kill()  # SIGKILL: no handler runs in the launcher
    launcher.wait()
    return child


def test_a_process_below_a_runner_dies_when_its_launcher_is_killed():
    child = _chain(die_with_parent=True)
    deadline = time.time() + 20
    while is_alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not is_alive(child)


def test_a_process_started_by_hand_outlives_its_shell():
    child = _chain(die_with_parent=False)
    time.sleep(1.0)
    try:
        assert is_alive(child)  # nohup'd by a user: its shell's exit must not stop it
    finally:
        os.kill(child, signal.SIGKILL)
