"""The job runner (fcdm.runner, fcdm.launchers) and `fcdm-ablate run`, with real trainer processes.

The end-to-end tests (two runners, SIGINT / SIGKILL then rerun) start real `fcdm-ablate run` processes,
as the issue asks; each trainer is the tiny config of helpers.py (width 8, 20-300 steps).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SMOKE, all_runs, client
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.launchers import LauncherError, launcher_options, make_launcher
from fcdm.launchers.resources import default_parallel, slot_env
from fcdm.launchers.slurm import slurm_minutes
from fcdm.runner import run_jobs
from fcdm.spec.job import Job
from fcdm.store import claims
from fcdm.store.jobs import job_dir, job_status
from fcdm.store.tracking import TAG_SPECS

TINY_PROFILE = {"model.args.hidden_size": 8, "model.args.depth": [1, 0, 1, 0, 1], "train.batch_size": 16,
                "train.steps": 20, "log.every": 5, "log.checkpoint_every": 5, "eval.at": [1.0],
                "eval.grid_per_class": 1, "eval.sampling_steps": 2, "eval.metrics": []}


def _job(make, spec: str, k: int, *extra: str) -> Job:
    cfg = make(f"model.args.kernel_size={k}", "train.steps=20", "log.checkpoint_every=5", f"name={spec}/k={k}",
               f"log.experiment={spec}", *extra)
    return Job(spec, f"{spec}/kernel_size={k}", cfg, axes={"model.args.kernel_size": k}, profile="smoke")


def _spec(path: Path, name: str, kernels, zip=None, **profile) -> Path:
    import yaml

    spec = {"name": name, "base": str(SMOKE), "profiles": {"smoke": {**TINY_PROFILE, **profile}}}
    if kernels:
        spec["axes"] = {"model.args.kernel_size": list(kernels)}
    if zip:
        spec["zip"] = zip
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fcdm.cli", "run", *map(str, args), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _runs_by_key(store):
    out = {}
    for r in all_runs(store):
        out.setdefault(f"{r.data.tags['fcdm.config_hash']}-s{r.data.tags['fcdm.seed']}", []).append(r)
    return out


def _starts(store, job) -> int:
    """How many times a runner started this job's trainer (one header line per start in its log)."""
    log = job_dir(store, job) / "train.log"
    return log.read_text().count("\n=== ") if log.exists() else 0


# -- resources and options (no training) -----------------------------------------------------------------

def test_slots_share_threads_and_deal_out_gpus():
    assert slot_env(0, 2, [], 2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert slot_env(0, 1, [], 2)["OMP_NUM_THREADS"] == "2"
    assert slot_env(0, 4, [], 2)["OMP_NUM_THREADS"] == "1"  # never 0 threads
    assert [slot_env(i, 4, list("01234567"), 16)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0,1", "2,3", "4,5", "6,7"]
    assert [slot_env(i, 3, ["0", "1"], 8)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]
    assert slot_env(1, 2, ["0", "1"], 16, procs=2)["OMP_NUM_THREADS"] == "4"
    assert default_parallel(["0", "1", "2"], 16, 10) == 3 and default_parallel([], 2, 5) == 2
    assert default_parallel([], 2, 1) == 1


def test_launcher_options_and_their_errors(tiny_config):
    assert launcher_options("slurm", {"slurm": {"partition": "gpu"}}, ["time=90", "partition=big"]) == \
        {"partition": "big", "time": 90}
    assert launcher_options("accelerate", None, [], num_processes=2, config_file=None) == {"num_processes": 2}
    assert slurm_minutes("1-02:30:00") == 1590 and slurm_minutes("45") == 45
    with pytest.raises(LauncherError, match="expected key=value"):
        launcher_options("slurm", None, ["partition"])
    with pytest.raises(LauncherError, match="takes no options"):
        make_launcher("local", {"num_processes": 2})
    with pytest.raises(LauncherError, match="sbatch is not on PATH"):
        make_launcher("slurm", {})
    with pytest.raises(LauncherError, match="'walltime' is unknown"):
        make_launcher("slurm", {"cluster": "local", "walltime": 5})
    acc = make_launcher("accelerate", {"num_processes": 2, "mixed_precision": "bf16"})
    with pytest.raises(LauncherError, match="set it with --set train.mixed_precision=bf16"):
        acc.check([_job(tiny_config, "t", 3)])
    argv = make_launcher("accelerate", {"num_processes": 2}).argv(_job(tiny_config, "t", 3), Path("c.yaml"),
                                                                  Path("s"), {"OMP_NUM_THREADS": "1"})
    # Two gloo processes on CPU need --multi_gpu (--cpu silently runs one).
    assert "--multi_gpu" in argv and argv[argv.index("--num_processes") + 1] == "2"
    assert argv[argv.index("--mixed_precision") + 1] == "no" and "--main_process_port" in argv


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    spec = _spec(tmp_path / "t.yaml", "t", [3])
    cases = [([str(tmp_path / "missing.yaml")], "missing.yaml"),
             ([str(spec), "--launcher", "slurm"], "sbatch is not on PATH"),
             ([str(spec), "--num-processes", "2"], "--launcher local takes no options"),
             ([str(spec), "--launcher", "slurm", "--launcher-opt", "partition"], "expected key=value"),
             ([str(spec), "--launcher", "accelerate", "--launcher-opt", "mixed_precision=bf16"],
              "--set train.mixed_precision=bf16")]
    for args, needle in cases:
        result = CliRunner().invoke(app, ["run", *args, "--store", str(tmp_path / "store"), "--no-progress"])
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, result.output)
    assert not (tmp_path / "store").exists()  # nothing written


# -- the runner, in process -------------------------------------------------------------------------------

@pytest.mark.e2e
def test_trains_takes_over_a_dead_claim_reports_failures_and_skips_on_rerun(tmp_path, tiny_config):
    store = tmp_path / "store"
    ok = _job(tiny_config, "t", 3)
    bad = _job(tiny_config, "t", 5, "train.lr=1e12", "train.grad_clip=null")  # diverges: the trainer exits 3
    # A claim left by a runner that died: taken over at once (same host, pid gone).
    d = claims.claims_dir(store) / ok.key
    d.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (d / "00000000.json").write_text(json.dumps({**claims.machine(), "pid": dead.pid, "token": "x",
                                                 "state": "held"}))
    assert job_status(store, ok).state == "new"

    summary = run_jobs([ok, bad], store, parallel=2, progress=False)
    states = {o.job.key: o for o in summary.outcomes}
    assert states[ok.key].state == "finished" and states[ok.key].resumed_from is None
    assert states[bad.key].state == "failed" and states[bad.key].exit_code == 3
    assert "loss became" in states[bad.key].reason and "lower train.lr" in states[bad.key].reason
    assert not summary.ok and "FAILED  kernel_size=5 s0" in summary.render()
    assert str(job_dir(store, bad) / "train.log") in summary.render()
    assert job_status(store, ok).state == "finished" and job_status(store, bad).state == "failed"
    assert claims.holder(store, ok.key).generation == 1 and claims.holder(store, ok.key).state == "released"
    assert (job_dir(store, ok) / "config.yaml").is_file()
    runs = _runs_by_key(store)
    assert len(runs[ok.key]) == 1 and runs[bad.key][0].info.status == "FAILED"
    run = runs[ok.key][0]
    assert run.info.status == "FINISHED" and run.data.tags[TAG_SPECS] == ",t,"
    assert client(store).get_experiment(run.info.experiment_id).name == "t"

    # Rerun from another spec that shares the configuration: skipped, and tagged with that spec too.
    shared = Job("u", "u/kernel_size=3", ok.config, profile="smoke")
    again = run_jobs([shared], store, progress=False)
    assert [o.state for o in again.outcomes] == ["skipped"] and again.ok
    assert client(store).get_run(run.info.run_id).data.tags[TAG_SPECS] == ",t,u,"
    assert _starts(store, ok) == 1

    # --fail-fast: the failure stops the queue; the next job (less work left: it starts second) never starts.
    later = _job(tiny_config, "t", 7, "train.steps=10")
    ff = run_jobs([bad, later], store, parallel=1, fail_fast=True, progress=False)
    assert [o.state for o in ff.outcomes] == ["failed", "pending"] and _starts(store, later) == 0


@pytest.mark.e2e
def test_the_longest_job_starts_first_and_takes_the_core_the_other_frees(tmp_path, tiny_config, monkeypatch, capsys):
    import fcdm.runner.run as run_module

    monkeypatch.setattr(run_module, "cpu_count", lambda: 2)  # 2 cores, one thread per job, whatever runs the test
    monkeypatch.setattr(run_module.IdleMeter, "idle_cores", lambda self: 2.0)  # and nothing else uses them
    store = tmp_path / "store"
    short = _job(tiny_config, "h", 3)
    long = _job(tiny_config, "h", 5, "train.steps=400", "log.checkpoint_every=1000")
    summary = run_jobs([short, long], store, parallel=2, progress=False)
    out = capsys.readouterr().out
    assert summary.ok, out
    assert out.index(f"starting {long.label}") < out.index(f"starting {short.label}"), out  # longest first
    assert f"starting {short.label} (pid " in out and ", 1 thread(s), log " in out
    assert f"{long.label}: 1 -> 2 threads (a core is free and nothing is left to start)" in out, out
    log = (job_dir(store, long) / "train.log").read_text()
    assert "threads: 2 from step " in log, log
    run = _runs_by_key(store)[long.key][0]
    assert run.data.tags["fcdm.threads"].startswith("1; 2 from step ")
    table = [ln.split()[:3] for ln in summary.render().splitlines()[1:]]
    assert table == [["job", "seed", "status"], ["kernel_size=3", "0", "finished"], ["kernel_size=5", "0", "finished"]]


@pytest.mark.e2e
def test_accelerate_launcher_runs_two_gloo_processes(tmp_path, tiny_config):
    store = tmp_path / "store"
    job = _job(tiny_config, "t", 3)
    summary = run_jobs([job], store, launcher="accelerate", launcher_options={"num_processes": 2}, progress=False)
    assert summary.ok, (job_dir(store, job) / "train.log").read_text()[-3000:]
    run = _runs_by_key(store)[job.key][0]
    assert run.data.tags["fcdm.processes"] == "2" and run.info.status == "FINISHED"
    assert "accelerate.commands.launch" in (job_dir(store, job) / "train.log").read_text()


@pytest.mark.e2e
def test_slurm_launcher_through_submitit_then_force_retrains_in_a_new_run(tmp_path, tiny_config):
    store = tmp_path / "store"
    job = _job(tiny_config, "t", 3)
    summary = run_jobs([job], store, launcher="slurm", launcher_options={"cluster": "local", "time": "0:10:00"},
                       progress=False)
    assert summary.ok, (job_dir(store, job) / "train.log").read_text()[-3000:]
    old = _runs_by_key(store)[job.key][0]
    assert old.info.status == "FINISHED"
    h = claims.holder(store, job.key)
    assert h.state == "released" and h.pid != os.getpid() and h.note.startswith("slurm job")  # the job adopted it
    assert any((store / "slurm").rglob("*_submitted.pkl"))

    # --force: trained again from step 0 into a new run; the old run goes to MLflow's trash.
    forced = run_jobs([job], store, force=True, progress=False)
    assert [o.state for o in forced.outcomes] == ["finished"] and forced.outcomes[0].resumed_from is None
    runs = _runs_by_key(store)[job.key]
    assert len(runs) == 1 and runs[0].info.run_id != old.info.run_id and runs[0].info.status == "FINISHED"
    assert client(store).get_run(old.info.run_id).info.lifecycle_stage == "deleted"  # restorable from the trash
    assert "Resumed" not in (job_dir(store, job) / "train.log").read_text().split("\n=== ")[-1]


# -- `fcdm-ablate run` processes --------------------------------------------------------------------------

@pytest.mark.e2e
def test_two_runners_split_the_jobs_and_train_each_once(tmp_path):
    spec = _spec(tmp_path / "t.yaml", "two", [3, 5, 7])
    store = tmp_path / "store"
    from fcdm.spec import expand

    jobs = expand(spec, "smoke")
    a = _cli(spec, "--store", store, "--jobs", "1")
    b = _cli(spec, "--store", store, "--jobs", "1")
    out_a, out_b = a.communicate(timeout=600)[0], b.communicate(timeout=600)[0]
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    runs = _runs_by_key(store)
    assert all(len(runs[j.key]) == 1 and runs[j.key][0].info.status == "FINISHED" for j in jobs)
    assert [_starts(store, j) for j in jobs] == [1, 1, 1]  # no job started twice
    trained = sum(ln.startswith("  finished ") for ln in (out_a + out_b).splitlines())  # not the summary's table
    elsewhere = out_a.count(": finished by another runner\n") + out_b.count(": finished by another runner\n")
    assert trained == 3 and elsewhere == 3 and "  finished " in out_a and "  finished " in out_b, out_a + out_b


def _wait_step(ckpt: Path, above: int, proc, timeout=300) -> int:
    """Wait until the job's trainer runs (sidecar status 'running') past step `above`, while `proc` runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            side = json.loads((ckpt / "progress.json").read_text())
        except (OSError, ValueError):
            side = {}
        if side.get("status") == "running" and side.get("step", 0) > above:
            return side["step"]
        time.sleep(0.1)
    raise AssertionError(f"no progress past step {above} in {ckpt}")


@pytest.mark.e2e
def test_sigint_and_sigkill_then_rerun_resume_the_interrupted_job(tmp_path):
    from fcdm.spec import expand
    from fcdm.store.layout import checkpoint_dir

    # Job 1 is short (20 steps) and finishes first; job 2 (60 steps, a checkpoint every 5) is interrupted. Job 1's
    # larger batch makes it the larger job (20 x 64 > 60 x 16 examples), so the runner starts it first.
    spec = _spec(tmp_path / "t.yaml", "kill", [], zip=[{"model.args.kernel_size": [3, 5], "train.steps": [20, 60],
                                                        "train.batch_size": [64, 16]}])
    store = tmp_path / "store"
    first, second = expand(spec, "smoke")
    ckpt = checkpoint_dir(store, second.config)
    # (1) SIGINT mid-job: the trainer checkpoints, its run is KILLED, `run` prints the summary, exits 130.
    proc = _cli(spec, "--store", store, "--jobs", "1")
    step1 = _wait_step(ckpt, 0, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out
    assert f"finished {first.label}" in out and f"stopped {second.label}" in out, out
    side = json.loads((ckpt / "progress.json").read_text())
    assert side["status"] == "killed" and side["step"] >= step1
    run = _runs_by_key(store)[second.key][0]
    assert run.info.status == "KILLED"
    # (2) Rerun, then SIGKILL the runner mid-job: its trainer gets SIGTERM (PR_SET_PDEATHSIG), checkpoints
    # and stops; the claim dies with the runner.
    proc = _cli(spec, "--store", store, "--jobs", "1")
    step2 = _wait_step(ckpt, side["step"], proc)  # resumed, and trained on past the SIGINT checkpoint
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.time() + 120
    while json.loads((ckpt / "progress.json").read_text())["status"] == "running" and time.time() < deadline:
        time.sleep(0.2)
    assert json.loads((ckpt / "progress.json").read_text())["status"] == "killed"  # no orphan trains on
    assert not claims.is_live(claims.holder(store, second.key))
    # (3) Rerun: job 1 skipped, job 2 resumes where the kill left it, in the same MLflow run, to the end.
    proc = _cli(spec, "--store", store, "--jobs", "1")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert f"skipped {first.label}: already finished" in out and f"finished {second.label}" in out, out
    resumed_at = int(out.split("resuming at step ")[1].split()[0])
    assert resumed_at >= step2 > side["step"], out
    runs = _runs_by_key(store)[second.key]
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id and runs[0].info.status == "FINISHED"
    assert _starts(store, first) == 1 and _starts(store, second) == 3
