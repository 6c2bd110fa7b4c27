"""What a run carries from step to step: the EMA and the optimizer (issue 18: foreach EMA, fused AdamW on CUDA)."""
import pytest
import torch
from helpers import make_config

from fcdm.build import build_model
from fcdm.train.state import make_optimizer, update_ema


@pytest.mark.parametrize("decay", [0.9999, 0.5, (1 + 3) / (10 + 3)])
def test_the_foreach_ema_equals_a_per_tensor_lerp_bit_for_bit(decay):
    torch.manual_seed(0)
    model, ema = build_model(make_config()), build_model(make_config())
    for p in model.parameters():
        p.data.normal_()
    expected = [e.detach().clone().lerp_(p.detach().float(), 1 - decay)
                for e, p in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, decay)
    for e, x in zip(ema.parameters(), expected):
        assert torch.equal(e, x)


def test_adamw_is_fused_on_cuda_only():
    cfg = make_config("train.lr=0.0003", "train.weight_decay=0.01")
    model = build_model(cfg)
    cpu, cuda = (make_optimizer(model, cfg, torch.device(d)) for d in ("cpu", "cuda"))
    assert not cpu.defaults["fused"] and cuda.defaults["fused"] is True
    for opt in (cpu, cuda):
        assert opt.defaults["lr"] == 3e-4 and opt.defaults["weight_decay"] == 0.01
        assert opt.defaults["betas"] == cfg.train.betas
