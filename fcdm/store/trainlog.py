"""A job's `train.log` as the trainer writes it and the runner reads it back: the trainer's own lines
(start, resume point, loss and throughput every `log.every` steps, each evaluation's metrics, checkpoint
writes, the final status), one per event, each stamped with the wall-clock time, and the parser the live
view uses to show where a running job stands without asking MLflow.

    line("step 10/300  loss 0.5123  7.62 steps/s")   # '[2026-11-28 07:10:02] step 10/300  loss ...'
    step_line(10, 300, 0.5123, 7.62, lr=1e-3)          # the text of a step line
    live = parse_tail(read_tail(path))                 # LiveProgress(step=10, steps=300, rate=7.62, ...)

The runner also hands a running trainer CPU threads through a small file (`threads_file`): the runner
writes a number, the trainer reads it at its next log interval (fcdm.train.threads).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

THREADS_ENV = "FCDM_THREADS_FILE"  # the trainer's environment: where the runner writes its thread count
THREADS = "threads"  # the file's name in the job's folder (fcdm.store.jobs.job_dir)

_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\] ")
_STEP = re.compile(r"\] step (\d+)/(\d+)\s+loss (\S+)\s+(\S+) steps/s")
_EVAL = re.compile(r"\] evaluation at step (\d+)/\d+: (.*?)(?:\s+\(\d+(?:\.\d+)? s\))?$")
_PAIR = re.compile(r"([\w/.-]+) (-?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|nan|inf))")


def stamp(now: float | None = None) -> str:
    """'[2026-11-28 07:10:02.123]': the prefix of every trainer line."""
    now = time.time() if now is None else now
    return f"[{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d}]"


def line(text: str, now: float | None = None) -> str:
    return f"{stamp(now)} {text}"


def clock(seconds: float) -> str:
    """'1:02:03', '2:03' or '0:05'."""
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def step_line(step: int, steps: int, loss: float, rate: float, lr: float | None = None) -> str:
    """'step 10/300  loss 0.5123  7.62 steps/s  lr 0.001  eta 0:38' (eta: the remaining training steps
    at this rate; evaluations not included)."""
    eta = f"  eta {clock((steps - step) / rate)}" if rate > 0 else ""
    return f"step {step}/{steps}  loss {loss:.4f}  {rate:.3g} steps/s" + (f"  lr {lr:.3g}" if lr else "") + eta


def metrics_text(values: dict[str, float]) -> str:
    """'fid 0.4848  is 9.47  ...' (4 significant digits)."""
    return "  ".join(f"{k} {v:.4g}" for k, v in values.items())


def eval_line(step: int, steps: int, values: dict[str, float], seconds: float) -> str:
    return f"evaluation at step {step}/{steps}: {metrics_text(values)}  ({seconds:.1f} s)"


@dataclass
class LiveProgress:
    """Where a running job stands, from the newest lines of its log."""
    step: int | None = None
    steps: int | None = None
    rate: float | None = None  # steps/s over the last log interval
    eval_step: int | None = None
    metrics: dict[str, float] | None = None  # the last evaluation's values

    def eta(self) -> float | None:
        """Seconds of training left at the current rate (evaluations not included)."""
        if self.step is None or not self.rate or self.rate <= 0:
            return None
        return (self.steps - self.step) / self.rate


def read_tail(path: Path, size: int = 16384) -> str:
    """The last `size` bytes of a log ('' when it is not there)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def parse_tail(text: str) -> LiveProgress:
    """The newest step line and evaluation line of the trainer's latest start in `text` (a log's tail)."""
    out = LiveProgress()
    for ln in reversed(text.split("\n=== ")[-1].splitlines()):
        if out.step is None and (m := _STEP.search(ln)):
            out.step, out.steps = int(m.group(1)), int(m.group(2))
            out.rate = _number(m.group(4))
        elif out.metrics is None and (m := _EVAL.search(ln)):
            out.eval_step = int(m.group(1))
            out.metrics = {k: _number(v) for k, v in _PAIR.findall(m.group(2))}
        if out.step is not None and out.metrics is not None:
            break
    return out


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
