"""Job claims: several `run` processes (terminals, or cluster nodes on a shared filesystem) split one
spec's jobs, and no job is ever trained by two of them at once.

A job's claims live in `<store>/claims/<job key>/` as numbered generations `00000000.json`,
`00000001.json`, ...; the highest generation is the job's claim. Its JSON says who holds it
(`host`, `pid`, the pid's start time, a random `token`) and whether it is `held` or `released`;
its modification time is the holder's heartbeat, refreshed every few seconds by a thread.

Claiming a job means creating the next generation with `os.link` from a fully written temporary
file: link is atomic and fails when the name exists (also on NFS, where O_EXCL historically was
not), so exactly one of several racing runners gets each generation. A generation may be taken
when the one below it is released, or stale: on the same host its pid is gone (or was reused by a
younger process), on another host its heartbeat is older than `stale_after` seconds. Generations
only grow (the top one is never deleted; release rewrites it as `released`), so a runner that
judged an old generation stale and acts late can never re-create a name that someone else holds
the top of: after linking, the taker checks that its generation is the top one and backs off if not.
A holder that finds a higher generation above its own has lost the job (its heartbeat stalled for
longer than `stale_after`) and must stop training it; the runner does that within one heartbeat.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fcdm.util.files import atomic_write, durable_temp

HEARTBEAT_S = 5.0  # how often a holder touches its claim
STALE_AFTER_S = 60.0  # another host's claim without a heartbeat this long is taken over
_GEN = re.compile(r"^(\d{8})\.json$")


def process_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot, from /proc), or None when it does not exist.

    Stored with the pid so a pid reused by a younger process does not keep a dead claim alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the fields after the command name, which may hold spaces
    if fields[0] in ("Z", "X"):  # a zombie: dead, waiting for its parent to reap it
        return None
    return fields[19]  # field 22: starttime


def _pid_alive(pid: int, start: str | None) -> bool:
    if Path("/proc/self/stat").exists():  # Linux: exact, survives pid reuse
        now = process_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Holder:
    """Who holds a claim, as read from its file."""
    host: str
    pid: int
    token: str
    state: str  # held | released
    heartbeat: float  # the file's mtime
    generation: int
    pid_start: str | None = None
    note: str = ""

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        return f"{self.host} pid {self.pid} ({self.note or 'fcdm-ablate run'}, heartbeat {age:.0f} s ago)"


@dataclass
class Claim:
    """A claim this process holds on one job."""
    key: str
    path: Path  # the generation file
    token: str
    lost: bool = False  # set by the heartbeat when another runner took the job over


def claims_dir(store: Path) -> Path:
    return Path(store) / "claims"


def _generations(directory: Path) -> list[int]:
    try:
        return sorted(int(m.group(1)) for p in os.listdir(directory) if (m := _GEN.match(p)))
    except FileNotFoundError:
        return []


def _read(path: Path) -> Holder | None:
    try:
        info = json.loads(path.read_text())
        mtime = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    return Holder(info.get("host", "?"), int(info.get("pid", -1)), info.get("token", ""), info.get("state", "held"),
                  mtime, int(path.stem), info.get("pid_start"), info.get("note", ""))


def holder(store: Path, key: str) -> Holder | None:
    """The top generation's holder of job `key`, or None when the job was never claimed."""
    d = claims_dir(store) / key
    gens = _generations(d)
    return _read(d / f"{gens[-1]:08d}.json") if gens else None


def is_live(h: Holder | None, stale_after: float = STALE_AFTER_S) -> bool:
    """True when `h` is held by a process that is still alive (same host) or heartbeating (elsewhere)."""
    if h is None or h.state != "held":
        return False
    if h.host == socket.gethostname():
        return _pid_alive(h.pid, h.pid_start)
    return time.time() - h.heartbeat < stale_after


def is_mine(h: Holder | None) -> bool:
    """True when `h` was written by this very process."""
    return h is not None and h.host == socket.gethostname() and h.pid == os.getpid()


def _identity(token: str, note: str) -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid), "token": token,
            "state": "held", "claimed": time.time(), "note": note}


def try_claim(store: Path, key: str, stale_after: float = STALE_AFTER_S, note: str = "") -> Claim | Holder:
    """Claim job `key`; returns the Claim, or the live Holder when another process has it."""
    d = claims_dir(store) / key
    d.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    tmp = durable_temp(d, json.dumps(_identity(token, note)))
    try:
        for _ in range(20):  # each retry follows someone else's move; a handful suffice
            gens = _generations(d)
            if gens:
                top = _read(d / f"{gens[-1]:08d}.json")
                if top is None:  # unreadable: the holder is mid-release (replace is atomic, so rare); retry
                    time.sleep(0.05)
                    continue
                if is_live(top, stale_after):
                    return top
            mine = (gens[-1] + 1) if gens else 0
            path = d / f"{mine:08d}.json"
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            if _generations(d)[-1] != mine:  # a late taker re-created a pruned generation: back off
                path.unlink(missing_ok=True)
                continue
            for g in gens:  # the generations below ours are dead; keep the directory small
                (d / f"{g:08d}.json").unlink(missing_ok=True)
            return Claim(key, path, token)
        raise RuntimeError(f"could not claim job {key} in {d}: too much contention; retry")
    finally:
        tmp.unlink(missing_ok=True)


def still_held(claim: Claim) -> bool:
    """True while `claim` is the top generation and carries our token."""
    d = claim.path.parent
    gens = _generations(d)
    if not gens or d / f"{gens[-1]:08d}.json" != claim.path:
        return False
    h = _read(claim.path)
    return h is not None and h.token == claim.token and h.state == "held"


def adopt(path: Path, token: str, note: str = "") -> Claim | None:
    """Take over a claim this process was handed (a cluster job adopting its runner's claim): rewrite
    it with this process's host and pid, same token. None when the claim is no longer that token's."""
    claim = Claim(path.stem, Path(path), token)
    if not still_held(claim):
        return None
    atomic_write(claim.path, json.dumps(_identity(token, note)))
    return claim


def release(claim: Claim) -> None:
    """Mark `claim` released (its generation stays, so generations keep growing)."""
    if claim.lost or not still_held(claim):
        return
    info = json.loads(claim.path.read_text())
    info.update(state="released", released=time.time())
    atomic_write(claim.path, json.dumps(info))


@dataclass
class Heartbeat:
    """A daemon thread that touches every held claim each `interval` seconds and flags lost ones."""
    interval: float = HEARTBEAT_S
    claims: dict[str, Claim] = field(default_factory=dict)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fcdm-claims-heartbeat", daemon=True)
        self._thread.start()

    def add(self, claim: Claim) -> None:
        with self._lock:
            self.claims[claim.key] = claim

    def remove(self, claim: Claim) -> None:
        with self._lock:
            self.claims.pop(claim.key, None)

    def beat(self) -> None:
        with self._lock:
            held = list(self.claims.values())
        for c in held:
            if not still_held(c):
                c.lost = True
                continue
            try:
                os.utime(c.path)
            except OSError:
                c.lost = True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)
