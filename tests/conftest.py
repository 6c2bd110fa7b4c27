"""Shared fixtures: the smoke config trained once, a tiny variant of it, one torch thread. Plain helpers
(paths, the tiny overrides, MLflow readers) live in helpers.py."""
import pytest
from helpers import SMOKE, make_config


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
    """make_config as a fixture: tiny_config("train.steps=10")."""
    return make_config


@pytest.fixture(scope="module")
def one_thread():
    """Width-8 models gain nothing from threads; two OpenMP threads on a busy two-core machine were
    measured 30-70x slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
