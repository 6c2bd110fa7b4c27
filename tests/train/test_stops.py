"""Stop signals across ranks: agreed with a max over ranks, never a sum (SIGTERM on eight ranks is SIGTERM)."""
import signal

import pytest
from accelerate import Accelerator
from helpers import all_runs

from fcdm.train import TrainingInterrupted, train
from fcdm.train.stops import agreed_signal, stop_flags
from fcdm.train.trainer import Trainer


def _all_reduce_sum(*ranks: int) -> list[float]:
    """What a sum all-reduce of each rank's flags gives."""
    return [sum(col) for col in zip(*(stop_flags(s) for s in ranks))]


def test_the_agreed_signal_is_the_highest_any_rank_received():
    assert agreed_signal(_all_reduce_sum(*[signal.SIGTERM] * 8)) == signal.SIGTERM  # Slurm preempts every rank
    assert agreed_signal(_all_reduce_sum(signal.SIGINT, 0, signal.SIGTERM, signal.SIGINT)) == signal.SIGTERM
    assert agreed_signal(_all_reduce_sum(0, signal.SIGINT)) == signal.SIGINT
    assert agreed_signal(_all_reduce_sum(0, 0, 0)) == 0
    assert agreed_signal(_all_reduce_sum(*[signal.SIGINT] * 64)) == signal.SIGINT


def test_sigterm_on_eight_ranks_ends_killed_not_valueerror(tmp_path, tiny_config, one_thread, monkeypatch):
    """The trainer's own all-reduce, as eight ranks that all received SIGTERM would sum it."""
    monkeypatch.setattr(Accelerator, "reduce", lambda self, tensor, reduction="sum", scale=1.0: tensor * 8)
    real_step = Trainer.train_step

    def train_step(self, x, y):
        loss = real_step(self, x, y)
        if self.step == 5:
            self.request_stop(signal.SIGTERM)  # what the handler does on each rank
        return loss
    monkeypatch.setattr(Trainer, "train_step", train_step)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(tiny_config(), store=tmp_path, progress=False)
    assert stopped.value.signum == signal.SIGTERM and "SIGTERM at step 5" in str(stopped.value)
    (run,) = all_runs(tmp_path)
    assert run.info.status == "KILLED"
