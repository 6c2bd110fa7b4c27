"""Job claims: several `run` processes (terminals, cluster nodes) split one spec's jobs, and no job is
scheduled on two of them at once. Claims are scheduling; the trainer's own lock is what guarantees that
a job never trains twice at once (README, "Several machines").

Two stores of claims behind one small interface (`try_claim`, `still_held`, `release`, `holder`,
`adopt`, `Heartbeat`):
  files       `<store>/claims/<job key>/` (fcdm.store.claims.files): the default; one machine, or
              several on a shared file system
  PostgreSQL  a `claims` table with row locks (fcdm.store.claims.postgres): many machines; chosen by
              `run --claims postgresql://...` or the environment variable FCDM_CLAIMS

Every claim is judged alive by its holder's pid on the same machine (host + boot id + pid namespace),
else by its heartbeat as this process's own clock sees it change (fcdm.store.claims.base).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fcdm.store.claims.base import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    Claim,
    ClaimContendedError,
    ClaimsError,
    Holder,
    is_live,
    is_mine,
    log,
    machine,
    process_start,
)
from fcdm.store.claims.files import FileClaims, claims_dir
from fcdm.store.claims.postgres import PgClaims, is_postgres, redact

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "Claim", "ClaimContendedError", "ClaimsError", "FileClaims", "Heartbeat", "Holder",
           "PgClaims", "adopt", "backend", "claims_dir", "holder", "is_live", "is_mine", "machine",
           "process_start", "release", "still_held", "try_claim", "use_claims"]

CLAIMS_ENV = "FCDM_CLAIMS"  # where claims live: a postgresql:// URL (default: files under <store>/claims)


def backend(store: Path, where: str | None = None):
    """The claims of `store`: in PostgreSQL when `where` (else $FCDM_CLAIMS) is a postgresql:// URL, else
    files under <store>/claims."""
    where = where if where is not None else os.environ.get(CLAIMS_ENV, "")
    if where and is_postgres(where):
        return PgClaims.connect(where)
    return FileClaims(store)


def use_claims(where: str) -> None:
    """`run --claims URL`: keep this process's claims (and its cluster jobs') in PostgreSQL at `where`.

    Refused with one line: anything but a postgresql:// URL, and a URL carrying a password (it would show
    in `ps`; give it in FCDM_CLAIMS, ~/.pgpass or PGPASSWORD instead)."""
    if not is_postgres(where):
        raise ClaimsError(f"--claims: {redact(where)!r}: expected a postgresql://user@host/database URL (without "
                          f"--claims, claims are files under <store>/claims)")
    if redact(where) != where:
        raise ClaimsError(f"--claims: {redact(where)}: a password on the command line shows in `ps`; put the URL in "
                          f"the environment variable {CLAIMS_ENV}, or the password in ~/.pgpass or PGPASSWORD")
    os.environ[CLAIMS_ENV] = where


def holder(store: Path, key: str) -> Holder | None:
    """The holder of job `key`'s claim, or None when the job was never claimed."""
    return backend(store).holder(key)


def try_claim(store: Path, key: str, stale_after: float = STALE_AFTER_S, note: str = "") -> Claim | Holder:
    """Claim job `key`; returns the Claim, or the live Holder when another process has it."""
    return backend(store).try_claim(key, stale_after, note)


def still_held(claim: Claim) -> bool:
    """True when `claim` is verifiably still ours (False also when its store cannot tell just now)."""
    return claim.backend.verdict(claim) == "held"


def release(claim: Claim) -> None:
    """Mark `claim` released, unless it was lost to another runner."""
    if not claim.lost:
        claim.backend.release(claim)


def adopt(ref: str | Path, token: str, note: str = "", store: Path | None = None) -> Claim | None:
    """Take over the claim `ref` (Claim.ref: a claim file, or a job key in PostgreSQL) this process was
    handed, with the same token; None when it is no longer that token's."""
    where = os.environ.get(CLAIMS_ENV, "")
    chosen = PgClaims.connect(where) if where and is_postgres(where) else FileClaims(store or Path("."))
    return chosen.adopt(str(ref), token, note)


@dataclass
class Heartbeat:
    """A daemon thread that beats every held claim each `interval` seconds and flags lost ones.

    It never dies: transient errors are retried inside each step, anything else is logged and the next
    beat tries again. A claim is flagged lost only on evidence (see each backend's `verdict`)."""
    interval: float = HEARTBEAT_S
    claims: dict[str, Claim] = field(default_factory=dict)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failing: set[str] = set()  # claims whose last beat failed (logged once per streak)
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
            try:
                verdict = c.backend.verdict(c)
                if verdict == "lost":
                    c.lost = True
                    continue
                c.backend.touch(c)  # also when the store would not say: a held claim must not go stale
                problem = None if verdict == "held" else "its store did not answer"
            except Exception as e:  # noqa: BLE001 - the heartbeat must outlive any one failure
                problem = f"{type(e).__name__}: {e}"
            self._report(c, problem)

    def _report(self, c: Claim, problem: str | None) -> None:
        if problem is None:
            if c.key in self._failing:
                self._failing.discard(c.key)
                log.warning("claim %s: heartbeat works again", c.key)
            return
        if c.key not in self._failing:
            self._failing.add(c.key)
            log.warning("claim %s: heartbeat failed (%s); retrying every %.0f s", c.key, problem, self.interval)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - never die silently: say so and beat again
                log.exception("claims heartbeat failed; beating again in %.0f s", self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)
