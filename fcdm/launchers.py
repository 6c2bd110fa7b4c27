"""How the runner starts one job's trainer: a local process, `accelerate launch`, or a Slurm job.

Every launcher runs `fcdm-ablate train <job config> --store S --tracking-uri U --no-progress` in a
process of its own (so a crash, OOM or NaN in one job cannot take the others down and its memory is
returned), its stdout and stderr appended to the job's log in the store. A launcher returns a
`Handle` the runner polls; `interrupt()` asks the trainer to checkpoint and stop (SIGINT: it marks
its run KILLED and exits 130), `kill()` ends it at once (it resumes from its last checkpoint).
The Slurm launcher lives in fcdm/slurm.py.

Local children die with the runner: Linux's PR_SET_PDEATHSIG sends them SIGTERM (checkpoint, stop)
when the runner dies, even by SIGKILL, so no orphan trains on while another runner takes its claim.
They start in their own session, so a Ctrl-C in the terminal reaches only the runner, which
forwards it once and then waits for the checkpoints.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAUNCHERS = ("local", "accelerate", "slurm")
EXIT_CLAIM_LOST = 75  # a cluster job found its claim taken over before it started: it trained nothing
_PR_SET_PDEATHSIG = 1


class LauncherError(ValueError):
    """A launcher option or environment problem a user can fix; the message says how."""


# -- resources: how many jobs at once, and what each gets -------------------------------------------

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


# -- processes ----------------------------------------------------------------------------------------

def train_argv(config: Path, store: Path, tracking_uri: str) -> list[str]:
    """The trainer's command line after the interpreter / launcher."""
    return ["-m", "fcdm.cli", "train", str(config), "--store", str(store), "--tracking-uri", tracking_uri,
            "--no-progress"]


def _die_with_parent(parent: int):
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def preexec() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(143)
    return preexec


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` with its output appended to `log`; it gets SIGTERM when this thread's process dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits: call this from a thread that outlives
    the child (the runner's loop, or a thread blocked waiting on it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} pid {os.getpid()}: "
                f"{' '.join(argv)}\n".encode())
        f.flush()
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))


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
        try:  # the whole session: accelerate's workers too
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


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
        proc = spawn([sys.executable, *train_argv(config, store, tracking_uri)], log, env)
        return ProcessHandle(f"pid {proc.pid}", proc)


class LocalLauncher(Launcher):
    def __post_init__(self):
        if self.options:
            raise LauncherError(f"--launcher local takes no options (got {', '.join(self.options)}); they "
                                "apply to --launcher accelerate or --launcher slurm")


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

    def argv(self, job, config: Path, store: Path, tracking_uri: str, env: dict[str, str]) -> list[str]:
        """accelerate's command line; num_processes defaults to the job's GPUs (one on CPU)."""
        opts = dict(self.options)
        gpus = [g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
        procs = int(opts.setdefault("num_processes", len(gpus) or 1))
        opts.setdefault("num_machines", 1)
        opts.setdefault("main_process_port", free_port())
        opts.setdefault("dynamo_backend", "no")
        opts.setdefault("num_cpu_threads_per_process", env.get("OMP_NUM_THREADS", "1"))
        if procs > 1 and "config_file" not in opts and not any(k in opts for k in ("multi_gpu", "use_cpu")):
            # DESIGN.md 5: `--cpu --num_processes 2` silently runs ONE process; --multi_gpu starts gloo on CPU.
            opts["multi_gpu"] = True
        opts["mixed_precision"] = job.config.train.mixed_precision  # what the trainer uses anyway
        flags = []
        for k, v in opts.items():
            if v is True:
                flags.append(f"--{k}")
            elif v not in (False, None):
                flags += [f"--{k}", str(v)]
        return [sys.executable, "-m", "accelerate.commands.launch", *flags, *train_argv(config, store, tracking_uri)]

    def start(self, job, config, log, store, tracking_uri, env, claim=None) -> Handle:
        proc = spawn(self.argv(job, config, store, tracking_uri, env), log, env)
        return ProcessHandle(f"pid {proc.pid}", proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_options(name: str, spec_section: dict | None = None, pairs: list[str] | tuple[str, ...] = (),
                     **flags: Any) -> dict[str, Any]:
    """A launcher's options: the spec's `launcher` section (`{slurm: {partition: gpu}, accelerate: {...}}`),
    then `--launcher-opt key=value` pairs (values read as YAML), then the named CLI flags that are set."""
    import yaml

    section = (spec_section or {}).get(name) or {}
    if not isinstance(section, dict):
        raise LauncherError(f"the spec's launcher.{name} section must be a mapping of options, not {section!r}")
    options = {k.replace("-", "_"): v for k, v in section.items()}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise LauncherError(f"--launcher-opt {pair!r}: expected key=value, e.g. --launcher-opt partition=gpu")
        try:
            options[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            options[key.strip().replace("-", "_")] = raw
    options.update({k: v for k, v in flags.items() if v is not None})
    return options


def make_launcher(name: str, options: dict[str, Any] | None = None) -> Launcher:
    """The launcher called `name` (local | accelerate | slurm) with its options validated."""
    options = dict(options or {})
    if name == "slurm":
        from fcdm.slurm import SlurmLauncher

        return SlurmLauncher(options)
    kinds = {"local": LocalLauncher, "accelerate": AccelerateLauncher}
    if name not in kinds:
        raise LauncherError(f"--launcher {name!r} is unknown; allowed values: {', '.join(LAUNCHERS)}")
    return kinds[name](options)
