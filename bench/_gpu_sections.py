"""The measurements of bench/gpu.py, one function per section: preflight, memory, train, inference, sampler
and train_compiled (the end-to-end run is in _gpu_e2e.py).

Each section takes the run's Context (gpu.py: device, profile, `emit`, `left`) and records one JSON line
per measurement with `ctx.emit(section, **fields)`. Sections do not catch their own errors (gpu.py guards
each one) except CUDA out-of-memory in `memory`, which is a result. Every CUDA-only call (synchronize,
memory statistics, empty_cache, device properties) goes through `Dev`, the one `device.type == "cuda"`
switch of the script, so `--cpu --tiny` runs every other line.
"""
from __future__ import annotations

import copy
import gc
import platform
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from _common import machine, peak_bf16_tflops

from fcdm.diffusion import create_objective
from fcdm.evaluation.sampling import generate, spread_labels
from fcdm.models import FCDMBlock, create_model, family_of
from fcdm.models.dit import DiTBlock
from fcdm.models.flops import config_gflops, count_params, preset_gflops

ROOT = Path(__file__).resolve().parent.parent
EMA_DECAY = 0.9999  # paper.yaml: plain EMA, no warm-up
# FCDM paper, Table 4: sampling throughput (it/s) at 256 px as the paper measured it (its GPU and batch,
# not ours); analysis/reference/published.csv, column throughput_its. FCDM-XL / DiT-XL/2 = 3.39x.
PAPER_ITS = {"FCDM-XL": 272.7, "DiT-XL/2": 80.5}
FLOPS_NOTE = ("MFU = 3 x FLOPs/img x img/s / peak bf16 FLOP/s, with FLOPs = 2 x GMAC: fcdm.models.flops counts "
              "in DiT's convention (one multiply-add = one 'FLOP'), so its GFLOPs are GMACs")


class Dev:
    """The device, and every CUDA-only call of the script behind the one `device.type == "cuda"` switch."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        props = torch.cuda.get_device_properties(device) if self.cuda else None
        self.name = props.name if props else "CPU"
        self.memory_bytes = props.total_memory if props else None
        self.capability = f"{props.major}.{props.minor}" if props else None
        self.peak_tflops = peak_bf16_tflops(self.name) if props else None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_bytes(self) -> int | None:
        """Most bytes allocated by tensors since reset_peak (None on the CPU: not measured there)."""
        return torch.cuda.max_memory_allocated() if self.cuda else None

    def allocated_bytes(self) -> int | None:
        return torch.cuda.memory_allocated() if self.cuda else None

    def free(self) -> None:
        """Hand freed CUDA memory back between measurements (a no-op on the CPU: nothing to measure there)."""
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()

    def seconds(self, fn, n: int) -> float:
        """Wall seconds of n calls of fn, with the device drained before and after."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        self.sync()
        return time.perf_counter() - t0


# -- models, inputs, the training step ---------------------------------------------------------------

def build(ctx, name: str) -> nn.Module:
    """Preset `name` (with the profile's tiny overrides, if any), initialised directly on the device."""
    with ctx.dev.device:  # factory calls allocate there: no CPU initialisation of 700M parameters
        return create_model(name, **ctx.profile.models[name])


def gmac(ctx, name: str) -> float:
    """Forward GMACs per image (fcdm's "GFLOPs", DiT's convention) at the profile's latent shape."""
    overrides = ctx.profile.models[name]
    return config_gflops(name, ctx.profile.latent, **overrides)[1] if overrides else preset_gflops(name, 256)


def inputs(ctx, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (n, C, H, W) random latents, t (n,) and y (n,) in 0..999, on the device, seeded."""
    g = torch.Generator(device=ctx.dev.device).manual_seed(0)
    kw = dict(generator=g, device=ctx.dev.device)
    return (torch.randn(n, *ctx.profile.latent, **kw), torch.randint(0, 1000, (n,), **kw),
            torch.randint(0, 1000, (n,), **kw))


@dataclass(frozen=True)
class Variant:
    fused: bool = False          # AdamW(fused=True) and one torch._foreach_lerp_ for the EMA
    benchmark: bool = False      # torch.backends.cudnn.benchmark: cuDNN picks convolution kernels by timing
    channels_last: bool = False  # weights and input in NHWC (only FCDM has convolutions that care)
    compile: bool = False        # torch.compile: of the residual blocks, or of the whole model (--compile)


# A ladder: each rung keeps the one before it. "eager" is fcdm.train.loop before issue 18 (unfused AdamW, a
# lerp_ per parameter); "fused+cudnn.benchmark" is the trainer since (fused AdamW, foreach EMA, autotuning).
VARIANTS = {"eager": Variant(), "fused": Variant(fused=True),
            "fused+cudnn.benchmark": Variant(fused=True, benchmark=True),
            "channels_last": Variant(fused=True, benchmark=True, channels_last=True),
            "compiled": Variant(fused=True, benchmark=True, compile=True)}


def compile_model(model: nn.Module, how: str) -> nn.Module:
    """torch.compile of the residual blocks in place (identical blocks share one graph: short compile
    times) or of the whole model; returns what to call."""
    if how == "model":
        return torch.compile(model)
    for m in model.modules():
        if isinstance(m, (FCDMBlock, DiTBlock)):
            m.compile()
    return model


class TrainStep:
    """One paper-profile training step, as fcdm.train.loop takes it without data loading and logging:
    bf16 autocast forward with fp32 outputs (accelerate's mixed precision), the DDPM loss with learned
    sigma, backward, AdamW (lr 1e-4, no weight decay), EMA update. Call with x (B, C, H, W), y (B,)."""

    def __init__(self, model: nn.Module, variant: Variant, compile_how: str = "blocks"):
        self.model, self.variant = model, variant
        self.objective = create_objective("ddpm", learn_sigma=True)  # 1000-step linear schedule, eps + L_vlb
        self.ema = copy.deepcopy(model).float().requires_grad_(False).eval()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0,
                                     fused=True if variant.fused else None)
        self.pairs = (list(self.ema.parameters()), [p.detach() for p in model.parameters()])
        self.forward = compile_model(model, compile_how) if variant.compile else model

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        def model_fn(xt, tt):
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                out = self.forward(xt, tt, y)
            return out.float()

        t = self.objective.sample_t(len(x), device=x.device)
        self.objective.training_losses(model_fn, x, t)["loss"].mean().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.variant.fused:
            with torch.no_grad():
                torch._foreach_lerp_(self.pairs[0], self.pairs[1], 1 - EMA_DECAY)
        else:
            with torch.no_grad():  # the trainer before issue 18: one lerp_ per parameter
                for e, p in zip(*self.pairs):
                    e.lerp_(p, 1 - EMA_DECAY)


# -- sections ------------------------------------------------------------------------------------------

def preflight(ctx) -> None:
    """Versions, the device, and the precision flags every later number depends on."""
    import accelerate  # heavy: only here

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except OSError:
        commit = None
    ctx.emit("preflight", torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
             accelerate=accelerate.__version__, python=platform.python_version(), torch_device=str(ctx.dev.device),
             gpu=ctx.dev.name, gpu_memory_gib=ctx.dev.memory_bytes and round(ctx.dev.memory_bytes / 2**30, 1),
             capability=ctx.dev.capability, peak_bf16_tflops=ctx.dev.peak_tflops,
             matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
             cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
             float32_matmul_precision=torch.get_float32_matmul_precision(),
             cudnn_benchmark=torch.backends.cudnn.benchmark, cudnn_deterministic=torch.backends.cudnn.deterministic,
             threads=torch.get_num_threads(), machine=machine(), git_commit=commit, command=ctx.command)


def memory(ctx) -> None:
    """Peak memory of two full bf16 training steps (the trainer's: "eager") per model and batch:
    max_memory_allocated after a reset, so weights, EMA, gradients, AdamW state and activations.
    Out of memory is recorded as a result."""
    for name in ctx.profile.memory_models:
        _memory_one(ctx, name)
        ctx.dev.free()


def _memory_one(ctx, name: str) -> None:
    model = build(ctx, name).train()
    step = TrainStep(model, VARIANTS["eager"])
    for batch in ctx.profile.memory_batches:
        if ctx.left() <= 0:
            ctx.emit("memory", model=name, batch=batch, skipped="section time budget spent")
            continue
        x, _, y = inputs(ctx, batch)
        ctx.dev.free()
        ctx.dev.reset_peak()
        oom = None
        try:
            for _ in range(2):  # the second step runs with AdamW's state already allocated
                step(x, y)
            ctx.dev.sync()
        except torch.OutOfMemoryError as e:
            oom = str(e).splitlines()[0][:300]
        step.opt.zero_grad(set_to_none=True)
        peak = ctx.dev.peak_bytes()
        ctx.emit("memory", model=name, batch=batch, latent=list(ctx.profile.latent), oom=oom is not None,
                 oom_message=oom, peak_bytes=peak, peak_gib=peak and round(peak / 2**30, 2),
                 after_step_bytes=ctx.dev.allocated_bytes(), params=count_params(model),
                 gmac_per_img=round(gmac(ctx, name), 3), what="max_memory_allocated: weights, EMA, grads, "
                 "AdamW state, activations; bf16 autocast; DDPM learned-sigma loss")


def measure_train(ctx, name: str, model: nn.Module, variant_name: str, x, y) -> dict:
    """Training img/s and MFU of `model` under one variant, at the batch of x (B, C, H, W)."""
    variant, p = VARIANTS[variant_name], ctx.profile
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = variant.benchmark
    try:
        if variant.channels_last:
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        step = TrainStep(model, variant, p.compile)
        first = ctx.dev.seconds(lambda: step(x, y), 1)  # includes compilation and cuDNN's search
        ctx.dev.seconds(lambda: step(x, y), p.train_warmup)
        seconds = ctx.dev.seconds(lambda: step(x, y), p.train_iters)
    finally:
        torch.backends.cudnn.benchmark = before
        model.to(memory_format=torch.contiguous_format)
    img_s = len(x) * p.train_iters / seconds
    g = gmac(ctx, name)
    peak = ctx.dev.peak_tflops
    return dict(model=name, variant=variant_name, settings=asdict(variant),
                compile=p.compile if variant.compile else None, batch=len(x), img_per_s=img_s,
                step_ms=1000 * seconds / p.train_iters, first_step_s=first, timed_steps=p.train_iters,
                gmac_per_img=g, train_tflops_per_s=3 * 2 * g * 1e9 * img_s / 1e12,
                mfu=3 * 2 * g * 1e9 * img_s / (peak * 1e12) if peak else None, peak_bf16_tflops=peak,
                flops_note=FLOPS_NOTE)


def train(ctx, variants=("eager", "fused", "fused+cudnn.benchmark", "channels_last"), section="train") -> None:
    """Training img/s and MFU of the pair (FCDM-XL vs DiT-XL/2), for each variant of the step."""
    for name in ctx.profile.pair:
        _train_one(ctx, name, variants, section)
        ctx.dev.free()


def _train_one(ctx, name: str, variants, section: str) -> None:
    model = None
    x, _, y = inputs(ctx, ctx.profile.train_batch)
    for v in variants:
        if VARIANTS[v].channels_last and family_of(name) != "fcdm":
            ctx.emit(section, model=name, variant=v, skipped="not meaningful: DiT's only convolution is its "
                     "patch embedding")
        elif ctx.left() <= 0:
            ctx.emit(section, model=name, variant=v, skipped="section time budget spent")
        elif VARIANTS[v].compile and not ctx.dev.cuda:
            ctx.emit(section, model=name, variant=v, skipped="CPU: torch.compile runs on CUDA only here (slow "
                     "on the CPU; the --cpu --tiny mode exercises the eager paths)")
        else:
            model = build(ctx, name).train() if model is None else model
            ctx.emit(section, **measure_train(ctx, name, model, v, x, y))
            ctx.dev.free()


def train_compiled(ctx) -> None:
    """The "compiled" rung of the training ladder, last in the script: its compile time is the least
    predictable part of the budget."""
    train(ctx, variants=("compiled",), section="train_compiled")


# What each precision sets: (matmul TF32, cuDNN TF32, autocast dtype).
PRECISIONS = {"fp32": (False, False, None), "tf32": (True, True, None), "bf16": (True, True, torch.bfloat16)}


@contextmanager
def precision(mode: str, device_type: str):
    """TF32 flags and autocast for `mode` ("fp32": none, "tf32", "bf16" autocast); restores the flags."""
    matmul, cudnn, dtype = PRECISIONS[mode]
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    try:
        with torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def inference(ctx) -> None:
    """Forward-only images/s at the inference batch (256 on the GPU) in fp32, TF32 and bf16, beside the
    FCDM paper's sampling throughput (it/s at 256 px on its own hardware)."""
    rates = {}
    for name in ctx.profile.pair:
        rates.update(_inference_one(ctx, name))
        ctx.dev.free()
    a, b = ctx.profile.pair
    ctx.emit("inference", summary=f"{a} / {b} forward img/s",
             ratio={m: rates[a, m] / rates[b, m] for m in PRECISIONS if (a, m) in rates and (b, m) in rates},
             paper_ratio=PAPER_ITS[a] / PAPER_ITS[b])


def _inference_one(ctx, name: str) -> dict[tuple[str, str], float]:
    p, rates = ctx.profile, {}
    model = build(ctx, name).eval()
    x, t, y = inputs(ctx, p.infer_batch)
    for mode in PRECISIONS:
        if ctx.left() <= 0:
            ctx.emit("inference", model=name, precision=mode, skipped="section time budget spent")
            continue
        with precision(mode, ctx.dev.device.type), torch.inference_mode():
            ctx.dev.seconds(lambda: model(x, t, y), p.infer_warmup)
            seconds = ctx.dev.seconds(lambda: model(x, t, y), p.infer_iters)
        rates[name, mode] = p.infer_batch * p.infer_iters / seconds
        ctx.emit("inference", model=name, precision=mode, batch=p.infer_batch, img_per_s=rates[name, mode],
                 ms_per_batch=1000 * seconds / p.infer_iters, paper_its=PAPER_ITS.get(name),
                 paper_note="FCDM paper Table 4 throughput (it/s), 256 px, the paper's GPU and batch")
    return rates


def sampler(ctx) -> None:
    """The evaluation's own 250-step DDPM sampler (fcdm.evaluation.sampling.generate: unguided, as Table 6's
    FID-50K; per-sample noise generators) at a modest batch: seconds per image and the FID-50K hours
    that implies on one such device at this batch (VAE decoding and Inception excluded)."""
    for name in ctx.profile.pair:
        if ctx.left() <= 0:
            ctx.emit("sampler", model=name, skipped="section time budget spent")
            continue
        _sample_one(ctx, name)
        ctx.dev.free()


def _sample_one(ctx, name: str) -> None:
    p = ctx.profile
    model, objective = build(ctx, name).eval(), create_objective("ddpm", learn_sigma=True)
    labels = spread_labels(p.sample_batch, 1000)

    def run(steps: int) -> torch.Tensor:
        return generate(model, objective, p.latent, labels, sampler="ddpm", num_steps=steps, cfg_scale=1.0,
                        batch_size=p.sample_batch, seed=0, device=ctx.dev.device)

    with precision(p.sample_precision, ctx.dev.device.type):
        run(2)  # warm-up: kernels chosen, memory allocated
        t0 = time.perf_counter()
        x = run(p.sample_steps)  # generate returns on the CPU: synchronised
        seconds = time.perf_counter() - t0
    per_img = seconds / p.sample_batch
    ctx.emit("sampler", model=name, sampler="ddpm", steps=p.sample_steps, batch=p.sample_batch,
             precision=p.sample_precision, cfg_scale=1.0, seconds=seconds, s_per_img=per_img,
             fid50k_hours=per_img * 50_000 / 3600, finite=bool(torch.isfinite(x).all()))
