"""Child processes that die with their parent: `spawn` starts a command in its own session with its output
appended to a log, and Linux's PR_SET_PDEATHSIG sends it SIGTERM (checkpoint, stop) when the spawning
thread's process dies, even by SIGKILL, so no orphan runs on (`die_with_parent` does the same for a
process forked without exec, fcdm.util.forkserver). A process started that way carries DIE_ENV in its
environment, and a trainer calls `die_with_parent_if_started_so` at its start: so every process down the
chain (runner -> `accelerate launch` -> trainer ranks, runner -> fork server -> trainer) dies with the one
above it, whatever the launcher in between does with signals. `started_at` tells when a process started."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
DIE_ENV = "FCDM_DIE_WITH_PARENT"  # set for children of `spawn`: their own children die with them too


def _die_with_parent(parent: int):
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def preexec() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(143)
    return preexec


def log_header(log: Path, argv: list[str]) -> None:
    """Append the line that opens each start of a process in its log: '=== <date time.ms> <host> pid <the
    starter's pid>: <command>' (the start time is what per-job start-up is measured from)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with open(log, "ab") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} "
                f"{socket.gethostname()} pid {os.getpid()}: {' '.join(argv)}\n".encode())


def die_with_parent(parent: int) -> None:
    """In a child just forked by `parent`: SIGTERM when the parent dies (Linux), and exit at once if it
    already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(143)


def die_with_parent_if_started_so() -> bool:
    """When this process was started by `spawn` (or below it: DIE_ENV is inherited), get SIGTERM when its own
    parent dies, e.g. `accelerate launch` killed with its runner. A process a user started by hand (even
    under nohup) is left alone: its shell's exit must not stop it. True when armed."""
    if os.environ.get(DIE_ENV) != "1":
        return False
    die_with_parent(os.getppid())
    return True


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None, pass_fds=()) -> subprocess.Popen:
    """Start `argv` with its output appended to `log`; it gets SIGTERM when this thread's process dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits: call this from a thread that outlives
    the child (the runner's loop, or a thread blocked waiting on it)."""
    log_header(log, argv)
    with open(log, "ab") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", DIE_ENV: "1", **(env or {})}, pass_fds=pass_fds,
                                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))


def signal_session(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to every process of the session `spawn` started `proc` in (accelerate's ranks too, at once);
    nothing when they have all ended."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_alive(pid: int) -> bool:
    """Whether process `pid` still runs on this machine (a zombie nobody reaped yet has ended)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def started_at(pid: int | str = "self") -> float | None:
    """Unix time at which process `pid` started (Linux: /proc; 10 ms resolution), None where unknown.

    A forked process starts at its fork, an exec'd one at its fork too: the interpreter's own start-up
    counts from there."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        uptime = float(open("/proc/uptime").read().split()[0])  # seconds since boot, 10 ms resolution
        return time.time() - (uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
