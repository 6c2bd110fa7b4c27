"""The runner's terminal view: one live rich panel (jobs done, steps done, one bar per running job with
its seed, step/total, ETA, last evaluation and threads) with a line printed above it for each job that
starts, ends or is skipped. Without a terminal (CI, a log file, `--no-progress`) only those lines are
printed, so job output never interleaves.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from fcdm.store.trainlog import clock


@dataclass
class Row:
    """One running job as the view shows it."""
    name: str  # with its seed: 'kernel_size=3 s0'
    step: int
    steps: int
    started: float  # unix time
    where: str  # "pid 123", "slurm job 42"
    eta: float | None = None  # seconds left (training and evaluations due), from its measured rate
    last: str = ""  # its last evaluation: 'fid 0.4848 @150'
    threads: int | None = None


class LiveView:
    """`with LiveView(title, total, enabled) as view: view.event(...); view.update(rows, counts)`."""

    def __init__(self, title: str, total_jobs: int, total_steps: int, enabled: bool = True):
        self.console = Console(highlight=False)
        self.title, self.total_jobs, self.total_steps = title, total_jobs, total_steps
        self.enabled = enabled and self.console.is_terminal
        self.t0 = time.time()
        self._live = None
        self._rows: list[Row] = []
        self._counts: dict[str, int] = {}
        self._steps_done = 0
        self._note = ""

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def event(self, message: str) -> None:
        """A line above the live panel (or a plain line without one)."""
        try:
            if self._live is not None:
                # Not markup=False: those print options would also apply to the live panel redrawn after it.
                self._live.console.print(escape(message))
            else:
                print(message, flush=True)
        except OSError:  # the terminal went away (SIGHUP): the jobs still checkpoint and stop cleanly
            self.enabled = False

    def update(self, rows: list[Row], counts: dict[str, int], steps_done: int, note: str = "") -> None:
        self._rows, self._counts, self._steps_done, self._note = rows, counts, steps_done, note
        if self._live is not None:
            self._live.update(self._render())

    def _render(self):
        done = sum(self._counts.get(k, 0) for k in ("finished", "skipped", "elsewhere", "failed", "stopped"))
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True, max_width=48)
        table.add_column(width=32)
        table.add_column(no_wrap=True)
        parts = [f"{v} {k}" for k, v in self._counts.items() if v]
        table.add_row(f"[bold]{self.title}[/]", ProgressBar(total=max(self.total_jobs, 1), completed=done, width=32),
                      f"{done}/{self.total_jobs} jobs  {', '.join(parts)}  {clock(time.time() - self.t0)}")
        table.add_row("steps", ProgressBar(total=max(self.total_steps, 1), completed=self._steps_done, width=32),
                      f"{self._steps_done}/{self.total_steps}")
        for r in self._rows:
            eta = f"  eta {clock(r.eta)}" if r.eta is not None else ""
            last = f"  {r.last}" if r.last else ""
            threads = f", {r.threads} thread{'s' if r.threads > 1 else ''}" if r.threads else ""
            table.add_row(f"  {r.name}", ProgressBar(total=max(r.steps, 1), completed=r.step, width=32),
                          f"step {r.step}/{r.steps}{eta}{last}  ({clock(time.time() - r.started)}, {r.where}"
                          f"{threads})")
        if self._note:
            table.add_row(f"[dim]{self._note}[/]", "", "")
        return table
