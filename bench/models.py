"""Training-step throughput and peak memory: FCDM vs DiT (forward + backward, no optimizer step).

    python bench/models.py --record          # CPU: FCDM-S vs DiT-S/2; plus FCDM-XL vs DiT-XL/2 if CUDA is there
    python bench/models.py --device cuda     # GPU only: FCDM-XL vs DiT-XL/2, bf16 autocast, with MFU

Inputs are 32x32x4 latents (256 px), random timesteps in 0..999 and random labels, models in train
mode, loss = mean(output ** 2). CPU: batch 8. CUDA: batch 32 under bf16 autocast. Each repeat times
`--iters` steps of each model after `--warmup` steps, alternating which model goes first (ABBA) to
spread drift; the table gives the median over repeats. Peak memory is measured per model in a fresh
spawned process: on CPU the peak RSS (VmHWM from /proc/self/status, reset after the model and inputs
were built) minus the RSS at that point (so it counts gradients, activations and allocator slack, not weights); on CUDA
torch.cuda.max_memory_allocated (everything, weights included). A worker that dies (killed for memory,
a crash) or runs past --memory-timeout gives no number: its cell says so and the benchmark goes on.
--record appends a dated section to bench/RESULTS.md.
"""
import argparse
import datetime
import multiprocessing as mp
import queue as queue_module
import statistics
import sys
import time
from contextlib import nullcontext

import psutil
import torch
from _common import RESULTS, load1, machine, peak_bf16_tflops, record

from fcdm.models import create_model
from fcdm.models.flops import preset_gflops

PAIRS = {"cpu": ("FCDM-S", "DiT-S/2"), "cuda": ("FCDM-XL", "DiT-XL/2")}
DEFAULTS = {"cpu": dict(batch=8, warmup=2, iters=3, repeats=6), "cuda": dict(batch=32, warmup=10, iters=20, repeats=6)}


def make_inputs(batch: int, n: int, device: str, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """n input triples (x: (B, 4, 32, 32), t: (B,) in 0..999, y: (B,) in 0..999), shared by both models."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 4, 32, 32, generator=g).to(device),
             torch.randint(0, 1000, (batch,), generator=g).to(device),
             torch.randint(0, 1000, (batch,), generator=g).to(device)) for _ in range(n)]


def step(model, inputs, amp: bool) -> None:
    """One forward + backward; gradients are freed (set to None) first, as optimizer.zero_grad does."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
        loss = model(*inputs).float().pow(2).mean()
    loss.backward()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def memory_worker(name: str, device: str, batch: int, threads: int, queue) -> None:
    """Runs in a fresh spawned process: peak memory (bytes) of two training steps of `name`."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name).to(device).train()
    inputs = make_inputs(batch, 1, device)[0]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step(model, inputs, amp=True)
        torch.cuda.synchronize()
        queue.put(torch.cuda.max_memory_allocated())
    else:
        # Not getrusage's ru_maxrss: Linux carries it across exec, so a spawned child starts with the
        # parent's peak. VmHWM belongs to the new address space, and clear_refs 5 resets it to now.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = psutil.Process().memory_info().rss
        for _ in range(2):
            step(model, inputs, amp=False)
        queue.put(vm_hwm() - base)


def vm_hwm() -> int:
    """Peak resident set size (bytes) of this process since start or the last clear_refs reset."""
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def peak_memory(name: str, device: str, batch: int, timeout: float = 900.0) -> int | str:
    """Peak memory (bytes) of `name` from a fresh spawned worker, or why there is none: the worker died
    without a result (its exit code: -9 is the kernel's OOM killer, 1 an exception on its stderr), or it
    ran past `timeout` seconds and was killed."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=memory_worker, args=(name, device, batch, torch.get_num_threads(), queue))
    proc.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return queue.get(timeout=1.0)
            except queue_module.Empty:
                pass
            if proc.exitcode is not None:
                try:  # a result put just before a normal exit may still be on its way
                    return queue.get(timeout=5.0)
                except queue_module.Empty:
                    return f"worker died (exit code {proc.exitcode})"
            if time.monotonic() > deadline:
                proc.kill()
                return f"worker killed after {timeout:.0f} s"
    finally:
        proc.join(timeout=30)


def throughput(names, device: str, batch: int, warmup: int, iters: int, repeats: int) -> dict[str, list[float]]:
    """Images/s per repeat for each model, models interleaved ABBA across repeats."""
    torch.manual_seed(0)
    models = {n: create_model(n).to(device).train() for n in names}
    inputs = make_inputs(batch, iters, device)
    amp = device == "cuda"
    for n in names:
        for i in range(warmup):
            step(models[n], inputs[i % iters], amp)
    sync(device)
    rates = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            t0 = time.perf_counter()
            for inp in inputs:
                step(models[n], inp, amp)
            sync(device)
            rates[n].append(batch * iters / (time.perf_counter() - t0))
            print(f"  repeat {r + 1}/{repeats} {n}: {rates[n][-1]:.2f} img/s", file=sys.stderr)
    return rates


def peak_tflops(flag: float | None) -> float | None:
    return flag or peak_bf16_tflops(torch.cuda.get_device_name())


def bench(device: str, args) -> tuple[str, str]:
    """Runs one comparison; returns (markdown table, summary line)."""
    cfg = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in DEFAULTS[device].items()}
    names = PAIRS[device]
    print(f"[{device}] {names[0]} vs {names[1]}, {cfg}", file=sys.stderr)
    mem = {n: peak_memory(n, device, cfg["batch"], args.memory_timeout) for n in names}  # while this process is small
    for n, m in mem.items():
        if isinstance(m, str):
            print(f"  peak memory of {n}: {m}; no number for it", file=sys.stderr)
    rates = throughput(names, device, cfg["batch"], cfg["warmup"], cfg["iters"], cfg["repeats"])
    peak = peak_tflops(args.peak_tflops) if device == "cuda" else None
    mem_col = "peak RSS increase (MiB)" if device == "cpu" else "max_memory_allocated (MiB)"
    rows = [f"| model | device | batch | GFLOPs/img fwd (MAC) | img/s median (min-max) | MFU | {mem_col} |",
            "|---|---|---|---|---|---|---|"]
    for n in names:
        med, g = statistics.median(rates[n]), preset_gflops(n, 256)
        mfu = f"{g * 1e9 * 2 * 3 * med / (peak * 1e12):.1%}" if peak else "-"
        where = "CPU fp32" if device == "cpu" else f"{torch.cuda.get_device_name()} bf16 autocast"
        mib = f"{mem[n] / 2**20:.0f}" if isinstance(mem[n], int) else mem[n]  # or why the worker gave none
        rows.append(f"| {n} | {where} | {cfg['batch']} | {g:.2f} | {med:.2f} ({min(rates[n]):.2f}-{max(rates[n]):.2f}) "
                    f"| {mfu} | {mib} |")
    ratio = statistics.median(rates[names[0]]) / statistics.median(rates[names[1]])
    summary = (f"Throughput ratio {names[0]} / {names[1]}: **{ratio:.2f}x** (median of {cfg['repeats']} repeats "
               f"x {cfg['iters']} timed steps after {cfg['warmup']} warm-up steps; threads: {torch.get_num_threads()}"
               + (f"; MFU against {peak:g} TFLOP/s dense bf16" if peak else "") + ")")
    return "\n".join(rows), summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CPU pair, plus the GPU pair if CUDA is available; cuda: GPU pair only")
    p.add_argument("--batch", type=int, help="batch size (default 8 on CPU, 32 on CUDA)")
    p.add_argument("--warmup", type=int, help="warm-up steps per model (default 2 CPU, 10 CUDA)")
    p.add_argument("--iters", type=int, help="timed steps per model per repeat (default 3 CPU, 20 CUDA)")
    p.add_argument("--repeats", type=int, help="interleaved repeats; the median is reported (default 6)")
    p.add_argument("--peak-tflops", type=float, help="GPU peak dense bf16 TFLOP/s for MFU "
                   "(default from the device name: H100 SXM 989, H100 PCIe 756, H200 989, A100 312)")
    p.add_argument("--memory-timeout", type=float, default=900.0,
                   help="seconds a memory worker may run before it is killed (default 900)")
    p.add_argument("--record", action="store_true", help=f"append a dated section to {RESULTS}")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False (no CUDA GPU or a CPU-only torch build)")
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"], "cuda": ["cuda"]}
    load_before = load1()
    started = datetime.datetime.now().astimezone()
    results = [bench(d, args) for d in devices[args.device]]
    body = "\n\n".join(f"{table}\n\n{summary}" for table, summary in results)
    print(body)
    if args.record:
        command = "python bench/models.py " + " ".join(sys.argv[1:])
        section = (f"\n## {started:%Y-%m-%d %H:%M %Z} - FCDM vs DiT training-step throughput\n\n"
                   f"- Command: `{command.strip()}`\n- Machine: {machine()}\n"
                   f"- 1-minute load average: {load_before} before the run, {load1()} at the end "
                   f"(the latter includes this benchmark)\n"
                   "- Step: forward + backward of mean(output^2), train mode, random t in 0..999 and labels, "
                   "32x32x4 latents, no optimizer step.\n"
                   "- Memory: CPU = peak RSS (VmHWM, reset after model and inputs were built) minus RSS at that "
                   "point, in a fresh spawned process (gradients + activations + allocator slack); "
                   "CUDA = torch.cuda.max_memory_allocated (weights included).\n\n" + body + "\n")
        record(section)


if __name__ == "__main__":
    main()
