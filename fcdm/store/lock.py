"""The trainer lock: at most one process ever trains a run (README, "Claims and locks").

    lock = TrainerLock(ckpt_dir).acquire()   # waits up to wait_s, printing the holder; else TrainerLockHeld
    ...                                      # train: the checkpoint folder, progress.json, the MLflow run
    lock.release()                           # or let the process end: the kernel drops it, even at SIGKILL

An exclusive `flock` on `<store>/checkpoints/<key>/.trainer.lock`, taken by the trainer's main process
before it touches the checkpoint folder, progress.json or MLflow and held for the whole training. The
file holds the holder's identity (host, boot id, pid namespace, pid, process start time) for messages;
it is written in place, never renamed (a rename would make a new file nobody holds a lock on). Each
acquire and release is appended to `<ckpt_dir>/lock.log` as one JSON line: the record that shows no two
trainers ever held one run at once (an acquire names the previous holder and whether it still ran).

A trainer that cannot take the lock within its wait exits with EXIT_HELD (75, sysexits' EX_TEMPFAIL:
"another trainer holds this run; retry later"), which the runner treats as held elsewhere, not failed.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from fcdm.util.process import is_alive, started_at

LOCK_FILE, LOCK_LOG = ".trainer.lock", "lock.log"
EXIT_HELD = 75  # sysexits EX_TEMPFAIL: another trainer holds this run; nothing was trained; retry later
HELD_MESSAGE = "another trainer holds this run"  # in the one line; a runner finds it in a log
WAIT_ENV = "FCDM_LOCK_WAIT_S"  # how long a trainer waits for the lock (seconds); the runner may set it
DEFAULT_WAIT_S = 60.0


def _read(path: Path, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def identity(role: str = "trainer") -> dict:
    """Who this process is, precisely enough to tell whether it still runs: host, boot id, pid namespace,
    pid, process start time (the same pid on another machine, container or boot is another process)."""
    try:
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pid_ns = None
    return {"role": role, "host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "pid_ns": pid_ns, "pid": os.getpid(), "started": started_at()}


def is_running(holder: dict | None) -> bool | None:
    """Whether the process `holder` names still runs: None when this machine cannot tell (another host,
    boot or pid namespace), else True/False (a reused pid has another start time)."""
    if not holder or holder.get("pid") is None:
        return None
    me = identity()
    if any(holder.get(k) != me[k] for k in ("host", "boot_id", "pid_ns")):
        return None
    began = started_at(holder["pid"])
    if began is None or not is_alive(holder["pid"]):
        return False
    return holder.get("started") is None or abs(began - holder["started"]) < 1.0


def describe(holder: dict | None) -> str:
    """'pid 123 on host-a (a trainer started 12:03:05)' for messages."""
    if not holder:
        return "an unknown process"
    began = holder.get("started")
    when = f" started {time.strftime('%H:%M:%S', time.localtime(began))}" if began else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} (a {holder.get('role', 'trainer')}{when})"


class TrainerLockHeld(SystemExit):
    """Another process holds the run's trainer lock: this one trains nothing and exits EXIT_HELD. A
    SystemExit, so nothing on the way out records the run as failed; str() is the one-line message."""

    def __init__(self, message: str, holder: dict | None):
        super().__init__(EXIT_HELD)
        self.message, self.holder = message, holder

    def __str__(self) -> str:
        return self.message


class TrainerLock:
    """The exclusive lock on one run's checkpoint folder (see the module docstring)."""

    def __init__(self, ckpt_dir: str | os.PathLike, role: str = "trainer"):
        self.dir = Path(ckpt_dir)
        self.path, self.log = self.dir / LOCK_FILE, self.dir / LOCK_LOG
        self.role = role
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict | None:
        """The identity the current (or last) holder wrote, None when unreadable."""
        try:
            data = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this process holds it now."""
        if self._fd is not None:
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        previous = self.holder()
        me = identity(self.role)
        data = json.dumps(me).encode()
        os.ftruncate(fd, 0)  # in place: the lock belongs to this inode
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self._fd = fd
        self._record("acquire", me, previous=previous, previous_running=is_running(previous))
        return True

    def acquire(self, wait_s: float | None = None, poll_s: float = 1.0, say=None) -> TrainerLock:
        """Take the lock, waiting up to `wait_s` (default $FCDM_LOCK_WAIT_S, else 60 s) and saying every
        10 s who holds it; then TrainerLockHeld (exit EXIT_HELD) with one line naming the holder."""
        if wait_s is None:
            wait_s = float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_S)
        say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        deadline, told = time.monotonic() + wait_s, None
        while not self.try_acquire():
            now = time.monotonic()
            if now >= deadline:
                holder = self.holder()
                message = (f"{self.dir}: {HELD_MESSAGE} ({describe(holder)}, lock {self.path}); "
                           f"nothing trained: retry once it ends (a runner retries by itself)")
                say(f"error: {message}")
                raise TrainerLockHeld(message, holder)
            if told is None or now - told >= 10.0:
                told = now
                say(f"waiting up to {deadline - now:.0f} s for {self.path}: held by {describe(self.holder())}")
            time.sleep(min(poll_s, max(0.0, deadline - now)))
        return self

    def release(self) -> None:
        """Let go of the lock (the process's end does the same)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self._record("release", identity(self.role))
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> TrainerLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _record(self, event: str, me: dict, **extra) -> None:
        """One JSON line in lock.log (appended in one write: lines of several processes never interleave)."""
        line = json.dumps({"event": event, "time": time.time(), "pid": me["pid"], "host": me["host"],
                           "role": me["role"], **extra}) + "\n"
        try:
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as e:  # the record is evidence, not a condition of training
            print(f"warning: {self.log}: {e}", file=sys.stderr)


def trainer_lock_held(ckpt_dir: str | os.PathLike) -> bool:
    """Whether some process holds the run's trainer lock now (cheap, creates nothing: a runner asks before
    it starts a trainer that would only wait). A shared probe, dropped at once."""
    try:
        fd = os.open(Path(ckpt_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_lock_log(ckpt_dir: str | os.PathLike) -> list[dict]:
    """The lock.log events of one run, oldest first (a torn last line is skipped)."""
    events = []
    for line in _read(Path(ckpt_dir) / LOCK_LOG).splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events
