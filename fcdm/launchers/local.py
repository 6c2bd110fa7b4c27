"""The local launcher: each job's trainer in a process of its own on this machine."""
from __future__ import annotations

from fcdm.errors import LauncherError
from fcdm.launchers.base import Launcher


class LocalLauncher(Launcher):
    """`python -m fcdm.cli train ...` per job (Launcher.start); it takes no options."""
    name = "local"

    def __post_init__(self):
        if self.options:
            raise LauncherError(f"--launcher local takes no options (got {', '.join(self.options)}); they "
                                "apply to --launcher accelerate or --launcher slurm")
