"""`fcdm-ablate plan` (fcdm.runner.plan): the jobs, their cost and status, with no side effects."""
import csv
import io
import json
import time

import pytest
from helpers import ROOT, SMOKE
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.spec import expand

runner = CliRunner()
SHIPPED = sorted((ROOT / "ablations").glob("*.yaml"))
TINY = f"""name: tiny
base: {SMOKE}
axes: {{model.args.kernel_size: [3, 5]}}
profiles:
  smoke:
    model.args: {{hidden_size: 8, depth: [1, 0, 1, 0, 1]}}
    train: {{batch_size: 16, steps: 12}}
    log: {{every: 4, checkpoint_every: 4}}
    eval: {{at: [1.0], grid_per_class: 1, sampling_steps: 2, metrics: []}}
"""


def _invoke(*args):
    result = runner.invoke(app, ["plan", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_plan_every_shipped_spec_in_both_profiles_without_side_effects(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default store (./runs) or ./mlruns would appear here
    for profile in ("smoke", "paper"):
        out = _invoke(path, "--profile", profile, "--format", "csv", "--store", tmp_path / "store")
        header = out.index("name,seed,hash")  # the chosen profile is said first (on stderr)
        assert f"profile '{profile}'" in out[:header]
        rows = list(csv.DictReader(io.StringIO(out[header:])))
        jobs = expand(path, profile)
        assert [r["name"] for r in rows] == [j.name for j in jobs]
        for row, job in zip(rows, jobs):
            assert float(row["gflops"]) > 0 and int(row["params"]) > 0
            steps, batch = int(row["steps"]), int(row["batch_size"])
            assert float(row["train_gflops"]) == pytest.approx(float(row["gflops"]) * 3 * batch * steps)
            assert row["status"] == ("new" if profile == "smoke" else "needs data")
            assert (row["hash"] == job.hash) if profile == "smoke" else row["hash"] == ""
    assert list(tmp_path.iterdir()) == []


def test_plan_json_and_table_totals(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    data = json.loads(_invoke(spec, "--format", "json", "--store", tmp_path / "store").split("\n", 1)[1])
    assert data["spec"] == "tiny" and data["profile"] == "smoke" and len(data["jobs"]) == 2
    assert data["totals"]["train_gflops"] == pytest.approx(sum(j["train_gflops"] for j in data["jobs"]))
    assert data["totals"]["status"] == {"new": 2} and data["jobs"][0]["axes"] == {"model.args.kernel_size": 3}
    table = _invoke(spec, "--store", tmp_path / "store")
    assert "tiny/kernel_size=3" in table and "2 jobs" in table and "2 new" in table and "GFLOP" in table
    assert "profile 'smoke' (the default" in table


def test_plan_reads_status_from_the_store_and_changes_nothing(tmp_path):
    from fcdm.train import train

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    store = tmp_path / "store"
    done, partial = expand(spec)
    train(done.config, store=store, progress=False)
    train(partial.config, store=store, progress=False, max_steps=6)
    before = sorted((p, p.stat().st_mtime_ns) for p in store.rglob("*"))
    rows = json.loads(_invoke(spec, "--format", "json", "--store", store).split("\n", 1)[1])["jobs"]
    assert [r["status"] for r in rows] == ["finished", "partial at step 6/12"]
    assert sorted((p, p.stat().st_mtime_ns) for p in store.rglob("*")) == before


def test_plan_measure_estimates_wall_time_per_job(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.replace("profiles:", "seeds: [0, 1]\nprofiles:"))
    out = _invoke(spec, "--measure", "--format", "json", "--store", tmp_path / "store")
    data = json.loads(out[out.index("{"):])
    est = [j["est_seconds"] for j in data["jobs"]]
    assert all(s > 0 for s in est) and est[0] == est[1]  # two seeds: one architecture, timed once
    assert data["totals"]["est_seconds"] == pytest.approx(sum(est))
    assert not (tmp_path / "store").exists()


def test_measure_skips_what_would_not_fit_in_memory(tmp_path):
    from fcdm.runner.plan import measure_steps

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    (job, _) = expand(spec, overrides=["model.args.hidden_size=16384"])  # ~1e11 parameters: never built
    assert measure_steps([job]) == [None]


def test_table_shows_estimates_and_matched_targets():
    from rich.console import Console

    from fcdm.runner.plan import table

    row = {"name": "s/a", "seed": 0, "hash": None, "variant": "", "axes": {"model.args.depth": [1, 2]}, "params": 2e6,
           "gflops": 1.5, "train_gflops": 3e6, "steps": 10, "batch_size": 4, "flops_target": 1.4, "params_target": None,
           "vs_target": 1.5 / 1.4 - 1, "solved": "hidden_size=8", "role": "compared", "baseline": "s/b",
           "matched_on": "FLOPs", "status": "needs data", "est_seconds": 5400.0}
    console = Console(record=True, width=200)
    console.print(table([row, {**row, "seed": 1}, {**row, "seed": 2, "est_seconds": None}], "t"))
    text = console.export_text()
    assert "est. time" in text and "3.0 h + 1 too large here" in text and "9.00 PFLOP" in text and "depth=[1, 2]" in text
    assert "+7.1% of 1.4 GFLOPs (hidden_size=8)" in text and "s/b (FLOPs)" in text


def test_expanding_and_costing_a_shipped_spec_is_fast():
    """The part of `plan` this project controls (imports aside): well under a second of CPU per spec.
    `time fcdm-ablate plan ablations/X.yaml --profile paper` end to end is in the README/report."""
    from fcdm.models.costs import clear_caches
    from fcdm.runner.plan import plan_rows

    expand(SHIPPED[0], "smoke")  # imports
    for path in SHIPPED:
        for profile in ("smoke", "paper"):
            clear_caches()
            start = time.process_time()
            plan_rows(expand(path, profile), store=ROOT / "no-such-store")
            assert time.process_time() - start < 1.5, (path.stem, profile)


def test_plan_shows_each_rows_baseline_what_it_is_matched_on_and_its_deviation():
    """Issue 15: `plan ablations/dit_comparison.yaml --profile paper` lists each row's baseline: FCDM-S with
    DiT-S/2 (the same size), FCDM-S@DiT-S/2 with DiT-S/2 (FLOPs), ..."""
    spec = ROOT / "ablations" / "dit_comparison.yaml"
    out = _invoke(spec, "--profile", "paper", "--format", "csv")
    rows = {r["name"].removeprefix("dit_comparison/"): r for r in csv.DictReader(io.StringIO(out[out.index("name,"):]))}
    for size in ("S", "B", "L", "XL"):
        assert (rows[f"FCDM-{size}"]["baseline"], rows[f"FCDM-{size}"]["matched_on"]) == (
            f"dit_comparison/DiT-{size}/2", "size")
        matched = rows[f"FCDM-{size}@DiT-{size}/2"]
        assert (matched["baseline"], matched["matched_on"]) == (f"dit_comparison/DiT-{size}/2", "FLOPs")
        assert abs(float(matched["vs_target"])) <= 0.02 and matched["solved"].startswith("hidden_size=")
        assert rows[f"DiT-{size}/2"]["role"] == "baseline"
    table = " ".join(_invoke(spec, "--profile", "paper").split())
    assert "dit_comparison/FCDM-S │ 0 │ needs data │ 32.7 │ 3.073 │ - │ DiT-S/2 (size)" in table
    smoke = _invoke(spec)
    for fragment in ("dit_comparison/fcdm@flops", "+1.1% of 0.003841", "dit (FLOPs)", "+1.6% of 371,012",
                     "dit (parameters)", "(hidden_size=20)", "baseline"):
        assert fragment in smoke
