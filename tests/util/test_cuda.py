"""CUDA math settings (issue 18 item 5): TF32 set explicitly on CUDA and recorded; the CPU untouched."""
import torch

from fcdm.util.cuda import evaluation_precision, fast_math


def test_fp32_evaluations_on_cuda_are_recorded_as_tf32_and_cpu_protocols_stay_fp32():
    assert evaluation_precision("fp32", "cpu") == evaluation_precision("fp32", torch.device("cpu")) == "fp32"
    assert evaluation_precision("fp32", torch.device("cuda", 0)) == evaluation_precision("fp32", "cuda:1") == "tf32"
    assert evaluation_precision("bf16", "cuda") == evaluation_precision("bf16", "cpu") == "bf16"


def test_fast_math_leaves_the_cpu_alone():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    fast_math(torch.device("cpu"), benchmark=True)
    fast_math("cpu")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark) == before
