"""Evaluation: metrics at training steps, post-hoc `evaluate`, ADM export, failing fast without weights."""
import json
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
from helpers import SMOKE, TINY, all_runs, client, history
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.config import load_config
from fcdm.evaluation.protocol import Protocol
from fcdm.evaluation.sampling import gather_samples, shard_indices

runner = CliRunner()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """The digits classifier trained once for this module, then copied into each store's cache."""
    from fcdm.metrics import ensure_digits_classifier

    return ensure_digits_classifier(tmp_path_factory.mktemp("classifier"))


def new_store(path, classifier):
    (path / "cache").mkdir(parents=True)
    shutil.copy(classifier, path / "cache" / classifier.name)
    return path


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_evaluate_after_the_fact_logs_into_the_same_run_and_exports_adm_npz(smoke, tmp_path):
    cfg, store, result = smoke
    npz = tmp_path / "samples.npz"
    out = runner.invoke(app, ["evaluate", result.run_id, "--num-samples", "100", "--sampling-steps", "10",
                              "--export-npz", str(npz), "--store", str(store)])
    assert out.exit_code == 0, out.output
    (key,) = [k for k in client(store).get_run(result.run_id).data.metrics if k.startswith("fid/")]
    assert key.startswith("fid/euler-10-cfg2-n100-fp32-seed0-")
    assert history(store, result.run_id, key)[0][0] == cfg.train.steps
    assert len(all_runs(store)) == 1
    data = np.load(npz)
    assert data["arr_0"].shape == (100, 8, 8, 3) and data["arr_0"].dtype == np.uint8
    assert np.bincount(data["labels"]).tolist() == [10] * 10


@pytest.mark.e2e
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


def test_the_protocol_holds_the_sampling_seed_never_the_training_seed():
    """Issue 15: seeds of one configuration evaluated alike share one protocol (digest, slug, metric key)."""
    def resolved(*overrides):
        proto = Protocol.from_config(load_config(SMOKE, list(overrides)))
        return replace(proto, extractor_weights="sha256:aaaaaaaaaaaa", fid_reference="images")

    base = resolved()
    assert resolved("seed=1") == base and resolved("seed=1").digest == base.digest
    assert resolved("eval.noise_seeds=3").digest == base.digest  # re-samplings are the same protocol, reseeded
    other = resolved("eval.seed=1")
    assert other.seed == 1 and other.digest != base.digest and "-seed1-" in other.slug
    assert other.tags(num_channels=1)["eval.seed"] == "1"


def test_protocol_digest_covers_every_setting_and_the_extractor_weights(tmp_path):
    cfg = load_config(SMOKE)
    own = Protocol.from_config(cfg)
    assert Protocol.from_config(cfg, num_samples=None) == own  # None means "keep the run's value"
    with pytest.raises(ValueError, match="resolved"):
        own.digest
    resolved = replace(own, extractor_weights="sha256:aaaaaaaaaaaa", fid_reference="images")
    assert resolved.digest == replace(resolved).digest and len(resolved.digest) == 12
    for change in (dict(cfg_scale=1.5), dict(seed=1), dict(num_samples=499), dict(sampling_steps=49),
                   dict(guided_channels=1), dict(precision="bf16"), dict(reference="digits-all"), dict(vae="v"),
                   dict(extractor_weights="sha256:bbbbbbbbbbbb"), dict(fid_reference="stored-statistics")):
        other = replace(resolved, **change)
        assert other.digest != resolved.digest and other.slug != resolved.slug, change
    assert replace(resolved, cfg_scale=1.5).slug == f"euler-50-cfg1.5-n500-fp32-seed0-{replace(resolved, cfg_scale=1.5).digest[:8]}"
    tags = resolved.tags(num_channels=1)
    assert tags["eval.protocol"] == resolved.digest and tags["eval.extractor_weights"] == "sha256:aaaaaaaaaaaa"
    assert tags["eval.fid_reference"] == "images" and tags["eval.guided_channels"] == "1 of 1"


def test_preserved_rng_puts_every_global_stream_back():
    import random

    import torch

    from fcdm.evaluation.sampling import preserved_rng

    state = torch.get_rng_state()
    iter(torch.utils.data.DataLoader(list(range(4))))  # as torch-fidelity's loader does: it draws a base seed
    assert not torch.equal(torch.get_rng_state(), state)  # the disturbance guarded against
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with preserved_rng():
        random.random(), np.random.random(), torch.rand(100)
        iter(torch.utils.data.DataLoader(list(range(4))))
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])


def test_processes_share_out_whole_batches_and_gather_restores_the_order():
    assert [shard_indices(10, 3, r, 3).tolist() for r in range(3)] == [[0, 1, 2, 9], [3, 4, 5], [6, 7, 8]]
    assert shard_indices(4, 3, 2, 3).tolist() == []  # more processes than batches: nothing to draw
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    labels = np.arange(10)
    shares = [(images[shard_indices(10, 3, r, 3)], labels[shard_indices(10, 3, r, 3)]) for r in range(3)]
    merged_images, merged_labels = gather_samples(shares, batch_size=3)
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


def test_a_latent_run_trains_dit_and_fcdm_through_the_same_path(tmp_path, one_thread):
    """The paper profile's code path on a tiny fake latent set (4 x 8 x 8 latents, 3 classes)."""
    from fcdm.train import train

    latents = write_fake_latents(tmp_path / "latents")
    for model in (["model.name=DiT-S/2", "model.args={hidden_size: 24, depth: 1, num_heads: 2}"],
                  ["model.args.hidden_size=8"]):
        cfg = load_config(SMOKE, [*TINY, "data.name=latent-array", f"data.path={latents}", "data.image_size=8",
                                  "data.num_classes=3", "objective.name=ddpm", "eval.sampler=ddim", "train.steps=4",
                                  *model])
        result = train(cfg, store=tmp_path / "store", progress=False)
        assert result.status == "FINISHED" and np.isfinite(result.final_loss)


def test_latent_samples_are_decoded_by_the_vae_and_measured_against_a_reference_npz(tmp_path, classifier,
                                                                                     one_thread):
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
    cfg = load_config(SMOKE, [*TINY, "data.name=latent-array", f"data.path={latents}", "data.image_size=8",
                              "data.num_classes=3", "train.steps=4",
                              "eval.metrics=[fid, kid]", "eval.num_samples=32", "eval.extractor=digits-classifier",
                              f"eval.vae={tmp_path / 'vae'}", f"eval.reference={reference}"])
    result = train(cfg, store=new_store(tmp_path / "store", classifier), progress=False)
    fid = history(tmp_path / "store", result.run_id, "fid")
    assert [s for s, _ in fid] == [4] and np.isfinite(fid[0][1])
    npz = tmp_path / "samples.npz"
    out = runner.invoke(app, ["evaluate", result.run_id, "--num-samples", "16", "--export-npz", str(npz),
                              "--store", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    assert np.load(npz)["arr_0"].shape == (16, 16, 16, 3)  # 8 x 8 latents decoded to 16 x 16 RGB


# -- exact resume through evaluations; one curve, one protocol ---------------------------------------

# Evaluations (with metrics) at step 10 and 20, a checkpoint at each.
EVAL_RUN = [*TINY, "train.steps=20", "eval.at=[10, 20]", "log.checkpoint_every=10",
            "eval.metrics=[fid, is, kid, prc]", "eval.num_samples=20"]
CHANGED_EVAL = ["eval.sampling_steps=3", "eval.num_samples=24"]


@pytest.fixture(scope="module")
def resumed_through_an_evaluation(tmp_path_factory, classifier, one_thread):
    """Run A: 20 steps uninterrupted. Run B: stopped at step 10 (right after its evaluation), then resumed
    to the end with eval.* changed (the protocol is not hashed, so it is the same run)."""
    from fcdm.train import train

    cfg = load_config(SMOKE, EVAL_RUN)
    root = tmp_path_factory.mktemp("resume")
    a = train(cfg, store=new_store(root / "a", classifier), progress=False)
    stopped = train(cfg, store=new_store(root / "b", classifier), progress=False, max_steps=10)
    assert stopped.status == "STOPPED" and stopped.step == 10
    b = train(load_config(SMOKE, [*EVAL_RUN, *CHANGED_EVAL]), store=root / "b", progress=False)
    assert a.status == b.status == "FINISHED"
    return cfg, root / "a", a.run_id, root / "b", b.run_id


def test_resuming_from_an_evaluation_step_with_metrics_on_is_bitwise_exact(resumed_through_an_evaluation):
    """torch-fidelity's DataLoader draws from the global torch RNG; the evaluation must not shift the
    training noise that follows it (before the fix: max weight difference 0.0125)."""
    import torch

    from fcdm.store.checkpoints import load_latest
    from fcdm.store.layout import checkpoint_dir

    cfg, store_a, run_a, store_b, _ = resumed_through_an_evaluation
    assert [s for s, _ in history(store_a, run_a, "fid")] == [10, 20]  # metrics really ran, at both steps
    a, b = (load_latest(checkpoint_dir(store, cfg)) for store in (store_a, store_b))
    assert a["step"] == b["step"] == 20
    for part in ("ema", "model"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name, (tensor - b[part][name]).abs().max().item())


def test_changed_eval_settings_on_resume_log_under_a_suffixed_key_and_keep_the_recorded_tags(
        resumed_through_an_evaluation):
    cfg, store_a, run_a, store_b, run_b = resumed_through_an_evaluation
    run = client(store_b).get_run(run_b)
    assert [s for s, _ in history(store_b, run_b, "fid")] == [10]  # the bare curve holds only the first protocol
    (key,) = [k for k in run.data.metrics if k.startswith("fid/")]
    assert key.startswith("fid/euler-3-cfg2-n24-fp32-seed0-")
    # the changed request is met in full: step 10 (already measured under the old protocol) is measured again
    # under the new one from its kept checkpoint, so the new protocol's curve is complete (issue 15)
    assert [s for s, _ in history(store_b, run_b, key)] == [10, 20]
    assert f"class_consistency{key[3:]}" in run.data.metrics
    tags = run.data.tags
    assert tags["eval.sampling_steps"] == "2" and tags["eval.num_samples"] == "20"  # the recorded protocol stays
    assert tags["eval.protocol"] == client(store_a).get_run(run_a).data.tags["eval.protocol"]
    assert json.loads(tags[f"eval{key[3:]}"])["sampling_steps"] == 3  # the other protocol is said too


def test_post_hoc_evaluation_with_the_runs_protocol_shares_its_curve(resumed_through_an_evaluation):
    """One process after the fact draws the same samples as training did, so the numbers repeat exactly."""
    cfg, store_a, run_a, _, _ = resumed_through_an_evaluation
    out = runner.invoke(app, ["evaluate", run_a, "--store", str(store_a)])
    assert out.exit_code == 0, out.output
    assert "fid = " in out.output and "fid/" not in out.output
    fid = history(store_a, run_a, "fid")
    assert [s for s, _ in fid] == [10, 20, 20]
    assert fid[2][1] == pytest.approx(fid[1][1], rel=1e-6), fid
    assert not [k for k in client(store_a).get_run(run_a).data.metrics if "/" in k]


def test_other_extractor_weights_log_under_a_suffixed_key(resumed_through_an_evaluation, classifier, tmp_path):
    import torch

    cfg, store_a, run_a, _, _ = resumed_through_an_evaluation
    tags_before = client(store_a).get_run(run_a).data.tags
    ckpt = torch.load(classifier, weights_only=True)
    ckpt["state_dict"]["body.9.weight"] = ckpt["state_dict"]["body.9.weight"] * 1.01
    other = tmp_path / "other_classifier.pt"
    torch.save(ckpt, other)
    out = runner.invoke(app, ["evaluate", run_a, "--fid-weights", str(other), "--store", str(store_a)])
    assert out.exit_code == 0, out.output
    run = client(store_a).get_run(run_a)
    (key,) = [k for k in run.data.metrics if k.startswith("fid/")]
    assert key.startswith("fid/euler-2-cfg2-n20-fp32-seed0-")  # same sampling, other weights: another digest
    assert {k: v for k, v in run.data.tags.items() if not k.startswith("eval/")} == tags_before

    bad = runner.invoke(app, ["evaluate", run_a, "--fid-weights", str(tmp_path / "nope.pt"), "--store", str(store_a)])
    assert bad.exit_code == 2 and "--fid-weights" in bad.output and "no such file" in bad.output
    assert client(store_a).get_run(run_a).data.metrics.keys() == run.data.metrics.keys()


def test_an_unconditional_run_reports_no_class_consistency(tmp_path, classifier, one_thread):
    from fcdm.train import train

    cfg = load_config(SMOKE, [*TINY, "model.args.conditioning=unconditional", "eval.cfg_scale=1.0", "train.steps=4",
                              "eval.at=[4]", "eval.metrics=[fid, prc]", "eval.num_samples=20"])
    result = train(cfg, store=new_store(tmp_path / "store", classifier), progress=False)
    metrics = client(tmp_path / "store").get_run(result.run_id).data.metrics
    assert "fid" in metrics and "precision" in metrics and "class_consistency" not in metrics


@pytest.mark.e2e
def test_two_processes_in_training_and_one_process_after_the_fact_draw_the_same_samples(tmp_path, classifier):
    """The in-training evaluation on two gloo processes and `evaluate` on one give the very same numbers,
    so they rightly share the bare `fid` curve."""
    import os
    import subprocess

    overrides = [*TINY, "train.steps=4", "eval.at=[4]", "eval.metrics=[fid, kid, prc]", "eval.num_samples=20",
                 "eval.batch_size=8"]  # three batches: two for rank 0, one for rank 1
    store = new_store(tmp_path / "store", classifier)
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fcdm.cli", "train", str(SMOKE),
           *[a for ov in overrides for a in ("--set", ov)], "--no-progress", "--store", str(store)]
    proc = subprocess.run(cmd, cwd=SMOKE.parents[2], capture_output=True, text=True, timeout=500,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = all_runs(store)
    assert run.data.tags["fcdm.processes"] == "2"
    out = runner.invoke(app, ["evaluate", run.info.run_id, "--store", str(store)])
    assert out.exit_code == 0, out.output
    for key in ("fid", "kid", "precision", "recall", "class_consistency"):
        (in_training, after) = history(store, run.info.run_id, key)
        assert in_training[0] == after[0] == 4 and in_training[1] == after[1], (key, in_training, after)
