"""How many jobs run at once on this machine and what each one gets: its GPUs (CUDA_VISIBLE_DEVICES) or
its share of the CPU threads (OMP_NUM_THREADS and friends), and at the end of a spec the idle cores
(hand_over_threads, IdleMeter). Read without importing torch."""
from __future__ import annotations

import os
import shutil
import subprocess


def detect_gpus() -> list[str]:
    """Visible GPU ids, without importing torch: $CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_parallel(gpus: list[str], cpus: int, num_jobs: int) -> int:
    """One job per GPU; on CPU only, one single-threaded job per core (measured on 2 cores: the
    kernel-size smoke spec finishes soonest with 2 jobs of 1 thread, see bench/run.py)."""
    return max(1, min(len(gpus) if gpus else cpus, num_jobs))


def slot_env(slot: int, parallel: int, gpus: list[str], cpus: int, procs: int = 1) -> dict[str, str]:
    """Environment of concurrency slot `slot` of `parallel`: its share of CPU threads, its GPU(s).

    GPUs are dealt out in contiguous groups (8 GPUs, 4 jobs: 0,1 | 2,3 | ...); with more jobs than
    GPUs, jobs share GPUs round-robin. `procs` processes of one job (accelerate) split its threads."""
    threads = max(1, cpus // (parallel * procs))
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpus:
        if parallel <= len(gpus):
            per = len(gpus) // parallel
            group = gpus[slot * per:(slot + 1) * per]
        else:
            group = [gpus[slot % len(gpus)]]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(group)
    return env


def slot_envs(parallel: int, gpus: list[str], cpus: int, procs: int = 1, cluster: bool = False) -> list[dict[str, str]]:
    """The environment of each of `parallel` concurrency slots (slot_env); empty ones for a `cluster`
    launcher (Slurm), whose jobs get their resources from the cluster."""
    return [{} if cluster else slot_env(i, parallel, gpus, cpus, procs) for i in range(parallel)]


def hand_over_threads(spare: int, threads: dict[str, int], seconds_left: dict[str, float]) -> dict[str, int]:
    """The running jobs' threads once nothing is left to start: `spare` cores go, one at a time, to the
    job that would otherwise end last (the most seconds left per thread), so no core idles while work
    remains. `threads`: each running job's threads now; a job never loses threads."""
    out = dict(threads)
    while spare > 0 and out:
        last = max(out, key=lambda k: (seconds_left.get(k, 0.0) / out[k], k))
        out[last] += 1
        spare -= 1
    return out


def cpu_times() -> tuple[float, float]:
    """(idle, total) jiffies of every CPU of this machine so far (Linux /proc/stat; (0, 0) elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    return fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields[:8])


class IdleMeter:
    """How many cores sat idle since the last look: a core is handed to a job only if nobody else (another
    user's process, another runner) uses it, since a job with more threads than free cores spins."""

    MIN_WINDOW_S = 0.3  # /proc/stat counts in 10 ms ticks: shorter windows are noise

    def __init__(self, cores: int):
        self.cores, self.last, self.idle = cores, cpu_times(), 0.0

    def idle_cores(self) -> float:
        """Idle cores since the last look, over at least MIN_WINDOW_S (else the previous answer; 0 at first)."""
        now = cpu_times()
        idle, total = now[0] - self.last[0], now[1] - self.last[1]
        if total >= 100 * self.cores * self.MIN_WINDOW_S:  # USER_HZ = 100 ticks per second per core
            self.last, self.idle = now, self.cores * idle / total
        return self.idle
