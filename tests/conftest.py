"""Shared fixtures: the smoke config and a tiny variant of it that trains in a second or two."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "ablations" / "configs" / "smoke.yaml"
# A much smaller model and run than the smoke config, for tests of the machinery rather than quality.
TINY = ["model.args.hidden_size=8", "model.args.depth=[1,0,1,0,1]", "train.batch_size=16", "train.steps=30",
        "log.every=5", "log.checkpoint_every=10", "eval.at=[1.0]", "eval.grid_per_class=1", "eval.sampling_steps=2", "eval.metrics=[]"]


def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def all_runs(store):
    c = client(store)
    return c.search_runs([e.experiment_id for e in c.search_experiments()])


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The smoke config trained once, as `fcdm-ablate train ablations/configs/smoke.yaml` would (~1.5 min)."""
    from fcdm.config import load_config
    from fcdm.train import train

    store = tmp_path_factory.mktemp("store")
    cfg = load_config(SMOKE)
    result = train(cfg, store=store, progress=False)
    return cfg, store, result


@pytest.fixture
def tiny_config():
    from fcdm.config import load_config

    def make(*overrides: str):
        return load_config(SMOKE, [*TINY, *overrides])
    return make
