"""Bad input through every command (issue 16): each malformed input is one line `error: ...` naming the file
or option, the key and the fix, exit code 2, no traceback, and the store exactly as it was (every path, size
and modification time compared before and after).

The commands run in-process through typer's CliRunner (the same `_Commands.invoke` maps errors to exit 2);
the cases marked `proc` run as a real `python -m fcdm.cli` subprocess, as a user runs them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, SMOKE
from sweep_specs import LR, write_spec
from synthetic import experiment, log_run
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.spec import expand
from fcdm.store.layout import checkpoint_dir
from fcdm.store.tracking import TAG_CKPT

runner = CliRunner()
SECRET = "pa/ss@w:rd"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A spec with a search section, a store holding one synthetic run per job (the first job's checkpoint
    folder holding a zero-byte newest checkpoint), that job's config file, and a few malformed files."""
    from mlflow import MlflowClient  # heavy: only to build the store

    root = tmp_path_factory.mktemp("bad")
    spec = write_spec(root, "tb", {"metric": "fid", "params": LR})
    store = root / "store"
    store.mkdir()
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = experiment(client, "tb", store)
    jobs = expand(spec)
    ckpt = checkpoint_dir(store, jobs[0].config)
    for job in jobs:
        rid = log_run(client, exp, job, {15: {"fid": 9.0}, 30: {"fid": 8.0}})
        client.set_tag(rid, TAG_CKPT, str(checkpoint_dir(store, job.config)))
    ckpt.mkdir(parents=True)
    (ckpt / "step_00000010.pt").write_bytes(b"")
    config = root / "job.yaml"
    config.write_text(jobs[0].config.to_yaml())
    (root / "deep.yaml").write_text(f"name: deep\nbase: {SMOKE}\ndescription: " + "[" * 5000 + "]" * 5000 + "\n")
    (root / "newline.yaml").write_text(f'name: "tb\\n"\nbase: {SMOKE}\n')
    thesis = root / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("my thesis")
    return {"root": root, "spec": spec, "store": store, "config": config, "run": jobs[0].config,
            "ckpt": ckpt / "step_00000010.pt"}


def listing(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under `roots` with its size and modification time (ns)."""
    out = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")]):
            st = p.stat()
            out[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def run_name(cfg) -> str:
    return f"{cfg.name}-{cfg.hash[:8]}-s{cfg.seed}"


# (id, how, argv(world), fragments the one line must hold). `how`: "cli" (CliRunner) or "proc" (subprocess).
CASES = [
    # -- train --
    ("train-set-yaml", "cli", lambda w: ["train", str(w["config"]), "--set", "train.lr=[1,"],
     ["--set train.lr: line 1, column 4: not valid YAML", "fix the syntax there"]),
    ("train-set-key", "cli", lambda w: ["train", str(w["config"]), "--set", "trian.lr=1"],
     ["unknown key 'trian'", "did you mean 'train'?"]),
    ("train-zero-byte-checkpoint", "proc", lambda w: ["train", str(w["config"]), "--no-progress"],
     ["step_00000010.pt: checkpoint is empty (0 bytes", "delete this file to resume from the previous checkpoint"]),
    ("train-missing-config", "cli", lambda w: ["train", str(w["root"] / "nope.yaml")],
     ["nope.yaml: no such config file", "pass the path of a YAML run config"]),
    # -- run --
    ("run-paper-without-latents", "proc", lambda w: ["run", str(ROOT / "ablations" / "kernel_size.yaml"), "--profile",
                                                      "paper", "--no-progress"],
     ["kernel_size.yaml: profile paper: data.path: ", "prepare-latents", "--set data.path=DIR"]),
    ("run-set-yaml", "cli", lambda w: ["run", str(w["spec"]), "--set", "train.lr=[1,", "--no-progress"],
     ["--set train.lr: line 1, column 4: not valid YAML"]),
    ("run-name-newline", "cli", lambda w: ["run", str(w["root"] / "newline.yaml"), "--no-progress"],
     ['newline.yaml: name: "tb\\n": required; letters, digits']),
    ("run-nested-deep", "proc", lambda w: ["run", str(w["root"] / "deep.yaml"), "--no-progress"],
     ["deep.yaml: values nested too deeply to read", "flatten it"]),
    # -- sweep --
    ("sweep-profile", "cli", lambda w: ["sweep", str(w["spec"]), "--optuna", "--profile", "nope"],
     ["profiles: 'nope': no such profile", "allowed values: smoke"]),
    ("sweep-storage-secret", "cli", lambda w: ["sweep", str(w["spec"]), "--optuna", "--storage",
                                               f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/db"],
     ["--storage postgresql+psycopg://user:***@127.0.0.1:1/db: cannot open it", "pass an Optuna storage URL"]),
    # -- report --
    ("report-out-is-the-store", "cli", lambda w: ["report", str(w["spec"]), "--out", str(w["store"]), "--no-log"],
     ["--out ", "holds files that are not a report", "pass a new or empty folder"]),
    ("report-out-user-folder", "cli", lambda w: ["report", str(w["spec"]), "--out", str(w["root"] / "thesis"), "--no-log"],
     ["thesis: the folder holds files that are not a report (no .fcdm-report marker); nothing was changed"]),
    ("report-format", "cli", lambda w: ["report", str(w["spec"]), "--format", "md,pdf"],
     ["--format 'md,pdf': pdf is not a report format", "allowed values"]),
    # -- evaluate, sample --
    ("evaluate-zero-byte-checkpoint", "cli", lambda w: ["evaluate", run_name(w["run"])],
     ["step_00000010.pt: checkpoint is empty (0 bytes", "delete this file"]),
    ("evaluate-both-quotes", "cli", lambda w: ["evaluate", """it's "x\""""],
     ["a run name holding both ' and \" cannot be looked up; pass the run id instead"]),
    ("evaluate-quote", "cli", lambda w: ["evaluate", "x' or attributes.run_name != '"],
     ["no run with id or name", "pass --store DIR"]),
    ("sample-unknown-run", "cli", lambda w: ["sample", "nope s0", "--out", str(w["root"] / "samples")],
     ["no run with id or name 'nope s0'", "pass --store DIR"]),
    # -- ui, prepare-latents, plan --
    ("ui-spec", "cli", lambda w: ["ui", "--spec", str(w["root"] / "newline.yaml")],
     ['newline.yaml: name: "tb\\n": required; letters, digits']),
    ("prepare-latents-vae", "cli", lambda w: ["prepare-latents", str(w["root"]), str(w["root"] / "latents"), "--vae",
                                              str(w["root"] / "novae")],
     ["VAE directory ", "novae does not exist", "pass `--vae DIR`"]),
    ("plan-set-yaml", "cli", lambda w: ["plan", str(w["spec"]), "--set", "train.lr=[1,"],
     ["--set train.lr: line 1, column 4: not valid YAML"]),
    ("plan-nested-deep", "cli", lambda w: ["plan", str(w["root"] / "deep.yaml")],
     ["deep.yaml: values nested too deeply to read"]),
]
COMMANDS = ("train", "run", "sweep", "report", "evaluate", "sample", "ui", "prepare-latents", "plan")


def test_every_command_has_a_case():
    assert {"prepare-latents" if c[0].startswith("prepare") else c[0].split("-")[0] for c in CASES} == set(COMMANDS)


@pytest.mark.parametrize("how, argv, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_the_store_is_unchanged(world, how, argv, fragments, monkeypatch):
    store, root = world["store"], world["root"]
    args = [*argv(world), "--store", str(store)] if argv(world)[0] != "prepare-latents" else argv(world)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FCDM_STORE", raising=False)
    before = listing(root)
    if how == "proc":
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "fcdm.cli", *args], capture_output=True, text=True, env=env,
                              cwd=root, timeout=300)
        code, output = proc.returncode, proc.stdout + proc.stderr
    else:
        monkeypatch.chdir(root)
        result = runner.invoke(app, args)
        code, output = result.exit_code, result.output
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert SECRET not in output and "pa%2Fss" not in output
    assert listing(root) == before
