"""progress.json's per-request evaluation records (issue 15): what `plan` and the runner read without torch."""
from helpers import make_config

from fcdm.store.progress import evaluated, evaluation_record


def test_a_run_counts_as_evaluated_only_under_the_request_that_was_measured():
    cfg = make_config("train.steps=20", "eval.at=[0.5, 1.0]", "eval.metrics=[fid]", "eval.noise_seeds=2")
    other = make_config("train.steps=20", "eval.at=[0.5, 1.0]", "eval.metrics=[fid]", "eval.noise_seeds=2",
                        "eval.sampling_steps=3")
    assert cfg.hash == other.hash and cfg.eval_key != other.eval_key
    assert cfg.eval_key == make_config("train.steps=20", "eval.at=[0.5, 1.0]", "eval.metrics=[fid]", "seed=4",
                                       "eval.noise_seeds=0", "eval.batch_size=7").eval_key  # not what is measured
    full = {"evaluations": {cfg.eval_key: {"steps": [10, 20], "noise": [1, 2], "protocol": "abc"}}}
    assert evaluated(full, cfg) and not evaluated(full, other)
    assert evaluation_record(full, cfg)["protocol"] == "abc" and evaluation_record(full, other) == {}
    assert not evaluated({"evaluations": {cfg.eval_key: {"steps": [10], "noise": [1, 2]}}}, cfg)
    # a step whose checkpoint was gone when asked for: recorded lost by the trainer, the job settles without it
    assert evaluated({"evaluations": {cfg.eval_key: {"steps": [20], "noise": [1, 2], "lost": [10]}}}, cfg)
    assert not evaluated({"evaluations": {cfg.eval_key: {"steps": [10, 20], "noise": [1]}}}, cfg)
    # written before per-request records: its evaluations stand for whatever was asked; re-samplings it never
    # made (eval.noise_seeds added later) are missing, so the runner's trainer makes them
    assert evaluated({"evals_done": [10, 20], "noise_done": [1, 2]}, other)
    assert not evaluated({"evals_done": [10, 20]}, other) and not evaluated({"evals_done": [20]}, other)
    assert evaluation_record({"evals_done": [20]}, other) == {"steps": [20], "noise": []}
    assert evaluated({"evaluations": {}}, make_config("eval.metrics=[]"))  # nothing to measure
