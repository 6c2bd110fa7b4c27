"""What the trainer shows (fcdm.train.trainer, main process): its log lines, and in a terminal a progress bar.

Its log lines are train.log under the runner (README, "Running specs"): start, resume point, loss and
throughput every `log.every` steps, evaluations, checkpoints and the final status, in the format
fcdm.store.trainlog defines (and the runner's live view parses). The bar is drawn only on a terminal, so
a log file never fills with its redraws; while it is drawn it shows the loss and rate, so the step lines
are left out.
"""
from __future__ import annotations

import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fcdm.store.trainlog import line


class TrainLog:
    """The trainer's own lines, timestamped and flushed at once (a no-op on the other ranks)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(line(text), flush=True)


class ProgressBar:
    """A rich progress bar with step, loss and steps/s (a no-op when disabled or without a terminal)."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.bar = None
        if enabled and sys.stdout.isatty():
            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f}"),
                                TextColumn("{task.fields[rate]:.1f} steps/s"), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), rate=0.0)
            self.start, self.t0 = start, time.perf_counter()

    @property
    def shown(self) -> bool:
        return self.bar is not None

    def update(self, step: int, loss: float) -> None:
        if self.bar:
            rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, completed=step, loss=loss, rate=rate)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None
