"""Classifier-free guidance (Ho & Salimans 2022) as a model_fn wrapper, for DDPM and flow alike.

out = uncond + s * (cond - uncond) on the guided channels; the unconditional pass uses the null
class (the last row of the class table, trained with label dropout). DiT's published FIDs guide only
3 of the 4 latent channels (``guided_channels=3``); the default guides all C prediction channels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fcdm.diffusion.common import ModelFn
from fcdm.models.layers import check_guidance, guided_output


def guided_model_fn(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    y: Tensor,
    cfg_scale: float,
    null_class: int,
    guided_channels: int | None = None,
) -> ModelFn:
    """Bind labels y (B,) long to ``model(x, t, y)`` and apply guidance with scale ``cfg_scale``.

    The returned ``fn(x, t)`` takes x: (B, C, H, W), t: (B,) and runs ONE doubled batch (2B) with labels
    [y, null_class]. The first ``guided_channels`` channels (None = all C prediction channels) are
    guided; the remaining prediction channels and any learned-variance channels (C..2C) come from the
    conditional pass. With cfg_scale == 1 the conditional model is run alone (guidance is a no-op).
    A model with ``class_conditional = False`` (FCDM's conditioning="unconditional") refuses
    cfg_scale > 1 with a ValueError, and runs alone for any other scale (both passes would be identical).
    """
    check_guidance(model, cfg_scale)
    if cfg_scale == 1.0 or not getattr(model, "class_conditional", True):
        return lambda x, t: model(x, t, y)

    def fn(x: Tensor, t: Tensor) -> Tensor:
        C = x.shape[1]
        g = C if guided_channels is None else guided_channels
        if not 0 < g <= C:
            raise ValueError(f"guided_channels={guided_channels} must be between 1 and the "
                             f"{C} input channels (or None for all).")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{y.shape[0]} labels bound for a batch of {x.shape[0]}.")
        y_null = torch.full_like(y, null_class)
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null]))
        # The same combination as the models' forward_with_cfg; keep the conditional half.
        return guided_output(out, cfg_scale, g)[: len(x)]

    return fn
