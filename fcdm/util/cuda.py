"""The CUDA math settings training and evaluation run under, set explicitly rather than left to torch's
defaults (which keep matmuls in full fp32 while cuDNN convolutions use TF32: an fp32 comparison would favour
convolutional models and take ~5x longer). Nothing changes on the CPU.

    fast_math(device, benchmark=True)       # training: TF32 matmuls and convolutions, cuDNN autotuning
    evaluation_precision("fp32", device)    # "tf32" on CUDA (what the protocol records), "fp32" on the CPU
"""
from __future__ import annotations


def fast_math(device, benchmark: bool = False) -> None:
    """On CUDA: TF32 for matmuls and cuDNN convolutions; `benchmark` lets cuDNN time its algorithms per
    shape (training: fixed shapes; left off for evaluations, whose samples must not depend on the timing)."""
    import torch  # heavy: only when a model runs

    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = benchmark


def evaluation_precision(precision: str, device) -> str:
    """The precision an evaluation at `precision` runs at on `device`: fp32 on CUDA is TF32 (fast_math)
    and is recorded so; the CPU's fp32 stays fp32, so CPU protocols keep their digests."""
    cuda = getattr(device, "type", str(device).split(":")[0]) == "cuda"
    return "tf32" if cuda and precision == "fp32" else precision
