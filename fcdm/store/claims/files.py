"""Job claims as files: several `run` processes (terminals, or cluster nodes on a shared filesystem)
split one spec's jobs, and no job is scheduled on two of them at once.

A job's claims live in `<store>/claims/<job key>/` as numbered generations `00000000.json`,
`00000001.json`, ...; the highest generation is the job's claim. Its JSON says who holds it (host,
boot id, pid namespace, pid, the pid's start time, a random `token`) and whether it is `held` or
`released`; its modification time is the holder's heartbeat, touched every few seconds by a thread and
compared by observers only for equality (fcdm.store.claims.base: the observer's own clock judges).

Claiming a job means creating the next generation with `os.link` from a fully written temporary
file: link is atomic and fails when the name exists (also on NFS, where O_EXCL historically was
not), so exactly one of several racing runners gets each generation. A generation may be taken
when the one below it is released, or its holder is dead (`is_live`). Generations only grow (the top
one is never deleted; release rewrites it as `released`), so a runner that judged an old generation
stale and acts late can never re-create a name that someone else holds the top of: after linking,
the taker checks that its generation is the top one and backs off if not.

A holder has lost its job only on evidence: a readable generation above its own, or its own
generation readable with another token or released (`verdict`). An unreadable listing or file (ESTALE,
EIO on a network file system) is retried and, if it persists, decides nothing.
"""
from __future__ import annotations

import errno
import json
import os
import re
import time
import uuid
from pathlib import Path

from fcdm.store.claims.base import (
    CONTENDED_S,
    STALE_AFTER_S,
    TRANSIENT,
    Claim,
    ClaimContendedError,
    Holder,
    backoff,
    identity,
    is_live,
    retrying,
)
from fcdm.util.files import atomic_write, durable_temp

_GEN = re.compile(r"^(\d{8})\.json$")


def claims_dir(store: Path) -> Path:
    return Path(store) / "claims"


def _listing(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in os.listdir(directory) if (m := _GEN.match(p)))


def generations(directory: Path) -> list[int]:
    """The generations in `directory` ([] when it does not exist: a fact, not retried); transient errors
    retried, then raised."""
    try:
        return retrying(_listing, directory, transient=TRANSIENT - {errno.ENOENT})
    except FileNotFoundError:
        return []


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in generation file `path`; None when it cannot be read (gone, mid-write, I/O)."""
    try:
        info = json.loads(path.read_text())
        mtime = path.stat().st_mtime_ns  # after the open, which revalidates NFS's cached attributes
    except (OSError, ValueError):
        return None
    return Holder(info.get("host", "?"), int(info.get("pid", -1)), info.get("token", ""), info.get("state", "held"),
                  mtime, int(path.stem), info.get("pid_start"), info.get("note", ""), info.get("boot_id"),
                  info.get("pid_ns"), str(path.parent))


class FileClaims:
    """The claims of one store, as files under `<store>/claims/`."""

    def __init__(self, store: Path):
        self.root = claims_dir(store)

    def holder(self, key: str) -> Holder | None:
        """The top generation's holder of job `key`, or None when the job was never claimed (or unreadable)."""
        d = self.root / key
        gens = generations(d)
        return retrying_read(d / f"{gens[-1]:08d}.json") if gens else None

    def try_claim(self, key: str, stale_after: float = STALE_AFTER_S, note: str = "") -> Claim | Holder:
        """Claim job `key`; the Claim, or the live Holder when another process has it. Retries with backoff
        while other runners move or the file system fails, then raises ClaimContendedError (one line)."""
        d = self.root / key
        d.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        tmp = durable_temp(d, json.dumps(identity(token, note)))
        deadline, why = time.monotonic() + CONTENDED_S, ""
        try:
            for attempt in range(10_000):
                if attempt and time.monotonic() > deadline:
                    break
                if attempt:
                    time.sleep(backoff(attempt))
                try:
                    got, why = self._attempt(d, key, tmp, token, stale_after)
                except OSError as e:
                    why = f"the file system failed: {e.strerror or e}"
                    continue
                if got is not None:
                    return got
            raise ClaimContendedError(f"{d}: job {key}: no claim decided within {CONTENDED_S:.0f} s ({why}); "
                                      f"run again, or check that the file system under {self.root} works")
        finally:
            tmp.unlink(missing_ok=True)

    def _attempt(self, d: Path, key: str, tmp: Path, token: str, stale_after: float):
        """One try: (the Claim or the live Holder, None) or (None, why) when it must be tried again."""
        gens = generations(d)
        if gens:
            top = read_holder(d / f"{gens[-1]:08d}.json")
            if top is None:  # unreadable: the holder is mid-release, or a transient error: retry
                return None, (f"its claim {d / f'{gens[-1]:08d}.json'} could not be read; if it stays unreadable "
                              "and no runner holds the job, delete it")
            if is_live(top, stale_after):
                return top, None
        mine = (gens[-1] + 1) if gens else 0
        path = d / f"{mine:08d}.json"
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None, "other runners kept claiming it"
        if generations(d)[-1] != mine:  # a late taker re-created a pruned generation: back off
            path.unlink(missing_ok=True)
            return None, "other runners kept claiming it"
        for g in gens:  # the generations below ours are dead; keep the directory small
            (d / f"{g:08d}.json").unlink(missing_ok=True)
        return Claim(key, path, token, backend=self, ref=str(path)), None

    def verdict(self, claim: Claim) -> str:
        """'held', 'lost' (on evidence: a readable higher generation, or ours readable with another token or
        released), or 'unknown' (the file system would not say, even after retries)."""
        d = claim.path.parent
        try:
            gens = generations(d)
        except OSError:
            return "unknown"
        mine = int(claim.path.stem)
        if gens and gens[-1] > mine:
            return "lost" if retrying_read(d / f"{gens[-1]:08d}.json") is not None else "unknown"
        h = retrying_read(claim.path)
        if h is None:
            return "unknown"
        return "held" if h.token == claim.token and h.state == "held" else "lost"

    def touch(self, claim: Claim) -> None:
        """The heartbeat: refresh the claim file's mtime (transient errors retried, then raised)."""
        retrying(os.utime, claim.path)

    def adopt(self, ref: str, token: str, note: str = "") -> Claim | None:
        """Take over a claim this process was handed (a cluster job adopting its runner's claim): rewrite
        it with this process's identity, same token. None when the claim is no longer that token's."""
        path = Path(ref)
        claim = Claim(path.parent.name, path, token, backend=self, ref=ref)
        if self.verdict(claim) != "held":
            return None
        atomic_write(claim.path, json.dumps(identity(token, note)))
        return claim

    def release(self, claim: Claim) -> None:
        """Mark `claim` released (its generation stays, so generations keep growing)."""
        for attempt in range(8):
            if attempt:
                time.sleep(backoff(attempt))
            verdict = self.verdict(claim)
            if verdict == "lost":
                return
            if verdict == "unknown":
                continue
            try:
                info = json.loads(retrying(claim.path.read_text))
                info.update(state="released", released=time.time())
                atomic_write(claim.path, json.dumps(info))
                return
            except (OSError, ValueError):
                continue


def retrying_read(path: Path, attempts: int = 5) -> Holder | None:
    """read_holder with a few short retries (a transient error, a file mid-replace); None if it persists."""
    for attempt in range(attempts):
        h = read_holder(path)
        if h is not None:
            return h
        time.sleep(backoff(attempt, cap=0.1))
    return None
