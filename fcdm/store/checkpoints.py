"""Training checkpoints: written atomically, found again automatically, loaded safely.

One file per saved step, `<dir>/step_00000400.pt`; the newest `keep` survive. A file is written
to a temporary name and renamed into place, so a crash mid-write leaves the previous checkpoint
intact and never a truncated file under a checkpoint name. Temporary files of writers killed mid-write
are removed by the next trainer once it holds the run's lock (`remove_stale_temps`).

The runner lists checkpoints without torch: this module imports torch only inside the functions that
need it. Beside them lies `progress.json` (fcdm.store.progress).
"""
from __future__ import annotations

import re
from pathlib import Path

from fcdm.errors import CheckpointError, reason
from fcdm.util.files import atomic_writer

_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(state: dict, directory: Path, step: int, keep: int = 2, protect=()) -> Path:
    """Write `state` as the checkpoint of `step` atomically, then prune to the newest `keep`.

    protect: steps never pruned (evaluation steps whose evaluation is not logged yet: a rerun needs
    the weights of that step to perform it).
    """
    import torch  # heavy: the runner and `plan` list checkpoints without it

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    with atomic_writer(final) as f:
        torch.save(state, f)
    for old_step, old in list_checkpoints(directory)[:-keep]:
        if old_step not in protect:
            old.unlink(missing_ok=True)
    return final


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary files writers killed mid-write left in `directory` (checkpoints, progress.json);
    the removed paths. Call only while holding the run's trainer lock (fcdm.store.lock): it makes every
    other writer of this folder a dead one. `save_checkpoint` itself never removes a temporary file: it
    could be another live writer's."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


_FIX = "delete this file to resume from the previous checkpoint (or delete its folder to train from scratch)"


def check_not_empty(path: Path) -> None:
    """CheckpointError when `path` is a zero-byte file (a full disk or a copy cut short): a look at its size
    only, so a trainer can refuse it before it takes its lock or writes anything."""
    if Path(path).stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes; a full disk or a copy cut short); {_FIX}")


def load_checkpoint(path: Path) -> dict:
    """Load one checkpoint with weights_only=True; a damaged file raises CheckpointError."""
    import torch  # heavy: the runner and `plan` list checkpoints without it

    fix = _FIX
    try:
        check_not_empty(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: checkpoint is corrupt or not a fcdm-ablate checkpoint ({reason(e)}); "
                              f"{fix}") from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointError(f"{path}: checkpoint lacks the keys 'step' and 'model'; {fix}")
    return state


def load_latest(directory: Path) -> dict | None:
    """The newest checkpoint in `directory`, or None when there is none."""
    found = list_checkpoints(directory)
    return load_checkpoint(found[-1][1]) if found else None
