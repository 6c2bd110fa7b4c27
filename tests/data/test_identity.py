"""Run identity (issue 7, item 1): the hash covers what the data is, not where it lies; a checkpoint
resumed under another configuration or other data stops with a clear error."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, SMOKE, TINY, all_runs
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.config import ConfigError, load_config
from fcdm.data import DataError
from fcdm.store.checkpoints import CheckpointError, list_checkpoints, load_latest
from fcdm.store.layout import checkpoint_dir
from fcdm.train import train

runner = CliRunner()
LATENT = [*TINY, "eval.metrics=[]", "eval.cfg_scale=1.0", "train.batch_size=8", "train.steps=4",
          "log.checkpoint_every=2"]


def write_latents(path, n=24, size=8, classes=3, seed=0, vae="/models/sd-vae-ft-ema", **meta):
    """A latent-array dataset as prepare-latents writes it: latents.npy (n, 4, size, size), labels, meta.json."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    np.save(path / "latents.npy", rng.standard_normal((n, 4, size, size)).astype(np.float32))
    np.save(path / "labels.npy", np.arange(n, dtype=np.int64) % classes)
    info = {"format": "fcdm-latent-array", "version": 1, "count": n, "latent_shape": [4, size, size],
            "resolution": size * 8, "scale_factor": 0.18215, "vae": vae, "flip_copies": 1,
            "num_classes": classes, "image_dir": str(path / "images"), **meta}
    (path / "meta.json").write_text(json.dumps(info))
    return path


def latent_config(path, *overrides):
    return load_config(SMOKE, [*LATENT, "data.name=latent-array", f"data.path={path}", "data.image_size=8",
                               "data.num_classes=3", *overrides])


# -- the hash covers the data's identity ------------------------------------------------------------------

def test_a_moved_latent_dataset_keeps_its_hash_and_other_data_changes_it(tmp_path):
    a = write_latents(tmp_path / "a")
    h = latent_config(a).hash
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(a, moved)
    assert latent_config(moved).hash == h
    # Each of these is other data at the same kind of path: the hash must change.
    others = {"more rows": dict(n=32), "other encoding": dict(seed=1), "other VAE": dict(vae="/models/sd-vae-ft-mse"),
              "other scale": dict(scale_factor=0.13025), "flip copies": dict(flip_copies=2)}
    for what, kwargs in others.items():
        assert latent_config(write_latents(tmp_path / what.replace(" ", "-"), **kwargs)).hash != h, what


def test_latent_folder_fingerprint_survives_a_move_and_sees_other_content(tmp_path):
    def folder(root, seed):
        rng = np.random.default_rng(seed)
        for sub in ("imagenet256_features", "imagenet256_labels"):
            (root / sub).mkdir(parents=True)
        for i in range(10):
            np.save(root / "imagenet256_features" / f"0-{i}.npy", rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
            np.save(root / "imagenet256_labels" / f"0-{i}.npy", np.array([i % 3]))
        return root

    def cfg(path):
        return load_config(SMOKE, [*LATENT, "data.name=latent-folder", f"data.path={path}", "data.image_size=8",
                                   "data.num_classes=3"])
    h = cfg(folder(tmp_path / "a", 0)).hash
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert cfg(tmp_path / "b").hash == h
    assert cfg(folder(tmp_path / "c", 1)).hash != h


def test_missing_latents_raise_a_data_error_and_try_hash_answers_none(tmp_path):
    cfg = latent_config(tmp_path / "absent")
    assert cfg.data_shape == (4, 8, 8)  # the shape needs no data
    with pytest.raises(DataError, match=r"absent has no latents.npy .*prepare-latents"):
        cfg.hash
    assert cfg.try_hash() is None
    assert load_config(SMOKE).try_hash() == load_config(SMOKE).hash


def test_digits_hash_is_cheap_and_imports_no_torch_for_the_data_part():
    code = ("import sys, time; from fcdm.data.identity import data_identity; "
            "d = data_identity('digits', None, 8, False); assert 'torch' not in sys.modules, 'torch imported'; print(d)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'split_version': 1" in out.stdout


# -- training checks the data against the declaration ---------------------------------------------------------

def test_latent_training_runs_and_records_the_data_identity(tmp_path):
    data = write_latents(tmp_path / "lat")
    cfg = latent_config(data)
    result = train(cfg, store=tmp_path / "store", progress=False)
    assert result.status == "FINISHED" and result.step == 4
    state = load_latest(checkpoint_dir(tmp_path / "store", cfg))
    assert state["identity"] == cfg.identity() and state["data"]["identity"]["count"] == 24
    assert (state["data"]["channels"], state["data"]["image_size"], state["data"]["num_classes"]) == (4, 8, 3)


@pytest.mark.parametrize("overrides, message", [
    (["data.image_size=16"], "data.image_size=16 but the latents in {path} are 8 x 8; set data.image_size: 8"),
    (["data.num_classes=5"], "data.num_classes=5 but {path}/meta.json says the latents have 3 classes; "
                             "set data.num_classes: 3"),
])
def test_data_that_differs_from_its_declaration_is_refused_before_anything_is_written(tmp_path, overrides, message):
    data = write_latents(tmp_path / "lat")
    store = tmp_path / "store"
    cfg = latent_config(data, *overrides)
    with pytest.raises(ConfigError) as err:
        train(cfg, store=store, progress=False)
    assert message.format(path=data) in str(err.value)
    assert not store.exists()


# -- resume checks the stored identity -----------------------------------------------------------------------

def test_resuming_checkpoints_of_another_configuration_stops_with_the_difference(tmp_path, tiny_config):
    a, b = tiny_config(), tiny_config("train.lr=2e-3")
    train(a, store=tmp_path, progress=False, max_steps=10)
    # A checkpoint folder copied (or a hash collision) under b's name: training on would mix two runs.
    shutil.copytree(checkpoint_dir(tmp_path, a), checkpoint_dir(tmp_path, b))
    before = sorted(p.name for p in checkpoint_dir(tmp_path, b).iterdir())
    with pytest.raises(CheckpointError) as err:
        train(b, store=tmp_path, progress=False)
    msg = str(err.value)
    newest = list_checkpoints(checkpoint_dir(tmp_path, b))[-1][1]
    assert str(newest) in msg and "train.lr: 0.001 -> 0.002" in msg and "delete" in msg
    assert sorted(p.name for p in checkpoint_dir(tmp_path, b).iterdir()) == before
    assert len(all_runs(tmp_path)) == 1  # no second MLflow run was opened

    result = runner.invoke(app, ["train", str(SMOKE), *[x for o in TINY for x in ("--set", o)], "--set", "train.lr=2e-3",
                                 "--store", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and "train.lr: 0.001 -> 0.002" in result.output
