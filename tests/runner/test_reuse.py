"""A run another spec trained is reused under this spec's protocol (issue 15, item 3): `run ablations/sweep.yaml`
trains the configuration that is kernel_size's k=7 baseline, evaluated with 25 sampling steps; `run
ablations/kernel_size.yaml` then evaluates that run's kept checkpoints with 50 steps (the real runner, trainer
and evaluation, steps shrunk with --set), retraining nothing and mixing no protocols; `report ablations/kernel_size.yaml`
shows every kernel size in one protocol section, the shared run's under kernel_size's protocol."""
import subprocess
import sys

import pandas as pd
import pytest
from helpers import ROOT, all_runs, history

from fcdm.spec import expand
from fcdm.store.jobs import job_status

SET = ["train.steps=20", "train.batch_size=16", "log.every=5", "eval.at=[1.0]", "eval.num_samples=40",
       "eval.metrics=[fid]", "eval.grid_per_class=1"]


def _cli(*args):
    sets = [a for s in SET for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "fcdm.cli", *map(str, args), *sets], capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.e2e
def test_run_sweep_then_kernel_size_evaluates_the_shared_baseline_under_kernel_sizes_protocol(tmp_path):
    store = tmp_path / "store"
    sweep, kernel = ROOT / "ablations" / "sweep.yaml", ROOT / "ablations" / "kernel_size.yaml"
    (base,) = expand(sweep, overrides=SET)
    jobs = expand(kernel, overrides=SET)
    (k7,) = [j for j in jobs if j.axes["model.args.kernel_size"] == 7]
    assert base.key == k7.key and base.config.eval_key != k7.config.eval_key  # one run, two protocols

    out = _cli("run", sweep, "--store", store, "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    assert job_status(store, base).state == "finished"
    assert job_status(store, k7).describe() == "partial at step 20/20 (evaluation under this spec's protocol missing)"
    (run,) = all_runs(store)
    loss = history(store, run.info.run_id, "loss")

    out = _cli("run", kernel, "--store", store, "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(job_status(store, j).state == "finished" for j in [*jobs, base])
    runs = {r.data.tags["fcdm.config_hash"]: r for r in all_runs(store)}
    assert len(runs) == len(jobs)  # the baseline's run reused, not a second one
    shared = runs[k7.hash]
    assert history(store, shared.info.run_id, "loss") == loss  # not retrained
    assert shared.data.tags["eval.sampling_steps"] == "25"  # its own protocol stays the sweep's
    others = {r.data.tags["eval.protocol"] for h, r in runs.items() if h != k7.hash}
    assert len(others) == 1  # kernel_size's protocol
    (key,) = [k for k in shared.data.metrics if k.startswith("fid/")]
    assert key.endswith(f"-{others.pop()[:8]}") and [s for s, _ in history(store, shared.info.run_id, key)] == [20]
    log = (store / "jobs" / k7.key / "train.log").read_text()
    assert "evaluating step 20 first" in log

    out = _cli("report", kernel, "--store", store, "--out", tmp_path / "report", "--format", "md,csv", "--no-log")
    assert out.returncode == 0, out.stdout + out.stderr
    ablation = pd.read_csv(tmp_path / "report" / "tables" / "fid_ablation.csv")  # the main section: kernel_size's
    labels = [f"kernel_size={k}" for k in (3, 5, 7, 9, 11)]
    assert [c.removesuffix(" (baseline)") for c in ablation["configuration"]] == labels, ablation
    assert ablation["FID"].notna().all() and (ablation["step"] == 20).all(), ablation
    k7_fid = ablation.loc[ablation["configuration"] == "kernel_size=7 (baseline)", "FID"].item()
    assert k7_fid == pytest.approx(history(store, shared.info.run_id, key)[-1][1], abs=0.01)  # fid/<slug>, not fid
    main = (tmp_path / "report" / "report.md").read_text().split("\n## Results\n")[1].split("\n## ")[0]
    assert ", 50 steps," in main.split("\n")[1] and "kernel_size=7 (baseline)" in main  # kernel_size's protocol
