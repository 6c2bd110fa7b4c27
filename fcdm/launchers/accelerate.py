"""The accelerate launcher: each job's trainer through `accelerate launch` (several processes per job)."""
from __future__ import annotations

import sys
from pathlib import Path

from fcdm.errors import LauncherError
from fcdm.launchers.base import Handle, Launcher, ProcessHandle, train_argv, trainer_env
from fcdm.util.net import free_port
from fcdm.util.process import spawn

_ACCELERATE_REFUSED = {"cpu": "the trainer picks the CPU itself when no GPU is visible"}


class AccelerateLauncher(Launcher):
    """`accelerate launch <flags> -m fcdm.cli train ...`: the user's accelerate config (default file or
    `config_file`) applies; options are accelerate's own flags (`num_processes=2`, `multi_gpu=true`,
    `config_file=cfg.yaml`, ...). Each job gets its own rendezvous port so several run at once."""
    name = "accelerate"

    def __post_init__(self):
        self.options = {k.replace("-", "_"): v for k, v in self.options.items()}
        for key, why in _ACCELERATE_REFUSED.items():
            if key in self.options:
                raise LauncherError(f"launcher option {key}={self.options[key]!r} is not passed to accelerate: {why}")
        n = self.options.get("num_processes", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise LauncherError(f"launcher option num_processes={n!r} must be a positive integer, e.g. "
                                "--num-processes 2")

    def processes_per_job(self) -> int:
        return int(self.options.get("num_processes", 1))

    def check(self, jobs) -> None:
        # The trainer passes train.mixed_precision to Accelerator(), which wins over accelerate's flag: a
        # different flag would be silently ignored, and precision is part of the run's identity (hashed).
        mp = self.options.get("mixed_precision")
        odd = [j for j in jobs if mp is not None and j.config.train.mixed_precision != mp]
        if odd:
            raise LauncherError(f"accelerate option mixed_precision={mp!r} but job {odd[0].name} has "
                                f"train.mixed_precision={odd[0].config.train.mixed_precision!r}: precision is part of "
                                f"the run's identity; set it with --set train.mixed_precision={mp}")

    def argv(self, job, config: Path, store: Path, env: dict[str, str]) -> list[str]:
        """accelerate's command line; num_processes defaults to the job's GPUs (one on CPU)."""
        opts = dict(self.options)
        gpus = [g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
        procs = int(opts.setdefault("num_processes", len(gpus) or 1))
        opts.setdefault("num_machines", 1)
        opts.setdefault("main_process_port", free_port())
        opts.setdefault("dynamo_backend", "no")
        opts.setdefault("num_cpu_threads_per_process", env.get("OMP_NUM_THREADS", "1"))
        if procs > 1 and "config_file" not in opts and not any(k in opts for k in ("multi_gpu", "use_cpu")):
            # `--cpu --num_processes 2` silently runs ONE process; --multi_gpu starts gloo on CPU.
            opts["multi_gpu"] = True
        opts["mixed_precision"] = job.config.train.mixed_precision  # what the trainer uses anyway
        flags = []
        for k, v in opts.items():
            if v is True:
                flags.append(f"--{k}")
            elif v not in (False, None):
                flags += [f"--{k}", str(v)]
        return [sys.executable, "-m", "accelerate.commands.launch", *flags, *train_argv(config, store)]

    def start(self, job, config, log, store, tracking_uri, env, claim=None) -> Handle:
        proc = spawn(self.argv(job, config, store, env), log, trainer_env(env, tracking_uri))
        return ProcessHandle(f"pid {proc.pid}", proc)
