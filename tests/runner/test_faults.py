"""Proof under faults (bench/faults.py, fewer kills): two runners on one spec of three tiny jobs, SIGKILLs of a
trainer or its runner mid-step, mid-checkpoint and mid-evaluation, restarts; then every job is FINISHED
exactly once in MLflow, lock.log shows no two trainers on one job at once, no claim or temporary file is
left, and the final weights equal an uninterrupted run's bit for bit."""
import pytest
from helpers import ROOT


@pytest.mark.e2e
def test_kills_of_runners_and_trainers_never_train_a_job_twice_nor_lose_one(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import faults

    camp, rounds = faults.campaign(tmp_path, kills=4, seed=0, timeout=600)
    assert [(e["moment"], e["target"]) for e in camp.events] == [
        ("step", "trainer"), ("checkpoint", "runner"), ("evaluation", "trainer"), ("step", "runner")], camp.events
    for figures in rounds:
        assert figures["finished_once"] == figures["jobs"] == 3, figures
        assert figures["trained_twice"] == 0 and figures["lock_overlaps"] == [], figures
        assert figures["left_running"] == 0 and figures["live_claims"] == 0 and figures["temp_files"] == [], figures
        assert figures["weights_equal"] == 3, figures
