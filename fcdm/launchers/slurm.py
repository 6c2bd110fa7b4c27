"""The Slurm launcher: one Slurm job per ablation job, through submitit.

    fcdm-ablate run ablations/kernel_size.yaml --profile paper --launcher slurm \\
        --launcher-opt partition=gpu --launcher-opt time=2-00:00:00 --launcher-opt gpus_per_node=8

Options come from the spec's `launcher.slurm` section and `--launcher-opt`; `cluster=local` runs
the same path through submitit's local executor (tests, a workstation without Slurm).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fcdm.errors import LauncherError
from fcdm.launchers.accelerate import AccelerateLauncher
from fcdm.launchers.base import EXIT_CLAIM_LOST, TRACKING_ENV, Handle, Launcher, train_argv, trainer_env
from fcdm.store import claims
from fcdm.util.process import spawn

# Friendly option names -> submitit's (generic ones work on every submitit cluster, slurm_* on Slurm only).
_SLURM_NAMES = {"time": "timeout_min", "partition": "slurm_partition", "account": "slurm_account",
                "qos": "slurm_qos", "constraint": "slurm_constraint", "setup": "slurm_setup",
                "exclude": "slurm_exclude", "additional_parameters": "slurm_additional_parameters"}
_SLURM_GENERIC = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes", "tasks_per_node")
_SLURM_OWN = ("cluster", "folder")


class SlurmLauncher(Launcher):
    """One Slurm job per ablation job, through submitit. Options: partition, time (minutes),
    gpus_per_node, cpus_per_task, mem_gb, account, qos, constraint, setup (shell lines),
    additional_parameters (a dict of sbatch flags), any slurm_* parameter of submitit; cluster=local runs the jobs through
    submitit's local executor (no Slurm needed: tests, a workstation), folder: submitit's files.

    The cluster job adopts the runner's claim and heartbeats it itself, so the job keeps its claim if
    the runner (on a login node, say) dies, and loses it only when the job itself dies. A job with
    gpus_per_node > 1 trains through `accelerate launch` on all of them."""
    name = "slurm"

    def __post_init__(self):
        opts = {k.replace("-", "_"): v for k, v in self.options.items()}
        self.cluster = opts.pop("cluster", "slurm")
        self.folder = opts.pop("folder", None)
        if self.cluster not in ("slurm", "local"):
            raise LauncherError(f"launcher option cluster={self.cluster!r}; allowed values: slurm, local")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise LauncherError("--launcher slurm: no Slurm on this machine (sbatch is not on PATH); run where "
                                "sbatch works, use --launcher local, or pass --launcher-opt cluster=local to run "
                                "the Slurm path through submitit's local executor")
        if isinstance(opts.get("time"), str):
            opts["time"] = slurm_minutes(opts["time"])
        params = {_SLURM_NAMES.get(k, k): v for k, v in opts.items()}
        for k in params:
            if k not in _SLURM_GENERIC and not k.startswith("slurm_"):
                allowed = sorted({*_SLURM_NAMES, *_SLURM_GENERIC, *_SLURM_OWN})
                raise LauncherError(f"launcher option {k!r} is unknown for --launcher slurm; allowed: "
                                    f"{', '.join(allowed)}, or any slurm_* parameter of submitit")
        for k in ("timeout_min", "gpus_per_node", "cpus_per_task", "nodes", "tasks_per_node"):
            if k in params and (not isinstance(params[k], int) or isinstance(params[k], bool) or params[k] < 1):
                raise LauncherError(f"launcher option {k}={params[k]!r} must be a positive integer")
        self.params = {"timeout_min": 24 * 60, "nodes": 1, "tasks_per_node": 1, **params}
        self._executor = None

    def executor(self, store: Path):
        if self._executor is None:
            import submitit  # heavy: only when a Slurm job is submitted

            folder = Path(self.folder) if self.folder else Path(store) / "slurm"
            ex = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster)
            try:
                ex.update_parameters(**self.params)
            except (NameError, AssertionError, ValueError) as e:
                raise LauncherError(f"launcher option rejected by submitit: {str(e).splitlines()[0]}") from None
            self._executor = ex
        return self._executor

    def start(self, job, config, log, store, tracking_uri, env, claim=None) -> Handle:
        ex = self.executor(store)
        gpus = int(self.params.get("gpus_per_node", 0))
        if gpus > 1:
            argv = AccelerateLauncher({"num_processes": gpus}).argv(job, config, store, {})
        else:
            argv = [sys.executable, *train_argv(config, store)]
        threads = self.params.get("cpus_per_task")
        job_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
        if os.environ.get(TRACKING_ENV) != tracking_uri:  # else the job inherits it (sbatch exports the environment)
            job_env = trainer_env(job_env, tracking_uri)  # pickled into the job's files: see README, Secrets
        ex.update_parameters(name=job.name.replace("/", "_")[:100])
        sjob = ex.submit(cluster_entry, argv, str(log), job_env, str(claim.path) if claim else None,
                         claim.token if claim else None)
        return SlurmHandle(f"slurm job {sjob.job_id}", sjob)


def slurm_minutes(text: str) -> int:
    """Slurm's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes, rounded up."""
    days, _, rest = text.strip().rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
        d = int(days) if days else 0
    except ValueError:
        raise LauncherError(f"launcher option time={text!r}: expected minutes or Slurm's D-HH:MM:SS") from None
    if days:  # D-H, D-H:M, D-H:M:S
        h, m, sec = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, sec = parts
    else:  # M or M:S
        h, (m, sec) = 0, (parts + [0])[:2]
    return max(1, d * 1440 + h * 60 + m + (1 if sec else 0))


@dataclass
class SlurmHandle(Handle):
    job: Any = None
    reason: str | None = None

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as e:  # submitit: FailedJobError, UncompletedJobError (node failure, timeout, ...)
            self.reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
            return 1

    def interrupt(self) -> None:
        self.job.cancel(check=False)

    kill = interrupt


def cluster_entry(argv: list[str], log: str, env: dict[str, str], claim_path: str | None, token: str | None) -> int:
    """What a Slurm job runs: adopt the runner's claim, train in a child, heartbeat until it ends."""
    claim, beat = None, None
    if claim_path:
        claim = claims.adopt(Path(claim_path), token, note=f"slurm job {os.environ.get('SLURM_JOB_ID', '?')}")
        if claim is None:
            with open(log, "a") as f:
                f.write(f"claim {claim_path} was taken over before this cluster job started; nothing trained\n")
            return EXIT_CLAIM_LOST
        beat = claims.Heartbeat()
        beat.add(claim)
    proc = spawn(argv, Path(log), env)
    try:
        while proc.poll() is None:
            if claim is not None and claim.lost:  # another runner took the job over: stop, checkpoint
                proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
    except KeyboardInterrupt:  # cancelled: let the trainer checkpoint
        proc.send_signal(signal.SIGINT)
        proc.wait()
    finally:
        if beat is not None:
            beat.stop()
            claims.release(claim)
    return proc.returncode
