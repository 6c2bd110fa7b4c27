"""Parameters and FLOPs of a built model in DiT's convention, counted (README, "FLOPs").

Forward pass, batch 1, no guidance doubling, VAE excluded, one multiply-add = one FLOP,
attention matmuls included. Counting runs on the meta device: shapes only, no arithmetic,
so FCDM-XL at 512 px costs milliseconds and no memory. The closed forms `plan` uses instead
live in fcdm.models.costs.

    from fcdm.models.flops import preset_gflops
    preset_gflops("FCDM-XL", resolution=256)   # ~64.5
"""
from contextlib import contextmanager, nullcontext
from functools import lru_cache

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

from fcdm.models import create_model, family_of

VAE_DOWNSAMPLE = 8  # SD-VAE maps 256 px images to 32 x 32 latents


def count_params(model: nn.Module) -> int:
    """All parameters, frozen ones included (DiT's fixed positional embedding counts, as in its paper)."""
    return sum(p.numel() for p in model.parameters())


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # flop_counter has no entry for the fused CPU kernel and would count it as 0.
    return sdpa_flop(query_shape, key_shape, value_shape)


_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop}


def _signature(module: nn.Module) -> tuple:
    return type(module), tuple((n, tuple(p.shape)) for n, p in module.named_parameters())


@contextmanager
def _count_repeated_blocks_once(model: nn.Module, counter: FlopCounterMode, extra: list[int]):
    """Run only the first of a stage's identical residual blocks and count the rest from it.

    Blocks of one stage (an nn.ModuleList) share type, parameter shapes and input shape, and map
    x to a tensor of x's shape, so they cost the same. Even on the meta device each op runs
    Python shape logic; skipping the repeats makes the 16-preset table several times faster.
    """
    patched = []
    for stage in (m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1):
        first, rest = stage[0], [b for b in stage[1:] if _signature(b) == _signature(stage[0])]
        if not rest:
            continue
        cost, state = {}, {}
        pre = first.register_forward_pre_hook(lambda m, a, st=state: st.update(start=counter.get_total_flops()))
        post = first.register_forward_hook(
            lambda m, a, out, st=state, cost=cost: cost.update(
                flops=counter.get_total_flops() - st["start"], same_shape=out.shape == a[0].shape))
        patched += [pre, post]
        for block in rest:
            block.forward = _counted_identity(block, cost, extra)
            patched.append(block)
    try:
        yield
    finally:
        for item in patched:
            if isinstance(item, nn.Module):
                del item.forward
            else:
                item.remove()


def _counted_identity(block: nn.Module, cost: dict, extra: list[int]):
    original = type(block).forward

    def forward(x, *args, **kwargs):
        if not cost.get("same_shape"):  # not a residual block after all: run it for real
            return original(block, x, *args, **kwargs)
        extra.append(cost["flops"])
        return x
    return forward


def model_gflops(model: nn.Module, input_shape: tuple[int, int, int], reuse_repeated: bool = True) -> float:
    """GFLOPs (multiply-adds / 1e9) of one forward of `model` on a (1, C, H, W) input.

    The model is run on whatever device it lives on: build it under `torch.device("meta")`
    to count without computing (see `config_gflops`). reuse_repeated=False runs every block.
    """
    device = next(model.parameters()).device
    x = torch.zeros(1, *input_shape, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    extra: list[int] = []
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
        with _count_repeated_blocks_once(model, counter, extra) if reuse_repeated else nullcontext():
            model(x, t, y)
    model.train(was_training)
    return (counter.get_total_flops() + sum(extra)) / 2 / 1e9  # flop_counter counts 2 per multiply-add


def config_gflops(name: str, input_shape: tuple[int, int, int], **overrides) -> tuple[int, float]:
    """(params, GFLOPs) of preset `name` with constructor overrides, counted on the meta device."""
    if family_of(name) == "dit":
        overrides.setdefault("input_size", input_shape[-1])
        overrides.setdefault("in_channels", input_shape[0])
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return count_params(model), model_gflops(model, input_shape)


@lru_cache(maxsize=None)
def preset_gflops(name: str, resolution: int = 256, latent_channels: int = 4) -> float:
    """GFLOPs of a preset on SD-VAE latents of a `resolution` px image."""
    size = resolution // VAE_DOWNSAMPLE
    return config_gflops(name, (latent_channels, size, size))[1]
