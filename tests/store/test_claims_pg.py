"""Claims in PostgreSQL (fcdm.store.claims.postgres) on a real server: exclusive under row locks, taken
over only from dead holders (pid on this machine, else a heartbeat counter that stopped changing),
never two runners on one job, and the password never in a message or argv."""
import json
import logging
import os
import subprocess
import sys
import time

import pytest
from pg import postgres_server

from fcdm.errors import UserError
from fcdm.store import claims

STALE = 0.6


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


def _sql(url, query, params=()):
    import psycopg

    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(query, params)


def test_claim_is_exclusive_release_frees_it_and_dead_pids_are_taken_over(pg_url, tmp_path):
    pg = claims.backend(tmp_path, pg_url)
    assert isinstance(pg, claims.PgClaims)
    c = pg.try_claim("a-s0")
    assert isinstance(c, claims.Claim) and claims.still_held(c)
    again = pg.try_claim("a-s0")  # this process is alive: live
    assert isinstance(again, claims.Holder) and again.pid == os.getpid() and again.generation == 0
    claims.release(c)
    assert pg.holder("a-s0").state == "released" and not claims.still_held(c)
    c2 = pg.try_claim("a-s0")
    assert isinstance(c2, claims.Claim) and pg.holder("a-s0").generation == 1
    # A runner of this machine that died holding a job: its pid is gone, so it is taken over at once.
    code = ("import sys; from pathlib import Path; from fcdm.store import claims; "
            "c = claims.backend(Path('.'), sys.argv[1]).try_claim('b-s0'); print(type(c).__name__)")
    out = subprocess.run([sys.executable, "-c", code, pg_url], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Claim"
    assert isinstance(pg.try_claim("b-s0"), claims.Claim) and pg.holder("b-s0").generation == 1


def test_another_machine_is_judged_by_its_counter_on_our_clock(pg_url, tmp_path):
    pg = claims.backend(tmp_path, pg_url)
    _sql(pg_url, "INSERT INTO fcdm_claims (key, generation, token, host, boot_id, pid_ns, pid, state, beat) "
                 "VALUES ('r-s0', 4, 'theirs', 'node-elsewhere', 'boot-x', 1, 1, 'held', 7)")
    end = time.time() + 3 * STALE
    while time.time() < end:  # their heartbeat raises the counter: never taken
        _sql(pg_url, "UPDATE fcdm_claims SET beat = beat + 1 WHERE key = 'r-s0'")
        assert isinstance(pg.try_claim("r-s0", stale_after=STALE), claims.Holder)
        time.sleep(0.1)
    time.sleep(STALE + 0.1)  # the counter stopped
    c = pg.try_claim("r-s0", stale_after=STALE)
    assert isinstance(c, claims.Claim) and pg.holder("r-s0").generation == 5


def test_heartbeat_counts_and_loses_only_on_evidence(pg_url, tmp_path):
    pg = claims.backend(tmp_path, pg_url)
    c = pg.try_claim("h-s0")
    beat = claims.Heartbeat(interval=3600)
    try:
        beat.add(c)
        before = pg.holder("h-s0").beat
        beat.beat()
        assert pg.holder("h-s0").beat == before + 1 and not c.lost
        down = claims.PgClaims("postgresql://postgres@127.0.0.1:1/fcdm")  # a database that does not answer
        c.backend = down
        beat.beat()
        assert not c.lost and beat._thread.is_alive()
        c.backend = pg
        _sql(pg_url, "UPDATE fcdm_claims SET token = 'theirs', generation = generation + 1 WHERE key = 'h-s0'")
        beat.beat()
        assert c.lost
    finally:
        beat.stop()


RUNNER = r"""
import json, sys, time
from pathlib import Path
from fcdm.store import claims
keys, out = sys.argv[1].split(","), sys.argv[2]
got = []
for k in keys:
    c = claims.try_claim(Path("."), k, note="runner")
    if isinstance(c, claims.Claim):
        got.append(k)
        time.sleep(0.02)
Path(out).write_text(json.dumps(got))
time.sleep(3)  # stay alive (holding) while the other runner tries
"""


def test_two_runners_on_many_jobs_never_hold_the_same(pg_url, tmp_path):
    keys = [f"job{i}-s0" for i in range(12)]
    env = {**os.environ, "FCDM_CLAIMS": pg_url}
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, ",".join(order), str(tmp_path / f"r{n}.json")], env=env)
             for n, order in enumerate([keys, keys[::-1]])]
    for p in procs:
        assert p.wait(120) == 0
    a, b = (set(json.loads((tmp_path / f"r{n}.json").read_text())) for n in range(2))
    assert not a & b and a | b == set(keys), (a, b)


def test_the_password_never_shows(pg_url, tmp_path, monkeypatch, caplog):
    secret = "s3cr/et@:pw"
    bad = "postgresql://postgres:" + secret + "@127.0.0.1:1/fcdm"  # nothing listens on port 1
    with pytest.raises(UserError) as err:
        claims.backend(tmp_path, bad).try_claim("p-s0")
    assert secret not in str(err.value) and "***" in str(err.value) and "\n" not in str(err.value)
    beat = claims.Heartbeat(interval=3600)
    try:
        beat.add(claims.Claim("p-s0", None, "tok", backend=claims.backend(tmp_path, bad), ref="p-s0"))
        with caplog.at_level(logging.WARNING, logger="fcdm.claims"):
            beat.beat()
    finally:
        beat.stop()
    assert "heartbeat failed" in caplog.text and "***" in caplog.text and secret not in caplog.text
    with pytest.raises(UserError) as err:  # on the command line it would show in `ps`: refused
        claims.use_claims(bad)
    assert secret not in str(err.value) and "FCDM_CLAIMS" in str(err.value)
    monkeypatch.setenv("FCDM_CLAIMS", "")  # restored (unset) after the test
    claims.use_claims(pg_url)
    assert os.environ["FCDM_CLAIMS"] == pg_url


def test_run_claims_option_refuses_a_password_in_one_line(tmp_path):
    from helpers import ROOT

    out = subprocess.run([sys.executable, "-m", "fcdm.cli", "run", str(ROOT / "ablations" / "kernel_size.yaml"),
                          "--store", str(tmp_path / "store"), "--claims", "postgresql://u:s3cret@db/fcdm"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "s3cret" not in out.stderr + out.stdout
    assert "FCDM_CLAIMS" in out.stderr and not (tmp_path / "store").exists()


@pytest.mark.e2e
def test_two_run_processes_share_a_spec_through_postgres_claims(pg_url, tmp_path):
    """Two `fcdm-ablate run` processes (FCDM_CLAIMS in their environment, as on two machines) split a
    three-job spec: every job trained once, its claim row released, no claim file in the store."""
    import yaml
    from helpers import SMOKE, all_runs

    from fcdm.spec import expand

    profile = {"model.args.hidden_size": 8, "model.args.depth": [1, 0, 1, 0, 1], "train.batch_size": 16,
               "train.steps": 20, "log.every": 5, "log.checkpoint_every": 5, "eval.at": [1.0],
               "eval.grid_per_class": 1, "eval.sampling_steps": 2, "eval.metrics": []}
    spec = tmp_path / "pgtwo.yaml"
    spec.write_text(yaml.safe_dump({"name": "pgtwo", "base": str(SMOKE), "profiles": {"smoke": profile},
                                    "axes": {"model.args.kernel_size": [3, 5, 7]}}))
    store = tmp_path / "store"
    env = {**os.environ, "FCDM_CLAIMS": pg_url, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fcdm.cli", "run", str(spec), "--profile", "smoke", "--store", str(store),
           "--jobs", "1", "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    jobs = expand(spec, "smoke")
    runs = {}
    for r in all_runs(store):
        runs.setdefault(r.data.tags["fcdm.config_hash"], []).append(r)
    assert all(len(runs[j.hash]) == 1 and runs[j.hash][0].info.status == "FINISHED" for j in jobs), outs
    starts = [(store / "jobs" / j.key / "train.log").read_text().count("\n=== ") for j in jobs]
    assert starts == [1, 1, 1], outs
    pg = claims.backend(store, pg_url)
    assert all(pg.holder(j.key).state == "released" for j in jobs)
    assert not (store / "claims").exists()
