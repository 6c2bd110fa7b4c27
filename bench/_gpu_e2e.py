"""The end-to-end section of bench/gpu.py: a paper-profile run through the real CLI on synthetic latents,
stopped by SIGTERM mid-run, resumed to FINISHED, then sampled from.

    python -m fcdm.cli train CONFIG --store S --no-progress    # killed by SIGTERM after its first checkpoint
    python -m fcdm.cli train CONFIG --store S --no-progress    # resumes from the SIGTERM checkpoint, finishes
    python -m fcdm.cli sample RUN --num 16 --out DIR --store S

The config is ablations/configs/paper.yaml with FCDM-S, the synthetic latents, a few hundred steps and
no metrics (nothing needs Inception or the VAE; sample grids are latent previews). Steps/s before and
after the resume come from the run's `steps_per_sec` history in <store>/mlflow.db.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "ablations" / "configs" / "paper.yaml"


def write_latents(path: Path, n: int, size: int, classes: int) -> Path:
    """Random latents in the latent-array format: latents.npy (n, 4, size, size) float16, labels.npy (n,)
    int64 (classes in turn), meta.json with the keys `prepare-latents` writes."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(path / "latents.npy", rng.standard_normal((n, 4, size, size), dtype=np.float32).astype(np.float16))
    np.save(path / "labels.npy", np.arange(n, dtype=np.int64) % classes)
    meta = {"format": "fcdm-latent-array", "version": 1, "count": n, "num_images": n,
            "latent_shape": [4, size, size], "dtype": "float16", "resolution": size * 8, "scale_factor": 0.18215,
            "vae": "none: random latents (bench/gpu.py)", "posterior": "none", "seed": 0, "flip_copies": 1,
            "copy_layout": "row i is image i (no flipped copies)", "num_classes": classes,
            "class_names": [f"class{i}" for i in range(classes)], "image_dir": "none", "crop": "none"}
    (path / "meta.json").write_text(json.dumps(meta, indent=2))
    return path


def write_config(work: Path, data: Path, e) -> Path:
    """paper.yaml shrunk to the profile's end-to-end run `e` (gpu.E2E); returns the config's path."""
    cfg = yaml.safe_load(PAPER.read_text())
    cfg["name"] = "gpu-e2e"
    cfg["model"] = {"name": "FCDM-S", "args": dict(e.model_args)}
    cfg["data"].update(path=str(data), image_size=e.size, num_classes=e.classes, num_workers=e.num_workers)
    cfg["train"].update(steps=e.steps, batch_size=e.batch)  # mixed_precision: bf16, as paper.yaml
    cfg["eval"].update(at=[], metrics=[], vae=None, reference=None, sampling_steps=e.sampling_steps,
                       grid_per_class=1, batch_size=16)
    cfg["log"].update(every=e.log_every, checkpoint_every=e.checkpoint_every)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def progress(store: Path) -> dict:
    """The run's progress.json ({} before the trainer wrote it)."""
    found = sorted(store.glob("checkpoints/*/progress.json"))
    try:
        return json.loads(found[0].read_text()) if found else {}
    except (OSError, ValueError):  # caught between the rename and the read: try again later
        return {}


def mlflow_rows(store: Path, run_id: str) -> tuple[str, list[tuple[int, float]]]:
    """(MLflow status, [(step, steps_per_sec), ...]) of a run, read from <store>/mlflow.db."""
    with closing(sqlite3.connect(store / "mlflow.db")) as db:
        status = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]
        rows = db.execute("SELECT step, value FROM metrics WHERE run_uuid = ? AND key = 'steps_per_sec' "
                          "ORDER BY step", (run_id,)).fetchall()
    return status, rows


def steady_rate(rows: list[tuple[int, float]]) -> float | None:
    """Median steps/s over the logged windows, the first one (start-up, first steps) left out."""
    rates = [v for _, v in rows[1:]]
    return statistics.median(rates) if rates else None


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def e2e(ctx) -> None:
    """Synthetic latents, train, SIGTERM after the first checkpoint, resume, check FINISHED, sample."""
    e = ctx.profile.e2e
    work = Path(tempfile.mkdtemp(prefix="fcdm-gpu-e2e-"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the store's own mlflow.db
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if not ctx.dev.cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # --cpu on a GPU machine: the trainer picks CUDA whenever it sees it
    store = work / "store"
    config = write_config(work, write_latents(work / "latents", e.n, e.size, e.classes), e)
    train_cmd = [sys.executable, "-m", "fcdm.cli", "train", str(config), "--store", str(store), "--no-progress"]
    try:
        # 1. Train until the first checkpoint is on disk (the loop and its SIGTERM handler are running), stop.
        t0 = time.perf_counter()
        with open(work / "train1.log", "w") as log:
            proc = subprocess.Popen(train_cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            while progress(store).get("step", 0) < e.checkpoint_every and proc.poll() is None:
                if time.perf_counter() - t0 > e.timeout:
                    proc.kill()
                    raise TimeoutError(f"no checkpoint after {e.timeout} s; log:\n{tail(work / 'train1.log')}")
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=e.timeout)
        stopped = progress(store)
        ctx.emit("e2e", phase="sigterm", exit_code=code, expected_exit_code=128 + signal.SIGTERM,
                 stopped_at_step=stopped.get("step"), progress_status=stopped.get("status"),
                 seconds=time.perf_counter() - t0)
        if code != 128 + signal.SIGTERM or stopped.get("status") != "killed":
            raise RuntimeError(f"SIGTERM: exit code {code}, progress {stopped}; log:\n{tail(work / 'train1.log')}")

        # 2. The same command again: resumes from the SIGTERM checkpoint and runs to the end.
        t0 = time.perf_counter()
        with open(work / "train2.log", "w") as log:
            code = subprocess.run(train_cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                  timeout=e.timeout).returncode
        done = progress(store)
        status, rows = mlflow_rows(store, done["run_id"])
        cut = stopped["step"]
        before, after = steady_rate([r for r in rows if r[0] <= cut]), steady_rate([r for r in rows if r[0] > cut])
        ctx.emit("e2e", phase="resume", exit_code=code, seconds=time.perf_counter() - t0, run_id=done["run_id"],
                 status=status, progress_status=done.get("status"), final_step=done.get("step"), steps=e.steps,
                 stopped_at_step=cut, batch=e.batch, steps_per_sec_before=before, steps_per_sec_after=after,
                 after_over_before=after / before if before and after else None,
                 windows_before=sum(r[0] <= cut for r in rows), windows_after=sum(r[0] > cut for r in rows),
                 note="median of the trainer's steps_per_sec windows, the first window of each process left out")
        if code != 0 or status != "FINISHED":
            raise RuntimeError(f"resume: exit code {code}, MLflow status {status}; log:\n{tail(work / 'train2.log')}")

        # 3. A sample from the finished run, by run id, through the CLI.
        t0 = time.perf_counter()
        out = work / "samples"
        with open(work / "sample.log", "w") as log:
            code = subprocess.run([sys.executable, "-m", "fcdm.cli", "sample", done["run_id"], "--num", "16",
                                   "--out", str(out), "--store", str(store)], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, cwd=ROOT, timeout=e.timeout).returncode
        images = np.load(out / "samples.npz")["arr_0"].shape if code == 0 else None
        ctx.emit("e2e", phase="sample", exit_code=code, seconds=time.perf_counter() - t0,
                 samples_shape=images and list(images), sampling_steps=e.sampling_steps)
        if code != 0:
            raise RuntimeError(f"sample: exit code {code}; log:\n{tail(work / 'sample.log')}")
    finally:
        if ctx.keep:
            print(f"e2e: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
