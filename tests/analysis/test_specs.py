"""analysis.specs: reports from the tracking store alone (runs trained elsewhere, their data not here), and
`report` with no SPEC, where a spec that cannot be reported is a warning, never an abort."""
import json
import shutil

import numpy as np
import pandas as pd
from helpers import SMOKE
from synthetic import experiment, log_run
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.spec import expand

runner = CliRunner()
LATENT_SPEC = """name: lat
base: {smoke}
default_profile: smoke
variants:
  - {{name: a}}
  - {{name: b, set: {{model.args.kernel_size: 3}}, baseline: a}}
profiles:
  smoke: {{}}
  paper:   # latents, as the paper profile's: the hash covers their fingerprint
    data: {{name: latent-array, path: {latents}, image_size: 8, num_classes: 3}}
    model.args: {{hidden_size: 8, depth: [1, 0, 1, 0, 1]}}
    train: {{batch_size: 8, steps: 4}}
    log: {{every: 2, checkpoint_every: 2}}
    eval: {{at: [1.0], metrics: [], cfg_scale: 1.0, grid_per_class: 1, sampling_steps: 2}}
"""


def write_latents(path, n=24, size=8, classes=3):
    """A latent-array dataset as prepare-latents writes it (latents.npy, labels.npy, meta.json)."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    np.save(path / "latents.npy", rng.standard_normal((n, 4, size, size)).astype(np.float32))
    np.save(path / "labels.npy", np.arange(n, dtype=np.int64) % classes)
    (path / "meta.json").write_text(json.dumps({
        "format": "fcdm-latent-array", "version": 1, "count": n, "latent_shape": [4, size, size],
        "resolution": size * 8, "scale_factor": 0.18215, "vae": "/models/sd-vae-ft-ema", "flip_copies": 1,
        "num_classes": classes, "image_dir": str(path / "images")}))
    return path


def test_report_of_a_paper_profile_from_the_tracking_store_alone(tmp_path, monkeypatch):
    """Issue 15 item 4: two latent runs trained by the real trainer; their latents are then deleted (as on a laptop
    with only the tracking store): `report SPEC --profile paper` and `report` with no SPEC both find them."""
    from fcdm.train import train  # heavy (torch): only where a run is trained

    latents = write_latents(tmp_path / "latents")
    spec = tmp_path / "ablations" / "lat.yaml"
    spec.parent.mkdir()
    spec.write_text(LATENT_SPEC.format(smoke=SMOKE, latents=latents))
    store = tmp_path / "store"
    hashes = {}
    for job in expand(spec, "paper"):
        assert train(job.config, store=store, progress=False).status == "FINISHED"
        hashes[job.variant] = job.hash
    shutil.rmtree(latents)
    assert all(j.config.try_hash() is None for j in expand(spec, "paper"))  # no data here: no hash
    result = runner.invoke(app, ["report", str(spec), "--profile", "paper", "--store", str(store), "--no-log"])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(store / "reports" / "lat-paper" / "data.csv")
    assert data.groupby("config")["status"].first().to_dict() == {"a": "FINISHED", "b": "FINISHED"}
    assert data.groupby("config")["hash"].first().to_dict() == hashes  # the hashes the runs recorded
    assert (data["last_step"] == 4).all() and (data["params"] > 0).all()
    md = (store / "reports" / "lat-paper" / "report.md").read_text()
    assert "**b**: its baseline a has no FID recorded yet" in md  # its pair: its variant's baseline, a
    monkeypatch.chdir(tmp_path)  # ./ablations holds the spec: `report` with no SPEC finds it by its runs' tags
    every = runner.invoke(app, ["report", "--store", str(store), "--no-log", "--out", str(tmp_path / "all")])
    assert every.exit_code == 0 and "warning" not in every.output, every.output
    assert (tmp_path / "all" / "report.md").is_file()


def test_with_no_spec_a_spec_that_cannot_be_reported_is_a_warning_not_an_abort(tmp_path, monkeypatch):
    from mlflow import MlflowClient  # heavy: only to build the store

    folder = tmp_path / "ablations"
    folder.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    for name, steps, kernels in (("early", [10, 20], [3, 7]), ("late", [20], [5, 9])):
        (folder / f"{name}.yaml").write_text(f"name: {name}\nbase: {SMOKE}\naxes: {{model.args.kernel_size: {kernels}}}\n"
                                             f"profiles:\n  smoke: {{train.steps: 20, eval.at: {steps}}}\n")
        exp = experiment(client, name, store)
        for job in expand(folder / f"{name}.yaml"):
            log_run(client, exp, job, {s: {"fid": 5.0 + s / 10} for s in steps})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", "--store", str(store), "--no-log", "--step", "10"])
    # 'late' has no evaluation at step 10: a warning naming it, and 'early' is still reported (exit 0)
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "late.yaml (smoke): not reported: --step 10: no run recorded fid at " \
                                            "step 10" in " ".join(result.output.split())
    assert (store / "reports" / "early-smoke" / "report.md").is_file(), result.output
    assert not (store / "reports" / "late-smoke").exists()
    none = runner.invoke(app, ["report", "--store", str(store), "--no-log", "--step", "15"])
    assert none.exit_code == 2 and "no spec in the store could be reported" in none.output  # nothing at all: an error
    asked = runner.invoke(app, ["report", str(folder / "late.yaml"), "--store", str(store), "--no-log", "--step", "10"])
    assert asked.exit_code == 2 and asked.output.startswith("error: --step 10")  # asked for by name: an error
    # Several reports into one --out: a marked folder of marked sub-folders, which the next report may replace;
    # a folder with a user's file in it is refused before anything is collected (issue 16 item 1).
    out = tmp_path / "all"
    for _ in range(2):
        both = runner.invoke(app, ["report", "--store", str(store), "--no-log", "--out", str(out)])
        assert both.exit_code == 0, both.output
    assert {p.name for p in out.iterdir()} == {".fcdm-report", "early-smoke", "late-smoke"}
    assert all((out / d / ".fcdm-report").is_file() for d in ("early-smoke", "late-smoke"))
    (out / ".fcdm-report").unlink()
    (out / "notes.txt").write_text("mine")
    refused = runner.invoke(app, ["report", "--store", str(store), "--no-log", "--out", str(out)])
    assert refused.exit_code == 2 and "holds files that are not a report" in refused.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "early-smoke" / "report.md").is_file()
