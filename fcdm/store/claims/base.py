"""What every claims backend shares: who holds a claim (`Holder`), a claim this process holds (`Claim`),
which machine a process runs on, and how an observer judges a holder alive.

A machine is its host name + boot id (/proc/sys/kernel/random/boot_id) + pid namespace (the inode of
/proc/self/ns/pid): containers with host networking share a host name but not a pid namespace, and a
rebooted host keeps its name but not its boot id. Only when all three match is the holder's pid checked
(`pid_verdict`); a pid hidden from us (`/proc` mounted `hidepid=2`) proves nothing either way.

Everywhere else a holder is judged by its heartbeat as the OBSERVER's own clock sees it change
(`Watch`): per claim, the last heartbeat value seen (an mtime or a counter, compared only for equality)
and the local monotonic time it was first seen; the holder is stale once that value stayed unchanged
for `stale_after` local seconds. No clock of another machine (or of a file server) is ever compared with
ours, so a clock 55 s ahead steals nothing; the price is that an observer that just started waits
`stale_after` seconds before it takes over a dead holder on another machine.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fcdm.errors import UserError

HEARTBEAT_S = 5.0  # how often a holder beats its claims
STALE_AFTER_S = 60.0  # a heartbeat seen unchanged this long (observer's clock) marks its holder dead
CONTENDED_S = 2.0  # how long try_claim retries under contention before it gives up with one line
log = logging.getLogger("fcdm.claims")


class ClaimsError(UserError, RuntimeError):
    """Claims cannot be used as asked (a bad --claims URL, a missing driver); the message says the fix."""


class ClaimContendedError(ClaimsError):
    """A claim could not be decided within CONTENDED_S (other runners kept moving, or the file system
    kept failing); the message says which job and what to do."""


# -- this machine ----------------------------------------------------------------------------------------

@functools.cache
def machine() -> dict[str, Any]:
    """This machine: host name, boot id and pid namespace (None where the system does not say)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = None
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = None
    return {"host": socket.gethostname(), "boot_id": boot, "pid_ns": ns}


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces), None when hidden or gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot, from /proc), or None when /proc does not show it.

    Stored with the pid so a pid reused by a younger process does not keep a dead claim alive."""
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):  # a zombie: dead, waiting for its parent to reap it
        return None
    return fields[19]  # field 22: starttime


def pid_verdict(pid: int, start: str | None) -> bool | None:
    """On this machine: True when `pid` (started at `start`) runs, False when it is gone, None when
    /proc hides it (hidepid=2) so nothing can be concluded."""
    fields = _proc_stat(pid)
    if fields is not None:
        return fields[0] not in ("Z", "X") and (start is None or fields[19] == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists (another user's, hidden from /proc): is it still ours? unknown
        return None
    return None if Path("/proc/self/stat").exists() else True  # visible to kill only: hidden, or no /proc


def identity(token: str, note: str) -> dict[str, Any]:
    """What a claim records about the process holding it."""
    pid = os.getpid()
    return {**machine(), "pid": pid, "pid_start": process_start(pid), "token": token, "state": "held",
            "claimed": time.time(), "note": note}


# -- holders and claims ----------------------------------------------------------------------------------

@dataclass
class Holder:
    """Who holds a claim, as read from its backend."""
    host: str
    pid: int
    token: str
    state: str  # held | released
    beat: Any  # the heartbeat value (an mtime in ns, a counter): compared for equality only
    generation: int
    pid_start: str | None = None
    note: str = ""
    boot_id: str | None = None
    pid_ns: int | None = None
    where: str = ""  # the claim's place (its folder, its database row), for the watch and messages

    def same_machine(self) -> bool:
        here = machine()
        return (self.host == here["host"] and self.boot_id is not None and self.boot_id == here["boot_id"]
                and self.pid_ns is not None and self.pid_ns == here["pid_ns"])

    def describe(self) -> str:
        seen = WATCH.unchanged_for(self)
        beat = f", heartbeat unchanged for {seen:.0f} s" if seen is not None and seen >= 1 else ""
        return f"{self.host} pid {self.pid} ({self.note or 'fcdm-ablate run'}{beat})"


@dataclass
class Claim:
    """A claim this process holds on one job. `ref` locates it for `adopt` (a file path, a job key);
    `backend` is the store of claims it lives in."""
    key: str
    path: Path | None
    token: str
    lost: bool = False  # set by the heartbeat on evidence that another runner took the job over
    backend: Any = None
    ref: str = ""


class Watch:
    """The observer's memory of heartbeats: per claim (its place), the holder's generation and token, the
    heartbeat value last seen and when it was first seen (time.monotonic). One entry per claim place."""

    def __init__(self):
        self._seen: dict[str, tuple[tuple, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _state(h: Holder) -> tuple:
        return (h.generation, h.token, h.beat)

    def observe(self, h: Holder, now: float | None = None) -> float:
        """Record `h`'s heartbeat; seconds (local) since it was last seen changing."""
        now = time.monotonic() if now is None else now
        with self._lock:
            state, since = self._seen.get(h.where, (None, now))
            if state != self._state(h):
                self._seen[h.where] = (self._state(h), now)
                return 0.0
            return now - since

    def unchanged_for(self, h: Holder) -> float | None:
        with self._lock:
            state, since = self._seen.get(h.where, (None, 0.0))
        return time.monotonic() - since if state == self._state(h) else None


WATCH = Watch()


def is_live(h: Holder | None, stale_after: float = STALE_AFTER_S) -> bool:
    """True when `h` is held by a process that runs (same machine, pid visible) or whose heartbeat this
    process saw change within `stale_after` seconds of its own clock."""
    if h is None or h.state != "held":
        return False
    if h.same_machine():
        alive = pid_verdict(h.pid, h.pid_start)
        if alive is not None:
            return alive
    return WATCH.observe(h) < stale_after


def is_mine(h: Holder | None) -> bool:
    """True when `h` was written by this very process."""
    return h is not None and h.same_machine() and h.pid == os.getpid()


# -- transient failures ----------------------------------------------------------------------------------

TRANSIENT = {errno.ESTALE, errno.EIO, errno.ENOENT, errno.EINTR, errno.EAGAIN, errno.ETIMEDOUT, errno.EBUSY}


def retrying(fn, *args, attempts: int = 5, first: float = 0.02, transient=TRANSIENT):
    """fn(*args), retried on transient OSErrors (ESTALE, EIO, ENOENT races, ...) with a short
    exponential backoff (under a second in all); the last error is raised."""
    for i in range(attempts):
        try:
            return fn(*args)
        except OSError as e:
            if e.errno not in transient or i == attempts - 1:
                raise
            time.sleep(first * 2 ** i * (0.5 + random.random()))


def backoff(attempt: int, cap: float = 0.2) -> float:
    """The pause before retry `attempt` of a contended claim: 10 ms doubling to `cap`, jittered."""
    return min(cap, 0.01 * 2 ** attempt) * (0.5 + random.random())
