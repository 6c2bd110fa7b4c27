"""The Slurm launcher: a spec's jobs as one Slurm array (one task per ablation job), through submitit.

    fcdm-ablate run ablations/kernel_size.yaml --profile paper --launcher slurm \\
        --launcher-opt partition=gpu --launcher-opt time=2-00:00:00 --launcher-opt gpus_per_node=8

Options come from the spec's `launcher.slurm` section and `--launcher-opt`; `cluster=local` runs
the same path through submitit's local executor (tests, a workstation without Slurm).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit  # only loaded with --launcher slurm (the registry imports this module on use)

from fcdm.errors import LauncherError
from fcdm.launchers.accelerate import AccelerateLauncher
from fcdm.launchers.base import EXIT_CLAIM_LOST, TRACKING_ENV, Handle, Launcher, train_argv, trainer_env
from fcdm.store import claims
from fcdm.util.process import signal_session, spawn

# Friendly option names -> submitit's (generic ones work on every submitit cluster, slurm_* on Slurm only).
_SLURM_NAMES = {"time": "timeout_min", "partition": "slurm_partition", "account": "slurm_account",
                "qos": "slurm_qos", "constraint": "slurm_constraint", "setup": "slurm_setup",
                "exclude": "slurm_exclude", "additional_parameters": "slurm_additional_parameters"}
_SLURM_GENERIC = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes", "tasks_per_node")
_SLURM_OWN = ("cluster", "folder")
ARRAY_MAX = 1000  # jobs per array (Slurm's default MaxArraySize is 1001): a larger spec goes as several
MAX_TIMEOUTS = 20  # requeues after a time limit before submitit gives up (preemptions do not count)
CHECKPOINT_WAIT_S = 60  # how long checkpoint() waits for the trainer to save (submitit signals 90 s ahead)


class SlurmLauncher(Launcher):
    """A spec's jobs as one Slurm job array, through submitit. Options: partition, time (minutes),
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
        self._pending: list = []  # (handle, name, cluster_entry arguments) not submitted yet

    def executor(self, store: Path):
        if self._executor is None:
            folder = Path(self.folder) if self.folder else Path(store) / "slurm"
            ex = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster,
                                       **{f"{self.cluster}_max_num_timeout": MAX_TIMEOUTS})
            try:
                ex.update_parameters(**self.params)
            except (NameError, AssertionError, ValueError) as e:
                raise LauncherError(f"launcher option rejected by submitit: {str(e).splitlines()[0]}") from None
            self._executor = ex
        return self._executor

    def start(self, job, config, log, store, tracking_uri, env, claim=None) -> Handle:
        """Queue the job; the jobs queued meanwhile go to Slurm as one array at the first poll (`submit`)."""
        self.executor(store)
        gpus = int(self.params.get("gpus_per_node", 0))
        if gpus > 1:
            argv = AccelerateLauncher({"num_processes": gpus}).argv(job, config, store, {})
        else:
            argv = [sys.executable, *train_argv(config, store)]
        threads = self.params.get("cpus_per_task")
        job_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
        if os.environ.get(TRACKING_ENV) != tracking_uri:  # else the job inherits it (sbatch exports the environment)
            job_env = trainer_env(job_env, tracking_uri)  # pickled into the job's files: see README, Secrets
        return self.queue(argv, log, job_env, claim, job.spec or job.name)

    def queue(self, argv: list[str], log: Path, env: dict[str, str], claim=None, name: str = "fcdm") -> SlurmHandle:
        """Queue `argv` (a trainer's command line) for the next array; its handle submits the array when polled."""
        handle = SlurmHandle("slurm job (queued)", launcher=self)
        self._pending.append((handle, name, (argv, str(log), env, claim.ref if claim else None,
                                             claim.token if claim else None)))
        return handle

    def submit(self) -> None:
        """Submit every queued job as ONE Slurm array (each array task trains one job; ARRAY_MAX at most)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ex = self._executor
        ex.update_parameters(name=str(pending[0][1]).replace("/", "_")[:100])
        jobs = []
        for first in range(0, len(pending), ARRAY_MAX):  # Slurm refuses arrays above MaxArraySize
            with ex.batch():
                jobs += [ex.submit(ClusterEntry(), *args) for _, _, args in pending[first:first + ARRAY_MAX]]
        for (handle, _, _), sjob in zip(pending, jobs):
            handle.job, handle.describe = sjob, f"slurm job {sjob.job_id}"

    def withdraw(self, handle: SlurmHandle) -> None:
        """Forget a queued job that was never submitted."""
        self._pending = [p for p in self._pending if p[0] is not handle]

    def close(self) -> None:
        self._pending = []


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
    job: Any = None  # the submitit job, once the array is submitted
    reason: str | None = None
    launcher: Any = None
    withdrawn: bool = False

    def poll(self) -> int | None:
        if self.withdrawn:
            return 128 + signal.SIGINT  # stopped before it was submitted: nothing ran
        if self.job is None:
            self.launcher.submit()
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as e:  # submitit: FailedJobError, UncompletedJobError (node failure, timeout, ...)
            self.reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
            return 1

    def interrupt(self) -> None:
        if self.job is None:
            self.launcher.withdraw(self)
            self.withdrawn = True
        else:
            self.job.cancel(check=False)

    kill = interrupt


class ClusterEntry(submitit.helpers.Checkpointable):
    """What a Slurm array task runs: adopt the runner's claim, train in a child, heartbeat until it ends.

    Before the time limit (and on preemption with a grace time) Slurm sends SIGUSR2 (submitit asks for
    `--signal=USR2@90`); submitit then calls `checkpoint`, which asks the trainer to checkpoint and stop
    (SIGTERM, which it handles) and requeues this same call. The requeued task adopts the claim again
    (the runner's heartbeat kept it meanwhile) and the trainer resumes from its checkpoint. The trainer
    itself ignores SIGUSR2 (its default action would kill it before it saves)."""

    def __init__(self):
        self.proc = None
        self.requeued = False

    def __getstate__(self):  # pickled by submitit: the trainer's process stays behind
        return {}

    def __setstate__(self, state):
        self.__init__()

    def __call__(self, argv: list[str], log: str, env: dict[str, str], claim_ref: str | None,
                 token: str | None) -> int:
        claim, beat = None, None
        if claim_ref:
            claim = claims.adopt(claim_ref, token, note=f"slurm job {os.environ.get('SLURM_JOB_ID', '?')}")
            if claim is None:
                with open(log, "a") as f:
                    f.write(f"claim {claim_ref} was taken over before this cluster job started; nothing trained\n")
                return EXIT_CLAIM_LOST
            beat = claims.Heartbeat()
            beat.add(claim)
        previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # inherited through exec by the trainer
        try:
            self.proc = proc = spawn(argv, Path(log), env)
        finally:
            signal.signal(signal.SIGUSR2, previous)
        try:
            while proc.poll() is None:
                if claim is not None and claim.lost:  # another runner took the job over: stop, checkpoint
                    signal_session(proc, signal.SIGTERM)
                time.sleep(1.0)
        except KeyboardInterrupt:  # cancelled: let the trainer checkpoint
            signal_session(proc, signal.SIGINT)
            proc.wait()
        finally:
            if beat is not None:
                beat.stop()
                if not self.requeued:  # requeued: the claim stays ours for the next start
                    claims.release(claim)
        return proc.returncode

    def checkpoint(self, *args, **kwargs):
        """submitit, on SIGUSR2: stop the trainer with a checkpoint, then requeue the same call."""
        self.requeued = True
        if self.proc is not None and self.proc.poll() is None:
            signal_session(self.proc, signal.SIGTERM)  # every rank at once, as the local runner stops them
            try:
                self.proc.wait(timeout=CHECKPOINT_WAIT_S)
            except subprocess.TimeoutExpired:  # what it saved last resumes it
                pass
        return submitit.helpers.DelayedSubmission(ClusterEntry(), *args, **kwargs)


def cluster_entry(argv: list[str], log: str, env: dict[str, str], claim_ref: str | None, token: str | None) -> int:
    """The cluster entry as a plain function (what jobs submitted before arrays were pickled with)."""
    return ClusterEntry()(argv, log, env, claim_ref, token)
