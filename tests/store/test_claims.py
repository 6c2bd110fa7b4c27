"""Job claims: atomic, exclusive, taken over only when their holder is dead (fcdm.store.claims)."""
import multiprocessing as mp
import os
import subprocess
import sys
import time

from helpers import plant_claim

from fcdm.store import claims

STALE = 0.6  # stale_after in these tests, seconds


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


_plant = plant_claim


def test_claim_is_exclusive_and_release_frees_it(tmp_path):
    c = claims.try_claim(tmp_path, "abc-s0")
    assert isinstance(c, claims.Claim) and c.path.name == "00000000.json"
    again = claims.try_claim(tmp_path, "abc-s0")  # this process is alive: the claim is live
    assert isinstance(again, claims.Holder) and again.pid == os.getpid() and again.state == "held"
    claims.release(c)
    assert claims.holder(tmp_path, "abc-s0").state == "released"
    c2 = claims.try_claim(tmp_path, "abc-s0")
    assert isinstance(c2, claims.Claim) and c2.path.name == "00000001.json"  # generations only grow
    assert sorted(p.name for p in c2.path.parent.glob("*.json")) == ["00000001.json"]  # dead ones pruned


def test_dead_pid_claim_is_taken_over(tmp_path):
    _plant(tmp_path, "k-s0", pid=_dead_pid(), pid_start=None)
    c = claims.try_claim(tmp_path, "k-s0")
    assert isinstance(c, claims.Claim) and c.path.name == "00000001.json"
    assert not (c.path.parent / "00000000.json").exists()


def test_reused_pid_does_not_keep_a_dead_claim_alive(tmp_path):
    _plant(tmp_path, "k-s0", pid=os.getpid(), pid_start="1")  # our pid, but a different process start time
    assert isinstance(claims.try_claim(tmp_path, "k-s0"), claims.Claim)


def test_other_host_goes_stale_by_heartbeat_only(tmp_path):
    path = _plant(tmp_path, "k-s0", host="node-elsewhere", pid=1)
    os.utime(path, (time.time() - 120, time.time() - 120))  # its mtime says nothing: only a change does
    held = claims.try_claim(tmp_path, "k-s0", stale_after=STALE)
    assert isinstance(held, claims.Holder) and held.host == "node-elsewhere"
    time.sleep(STALE + 0.1)  # unchanged for stale_after seconds of our own clock
    assert isinstance(claims.try_claim(tmp_path, "k-s0", stale_after=STALE), claims.Claim)


def _race(store, key, barrier, results):
    barrier.wait()
    results.put(isinstance(claims.try_claim(store, key), claims.Claim))


def test_racing_takers_of_a_stale_claim_have_one_winner(tmp_path):
    ctx = mp.get_context("fork")
    for round_ in range(3):
        key = f"race{round_}-s0"
        _plant(tmp_path, key, pid=_dead_pid(), pid_start=None)
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(tmp_path, key, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        won = [results.get(timeout=5) for _ in procs]
        # The winners exited (the test's children), so later ones could take theirs over in turn; what
        # must never happen is two live holders: each generation has exactly one creator.
        gens = sorted(claims.claims_dir(tmp_path).joinpath(key).glob("*.json"))
        assert sum(won) == int(gens[-1].stem)  # one winner per generation above the planted 0


def test_racing_live_takers_exactly_one(tmp_path):
    """Racers that stay alive: exactly one of them holds the job."""
    ctx = mp.get_context("fork")
    _plant(tmp_path, "k-s0", pid=_dead_pid(), pid_start=None)
    barrier, results, done = ctx.Barrier(6), ctx.Queue(), ctx.Event()

    def hold(store, key):
        barrier.wait()
        results.put(isinstance(claims.try_claim(store, key), claims.Claim))
        done.wait(30)  # stay alive until everyone has tried

    procs = [ctx.Process(target=hold, args=(tmp_path, "k-s0")) for _ in range(6)]
    for p in procs:
        p.start()
    won = [results.get(timeout=60) for _ in procs]
    done.set()
    for p in procs:
        p.join(30)
    assert sum(won) == 1


def test_heartbeat_refreshes_and_detects_a_takeover(tmp_path):
    c = claims.try_claim(tmp_path, "k-s0")
    os.utime(c.path, (time.time() - 500, time.time() - 500))
    beat = claims.Heartbeat(interval=3600)
    try:
        beat.add(c)
        beat.beat()
        assert time.time() - c.path.stat().st_mtime < 5 and not c.lost
        _plant(tmp_path, "k-s0", gen=1, host="node-elsewhere", token="theirs")  # taken over meanwhile
        beat.beat()
        assert c.lost
        claims.release(c)  # a lost claim is not ours to release
        assert claims.holder(tmp_path, "k-s0").token == "theirs"
    finally:
        beat.stop()


def test_adopt_moves_the_claim_to_another_process_and_checks_the_token(tmp_path):
    c = claims.try_claim(tmp_path, "k-s0")
    code = ("import sys; from pathlib import Path; from fcdm.store import claims; "
            "a = claims.adopt(Path(sys.argv[1]), sys.argv[2]); print(a is not None)")
    out = subprocess.run([sys.executable, "-c", code, str(c.path), c.token], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    h = claims.holder(tmp_path, "k-s0")
    assert h.token == c.token and h.pid != os.getpid() and not claims.is_live(h)  # the adopter exited
    assert claims.adopt(c.path, "wrong-token") is None
