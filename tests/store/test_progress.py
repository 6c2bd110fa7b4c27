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
    assert not evaluated({"evaluations": {cfg.eval_key: {"steps": [10, 20], "noise": [1]}}}, cfg)
    # written before per-request records: its status stands for whatever was asked
    assert evaluated({"evals_done": [10, 20]}, other) and evaluation_record({}, other) is None
    assert evaluated({"evaluations": {}}, make_config("eval.metrics=[]"))  # nothing to measure
