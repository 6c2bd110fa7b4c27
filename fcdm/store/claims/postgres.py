"""Job claims in PostgreSQL, for many machines: one row per job in the table `fcdm_claims`, decided
under row locks (INSERT ... ON CONFLICT, SELECT ... FOR UPDATE), so exactly one runner holds a job.

    fcdm-ablate run SPEC --claims postgresql://user@db-host/fcdm      # or FCDM_CLAIMS=postgresql://...

A row holds the job key (primary key), the holder's identity (host, boot id, pid namespace, pid, its
start time), a random token, a generation (raised by each takeover), a heartbeat counter (raised by
each beat) and the state (held | released). Observers judge a holder on another machine dead when its
counter stayed unchanged for `stale_after` seconds of their own clock (fcdm.store.claims.base), so no
two clocks are compared. A database that does not answer decides nothing: the heartbeat retries, and
a claim is lost only when its row is readable with another token or released.

The table is `fcdm_claims` rather than `claims` because the database is usually shared with MLflow's
and Optuna's tables. The URL's password reaches only the driver: never argv, logs or messages
(`redact`); prefer a ~/.pgpass file or PGPASSWORD to a password in the URL.
"""
from __future__ import annotations

import os
import re
import threading
import time
import uuid

from fcdm.store.claims.base import (
    CONTENDED_S,
    STALE_AFTER_S,
    Claim,
    ClaimContendedError,
    ClaimsError,
    Holder,
    backoff,
    identity,
    is_live,
)
from fcdm.util.redact import redact

TABLE = "fcdm_claims"
_COLUMNS = "key, generation, token, host, boot_id, pid_ns, pid, pid_start, note, state, beat"
_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    key text PRIMARY KEY, generation integer NOT NULL, token text NOT NULL, host text, boot_id text,
    pid_ns bigint, pid integer, pid_start text, note text, state text NOT NULL, beat bigint NOT NULL DEFAULT 0,
    claimed timestamptz NOT NULL DEFAULT now())"""
_instances: dict[tuple[str, int], PgClaims] = {}
_instances_lock = threading.Lock()


def is_postgres(url: str) -> bool:
    return re.match(r"^postgres(ql)?(\+\w+)?://", url) is not None


def driver():
    """psycopg 3, or one line saying how to install it."""
    try:
        import psycopg  # heavy: only with PostgreSQL claims
    except ImportError:
        raise ClaimsError("claims in PostgreSQL need the psycopg driver: pip install 'fcdm-ablate[postgres]'") from None
    return psycopg


class ClaimsUnavailable(ClaimsError):
    """The claims database did not answer (or refused a statement); the message carries no password."""

    @property
    def reason(self) -> str:
        return str(self).partition(": ")[2]


class PgClaims:
    """The claims in one PostgreSQL database: one connection per process, shared by its threads."""

    def __init__(self, url: str):
        self.url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)  # SQLAlchemy's driver suffix off
        self.shown = redact(url)
        self._conn = None
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, url: str) -> PgClaims:
        """The process's instance for `url` (a forked child gets its own: connections do not survive fork)."""
        with _instances_lock:
            return _instances.setdefault((url, os.getpid()), cls(url))

    def _message(self, e: Exception) -> str:
        """The driver's error in one line, without the URL's password."""
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        text = text.replace(self.url, self.shown)
        secret = self.url.partition("://")[2].rpartition("@")[0].partition(":")[2]
        return text.replace(secret, "***") if secret else text

    def _run(self, fn):
        """fn(cursor) in one transaction; a broken connection is dropped (the next call reconnects)."""
        psycopg = driver()
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                    try:
                        self._conn.execute(_SCHEMA)
                    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                        pass  # two processes created it at once: it exists
                with self._conn.transaction(), self._conn.cursor() as cur:
                    return fn(cur)
            except psycopg.Error as e:
                if isinstance(e, psycopg.OperationalError) and self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise ClaimsUnavailable(f"{self.shown}: {self._message(e)}") from None

    def _holder(self, row) -> Holder | None:
        if row is None:
            return None
        key, gen, token, host, boot, ns, pid, start, note, state, beat = row
        return Holder(host or "?", pid if pid is not None else -1, token, state, beat, gen, start, note or "",
                      boot, ns, f"{self.shown}#{key}")

    def holder(self, key: str) -> Holder | None:
        return self._run(lambda cur: self._holder(
            cur.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE key = %s", (key,)).fetchone()))

    def try_claim(self, key: str, stale_after: float = STALE_AFTER_S, note: str = "") -> Claim | Holder:
        """Claim job `key` under a row lock; the Claim, or the live Holder when another process has it."""
        deadline, attempt = time.monotonic() + CONTENDED_S, 0
        while True:
            try:
                return self._run(lambda cur: self._claim(cur, key, stale_after, note))
            except ClaimsUnavailable as e:
                if time.monotonic() > deadline:
                    raise ClaimContendedError(f"{self.shown}: job {key}: no claim decided within "
                                              f"{CONTENDED_S:.0f} s ({e.reason}); check the claims "
                                              f"database, or run without --claims to keep claims in the store")
                attempt += 1
                time.sleep(backoff(attempt))

    def _claim(self, cur, key: str, stale_after: float, note: str) -> Claim | Holder:
        token = uuid.uuid4().hex
        me = identity(token, note)
        values = (me["host"], me["boot_id"], me["pid_ns"], me["pid"], me["pid_start"], note)
        inserted = cur.execute(
            f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (%s, 0, %s, %s, %s, %s, %s, %s, %s, 'held', 0) "
            "ON CONFLICT (key) DO NOTHING RETURNING generation", (key, token, *values)).fetchone()
        if inserted is None:
            top = self._holder(cur.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE key = %s FOR UPDATE",
                                           (key,)).fetchone())
            if is_live(top, stale_after):
                return top
            cur.execute(f"UPDATE {TABLE} SET generation = generation + 1, token = %s, host = %s, boot_id = %s, "
                        "pid_ns = %s, pid = %s, pid_start = %s, note = %s, state = 'held', beat = 0, "
                        "claimed = now() WHERE key = %s", (token, *values, key))
        return Claim(key, None, token, backend=self, ref=key)

    def verdict(self, claim: Claim) -> str:
        """'held'; 'lost' when the row is readable with another token or released; 'unknown' when the
        database does not answer."""
        try:
            row = self._run(lambda cur: cur.execute(f"SELECT token, state FROM {TABLE} WHERE key = %s",
                                                    (claim.key,)).fetchone())
        except ClaimsUnavailable:
            return "unknown"
        return "held" if row is not None and row == (claim.token, "held") else "lost"

    def touch(self, claim: Claim) -> None:
        """The heartbeat: raise the row's counter (only while the row is still this claim's)."""
        self._run(lambda cur: cur.execute(f"UPDATE {TABLE} SET beat = beat + 1 WHERE key = %s AND token = %s "
                                          "AND state = 'held'", (claim.key, claim.token)))

    def release(self, claim: Claim) -> None:
        for attempt in range(8):
            try:
                self._run(lambda cur: cur.execute(f"UPDATE {TABLE} SET state = 'released' WHERE key = %s AND "
                                                  "token = %s AND state = 'held'", (claim.key, claim.token)))
                return
            except ClaimsUnavailable:
                time.sleep(backoff(attempt + 1))

    def adopt(self, ref: str, token: str, note: str = "") -> Claim | None:
        """Rewrite the holder of job `ref` with this process's identity, same token; None when the row
        is no longer that token's."""
        me = identity(token, note)
        row = self._run(lambda cur: cur.execute(
            f"UPDATE {TABLE} SET host = %s, boot_id = %s, pid_ns = %s, pid = %s, pid_start = %s, note = %s "
            "WHERE key = %s AND token = %s AND state = 'held' RETURNING generation",
            (me["host"], me["boot_id"], me["pid_ns"], me["pid"], me["pid_start"], note, ref, token)).fetchone())
        return None if row is None else Claim(ref, None, token, backend=self, ref=ref)
