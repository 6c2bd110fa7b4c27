"""Scheduling inputs (fcdm.runner.estimate, fcdm.launchers.resources.hand_over_threads): work left, longest
first, and which running job gets a free core."""
import pytest
from helpers import make_config

from fcdm.launchers.resources import hand_over_threads
from fcdm.runner.estimate import longest_first, remaining_work, seconds_left
from fcdm.spec.job import Job
from fcdm.spec.matching import cost


def _job(name, *overrides):
    return Job("s", f"s/{name}", make_config(f"name=s/{name}", *overrides))


def test_work_left_counts_training_and_evaluations_still_due():
    job = _job("a", "train.steps=100", "eval.at=[0.5, 1.0]", "eval.metrics=[fid]", "eval.num_samples=10",
               "eval.sampling_steps=5", "eval.cfg_scale=2.0")
    g = cost(job.config).gflops
    step, evaluation = g * 3 * 16, g * 10 * 5 * 2  # 3 forwards x batch 16; samples x steps x 2 (guidance)
    fresh, half, done = (remaining_work(job, s) for s in (0, 50, 100))
    assert fresh.gflop == pytest.approx(100 * step + 2 * evaluation) and fresh.seconds is None
    assert half.gflop == pytest.approx(50 * step + evaluation) and done.gflop == 0
    measured = remaining_work(job, 50, rate=10.0)  # 50 steps at 10 steps/s, and the sampling at that speed
    assert measured.gflop == half.gflop and measured.seconds == pytest.approx(5.0 * half.gflop / (50 * step))


def test_longest_first_with_measured_and_costed_jobs():
    small, big, slow = _job("small", "train.steps=10"), _job("big", "train.steps=100"), _job("slow", "train.steps=20")
    works = {small.key: remaining_work(small), big.key: remaining_work(big), slow.key: remaining_work(slow)}
    assert [j.name for j in longest_first([small, big, slow], works)] == ["s/big", "s/slow", "s/small"]
    # Measured: `slow` 20 steps at 1 step/s (20 s), `big` 100 steps at 10 steps/s (10 s); `small`, not
    # measured, at the median seconds per GFLOP of the two (5.5 s).
    works[slow.key], works[big.key] = remaining_work(slow, rate=1.0), remaining_work(big, rate=10.0)
    left = seconds_left(works)
    assert (left[slow.key], left[big.key], left[small.key]) == pytest.approx((20.0, 10.0, 5.5))
    assert [j.name for j in longest_first([small, big, slow], works)] == ["s/slow", "s/big", "s/small"]


def test_free_cores_go_to_the_job_that_would_end_last_and_none_is_taken():
    assert hand_over_threads(1, {"a": 1}, {"a": 30.0}) == {"a": 2}
    assert hand_over_threads(2, {"a": 1, "b": 1}, {"a": 10.0, "b": 40.0}) == {"a": 1, "b": 3}
    assert hand_over_threads(2, {"a": 1, "b": 1}, {"a": 30.0, "b": 40.0}) == {"a": 2, "b": 2}
    assert hand_over_threads(0, {"a": 1, "b": 1}, {"a": 1.0, "b": 9.0}) == {"a": 1, "b": 1}  # nothing free


def test_only_cores_nobody_uses_are_handed_over(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import fcdm.launchers.resources as resources
    from fcdm.runner.run import Schedule

    times = iter([(0.0, 0.0), (50.0, 200.0), (50.0, 400.0), (250.0, 600.0), (250.0, 610.0)])  # (idle, total) ticks
    monkeypatch.setattr(resources, "cpu_times", lambda: next(times))
    schedule = Schedule(SimpleNamespace(store=tmp_path), [_job("a")], 1, False, True, cpus=2)
    schedule.threads = {"a": 1}
    assert schedule._spare() == 0  # a quarter of 2 cores idle (another process uses the other): none
    assert schedule._spare() == 0  # nothing idle
    assert schedule._spare() == 1  # one core idle: it is handed over
    assert schedule._spare() == 1  # 10 ticks are too short a look: the previous answer stands
    schedule.threads = {"a": 2}
    assert schedule._spare() == 0  # every core is this runner's


def test_the_idle_meter_counts_idle_cores_between_looks(monkeypatch):
    import fcdm.launchers.resources as resources

    times = iter([(100.0, 1000.0), (150.0, 1100.0), (160.0, 1110.0), (160.0, 1300.0)])
    monkeypatch.setattr(resources, "cpu_times", lambda: next(times))
    meter = resources.IdleMeter(2)
    assert meter.idle_cores() == 1.0  # half the time idle on 2 cores (100 ticks: 0.5 s)
    assert meter.idle_cores() == 1.0  # 10 ticks: too short to tell, the previous answer
    assert meter.idle_cores() == pytest.approx(0.1)  # 200 ticks since the last look, 10 idle
