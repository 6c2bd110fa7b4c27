"""Distributed sweeps on a real PostgreSQL server: two `fcdm-ablate sweep` workers share one study.

One worker is SIGKILLed while its trial trains; the other fails that trial once its heartbeat lapses,
runs its retry (the job resumes from its checkpoint) and completes the study. Every trial is
recorded once in Optuna and its job once in MLflow.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pg import postgres_server
from sweep_specs import LR, mlflow_runs, write_spec

TRIALS = 6


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


def start_worker(spec: Path, store: Path, url: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fcdm.cli", "sweep", str(spec), "--optuna", "--storage", url, "--trials", str(TRIALS),
           "--heartbeat", "2", "--store", str(store)]
    with open(log, "w") as f:  # its own session: killing it kills only the worker (the trainer dies with it)
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def held_by(store: Path, pid: int) -> list[str]:
    """Job keys whose claim the process `pid` holds and whose trainer has written a checkpoint."""
    from fcdm.store import claims

    keys = []
    for d in (store / "claims").glob("*") if (store / "claims").is_dir() else []:
        h = claims.holder(store, d.name)
        if h and h.pid == pid and h.state == "held" and any((store / "checkpoints" / d.name).glob("step_*.pt")):
            keys.append(d.name)
    return keys


@pytest.mark.e2e
def test_two_workers_on_postgres_one_killed_mid_trial(tmp_path, pg_url):
    spec = write_spec(tmp_path, "tpg", {"metric": "fid", "params": LR})
    store = tmp_path / "store"
    # Both start at once, as on two machines: the storage's tables, the study and MLflow's database are
    # created by whichever comes first, and the other waits for or retries that.
    a = start_worker(spec, store, pg_url, tmp_path / "a.log")
    b = start_worker(spec, store, pg_url, tmp_path / "b.log")
    try:
        deadline = time.time() + 300
        while not (victims := held_by(store, a.pid)):  # wait until a's trial has a checkpoint
            assert a.poll() is None and time.time() < deadline, (tmp_path / "a.log").read_text()
            time.sleep(0.1)
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()
        assert b.wait(timeout=600) == 0, (tmp_path / "b.log").read_text()
    finally:
        for p in (a, b):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    out = (tmp_path / "b.log").read_text()
    study = optuna.load_study(study_name="tpg-smoke", storage=pg_url)
    trials = sorted(study.trials, key=lambda t: t.number)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(done) == TRIALS and len(failed) == 1, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The killed trial was retried with the same parameters, and its job resumed from the checkpoint.
    (retry,) = [t for t in done if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is not None]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == failed[0].number
    assert retry.params == failed[0].params and retry.user_attrs["config_hash"] == failed[0].user_attrs["config_hash"]
    assert f"{retry.user_attrs['config_hash']}-s0" in victims
    assert f"trial {retry.number}: training" in out and "resuming at step" in out
    # Every finished trial once in MLflow: one run per job, tagged with its trial.
    _, runs = mlflow_runs(store, "tags.`fcdm.study` = 'tpg-smoke'")
    runs = {r.info.run_id: r for r in runs if r.data.tags.get("fcdm.kind") != "study"}
    assert len(runs) == TRIALS and {t.user_attrs["run_id"] for t in done} == set(runs)
    assert sorted(int(r.data.tags["fcdm.trial"]) for r in runs.values()) == sorted(t.number for t in done)


@pytest.mark.e2e
def test_a_password_in_the_storage_and_tracking_uris_is_never_shown(tmp_path, pg_url):
    """Issue 16 item 6: a sweep whose study storage AND MLflow tracking URI carry a password (one with '/',
    '@' and ':'; the test server trusts any) shows it nowhere: not in the output, the trainer's command line
    or train.log, the `fcdm.storage` tag or any tag or param. The trainer still logs to that tracking server
    (the URI reaches it through MLFLOW_TRACKING_URI), or the sweep could not find its run."""
    from urllib.parse import quote

    import psycopg
    from mlflow import MlflowClient

    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE tracking")  # MLflow and Optuna each keep an alembic_version table
    secret = "s3/cr@t:pw"
    url = pg_url.replace("postgres@", f"postgres:{quote(secret, safe='')}@")
    tracking = url.rsplit("/", 1)[0] + "/tracking"
    spec = write_spec(tmp_path, "tsecret", {"metric": "fid", "params": LR})
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "fcdm.cli", "sweep", str(spec), "--optuna", "--storage", url, "--tracking-uri", tracking,
           "--trials", "1", "--store", str(store)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    shown = [out] + [p.read_text(errors="replace") for p in store.rglob("*") if p.is_file() and p.suffix in (".log", ".json", ".yaml")]
    client = MlflowClient(tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2  # the trial's job and the study run
    (study,) = [r for r in runs if r.data.tags.get("fcdm.kind") == "study"]
    assert study.data.tags["fcdm.storage"] == url.replace(quote(secret, safe=""), "***")
    shown += [json.dumps(r.data.tags) + json.dumps(r.data.params) for r in runs]
    logs = list(store.rglob("train.log"))
    assert logs and all("--tracking-uri" not in p.read_text() for p in logs)
    for text in shown:
        assert secret not in text and quote(secret, safe="") not in text
