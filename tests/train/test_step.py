"""One optimiser step's mechanics: gradient accumulation (train.grad_accum, issue 18)."""
import pytest
import torch
from accelerate import Accelerator

from fcdm.build import build_model, build_objective
from fcdm.train.step import accumulate_gradients


def test_gradient_accumulation_equals_the_large_batch(tiny_config, one_thread):
    """train.grad_accum=4: the summed gradients of four micro-batches equal the batch's to float rounding
    (not bit for bit: the batch reductions run in another order, which is why grad_accum > 1 is hashed)."""
    cfg = tiny_config("train.batch_size=32")
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model, objective = build_model(cfg), build_objective(cfg)
    x, y = torch.randn(32, *cfg.data_shape), torch.randint(0, cfg.num_classes, (32,))
    t, noise = objective.sample_t(32, device=torch.device("cpu")), torch.randn(32, *cfg.data_shape)
    grads, losses = [], []
    for micro in (1, 4):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same label dropout
        losses.append(accumulate_gradients(accelerator, model, objective, x, y, t, noise, micro))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.allclose(losses[0], losses[1], rtol=1e-6, atol=0)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert max((a - b).abs().max().item() for a, b in zip(*grads)) < 1e-6
    with pytest.raises(Exception, match="train.grad_accum=3"):
        accumulate_gradients(accelerator, model, objective, x, y, t, noise, 3)

