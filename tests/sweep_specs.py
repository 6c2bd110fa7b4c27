"""What the sweep tests share (tests/sweep/test_sweep.py, test_postgres.py): a tests-only spec with a search
section, and the MLflow runs of a store. Plain functions, imported as `from sweep_specs import ...`."""
from __future__ import annotations

from pathlib import Path

import yaml
from helpers import SMOKE, client

TINY_PROFILE = {"model.args.hidden_size": 8, "model.args.depth": [1, 0, 1, 0, 1], "train.steps": 30,
                "train.batch_size": 16, "log.every": 5, "log.checkpoint_every": 10, "eval.at": [0.5, 1.0],
                "eval.num_samples": 30, "eval.sampling_steps": 2, "eval.grid_per_class": 1, "eval.metrics": ["fid"]}
LR = {"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}


def write_spec(folder: Path, name: str, search_section: dict | None, **extra) -> Path:
    """A tests-only spec: the smoke config shrunk to a 30-step width-8 model with a 30-sample FID."""
    spec = {"name": name, "base": str(SMOKE), "profiles": {"smoke": TINY_PROFILE}, **extra}
    if search_section is not None:
        spec["search"] = search_section
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def mlflow_runs(store: Path, flt: str = ""):
    """(client, runs of every experiment of the store matching the filter `flt`)."""
    c = client(store)
    return c, c.search_runs([e.experiment_id for e in c.search_experiments()], filter_string=flt)
