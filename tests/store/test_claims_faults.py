"""Claims under faults (fcdm.store.claims): transient file-system errors, machines that share a host name,
clocks that disagree, contention.

The file-system faults (ESTALE, EIO) cannot be produced on a local disk, so they are injected by
replacing an `os` function for a few calls; everything else is real files and processes.
"""
import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import plant_claim

from fcdm.errors import UserError
from fcdm.store import claims

STALE = 0.6  # stale_after in these tests, seconds


_plant = plant_claim


def _failing(monkeypatch, name, times, err=errno.ESTALE, under=None):
    """Make os.<name> raise OSError(err) for its next `times` calls on paths under `under`."""
    real, left = getattr(os, name), [times]

    def fake(path, *args, **kwargs):
        if left[0] > 0 and (under is None or str(path).startswith(str(under))):
            left[0] -= 1
            raise OSError(err, os.strerror(err), str(path))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(os, name, fake)
    return left


# -- item 3: transient errors ------------------------------------------------------------------------------

def test_heartbeat_thread_survives_transient_listing_errors_and_keeps_beating(tmp_path, monkeypatch, caplog):
    c = claims.try_claim(tmp_path, "k-s0")
    old = time.time() - 500
    os.utime(c.path, (old, old))
    left = _failing(monkeypatch, "listdir", 10**6, under=c.path.parent)  # ESTALE on every listing, for now
    beat = claims.Heartbeat(interval=0.05)
    try:
        beat.add(c)
        with caplog.at_level(logging.WARNING, logger="fcdm.claims"):
            time.sleep(1.0)
        assert beat._thread.is_alive() and not c.lost
        assert c.path.stat().st_mtime > old + 100  # touched although the folder could not be listed
        assert caplog.text.count("did not answer") == 1  # said once, not every beat
        left[0] = 0  # the file server recovers
        os.utime(c.path, (old, old))
        deadline = time.time() + 5
        while c.path.stat().st_mtime < old + 100 and time.time() < deadline:
            time.sleep(0.05)
        assert c.path.stat().st_mtime > old + 100 and not c.lost and beat._thread.is_alive()
    finally:
        beat.stop()


def test_heartbeat_logs_a_failing_touch_and_beats_again(tmp_path, monkeypatch, caplog):
    c = claims.try_claim(tmp_path, "k-s0")
    beat = claims.Heartbeat(interval=3600)
    try:
        beat.add(c)
        left = _failing(monkeypatch, "utime", 10**6, err=errno.EIO, under=c.path)
        with caplog.at_level(logging.WARNING, logger="fcdm.claims"):
            beat.beat()  # every retry fails: logged, not raised, not lost
        assert not c.lost and "heartbeat failed" in caplog.text and "Input/output error" in caplog.text
        left[0] = 0
        old = time.time() - 500
        os.utime(c.path, (old, old))
        beat.beat()
        assert c.path.stat().st_mtime > old + 100
    finally:
        beat.stop()


def test_one_unreadable_read_does_not_lose_a_healthy_claim(tmp_path, monkeypatch):
    c = claims.try_claim(tmp_path, "k-s0")
    beat = claims.Heartbeat(interval=3600)
    try:
        beat.add(c)
        real = Path.read_text
        left = [1]

        def flaky(self, *args, **kwargs):
            if self == c.path and left[0] > 0:
                left[0] -= 1
                raise OSError(errno.EIO, "Input/output error", str(self))
            return real(self, *args, **kwargs)
        monkeypatch.setattr(Path, "read_text", flaky)
        beat.beat()
        assert left == [0] and not c.lost
        left[0] = 10**6  # unreadable for good: still no evidence of a takeover
        beat.beat()
        assert not c.lost
        monkeypatch.setattr(Path, "read_text", real)
        c.path.write_text(json.dumps({**json.loads(c.path.read_text()), "token": "someone-else"}))
        beat.beat()  # readable, with another token: evidence
        assert c.lost
    finally:
        beat.stop()


def test_a_transient_error_while_claiming_is_retried(tmp_path, monkeypatch):
    (claims.claims_dir(tmp_path) / "k-s0").mkdir(parents=True)
    left = _failing(monkeypatch, "listdir", 3, under=claims.claims_dir(tmp_path))
    assert isinstance(claims.try_claim(tmp_path, "k-s0"), claims.Claim) and left == [0]


# -- item 4: machines and clocks ---------------------------------------------------------------------------

def test_same_host_name_in_another_pid_namespace_is_judged_by_its_heartbeat(tmp_path):
    """A container with host networking: same host name and boot id, another pid namespace. Its pid
    means nothing here (here it may be dead, or someone else), so only its heartbeat counts."""
    other_ns = claims.machine()["pid_ns"] + 1
    path = _plant(tmp_path, "k-s0", pid=999_999, pid_start=None, pid_ns=other_ns)  # no such pid here
    assert isinstance(claims.try_claim(tmp_path, "k-s0", stale_after=STALE), claims.Holder)
    deadline = time.time() + 2 * STALE
    n = 0
    while time.time() < deadline:  # it heartbeats: never taken
        n += 1
        os.utime(path, (1000.0 + n, 1000.0 + n))
        assert isinstance(claims.try_claim(tmp_path, "k-s0", stale_after=STALE), claims.Holder)
        time.sleep(0.05)
    time.sleep(STALE + 0.1)  # heartbeat stopped
    assert isinstance(claims.try_claim(tmp_path, "k-s0", stale_after=STALE), claims.Claim)


def test_another_boot_of_this_host_is_not_judged_by_pid(tmp_path):
    _plant(tmp_path, "k-s0", pid=os.getpid(), boot_id="another-boot")  # our pid, but not this boot's process
    assert isinstance(claims.try_claim(tmp_path, "k-s0", stale_after=STALE), claims.Holder)  # first sight: alive
    time.sleep(STALE + 0.1)
    assert isinstance(claims.try_claim(tmp_path, "k-s0", stale_after=STALE), claims.Claim)


@pytest.mark.parametrize("skew", [-55.0, -3600.0, 55.0, 3600.0])
def test_a_skewed_clock_neither_steals_a_live_claim_nor_keeps_a_dead_one(tmp_path, skew):
    """The holder's (or file server's) clock is `skew` seconds off ours: its mtimes are far in our past
    or future. Only whether they change matters."""
    path = _plant(tmp_path, "k-s0", host="node-elsewhere", pid=1)
    stop, beats = threading.Event(), [0]

    def heartbeat():  # the remote holder touching its claim with its own clock
        while not stop.is_set():
            t = time.time() + skew + beats[0] * 0.01
            os.utime(path, (t, t))
            beats[0] += 1
            stop.wait(0.1)
    t = threading.Thread(target=heartbeat)
    t.start()
    try:
        end = time.time() + 3 * STALE
        while time.time() < end:
            assert isinstance(claims.try_claim(tmp_path, "k-s0", stale_after=STALE), claims.Holder)
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    assert beats[0] > 5
    first = time.monotonic()
    while not isinstance(got := claims.try_claim(tmp_path, "k-s0", stale_after=STALE), claims.Claim):
        assert time.monotonic() - first < STALE + 1.0, "a dead holder was never taken over"
        time.sleep(0.05)
    assert time.monotonic() - first >= STALE - 0.2 and got.path.name == "00000001.json"


def test_a_pid_hidden_by_hidepid_proves_nothing(monkeypatch):
    monkeypatch.setattr(os, "kill", lambda pid, sig: (_ for _ in ()).throw(PermissionError(errno.EPERM, "no")))
    from fcdm.store.claims import base
    assert base.pid_verdict(999_999, "123") is None  # exists for kill, invisible in /proc: unknown
    assert base.pid_verdict(os.getpid(), claims.process_start(os.getpid())) is True


# -- contention: retries with backoff, then one line -------------------------------------------------------

def test_a_contended_claim_gives_up_with_one_line(tmp_path, monkeypatch):
    def always_taken(src, dst, *args, **kwargs):
        raise FileExistsError(errno.EEXIST, "File exists", str(dst))
    monkeypatch.setattr(os, "link", always_taken)
    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        claims.try_claim(tmp_path, "k-s0")
    took = time.monotonic() - t0
    msg = str(err.value)
    assert 1.0 <= took < 5.0 and "\n" not in msg and "k-s0" in msg and "run again" in msg
    assert not [p for p in (claims.claims_dir(tmp_path) / "k-s0").iterdir()]  # no temp file left


def test_a_job_never_claimed_is_looked_up_at_once(tmp_path):
    """`plan` asks for every job's holder: a missing claims folder is a fact, not a race to retry."""
    t0 = time.perf_counter()
    assert all(claims.holder(tmp_path, f"k{i}-s0") is None for i in range(50))
    assert time.perf_counter() - t0 < 0.5


def test_a_claim_file_that_stays_unreadable_ends_in_one_line_naming_it(tmp_path):
    path = _plant(tmp_path, "k-s0")
    path.write_bytes(b"")  # e.g. left empty by a full disk
    with pytest.raises(UserError) as err:
        claims.try_claim(tmp_path, "k-s0")
    assert str(path) in str(err.value) and "\n" not in str(err.value) and "delete it" in str(err.value)


def test_a_claimer_killed_while_claiming_leaves_nothing_that_blocks_the_job(tmp_path):
    """A runner SIGKILLed between writing its claim and linking it into place (the one moment of claiming a
    kill can interrupt) leaves only its temporary file: the job is unclaimed and the next runner takes it."""
    import subprocess
    import sys

    script = ("import os, signal, sys; from fcdm.store import claims; "
              "os.link = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "  # killed at the link
              "claims.try_claim(sys.argv[1], 'k-s0', note='killed runner')")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    d = claims.claims_dir(tmp_path) / "k-s0"
    assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] and claims.holder(tmp_path, "k-s0") is None
    c = claims.try_claim(tmp_path, "k-s0", note="next runner")
    assert isinstance(c, claims.Claim) and claims.holder(tmp_path, "k-s0").note == "next runner"
