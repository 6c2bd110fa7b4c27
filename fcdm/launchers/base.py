"""What every launcher shares: the trainer's command line, the `Launcher` interface and the `Handle` of a
started job.

Every launcher runs `fcdm-ablate train <job config> --store S --no-progress` in a
process of its own (so a crash, OOM or NaN in one job cannot take the others down and its memory is
returned), its stdout and stderr appended to the job's log in the store. A launcher returns a
`Handle` the runner polls; `interrupt()` asks the trainer to checkpoint and stop (SIGINT: it marks
its run KILLED and exits 130), `kill()` ends it at once (it resumes from its last checkpoint).
The implementations are `local`, `accelerate` and `slurm` in this package. The tracking URI reaches the
trainer through its environment (MLFLOW_TRACKING_URI, `trainer_env`), never its command line: a
database password must not show in `ps` or in the command each job's log starts with.

Local children die with the runner: Linux's PR_SET_PDEATHSIG sends them SIGTERM (checkpoint, stop)
when the runner dies, even by SIGKILL, so no orphan trains on while another runner takes its claim.
They start in their own session, so a Ctrl-C in the terminal reaches only the runner, which
forwards it once and then waits for the checkpoints.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcdm.store.lock import EXIT_HELD  # noqa: F401  (re-exported for the runner)
from fcdm.util.process import signal_session, spawn

# A cluster job found its claim taken over before it started. The same code as a trainer finding the run's
# lock held (EXIT_HELD, fcdm.store.lock): both trained nothing; another process has the job; retry later.
EXIT_CLAIM_LOST = EXIT_HELD
TRACKING_ENV = "MLFLOW_TRACKING_URI"  # how the trainer learns its tracking URI (fcdm.store.layout reads it)


def train_argv(config: Path, store: Path) -> list[str]:
    """The trainer's command line after the interpreter / launcher (no tracking URI: see trainer_env)."""
    return ["-m", "fcdm.cli", "train", str(config), "--store", str(store), "--no-progress"]


def trainer_env(env: dict[str, str], tracking_uri: str) -> dict[str, str]:
    """The trainer's environment: `env` and the tracking URI (which may hold a password: never on argv)."""
    return {**env, TRACKING_ENV: tracking_uri}


@dataclass
class Handle:
    """A started job. poll() is None while it runs, else the trainer's exit code (negative: killed by
    that signal)."""
    describe: str

    def poll(self) -> int | None:
        raise NotImplementedError

    def interrupt(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError


@dataclass
class ProcessHandle(Handle):
    proc: subprocess.Popen | None = None

    def poll(self) -> int | None:
        return self.proc.poll()

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        signal_session(self.proc, sig)  # the whole session: accelerate's workers too


# -- the launchers --------------------------------------------------------------------------------------

@dataclass
class Launcher:
    """Starts jobs. `options` are the launcher's own flags (accelerate's, Slurm's), validated up front."""
    options: dict[str, Any] = field(default_factory=dict)
    name = "local"

    def __post_init__(self):
        pass

    def processes_per_job(self) -> int:
        return 1

    def check(self, jobs) -> None:
        """Refuse options that contradict the jobs, before anything starts."""

    def start(self, job, config: Path, log: Path, store: Path, tracking_uri: str, env: dict[str, str],
              claim=None) -> Handle:
        proc = spawn([sys.executable, *train_argv(config, store)], log, trainer_env(env, tracking_uri))
        return ProcessHandle(f"pid {proc.pid}", proc)

    def close(self) -> None:
        """Release what the launcher holds once its session ends (the local launcher's fork server)."""
