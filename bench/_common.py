"""What every benchmark here shares: the machine it ran on, waiting for a quiet machine, recording."""
import os
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
# Dense bf16 tensor-core peak in TFLOP/s by GPU name; the first key found in the name wins (PCIe before SXM).
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_bf16_tflops(gpu_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name (torch.cuda.get_device_name()), or None if unknown."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu_name), None)


def add_common_args(parser) -> None:
    """The flags every benchmark takes: waiting for a quiet machine, and recording the result."""
    parser.add_argument("--max-load", type=float, default=1.0, help="wait while the 1-minute load is above this")
    parser.add_argument("--max-wait", type=float, default=480, help="longest wait for the load to drop, seconds")
    parser.add_argument("--record", action="store_true", help=f"append a dated section to {RESULTS}")


def load1() -> float:
    """The 1-minute load average."""
    return float(open("/proc/loadavg").read().split()[0])


def wait_for_load(max_load: float, max_wait: float) -> tuple[float, float]:
    """Sleep in 30 s steps while the 1-minute load is above max_load; returns (load seen, seconds waited).

    On 2 cores a second busy process makes OpenMP threads spin and halves (or worse) every number.
    """
    waited = 0.0
    while load1() > max_load and waited < max_wait:
        print(f"load {load1():.2f} > {max_load}: waiting 30 s ({waited:.0f} s so far)", file=sys.stderr)
        time.sleep(30)
        waited += 30
    return load1(), waited


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA GPU"
    return (f"{len(os.sched_getaffinity(0))} CPUs (nproc), {cpu}{gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def record(section: str) -> None:
    """Append a dated section (markdown) to bench/RESULTS.md."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in bench/ with `--record`.\n")
    with RESULTS.open("a") as f:
        f.write(section)
    print(f"appended to {RESULTS}")
