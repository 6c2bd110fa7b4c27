"""Open a trained run again: its config, newest checkpoint, EMA denoiser and objective."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch.nn as nn
import yaml

from fcdm.build import build_model, build_objective
from fcdm.config import RunConfig, validate_config
from fcdm.store.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from fcdm.store.layout import resolve_store
from fcdm.store.tracking import TAG_CKPT, find_run


@dataclass
class TrainedRun:
    run_id: str
    config: RunConfig
    step: int
    ema: nn.Module  # EMA weights, eval mode, on the CPU
    objective: object
    shape: tuple[int, int, int]  # (C, H, W) the denoiser works on
    num_classes: int


def open_run(run: str, store: str | Path | None = None, tracking_uri: str | None = None,
             step: int | None = None) -> TrainedRun:
    """The run with this MLflow id or name, loaded at its newest checkpoint (or at `step`)."""
    found = find_run(run, resolve_store(store), tracking_uri)
    ckpt_dir = Path(found.data.tags.get(TAG_CKPT, ""))
    checkpoints = dict(list_checkpoints(ckpt_dir))
    if not checkpoints:
        raise CheckpointError(f"run {found.info.run_id} has no checkpoints in {ckpt_dir or '(no checkpoint tag)'}; "
                              "train it first with `fcdm-ablate train CONFIG`")
    if step is not None and step not in checkpoints:
        raise CheckpointError(f"run {found.info.run_id} has no checkpoint at step {step}; available steps: "
                              f"{', '.join(map(str, sorted(checkpoints)))}")
    state = load_checkpoint(checkpoints[step if step is not None else max(checkpoints)])
    cfg = validate_config(yaml.safe_load(state["config"]), f"{ckpt_dir} (stored config)")
    data = SimpleNamespace(**state["data"])
    ema = build_model(cfg, data)
    ema.load_state_dict(state["ema"])
    return TrainedRun(found.info.run_id, cfg, int(state["step"]), ema.eval(), build_objective(cfg),
                      (data.channels, data.image_size, data.image_size), data.num_classes)
