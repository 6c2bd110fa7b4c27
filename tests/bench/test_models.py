"""bench/models.py: a memory worker that dies without a result is reported, not waited for forever."""
import time

from helpers import ROOT


def test_peak_memory_reports_a_dead_worker(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # the spawned worker imports `models` from here too
    import models

    t0 = time.monotonic()
    result = models.peak_memory("no-such-model", "cpu", 1, timeout=120)  # the worker raises ValueError
    assert result == "worker died (exit code 1)"
    assert time.monotonic() - t0 < 60
