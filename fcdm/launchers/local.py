"""The local launcher: each job's trainer in a process of its own on this machine, forked by a trainer
server when the runner asks for one (`use_fork_server`), else a fresh interpreter.

The fork server (fcdm.util.forkserver, `fcdm-ablate serve-trainers`) imports a trainer's libraries
(torch, accelerate, MLflow, torch-fidelity: about 5 s of CPU) once per `run` instead of once per job.
It is used on machines without GPUs only (a process that forks must not have touched CUDA), and from
the runner's own thread (its children die with it). Should it fail, jobs start as fresh processes.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from fcdm.errors import LauncherError
from fcdm.launchers.base import Handle, Launcher, train_argv, trainer_env
from fcdm.util.forkserver import ForkServer

SERVER_LOG = "trainer-server.log"  # in <store>/jobs/


@dataclass
class ForkedHandle(Handle):
    """A trainer the fork server forked: polled through the server, signalled as its own session."""
    server: ForkServer | None = None
    pid: int = 0

    def poll(self) -> int | None:
        return self.server.exit_code(self.pid)

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        for send in (os.killpg, os.kill):  # its session, or the process itself before its setsid
            try:
                send(self.pid, sig)
                return
            except (ProcessLookupError, PermissionError):
                continue


class LocalLauncher(Launcher):
    """`python -m fcdm.cli train ...` per job (Launcher.start), or forked by a trainer server; no options."""
    name = "local"

    def __post_init__(self):
        if self.options:
            raise LauncherError(f"--launcher local takes no options (got {', '.join(self.options)}); they "
                                "apply to --launcher accelerate or --launcher slurm")
        self.server: ForkServer | None = None
        self._server_log: Path | None = None

    def use_fork_server(self, store: Path, now: bool = False) -> None:
        """Fork trainers from a server, started now (its imports overlap the runner's own start) or at the
        first job. Call from the thread that runs the jobs: the server dies with it."""
        self._server_log = Path(store) / "jobs" / SERVER_LOG
        if now:
            self._start_server()

    def _start_server(self) -> None:
        self.server = ForkServer.start([sys.executable, "-m", "fcdm.cli", "serve-trainers"], self._server_log)

    def start(self, job, config: Path, log: Path, store: Path, tracking_uri: str, env: dict[str, str],
              claim=None) -> Handle:
        if self._server_log is not None and self.server is None:
            self._start_server()
        if self.server is not None:
            try:
                pid = self.server.fork(train_argv(config, store)[2:], trainer_env(env, tracking_uri), log)
                return ForkedHandle(f"pid {pid}", self.server, pid)
            except RuntimeError as e:  # the server failed: fresh processes from now on
                print(f"warning: {e}; starting trainers as fresh processes", file=sys.stderr)
                self.close()
                self._server_log = None
        return super().start(job, config, log, store, tracking_uri, env, claim)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
