"""Evaluation: metrics at training steps, post-hoc `evaluate`, ADM export, failing fast without weights."""
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.config import load_config
from fcdm.evaluate import Protocol, gather_samples

from conftest import SMOKE, TINY, all_runs, client

runner = CliRunner()


def history(store, run_id, key):
    return [(m.step, m.value) for m in client(store).get_metric_history(run_id, key)]


def test_smoke_run_logs_metrics_at_each_eval_step_and_fid_falls(smoke):
    cfg, store, result = smoke
    fid = history(store, result.run_id, "fid")
    assert [s for s, _ in fid] == cfg.eval_steps()
    assert fid[-1][1] < fid[0][1], f"digits-FID did not fall: {fid}"
    consistency = history(store, result.run_id, "class_consistency")
    assert consistency[-1][1] >= 0.9, f"class consistency of the final samples: {consistency}"
    for key in ("is", "kid", "precision", "recall"):
        assert len(history(store, result.run_id, key)) == len(cfg.eval_steps()), key
    tags = client(store).get_run(result.run_id).data.tags
    assert tags["eval.extractor"] == "digits-classifier" and tags["eval.reference"] == "digits-test"
    assert tags["eval.num_samples"] == str(cfg.eval.num_samples) and tags["eval.sampler"] == "euler"
    assert tags["eval.cfg_scale"] == "2.0" and tags["eval.guided_channels"] == "1 of 1"
    assert tags["eval.precision"] == "fp32" and tags["eval.vae"] == "None"


def test_evaluate_after_the_fact_logs_into_the_same_run_and_exports_adm_npz(smoke, tmp_path):
    cfg, store, result = smoke
    npz = tmp_path / "samples.npz"
    out = runner.invoke(app, ["evaluate", result.run_id, "--num-samples", "100", "--sampling-steps", "10",
                              "--export-npz", str(npz), "--store", str(store)])
    assert out.exit_code == 0, out.output
    suffix = "/euler-10-cfg2-n100-fp32-seed0"
    assert history(store, result.run_id, f"fid{suffix}")[0][0] == cfg.train.steps
    assert len(all_runs(store)) == 1
    data = np.load(npz)
    assert data["arr_0"].shape == (100, 8, 8, 3) and data["arr_0"].dtype == np.uint8
    assert np.bincount(data["labels"]).tolist() == [10] * 10


def test_evaluate_rejects_a_sampler_of_the_other_objective(smoke):
    cfg, store, result = smoke
    out = runner.invoke(app, ["evaluate", result.run_id, "--sampler", "ddim", "--store", str(store)])
    assert out.exit_code == 2 and "allowed values: euler, euler-sde" in out.output


def test_inception_fid_without_weights_fails_fast_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    start = time.perf_counter()
    out = runner.invoke(app, ["train", str(SMOKE), "--set", "eval.extractor=inception-v3-compat",
                              "--store", str(tmp_path / "store")])
    assert time.perf_counter() - start < 10
    assert out.exit_code == 2 and "--fid-weights" in out.output
    assert not (tmp_path / "store" / "mlflow.db").exists()


def test_protocol_suffix_is_empty_only_for_the_runs_own_protocol():
    cfg = load_config(SMOKE)
    own = Protocol.from_config(cfg)
    assert own.metric_suffix(own) == ""
    assert Protocol.from_config(cfg, cfg_scale=1.5).metric_suffix(own) == "/euler-50-cfg1.5-n500-fp32-seed0"
    assert Protocol.from_config(cfg, num_samples=None) == own  # None means "keep the run's value"


def test_gather_samples_restores_the_order_of_sharded_sampling():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    labels = np.arange(10)
    shares = [(images[r::3], labels[r::3]) for r in range(3)]
    merged_images, merged_labels = gather_samples(shares)
    assert np.array_equal(merged_images, images) and np.array_equal(merged_labels, labels)


def test_latent_runs_need_a_vae_and_reference_to_be_measured():
    with pytest.raises(ValueError, match="eval.vae and eval.reference are required"):
        load_config(SMOKE, ["data.name=latent-array", "data.path=/data/latents"])
    load_config(SMOKE, ["data.name=latent-array", "data.path=/data/latents", "eval.metrics=[]"])


def write_fake_latents(root, n=48, classes=3):
    """A tiny latent-array set: n random 4 x 8 x 8 latents over `classes` classes."""
    import json

    root.mkdir()
    rng = np.random.default_rng(0)
    np.save(root / "latents.npy", rng.standard_normal((n, 4, 8, 8)).astype(np.float32))
    np.save(root / "labels.npy", rng.integers(0, classes, n))
    (root / "meta.json").write_text(json.dumps({"resolution": 64, "scale_factor": 0.18215, "flip_copies": 1,
                                                "num_classes": classes, "vae": "none"}))
    return root


def test_a_latent_run_trains_dit_and_fcdm_through_the_same_path(tmp_path):
    """The paper profile's code path on a tiny fake latent set (4 x 8 x 8 latents, 3 classes)."""
    from fcdm.train import train

    latents = write_fake_latents(tmp_path / "latents")
    for model in (["model.name=DiT-S/2", "model.args={hidden_size: 24, depth: 1, num_heads: 2}"],
                  ["model.args.hidden_size=8"]):
        cfg = load_config(SMOKE, [*TINY, "data.name=latent-array", f"data.path={latents}", "objective.name=ddpm",
                                  "eval.sampler=ddim", "train.steps=4", *model])
        result = train(cfg, store=tmp_path / "store", progress=False)
        assert result.status == "FINISHED" and np.isfinite(result.final_loss)


def test_latent_samples_are_decoded_by_the_vae_and_measured_against_a_reference_npz(tmp_path):
    """Decode through a tiny random AutoencoderKL and compare with an ADM-style reference .npz (the digits
    extractor stands in for Inception, whose weights are not on this machine)."""
    from diffusers import AutoencoderKL

    from fcdm.train import train

    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                        norm_num_groups=8, sample_size=32)
    vae.save_pretrained(tmp_path / "vae")
    reference = tmp_path / "reference.npz"
    np.savez(reference, arr_0=np.random.default_rng(1).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8))
    latents = write_fake_latents(tmp_path / "latents")
    cfg = load_config(SMOKE, [*TINY, "data.name=latent-array", f"data.path={latents}", "train.steps=4",
                              "eval.metrics=[fid, kid]", "eval.num_samples=32", "eval.extractor=digits-classifier",
                              f"eval.vae={tmp_path / 'vae'}", f"eval.reference={reference}"])
    result = train(cfg, store=tmp_path / "store", progress=False)
    fid = history(tmp_path / "store", result.run_id, "fid")
    assert [s for s, _ in fid] == [4] and np.isfinite(fid[0][1])
    npz = tmp_path / "samples.npz"
    out = runner.invoke(app, ["evaluate", result.run_id, "--num-samples", "16", "--export-npz", str(npz),
                              "--store", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    assert np.load(npz)["arr_0"].shape == (16, 16, 16, 3)  # 8 x 8 latents decoded to 16 x 16 RGB


def test_sampling_is_deterministic_under_a_seed_and_leaves_the_global_rng_alone():
    import torch

    from fcdm.build import build_model, build_objective
    from fcdm.data import DigitsDataset
    from fcdm.sampling import generate, spread_labels

    cfg = load_config(SMOKE, TINY)
    model = build_model(cfg, DigitsDataset())
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    labels = spread_labels(20, 10)
    kwargs = dict(sampler="euler", num_steps=3, cfg_scale=2.0, batch_size=8)
    state = torch.get_rng_state()
    a = generate(model, build_objective(cfg), (1, 8, 8), labels, seed=0, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate(model, build_objective(cfg), (1, 8, 8), labels, seed=0, **kwargs)
    c = generate(model, build_objective(cfg), (1, 8, 8), labels, seed=1, **kwargs)
    assert a.shape == (20, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
