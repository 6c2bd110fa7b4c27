"""What many tests share: paths, the tiny configuration, MLflow readers. Fixtures live in conftest.py;
this module holds plain functions and constants, imported as `from helpers import ...`."""
from __future__ import annotations

from pathlib import Path

from fcdm.util.net import free_port  # noqa: F401  (servers in tests bind a free port on 127.0.0.1)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "ablations" / "configs" / "smoke.yaml"
# A much smaller model and run than the smoke config, for tests of the machinery rather than quality.
TINY = ["model.args.hidden_size=8", "model.args.depth=[1,0,1,0,1]", "train.batch_size=16", "train.steps=30",
        "log.every=5", "log.checkpoint_every=10", "eval.at=[1.0]", "eval.grid_per_class=1", "eval.sampling_steps=2",
        "eval.metrics=[]"]


def make_config(*overrides: str):
    """The smoke config shrunk by TINY, with `overrides` applied last."""
    from fcdm.config import load_config

    return load_config(SMOKE, [*TINY, *overrides])


def client(store: Path):
    """An MlflowClient on the store's SQLite database."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{Path(store) / 'mlflow.db'}")


def all_runs(store: Path):
    """Every run in every experiment of the store."""
    c = client(store)
    return c.search_runs([e.experiment_id for e in c.search_experiments()])


def history(store: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run."""
    return [(m.step, m.value) for m in client(store).get_metric_history(run_id, key)]


def plant_claim(store, key, gen=0, **fields):
    """A claim file as another process would have left it (this machine, this pid, unless `fields` say)."""
    import json
    import os

    from fcdm.store import claims

    d = claims.claims_dir(store) / key
    d.mkdir(parents=True, exist_ok=True)
    info = {**claims.machine(), "pid": os.getpid(), "pid_start": claims.process_start(os.getpid()),
            "token": "t-planted", "state": "held", **fields}
    path = d / f"{gen:08d}.json"
    path.write_text(json.dumps(info))
    return path
