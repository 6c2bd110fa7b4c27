"""How the runner starts one job's trainer: a local process, `accelerate launch`, or a Slurm job.

    launcher = make_launcher("accelerate", launcher_options("accelerate", spec.launcher, ["num_processes=2"]))
    handle = launcher.start(job, config_path, log_path, store, tracking_uri, env, claim)

The registry (`LAUNCHERS`) names each implementation; `base` holds what they share (the trainer's
command line, `Launcher`, `Handle`), `resources` how many jobs run at once and what each gets.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fcdm.errors import LauncherError

if TYPE_CHECKING:
    from fcdm.launchers.base import Launcher

# The launchers by name (`LAUNCHERS`, name -> class), loaded on first use (PEP 562): the command line needs
# only the names for `--help`, which must answer at once.
_CLASSES = {"local": ("local", "LocalLauncher"), "accelerate": ("accelerate", "AccelerateLauncher"),
            "slurm": ("slurm", "SlurmLauncher")}
LAUNCHER_NAMES = tuple(_CLASSES)


def __getattr__(name: str):
    if name == "LAUNCHERS":
        return {n: getattr(importlib.import_module(f"fcdm.launchers.{m}"), c) for n, (m, c) in _CLASSES.items()}
    raise AttributeError(f"module 'fcdm.launchers' has no attribute {name!r}")


def launcher_options(name: str, spec_section: dict | None = None, pairs: list[str] | tuple[str, ...] = (),
                     **flags: Any) -> dict[str, Any]:
    """A launcher's options: the spec's `launcher` section (`{slurm: {partition: gpu}, accelerate: {...}}`),
    then `--launcher-opt key=value` pairs (values read as YAML), then the named CLI flags that are set."""
    import yaml  # keeps --help fast: only once a command reads options

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
    if name not in _CLASSES:
        raise LauncherError(f"--launcher {name!r} is unknown; allowed values: {', '.join(_CLASSES)}")
    return __getattr__("LAUNCHERS")[name](dict(options or {}))


__all__ = ["LAUNCHERS", "LAUNCHER_NAMES", "LauncherError", "launcher_options", "make_launcher"]
