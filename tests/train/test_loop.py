"""The trainer and the train/sample commands, as a user runs them on the CPU."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import ROOT, SMOKE, TINY, all_runs, client, history
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.config import load_config
from fcdm.store.checkpoints import list_checkpoints, load_latest
from fcdm.store.layout import checkpoint_dir, run_name
from fcdm.store.tracking import TAG_HASH
from fcdm.train import TrainingDiverged, train

runner = CliRunner()


def cli(*args, store, **kwargs):
    """Run `python -m fcdm.cli ARGS --store STORE` in a subprocess (as a user would)."""
    cmd = [sys.executable, "-m", "fcdm.cli", *args, "--store", str(store)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def set_args(*overrides):
    return [a for ov in overrides for a in ("--set", ov)]


def wait_for_checkpoint(ckpt_dir, proc, min_step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(s >= min_step for s, _ in list_checkpoints(ckpt_dir)):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


# -- the smoke config end to end ----------------------------------------------------------------------

@pytest.mark.e2e
def test_smoke_run_finishes_and_mlflow_holds_params_metrics_config_and_grids(smoke):
    cfg, store, result = smoke
    assert result.status == "FINISHED" and result.step == cfg.train.steps
    (run,) = all_runs(store)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_HASH] == cfg.hash
    assert run.data.params["train.lr"] == "0.001" and run.data.params["model.name"] == "FCDM-S"
    assert int(run.data.tags["fcdm.params"]) > 0 and float(run.data.tags["fcdm.gflops"]) > 0
    history = client(store).get_metric_history(run.info.run_id, "loss")
    assert len(history) == cfg.train.steps // cfg.log.every
    first, last = np.mean([m.value for m in history[:3]]), np.mean([m.value for m in history[-3:]])
    assert last < 0.8 * first, f"loss did not fall: {first:.4f} -> {last:.4f}"
    for key in ("steps_per_sec", "lr", "train_gflops"):
        assert client(store).get_metric_history(run.info.run_id, key)
    artifacts = {a.path for a in client(store).list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    grids = {a.path for a in client(store).list_artifacts(run.info.run_id, "samples")}
    checkpoints = set(range(cfg.log.checkpoint_every, cfg.train.steps + 1, cfg.log.checkpoint_every))
    assert grids == {f"samples/step_{s:08d}.png" for s in checkpoints | set(cfg.eval_steps())}


@pytest.mark.e2e
def test_smoke_samples_are_recognisably_their_class(smoke, tmp_path):
    """An independent classifier (an SVM on the real digits) must recognise >= 90% of the samples."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    cfg, store, _ = smoke
    result = runner.invoke(app, ["sample", run_name(cfg), "--num", "200",
                                 "--out", str(tmp_path), "--store", str(store)])
    assert result.exit_code == 0, result.output
    data = np.load(tmp_path / "samples.npz")
    images, labels = data["arr_0"], data["labels"]
    assert images.shape == (200, 8, 8, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [20] * 10
    assert (tmp_path / "grid.png").is_file()
    digits = load_digits()
    clf = SVC(gamma=0.001).fit(digits.data, digits.target)
    accuracy = (clf.predict(images.reshape(200, 64) / 255.0 * 16.0) == labels).mean()
    assert accuracy >= 0.9, f"only {accuracy:.1%} of samples classified as their conditioning class"


@pytest.mark.e2e
def test_rerunning_a_finished_config_skips_it(smoke):
    cfg, store, _ = smoke
    assert train(cfg, store=store, progress=False).status == "SKIPPED"
    assert len(all_runs(store)) == 1


# -- exact resume -------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_sigkill_then_rerun_resumes_the_same_run_and_matches_an_uninterrupted_run(tmp_path):
    overrides = [*TINY, "train.steps=120", "log.checkpoint_every=10"]
    cfg = load_config(SMOKE, overrides)
    ref = cli("train", str(SMOKE), *set_args(*overrides), "--no-progress", store=tmp_path / "ref")
    assert ref.wait() == 0, ref.stdout.read()
    killed = cli("train", str(SMOKE), *set_args(*overrides), "--no-progress", store=tmp_path / "b")
    wait_for_checkpoint(checkpoint_dir(tmp_path / "b", cfg), killed, min_step=20)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    interrupted_at = max(s for s, _ in list_checkpoints(checkpoint_dir(tmp_path / "b", cfg)))
    assert interrupted_at < cfg.train.steps
    (run_before,) = all_runs(tmp_path / "b")
    assert run_before.info.status == "RUNNING"

    resumed = cli("train", str(SMOKE), *set_args(*overrides), "--no-progress", store=tmp_path / "b")
    out = resumed.communicate()[0]
    assert resumed.returncode == 0, out
    assert f"at step {interrupted_at}" in out
    (run_after,) = all_runs(tmp_path / "b")
    assert run_after.info.run_id == run_before.info.run_id and run_after.info.status == "FINISHED"
    a = load_latest(checkpoint_dir(tmp_path / "ref", cfg))
    b = load_latest(checkpoint_dir(tmp_path / "b", cfg))
    assert a["step"] == b["step"] == cfg.train.steps
    for name, tensor in a["ema"].items():
        assert torch.equal(tensor, b["ema"][name]), name


def test_in_process_stop_and_resume_is_bitwise_exact(tmp_path, tiny_config):
    cfg = tiny_config()
    train(cfg, store=tmp_path / "ref", progress=False)
    stopped = train(cfg, store=tmp_path / "b", progress=False, max_steps=13)
    assert stopped.status == "STOPPED" and stopped.step == 13
    train(cfg, store=tmp_path / "b", progress=False)
    a, b = (load_latest(checkpoint_dir(tmp_path / s, cfg)) for s in ("ref", "b"))
    for part in ("ema", "model"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)


@pytest.mark.e2e
def test_sigterm_checkpoints_and_marks_the_run_killed(tmp_path):
    overrides = [*TINY, "train.steps=100000", "log.checkpoint_every=10"]
    cfg = load_config(SMOKE, overrides)
    proc = cli("train", str(SMOKE), *set_args(*overrides), "--no-progress", store=tmp_path)
    wait_for_checkpoint(checkpoint_dir(tmp_path, cfg), proc, min_step=10)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM" in out and "rerun the same command to resume" in out and "Traceback" not in out
    (run,) = all_runs(tmp_path)
    assert run.info.status == "KILLED"
    assert load_latest(checkpoint_dir(tmp_path, cfg))["step"] >= 10


@pytest.mark.e2e
def test_two_cpu_processes_under_accelerate_train_one_run(tmp_path):
    overrides = [*TINY, "train.steps=20"]
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fcdm.cli", "train", str(SMOKE),
           *set_args(*overrides), "--no-progress", "--store", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["fcdm.processes"] == "2"
    state = load_latest(checkpoint_dir(tmp_path, load_config(SMOKE, overrides)))
    assert state["step"] == 20 and len(state["rng"]) == 2  # every rank's RNG state is saved


# -- what train.log shows, threads handed over (issue 17) ------------------------------------------------

def test_a_running_trainers_log_shows_loss_lines_and_each_evaluations_fid(tmp_path):
    from fcdm.store.trainlog import parse_tail, read_tail
    from fcdm.util.process import spawn

    overrides = [*TINY, "train.steps=40", "log.every=5", "eval.at=[0.5, 1.0]", "eval.metrics=[fid]",
                 "eval.num_samples=40"]
    config = tmp_path / "job.yaml"
    config.write_text(load_config(SMOKE, overrides).to_yaml())
    log = tmp_path / "train.log"  # as the runner starts a job: its output appended to the job's log
    proc = spawn([sys.executable, "-m", "fcdm.cli", "train", str(config), "--store", str(tmp_path / "s"),
                  "--no-progress"], log, {"OMP_NUM_THREADS": "1"})
    seen = None
    while proc.poll() is None and seen is None:  # while it runs: a loss line the live view can read
        live = parse_tail(read_tail(log))
        seen = live if live.step else None
        time.sleep(0.05)
    assert proc.wait(timeout=600) == 0, log.read_text()
    assert seen is not None and seen.steps == 40 and seen.rate > 0, log.read_text()
    text = log.read_text()
    assert "start " in text and "hash " in text and "seed 0" in text and "1 thread(s)" in text, text
    assert "first step " in text and " s after the process started" in text
    assert "step 5/40  loss " in text and "step 40/40  loss " in text  # every log.every steps
    evaluations = [ln for ln in text.splitlines() if "] evaluation at step " in ln]
    assert [ln.split("evaluation at step ")[1].split(":")[0] for ln in evaluations] == ["20/40", "40/40"], text
    assert all(": fid " in ln for ln in evaluations)
    assert parse_tail(text).metrics["fid"] == pytest.approx(float(evaluations[-1].split(": fid ")[1].split()[0]))
    assert "checkpoint at step 40" in text and "FINISHED at step 40" in text


def test_threads_the_runner_hands_over_are_taken_up_and_recorded(tmp_path, tiny_config, one_thread, monkeypatch,
                                                                 capsys):
    from fcdm.store.trainlog import THREADS_ENV

    handed = tmp_path / "threads"
    handed.write_text("2")
    monkeypatch.setenv(THREADS_ENV, str(handed))
    try:
        result = train(tiny_config("train.steps=12"), store=tmp_path / "s", progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert "threads: 2 from step 5 (handed over by the runner)" in capsys.readouterr().out
    assert client(tmp_path / "s").get_run(result.run_id).data.tags["fcdm.threads"] == "1; 2 from step 5"


def test_the_mlflow_run_reads_as_its_row_names_its_dataset_and_logs_system_metrics(tmp_path, tiny_config, one_thread,
                                                                                  monkeypatch):
    import json

    from analysis.store import read_store
    from fcdm.build import build_dataset
    from fcdm.config.identity import digest
    from fcdm.store.tracking import Tracker, find_run

    every = Tracker.system_metrics
    # MLflow publishes a sample only after sleeping one interval, and drops it when the run ends first:
    # an interval far shorter than the run (under load too)
    monkeypatch.setattr(Tracker, "system_metrics", lambda self: every(self, interval_s=0.01))
    cfg = tiny_config("name=ks/kernel_size=3", "train.steps=20", "log.system_metrics=true")
    assert train(cfg, store=tmp_path, progress=False, max_steps=10).status == "STOPPED"
    result = train(cfg, store=tmp_path, progress=False)  # resumed: the same run, its dataset logged once
    run = client(tmp_path).get_run(result.run_id)
    assert run.info.run_name == "kernel_size=3 s0"
    (given,) = run.inputs.dataset_inputs
    assert (given.dataset.name, given.dataset.digest) == ("digits", digest(cfg.identity()["data"]))
    assert given.dataset.source_type == "sklearn" and [t.value for t in given.tags] == ["training"]
    assert json.loads(given.dataset.profile)["num_examples"] == len(build_dataset(cfg))
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)
    assert not any(k.startswith("system/") for k in read_store(f"sqlite:///{tmp_path / 'mlflow.db'}")[1]["key"])
    # `sample` and `evaluate` find the run by its new name and by the long name older versions gave runs.
    assert find_run("kernel_size=3 s0", tmp_path).info.run_id == result.run_id
    assert find_run(run_name(cfg), tmp_path).info.run_id == result.run_id


# -- bad input -----------------------------------------------------------------------------------------

def test_typo_in_config_exits_nonzero_with_one_message_and_no_store(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("  lr:", "  lrr:"))
    result = runner.invoke(app, ["train", str(bad), "--store", str(tmp_path / "store")])
    assert result.exit_code == 2
    assert "did you mean 'train.lr'" in result.output and str(bad) in result.output
    assert not (tmp_path / "store").exists()


def test_wrong_type_exits_nonzero(tmp_path):
    result = runner.invoke(app, ["train", str(SMOKE), "--set", "train.batch_size=lots", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "train.batch_size='lots' is invalid" in result.output


def test_missing_data_path_exits_nonzero_and_leaves_nothing(tmp_path):
    missing = tmp_path / "no-latents"
    result = runner.invoke(app, ["train", str(SMOKE), *set_args("data.name=latent-array", f"data.path={missing}", "eval.metrics=[]"),
                                 "--store", str(tmp_path / "store")])
    assert result.exit_code == 2 and str(missing) in result.output
    assert not (tmp_path / "store").exists()


def test_bad_model_argument_is_a_config_error(tmp_path):
    result = runner.invoke(app, ["train", str(SMOKE), "--set", "model.args.kernel_size=4", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "kernel_size=4" in result.output and "odd integers" in result.output


def test_corrupt_checkpoint_exits_nonzero_and_touches_nothing(tmp_path, tiny_config):
    cfg = tiny_config()
    train(cfg, store=tmp_path, progress=False, max_steps=10)
    ckpt = checkpoint_dir(tmp_path, cfg) / "step_00000020.pt"
    ckpt.write_bytes(b"garbage")
    before = {p.name for p in checkpoint_dir(tmp_path, cfg).iterdir()}
    (run_before,) = all_runs(tmp_path)
    result = runner.invoke(app, ["train", str(SMOKE), *set_args(*TINY), "--store", str(tmp_path)])
    assert result.exit_code == 2 and str(ckpt) in result.output and "delete this file" in result.output
    assert {p.name for p in checkpoint_dir(tmp_path, cfg).iterdir()} == before
    (run_after,) = all_runs(tmp_path)
    assert run_after.info.status == run_before.info.status


def test_nan_loss_stops_with_failed_status_and_no_broken_checkpoint(tmp_path, tiny_config):
    cfg = tiny_config("train.lr=1e30")
    with pytest.raises(TrainingDiverged, match="loss became"):
        train(cfg, store=tmp_path, progress=False)
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED" and "loss became" in run.data.tags["fcdm.failure"]
    from fcdm.store.progress import read_progress

    progress = read_progress(checkpoint_dir(tmp_path, cfg))
    assert progress["status"] == "failed" and "TrainingDiverged: loss became" in progress["reason"]
    for _, path in list_checkpoints(checkpoint_dir(tmp_path, cfg)):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values())


# -- evaluations survive a kill (issue 7, item 4) --------------------------------------------------------------

def _kill_evaluation_at(monkeypatch, kill_step):
    """Make the trainer's evaluation at `kill_step` die as a Ctrl-C or a kill would; the others run for real."""
    import fcdm.evaluation.evaluate as ev

    real, seen = ev.evaluate_in_training, []

    def evaluate(*args, step, **kwargs):
        seen.append(step)
        if step == kill_step:
            raise KeyboardInterrupt
        return real(*args, step=step, **kwargs)
    monkeypatch.setattr(ev, "evaluate_in_training", evaluate)
    return seen


def test_a_kill_during_an_evaluation_is_redone_first_and_the_run_finishes_only_with_its_last_one(
        tmp_path, tiny_config, monkeypatch):
    from fcdm.store.progress import read_progress

    cfg = tiny_config("train.steps=20", "eval.at=[0.5, 1.0]", "eval.metrics=[fid]", "eval.num_samples=40",
                      "log.checkpoint_every=100", "log.keep_checkpoints=1")
    train(cfg, store=tmp_path / "ref", progress=False)
    shutil.copytree(tmp_path / "ref" / "cache", tmp_path / "b" / "cache", dirs_exist_ok=True)  # the digits classifier
    ckpts = checkpoint_dir(tmp_path / "b", cfg)

    seen = _kill_evaluation_at(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, store=tmp_path / "b", progress=False)
    progress = read_progress(ckpts)
    assert (progress["status"], progress["step"], progress["evals_due"], progress["evals_done"]) == \
        ("killed", 10, [10, 20], [])

    monkeypatch.undo()
    seen = _kill_evaluation_at(monkeypatch, 20)  # the rerun evaluates step 10 first, then dies in the final one
    with pytest.raises(KeyboardInterrupt):
        train(cfg, store=tmp_path / "b", progress=False)
    assert seen == [10, 20]
    progress = read_progress(ckpts)
    assert (progress["status"], progress["step"], progress["evals_done"]) == ("killed", 20, [10])
    (run,) = all_runs(tmp_path / "b")
    assert run.info.status == "KILLED"
    # keep_checkpoints=1, yet step 10's checkpoint stays: evaluation steps' checkpoints are never pruned
    assert [s for s, _ in list_checkpoints(ckpts)] == [10, 20]

    monkeypatch.undo()
    result = train(cfg, store=tmp_path / "b", progress=False)
    assert result.status == "FINISHED" and result.step == 20 and result.final_loss is not None
    (run,) = all_runs(tmp_path / "b")
    assert run.info.status == "FINISHED"
    progress = read_progress(ckpts)
    assert (progress["status"], progress["evals_done"], progress["run_id"]) == ("finished", [10, 20], run.info.run_id)
    (ref_run,) = all_runs(tmp_path / "ref")
    fid = {k: [(m.step, m.value) for m in client(k).get_metric_history(r.info.run_id, "fid")]
           for k, r in ((tmp_path / "ref", ref_run), (tmp_path / "b", run))}
    assert fid[tmp_path / "b"] == fid[tmp_path / "ref"] and [s for s, _ in fid[tmp_path / "ref"]] == [10, 20]
    assert train(cfg, store=tmp_path / "b", progress=False).status == "SKIPPED"
    a, b = (load_latest(checkpoint_dir(tmp_path / s, cfg)) for s in ("ref", "b"))
    for part in ("ema", "model"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)


# -- random flips after a resume (issue 7, item 9) ---------------------------------------------------------------

def test_resume_with_random_flips_and_loader_workers_is_bitwise_exact(tmp_path, tiny_config):
    # Workers are re-created on resume; their flips must still match the uninterrupted run's.
    cfg = tiny_config("data.hflip=true", "data.num_workers=1", "train.steps=20")
    train(cfg, store=tmp_path / "ref", progress=False)
    assert train(cfg, store=tmp_path / "b", progress=False, max_steps=7).step == 7
    train(cfg, store=tmp_path / "b", progress=False)
    a, b = (load_latest(checkpoint_dir(tmp_path / s, cfg)) for s in ("ref", "b"))
    for part in ("ema", "model"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)


def test_flips_depend_on_seed_step_and_index_only():
    from fcdm.data import DigitsDataset
    from fcdm.train.state import SeededItems

    ds = SeededItems(DigitsDataset("train", hflip=True), seed=0)
    plain = DigitsDataset("train")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    flips = [not torch.equal(ds[(s, i)][0], plain.images[i]) for s in range(4) for i in range(40)]
    assert torch.equal(torch.get_rng_state(), before)  # the training RNG is untouched
    assert 0.35 < np.mean(flips) < 0.65
    again = [not torch.equal(ds[(s, i)][0], plain.images[i]) for s in range(4) for i in range(40)]
    assert flips == again
    other = SeededItems(DigitsDataset("train", hflip=True), seed=1)
    assert flips != [not torch.equal(other[(s, i)][0], plain.images[i]) for s in range(4) for i in range(40)]


# -- the progress sidecar and the run's MLflow placement (issue 8 contract) -----------------------------------------

def test_progress_sidecar_follows_the_run_and_experiment_and_tags_apply(tmp_path, tiny_config):
    from fcdm.store.progress import read_progress

    cfg = tiny_config("log.experiment=kernel-ablation", "log.tags={spec: kernel, job: k7}")
    ckpts = checkpoint_dir(tmp_path, cfg)
    assert read_progress(ckpts) is None
    train(cfg, store=tmp_path, progress=False, max_steps=10)
    p = read_progress(ckpts)
    assert (p["status"], p["step"], p["steps"], p["config_hash"], p["seed"]) == ("killed", 10, 30, cfg.hash, 0)
    assert "max_steps" in p["reason"] and p["evals_due"] == [] and abs(p["updated"] - time.time()) < 120
    (run,) = all_runs(tmp_path)
    c = client(tmp_path)
    assert c.get_experiment(run.info.experiment_id).name == "kernel-ablation"
    assert run.data.tags["spec"] == "kernel" and run.data.tags["job"] == "k7" and p["run_id"] == run.info.run_id
    # tags are set again whenever the run is opened, so a runner can retag a resumed run
    train(tiny_config("log.experiment=kernel-ablation", "log.tags={spec: kernel, job: k7, attempt: '2'}"),
          store=tmp_path, progress=False)
    (run,) = all_runs(tmp_path)
    assert run.data.tags["attempt"] == "2" and run.info.status == "FINISHED"
    p = read_progress(ckpts)
    assert (p["status"], p["step"], p["reason"]) == ("finished", 30, None)


def test_the_trainer_trains_with_gradient_accumulation(tmp_path, tiny_config, one_thread):
    result = train(tiny_config("train.grad_accum=4"), store=tmp_path, progress=False, max_steps=2)
    assert result.status == "STOPPED" and result.step == 2 and np.isfinite(result.final_loss)


def test_a_resumed_optimizer_state_lives_where_a_fresh_runs_does(tmp_path, tiny_config, one_thread):
    """Issue 18: loaded after accelerate's prepare, the moments sit on their parameters' device and AdamW's
    `step` counters on the CPU (the GPU would cost a host sync per parameter per step), values unchanged."""
    from fcdm.train.trainer import Trainer

    cfg = tiny_config()
    train(cfg, store=tmp_path, progress=False, max_steps=2)
    trainer = Trainer(cfg, tmp_path)
    trainer.resume()
    saved = trainer.state["optimizer"]["state"]
    params = [p for group in trainer.opt.param_groups for p in group["params"]]
    assert len(trainer.opt.state) == len(params) == len(saved)
    for i, p in enumerate(params):
        state = trainer.opt.state[p]
        assert state["step"].device.type == "cpu" and float(state["step"]) == 2
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].device == p.device and torch.equal(state[key].cpu(), saved[i][key])


def test_loss_and_stop_flag_are_reduced_every_few_steps_and_logged_with_throughput(tmp_path, tiny_config,
                                                                                    one_thread, monkeypatch):
    """Issue 18: one all-reduce (and host sync) per SYNC_EVERY / log.every steps and at checkpoints, not per
    step; the logged loss is still the mean over every step of the window; img/s and peak memory logged."""
    from accelerate import Accelerator

    from fcdm.train.trainer import SYNC_EVERY

    reduced, real = [], Accelerator.reduce
    monkeypatch.setattr(Accelerator, "reduce", lambda self, t, **kw: reduced.append(t.clone()) or real(self, t, **kw))
    cfg = tiny_config("train.steps=24", "log.every=12", "log.checkpoint_every=8")
    assert SYNC_EVERY == 10
    result = train(cfg, store=tmp_path, progress=False)
    assert result.status == "FINISHED"
    # Steps 8 and 16 (checkpoints), 10 and 20 (SYNC_EVERY), 12 (log.every), 24 (the last): 6 of 24.
    assert len(reduced) == 6
    sums = [float(t[1]) for t in reduced]
    for (step, loss), window in zip(history(tmp_path, result.run_id, "loss"), (sums[:3], sums[3:])):
        assert step in (12, 24) and loss == pytest.approx(sum(window) / 12, rel=1e-12)
    rates, images = (dict(history(tmp_path, result.run_id, k)) for k in ("steps_per_sec", "img_per_sec"))
    assert images.keys() == {12, 24} and all(images[s] == pytest.approx(rates[s] * 16) for s in images)
    assert all(mb > 10 for _, mb in history(tmp_path, result.run_id, "peak_memory_mb"))  # resident MiB on the CPU
