"""FCDM vs DiT on one GPU, in one prepared run of at most 6 minutes on an H100: memory, training img/s and
MFU, inference img/s, the 250-step sampler, and an end-to-end paper-profile run with a SIGTERM and a resume.

    python bench/gpu.py --out bench/gpu_results.jsonl          # on the GPU: ~5.5 min (--budget 330 s)
    python bench/gpu.py --cpu --tiny --out /tmp/gpu.jsonl      # anywhere: tiny stand-ins, every non-CUDA line
    python bench/gpu.py --summarize bench/gpu_results.jsonl --record   # the tables into bench/RESULTS.md

Sections, in order (each guarded: an exception becomes {"section": ..., "error": ...} and the next section
runs; each has a time budget after which it starts no new measurement, and the whole run has --budget):

  preflight       torch / CUDA / cuDNN / accelerate versions, GPU and memory, TF32 flags, cudnn.benchmark
  memory          peak memory (torch.cuda.max_memory_allocated) of full bf16 training steps (forward,
                  backward, AdamW, EMA; DDPM with learned sigma) of FCDM-L, FCDM-XL, DiT-XL/2 at batch 32
                  and 64, 4x32x32 latents (256 px); out-of-memory is a result, not an error
  train           training img/s and MFU of FCDM-XL vs DiT-XL/2 at batch 64, a ladder of variants: eager
                  (the trainer today), fused AdamW + foreach EMA, + cudnn.benchmark, + channels_last (FCDM)
  inference       forward img/s at batch 256 in fp32, TF32 and bf16, beside the FCDM paper's 272.7 vs
                  80.5 it/s (its Table 4 sampling throughput at 256 px on its own hardware: 3.4x)
  sampler         the evaluation's 250-step DDPM sampler at batch 32 (TF32): s/img, FID-50K hours
  e2e             FCDM-S, paper profile, 2048 random latents, through `python -m fcdm.cli train`: SIGTERM
                  after the first checkpoint (exit 143), rerun to resume and finish, steps/s before and
                  after the resume, final MLflow status, then `python -m fcdm.cli sample RUN --num 16`
  train_compiled  the ladder's last rung, torch.compile (of the residual blocks; --compile model for the
                  whole model); last because its compile time is the least predictable

MFU = 3 x FLOPs per image x img/s / peak dense bf16 FLOP/s (H100 SXM 989 TFLOP/s, PCIe 756, H200 989,
A100 312; bench/_common.py). fcdm.models.flops counts in DiT's convention, one multiply-add = one "FLOP",
so FLOPs = 2 x its GFLOPs (GMACs); every train line says so.

Output: one JSON line per measurement, appended to --out (a run's lines share "started"), then Markdown
tables on stdout. `--cpu --tiny` runs the same code on the CPU with tiny stand-ins (widths 16-64, 8x8
latents, batch 2-4, a 5-step sampler, a 60-step end-to-end run) in well under a minute; the CUDA-only
calls (synchronize, memory statistics, empty_cache, device properties, torch.compile) sit behind
`Dev.cuda` in bench/_gpu_sections.py. tests/bench/test_gpu_script.py runs that mode.

Into bench/RESULTS.md: copy the GPU machine's results file back (e.g. to bench/gpu_results.jsonl) and run
`python bench/gpu.py --summarize bench/gpu_results.jsonl --record`: it appends a dated section with the
GPU, the command, the versions and flags, and the tables of the newest run in the file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import _gpu_e2e as E
import _gpu_sections as S
import torch
from _common import record

OUT = Path(__file__).with_name("gpu_results.jsonl")


@dataclass(frozen=True)
class E2E:
    """The end-to-end run: FCDM-S (with model_args) on n random latents of 4 x size x size, bf16 as
    paper.yaml trains."""
    n: int = 2048
    size: int = 32
    classes: int = 10
    steps: int = 400
    batch: int = 256
    log_every: int = 20
    checkpoint_every: int = 200    # the SIGTERM goes out once this checkpoint is on disk
    sampling_steps: int = 250      # sample grids at checkpoints and `sample --num 16`
    model_args: dict = field(default_factory=dict)
    num_workers: int = 4           # paper.yaml's loader processes
    timeout: float = 150.0         # seconds, per CLI process


@dataclass(frozen=True)
class Profile:
    tiny: bool
    latent: tuple[int, int, int]              # (C, H, W) of the model input
    models: dict[str, dict]                   # preset -> create_model overrides ({}: the preset itself)
    memory_batches: tuple[int, ...] = (32, 64)
    train_batch: int = 64
    train_warmup: int = 5
    train_iters: int = 20
    infer_batch: int = 256
    infer_warmup: int = 1
    infer_iters: int = 4
    sample_batch: int = 32
    sample_steps: int = 250
    sample_precision: str = "tf32"            # the protocol issue 18 adopts (TF32 set explicitly)
    compile: str = "blocks"
    e2e: E2E = E2E()
    pair: tuple[str, str] = ("FCDM-XL", "DiT-XL/2")
    memory_models: tuple[str, ...] = ("FCDM-L", "FCDM-XL", "DiT-XL/2")


FULL = Profile(tiny=False, latent=(4, 32, 32), models={"FCDM-L": {}, "FCDM-XL": {}, "DiT-XL/2": {}})
TINY = Profile(tiny=True, latent=(4, 8, 8),
               models={"FCDM-L": dict(hidden_size=16, depth=[1, 1, 1, 1, 1]),
                       "FCDM-XL": dict(hidden_size=32, depth=[1, 1, 2, 1, 1]),
                       "DiT-XL/2": dict(hidden_size=64, depth=2, num_heads=2, input_size=8)},
               memory_batches=(2, 4), train_batch=4, train_warmup=1, train_iters=2, infer_batch=4, infer_iters=2,
               sample_batch=2, sample_steps=5,
               e2e=E2E(n=64, size=8, steps=60, batch=8, log_every=5, checkpoint_every=20, sampling_steps=5,
                       model_args={"hidden_size": 16, "depth": [1, 1, 1, 1, 1]}, num_workers=0, timeout=60))

# (name, function, time budget in seconds on the H100): ~325 s of the 360 s, the rest for start-up.
SECTIONS = [("preflight", S.preflight, 5), ("memory", S.memory, 40), ("train", S.train, 40),
            ("inference", S.inference, 40), ("sampler", S.sampler, 40), ("e2e", E.e2e, 100),
            ("train_compiled", S.train_compiled, 60)]


class Context:
    """What every section gets: the device, the profile, `emit` (one JSON line) and `left` (its seconds)."""

    def __init__(self, dev: S.Dev, profile: Profile, out: Path, deadline: float, keep: bool):
        self.dev, self.profile, self.out, self.keep = dev, profile, out, keep
        self.command = " ".join(["python bench/gpu.py", *sys.argv[1:]])
        self.started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.t0, self.run_deadline, self.section_deadline = time.perf_counter(), deadline, deadline
        self.lines: list[dict] = []

    def left(self) -> float:
        return min(self.section_deadline, self.run_deadline) - time.perf_counter()

    def emit(self, section: str, **fields) -> None:
        line = {"section": section, **fields, "started": self.started, "device": self.dev.name,
                "tiny": self.profile.tiny, "t": round(time.perf_counter() - self.t0, 2)}
        self.lines.append(line)
        with self.out.open("a") as f:  # reopened per line: a killed run keeps everything measured so far
            f.write(json.dumps(line, default=str) + "\n")
        quiet = ("flops_note", "what", "paper_note", "traceback")  # long and the same on every line
        print(f"[{line['t']:7.1f}s] {section}: "
              + ", ".join(f"{k}={_short(v)}" for k, v in fields.items() if k not in quiet), file=sys.stderr)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)[:80]


def run(ctx: Context, only: set[str] | None) -> None:
    """Every section in order, each guarded and under its own budget."""
    for name, fn, budget in SECTIONS:
        if only and name not in only:
            continue
        if time.perf_counter() >= ctx.run_deadline:
            ctx.emit(name, skipped="run time budget (--budget) spent")
            continue
        ctx.section_deadline = time.perf_counter() + budget
        t0 = time.perf_counter()
        guarded(ctx, name, lambda: fn(ctx))
        ctx.emit(name, done=True, seconds=round(time.perf_counter() - t0, 2))
        guarded(ctx, name, ctx.dev.free)


def guarded(ctx: Context, section: str, fn) -> None:
    """fn(); an exception becomes an error line of `section`, so one failure does not cost the other
    sections their measurements (the traceback's end included: the GPU run is not repeated lightly)."""
    try:
        fn()
    except Exception as e:
        ctx.emit(section, error=f"{type(e).__name__}: {e}"[:4000], traceback=traceback.format_exc()[-3000:])


def newest_run(path: Path) -> list[dict]:
    """The lines of the newest run in a results file (they share "started")."""
    lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    return [line for line in lines if line["started"] == lines[-1]["started"]]


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [header, ["---"] * len(header), *rows]
    return ["", *("| " + " | ".join(cells) + " |" for cells in lines)]


def tables(lines: list[dict]) -> str:
    """Markdown tables of one run's lines, for the terminal and bench/RESULTS.md. A skipped measurement
    says why in its row; errors are listed at the end."""
    def rows(key: str, *sections: str) -> list[dict]:
        return [x for x in lines if x["section"] in sections and key in x]

    out = [f"{x['gpu']}" + (f" ({x['gpu_memory_gib']} GiB)" if x["gpu_memory_gib"] else "")
           + f"; torch {x['torch']}, CUDA {x['cuda']}, cuDNN {x['cudnn']}, "
           f"accelerate {x['accelerate']}; defaults: matmul TF32 {x['matmul_allow_tf32']}, cuDNN TF32 "
           f"{x['cudnn_allow_tf32']}, float32 matmul precision {x['float32_matmul_precision']!r}, cudnn.benchmark "
           f"{x['cudnn_benchmark']}; commit {x['git_commit']}" + (" (TINY stand-ins)" if x["tiny"] else "")
           for x in rows("torch", "preflight")]
    out += _table(["model", "GMAC/img", "batch", "peak memory (GiB), full bf16 step"],
                  [[x["model"], _fmt(x.get("gmac_per_img"), ".4g"), str(x["batch"]),
                    x.get("skipped") or ("OOM" if x["oom"] else _fmt(x["peak_gib"], ".2f"))]
                   for x in rows("model", "memory")])
    out += _table(["model", "variant", "batch", "img/s", "ms/step", "first step (s)", "GMAC/img", "MFU"],
                  [[x["model"], x["variant"], *([x["skipped"]] + [""] * 5 if "skipped" in x else
                    [str(x["batch"]), _fmt(x["img_per_s"]), _fmt(x["step_ms"]), _fmt(x["first_step_s"], ".2f"),
                     _fmt(x["gmac_per_img"], ".4g"), _fmt(x["mfu"], ".1%")])]
                   for x in rows("model", "train", "train_compiled")])
    out += ["", f"{S.FLOPS_NOTE}."]
    out += _table(["model", "precision", "batch", "img/s", "paper it/s"],
                  [[x["model"], x["precision"], *([x["skipped"], "", ""] if "skipped" in x else
                    [str(x["batch"]), _fmt(x["img_per_s"]), _fmt(x["paper_its"])])]
                   for x in rows("model", "inference")])
    out += [f"\n{x['summary']}: " + ", ".join(f"{m} {r:.2f}x" for m, r in x["ratio"].items())
            + f" (paper: {x['paper_ratio']:.2f}x, its Table 4 throughput at 256 px on its own hardware)"
            for x in rows("ratio", "inference")]
    out += _table(["model", "sampler", "batch", "precision", "s/img", "FID-50K hours"],
                  [[x["model"], *([x["skipped"], "", "", "", ""] if "skipped" in x else
                    [f"ddpm {x['steps']}", str(x["batch"]), x["precision"], _fmt(x["s_per_img"], ".4f"),
                     _fmt(x["fid50k_hours"], ".2f")])] for x in rows("model", "sampler")])
    out += [f"\nEnd-to-end (FCDM-S, paper profile, batch {x['batch']}): {x['status']} at step {x['final_step']} "
            f"after a SIGTERM at step {x['stopped_at_step']} and a resume; steps/s "
            f"{_fmt(x['steps_per_sec_before'], '.2f')} before, {_fmt(x['steps_per_sec_after'], '.2f')} after "
            f"({_fmt(x['after_over_before'], '.2f')}x)" for x in rows("phase", "e2e") if x["phase"] == "resume"]
    out += [f"\n**{x['section']}: {x['error'].splitlines()[0]}**" for x in lines if "error" in x]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT, help=f"results file, JSON lines appended (default {OUT})")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument("--tiny", action="store_true", help="tiny stand-in models and runs (seconds, any device)")
    p.add_argument("--budget", type=float, default=330, help="seconds after which no section starts (default 330)")
    p.add_argument("--only", help="comma-separated sections to run (default all): "
                   + ",".join(name for name, _, _ in SECTIONS))
    p.add_argument("--compile", choices=["blocks", "model"], default="blocks",
                   help="train_compiled: torch.compile the residual blocks (default) or the whole model")
    p.add_argument("--keep", action="store_true", help="keep the end-to-end run's temporary directory")
    p.add_argument("--summarize", type=Path, metavar="RESULTS", help="print the tables of the newest run in a "
                   "results file and exit (with --record: append them to bench/RESULTS.md)")
    p.add_argument("--record", action="store_true", help="with --summarize: append a dated section to RESULTS.md")
    args = p.parse_args()
    if args.summarize:
        lines = newest_run(args.summarize)
        body = tables(lines)
        print(body)
        if args.record:
            when = datetime.datetime.fromisoformat(lines[0]["started"]).strftime("%Y-%m-%d %H:%M %Z")
            record(f"\n## {when} - FCDM vs DiT on {lines[0]['device']} (bench/gpu.py)\n\n"
                   f"- Command: `{next((x['command'] for x in lines if 'command' in x), 'python bench/gpu.py')}`; "
                   f"results: `{args.summarize}`"
                   f"\n\n{body}\n")
        return
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {name for name, _, _ in SECTIONS}
    if unknown:
        p.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    if args.cpu and not args.tiny:
        p.error("--cpu needs --tiny: the full-size models would take hours on a CPU")
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device (torch.cuda.is_available() is False); use --cpu --tiny to exercise the script")
    profile = replace(TINY if args.tiny else FULL, compile=args.compile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.cpu else "cuda")
    ctx = Context(S.Dev(device), profile, args.out, time.perf_counter() + args.budget, args.keep)
    run(ctx, only)
    print(tables(ctx.lines))
    print(f"\n{len(ctx.lines)} lines appended to {args.out} in {time.perf_counter() - ctx.t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
