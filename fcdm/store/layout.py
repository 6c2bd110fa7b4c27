"""What lives where under a store (`runs/` by default, `--store DIR` or $FCDM_STORE):

    <store>/mlflow.db               MLflow tracking (SQLite), unless --tracking-uri / $MLFLOW_TRACKING_URI
    <store>/artifacts/              MLflow artifacts of the SQLite store
    <store>/checkpoints/<key>/      a run's checkpoints and progress.json (key = <hash>-s<seed>)
    <store>/jobs/<key>/             the runner's files of a job: config.yaml, train.log, runner.json
    <store>/claims/<key>/           which runner holds a job (fcdm.store.claims)
    <store>/cache/                  digits classifier, reference features
    <store>/optuna.db, reports/     sweeps and reports
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fcdm.config import RunConfig

DEFAULT_STORE = "runs"


def resolve_store(store: str | Path | None = None) -> Path:
    """The store directory: the argument, else $FCDM_STORE, else ./runs."""
    return Path(store or os.environ.get("FCDM_STORE") or DEFAULT_STORE).expanduser().resolve()


def resolve_tracking_uri(store: Path, tracking_uri: str | None = None) -> str:
    """The tracking URI: the argument, else $MLFLOW_TRACKING_URI, else the store's SQLite file."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"


def run_key(cfg: RunConfig) -> str:
    """Folder name of a run's checkpoints: the run's identity, configuration hash and seed (a renamed
    config is the same run, so the name is not part of it)."""
    return f"{cfg.hash}-s{cfg.seed}"


def run_name(cfg: RunConfig) -> str:
    """The long run name of older versions, '<name>-<hash8>-s<seed>': `sample` and `evaluate` still accept
    it (fcdm.store.tracking.find_run) in place of the run id."""
    return f"{cfg.name}-{cfg.hash[:8]}-s{cfg.seed}"


def short_name(name: str, seed: int) -> str:
    """How a job reads in the live view, the summary and MLflow's run table: its name without the spec
    prefix (the experiment names the spec), and its seed: 'kernel_size/kernel_size=3', 0 -> 'kernel_size=3 s0'."""
    return f"{name.split('/', 1)[-1] or name} s{seed}"


def checkpoint_dir(store: Path, cfg: RunConfig) -> Path:
    """`<store>/checkpoints/<hash>-s<seed>/`."""
    return store / "checkpoints" / run_key(cfg)
