"""What a run records about its evaluations (issue 15): the protocol is the sampling's, never the training
seed's, so seeds pool; re-samplings of the final checkpoint (evaluation noise); the run's `fcdm.config_key`."""
import pytest
from helpers import all_runs, history

from analysis.aggregate import View
from analysis.collect import collect
from fcdm.spec.job import Job
from fcdm.train import train

FID = ["train.steps=10", "eval.at=[1.0]", "eval.metrics=[fid]", "eval.num_samples=40", "log.checkpoint_every=100"]


def _job(cfg, k: int) -> Job:
    return Job(spec="pool", name=f"pool/kernel_size={k}", config=cfg, axes={"model.args.kernel_size": k},
               profile="smoke")


def test_two_seeds_trained_for_real_share_one_protocol_and_pool_into_cells_with_a_welch_test(
        tmp_path, tiny_config, one_thread):
    jobs = [_job(tiny_config(*FID, f"model.args.kernel_size={k}", f"seed={seed}"), k) for k in (7, 3) for seed in (0, 1)]
    for job in jobs:
        assert train(job.config, store=tmp_path, progress=False).status == "FINISHED"
    runs = {(r.data.tags["fcdm.config_hash"], int(r.data.tags["fcdm.seed"])): r for r in all_runs(tmp_path)}
    digests = set()
    for job in jobs:
        run = runs[(job.hash, job.seed)]
        assert [s for s, _ in history(tmp_path, run.info.run_id, "fid")] == [10]  # the bare key: the run's protocol
        assert run.data.tags["eval.seed"] == "0"  # the sampling seed, whatever the training seed
        assert run.data.tags["fcdm.config_key"] == job.config.config_key  # recorded by the trainer itself
        digests.add(run.data.tags["eval.protocol"])
    assert len(digests) == 1, digests  # both seeds of both configurations: one protocol

    frame = collect(jobs, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert set(frame["protocol"]) == digests
    view = View.build(frame, "fid", baseline={"model.args.kernel_size": 7})
    assert len(view.configs) == 2
    for config in view.configs:
        cell = view.curve(config)[10]
        assert cell.n == 2 and cell.ci_low < cell.mean < cell.ci_high, (config, cell)
    from analysis.comparison import compare

    (result,) = compare(view)
    assert result.diff.tested and (result.diff.n_a, result.diff.n_b) == (2, 2) and 0 <= result.diff.p <= 1


def test_the_config_key_is_recorded_when_a_run_is_created_and_when_it_is_reopened(tmp_path, tiny_config, one_thread):
    from mlflow import MlflowClient

    cfg = tiny_config("train.steps=10")
    train(cfg, store=tmp_path, progress=False, max_steps=5)
    (run,) = all_runs(tmp_path)
    assert run.data.tags["fcdm.config_key"] == cfg.config_key
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").delete_tag(run.info.run_id, "fcdm.config_key")
    assert train(cfg, store=tmp_path, progress=False).status == "FINISHED"  # reopened: recorded again
    (run,) = all_runs(tmp_path)
    assert run.data.tags["fcdm.config_key"] == cfg.config_key


@pytest.mark.parametrize("eval_seed", [0, 5])
def test_noise_seeds_resample_the_final_checkpoint_under_the_runs_protocol(tmp_path, tiny_config, one_thread,
                                                                            eval_seed):
    cfg = tiny_config(*FID, "eval.at=[0.5, 1.0]", "eval.noise_seeds=2", f"eval.seed={eval_seed}")
    assert train(cfg, store=tmp_path, progress=False).status == "FINISHED"
    (run,) = all_runs(tmp_path)
    seeds = [eval_seed + 1, eval_seed + 2]
    assert run.data.tags["eval.noise_seeds"] == ",".join(map(str, seeds))
    fid = history(tmp_path, run.info.run_id, "fid")
    assert [s for s, _ in fid] == [5, 10]
    again = [history(tmp_path, run.info.run_id, f"fid.eval_seed{s}") for s in seeds]
    assert [[s for s, _ in h] for h in again] == [[10], [10]]  # the final step only
    values = {fid[-1][1], again[0][0][1], again[1][0][1]}
    assert len(values) == 3  # other sampling seeds, other samples
    assert not any(k.startswith("fid/") for k in run.data.metrics)  # the run's own protocol: no suffix


def test_a_kill_during_the_resamplings_is_finished_by_the_rerun_and_only_the_missing_ones_run(
        tmp_path, tiny_config, one_thread, monkeypatch):
    import fcdm.evaluation.evaluate as ev
    from fcdm.store.layout import checkpoint_dir
    from fcdm.store.progress import read_progress

    cfg = tiny_config(*FID, "eval.noise_seeds=3")
    real, seen = ev.evaluate_in_training, []

    def evaluate(*args, sampling_seed=None, **kwargs):
        seen.append(sampling_seed)
        if sampling_seed == 2:
            raise KeyboardInterrupt
        return real(*args, sampling_seed=sampling_seed, **kwargs)
    monkeypatch.setattr(ev, "evaluate_in_training", evaluate)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, store=tmp_path, progress=False)
    assert seen == [None, 1, 2]
    progress = read_progress(checkpoint_dir(tmp_path, cfg))
    assert (progress["status"], progress["evals_done"], progress["noise_done"]) == ("killed", [10], [1])

    seen.clear()
    monkeypatch.setattr(ev, "evaluate_in_training", lambda *a, sampling_seed=None, **k: (
        seen.append(sampling_seed), real(*a, sampling_seed=sampling_seed, **k))[1])
    assert train(cfg, store=tmp_path, progress=False).status == "FINISHED"
    assert seen == [2, 3]  # neither the final evaluation nor seed 1 again
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert [len(history(tmp_path, run.info.run_id, f"fid.eval_seed{s}")) for s in (1, 2, 3)] == [1, 1, 1]
    assert read_progress(checkpoint_dir(tmp_path, cfg))["noise_done"] == [1, 2, 3]
    seen.clear()
    assert train(cfg, store=tmp_path, progress=False).status == "SKIPPED" and seen == []


# -- evaluations follow the spec (issue 15, item 3) ---------------------------------------------------------

def test_a_run_trained_under_one_protocol_gets_anothers_evaluations_from_its_kept_checkpoints(
        tmp_path, tiny_config, one_thread):
    from fcdm.store.checkpoints import list_checkpoints
    from fcdm.store.jobs import job_status
    from fcdm.store.layout import checkpoint_dir

    a, b = (tiny_config(*FID, "eval.at=[0.5, 1.0]", f"eval.sampling_steps={n}", "log.keep_checkpoints=1")
            for n in (2, 3))
    assert a.hash == b.hash and a.eval_key != b.eval_key  # one run, two evaluation requests
    job_a, job_b = (Job(spec=s, name=f"{s}/x", config=c) for s, c in (("a", a), ("b", b)))
    assert train(a, store=tmp_path, progress=False).status == "FINISHED"
    assert [s for s, _ in list_checkpoints(checkpoint_dir(tmp_path, a))] == [5, 10]  # evaluation steps: kept
    assert job_status(tmp_path, job_a).state == "finished"
    status = job_status(tmp_path, job_b)
    assert status.state == "partial" and "protocol" in status.describe()
    (run,) = all_runs(tmp_path)
    loss, fid = history(tmp_path, run.info.run_id, "loss"), history(tmp_path, run.info.run_id, "fid")

    assert train(b, store=tmp_path, progress=False).status == "FINISHED"  # evaluates, trains nothing
    (run,) = all_runs(tmp_path)
    assert history(tmp_path, run.info.run_id, "loss") == loss and history(tmp_path, run.info.run_id, "fid") == fid
    (other,) = [k for k in run.data.metrics if k.startswith("fid/")]  # never mixed into the run's own `fid`
    assert other.startswith("fid/euler-3-") and [s for s, _ in history(tmp_path, run.info.run_id, other)] == [5, 10]
    suffix = other.split("/", 1)[1]
    assert run.data.tags[f"eval/{suffix}.digest"].startswith(suffix[-8:])  # its full digest, for the report
    assert run.data.tags["eval.sampling_steps"] == "2"  # the run's own protocol stays the one it was trained with
    assert (job_status(tmp_path, job_a).state, job_status(tmp_path, job_b).state) == ("finished", "finished")
    assert train(a, store=tmp_path, progress=False).status == "SKIPPED"
    assert train(b, store=tmp_path, progress=False).status == "SKIPPED"


def test_a_step_whose_checkpoint_is_gone_is_recorded_lost_and_the_job_settles_without_it(tmp_path, tiny_config,
                                                                                          one_thread):
    from fcdm.store.checkpoints import checkpoint_path
    from fcdm.store.jobs import job_status
    from fcdm.store.layout import checkpoint_dir

    a, b = (tiny_config(*FID, "eval.at=[0.5, 1.0]", f"eval.sampling_steps={n}") for n in (2, 3))
    assert train(a, store=tmp_path, progress=False).status == "FINISHED"
    checkpoint_path(checkpoint_dir(tmp_path, a), 5).unlink()  # as a store from before evaluation steps were kept
    job = Job(spec="b", name="b/x", config=b)
    assert job_status(tmp_path, job).state == "partial"
    assert train(b, store=tmp_path, progress=False).status == "FINISHED"  # measures step 10, warns about 5
    assert job_status(tmp_path, job).state == "finished"
    assert train(b, store=tmp_path, progress=False).status == "SKIPPED"
