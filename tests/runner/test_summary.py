"""The end of a run (fcdm.runner.summary): jobs named with their seed, and a small table of results."""
from helpers import make_config

from fcdm.runner.summary import JobOutcome, RunSummary, outcome_line
from fcdm.spec.job import Job


def _job(k, seed):
    return Job("ks", f"ks/kernel_size={k}", make_config(f"name=ks/kernel_size={k}", f"seed={seed}"))


def test_summary_is_a_table_of_jobs_seeds_status_time_and_final_metric():
    a0, a1, b0 = _job(3, 0), _job(3, 1), _job(5, 0)
    outcomes = [JobOutcome(a0, "finished", 30, seconds=40.0, metrics={"fid": 0.48481, "is": 9.4}, eval_step=30),
                JobOutcome(a1, "finished", 30, resumed_from=10, seconds=75.5, metrics={"is": 9.1}, eval_step=30),
                JobOutcome(b0, "failed", 12, reason="loss became nan", log="x/train.log", seconds=3.0)]
    text = RunSummary(outcomes, 125.0).render()
    lines = text.splitlines()
    assert lines[0] == "3 jobs in 2m05s: 2 finished (1 resumed), 1 failed"
    assert lines[1].split() == ["job", "seed", "status", "time", "final", "metric"]
    assert lines[2].split() == ["kernel_size=3", "0", "finished", "40.0s", "fid", "0.4848", "at", "step", "30"]
    assert lines[3].split() == ["kernel_size=3", "1", "finished", "(resumed", "at", "10)", "1m15s", "is", "9.1", "at",
                                "step", "30"]
    assert lines[4].split() == ["kernel_size=5", "0", "failed", "3.0s", "-"]
    assert "FAILED  kernel_size=5 s0 at step 12: loss became nan" in text
    # The live view's lines tell the two seeds apart, and give the result.
    assert outcome_line(outcomes[0]) == "  finished kernel_size=3 s0 in 40.0s: fid 0.4848 at step 30"
    assert "kernel_size=3 s1" in outcome_line(outcomes[1])
    skipped = RunSummary([JobOutcome(a0, "skipped", 30, metrics={"fid": 0.5}, eval_step=30)], 1.0).render()
    assert skipped.startswith("all 1 jobs already finished") and "fid 0.5 at step 30" in skipped
