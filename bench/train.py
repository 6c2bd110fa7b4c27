"""Trainer overhead: steps/s of `fcdm.train.train` vs a bare PyTorch loop doing the same work.

    python bench/train.py --breakdown --record   # as recorded: smoke config, 3 interleaved repeats x 300 steps
    python bench/train.py --steps 300 --repeats 3     # print only

Both sides train the smoke config (ablations/configs/smoke.yaml: FCDM width 32, depths [1,1,2,1,1],
flow matching, digits 8x8, batch 64, AdamW lr 1e-3, grad clip 1.0, EMA 0.999 with warm-up) for
`--steps` steps, one process, on one device (`--device`: auto = CUDA when available, else the CPU's
threads; `--device cpu` hides CUDA from this process, so the trainer, which takes the GPU whenever it sees
one, runs on the CPU too):

- trainer: `fcdm.train.train(cfg, store=tmpdir, progress=False)` with `eval.at=[]` (no eval steps),
  `eval.metrics=[]`, `log.checkpoint_every=10**9` (only the final checkpoint), `log.every` 10 (default),
  `train.steps=--steps` and `seed=repeat` (one MLflow run per repeat in one temporary store);
- bare: the same model (`build_model`), objective (`build_objective`), batches (the same
  `StepBatchSampler` index lists, gathered by plain tensor indexing instead of a DataLoader),
  AdamW (same lr, betas, weight decay), `torch.nn.utils.clip_grad_norm_`, and EMA update
  (`update_ema(ema, model, ema_decay(cfg, step))`), seeded the same, on the trainer's device; no
  logging, no reduce, no `.item()` (on CUDA its timing synchronises at both ends instead).

Timing window: steps `--skip`+1 .. `--steps` (default 11..300) of each run. For the trainer it is read
back from MLflow: every `log.every` steps the trainer logs `loss` with a wall-clock timestamp (ms) taken
just before the MLflow write, so (last step - step 10) / (timestamp difference) covers the loop in steady
state *including* its MLflow writes, and excludes start-up (imports, Accelerator, MLflow database and run
creation, first steps) and the end (final checkpoint, sample grid, run termination). A "few-steps run
subtracted" design would put start-up noise (SQLite creation, ~seconds) into a difference of two
numbers; the timestamps avoid that. The trainer's own `steps_per_sec` metric is also shown: its window
excludes the MLflow write itself, so the gap between the two is the cost of the logging. The bare loop is
timed with perf_counter over the same step range. Repeats interleave trainer and bare (ABBA), after an
untimed warm-up of each; the table gives medians, and overhead % = (bare / trainer - 1) * 100.

`--breakdown` also times, in isolation (median of 2000 calls, in microseconds), what the trainer does per
step that the bare loop does not: the DataLoader batch vs tensor indexing, the single-process
`accelerator.reduce` + two `.item()`s, the `AcceleratedOptimizer` step vs the raw one, and one MLflow
`log_metrics` write (made every `log.every` steps). Its Accelerator is made for the device the trainer
used: accelerate's state is per process, and asking for `cpu=True` after a CUDA trainer is a ValueError.

Before timing (and with --record) the script waits while the 1-minute load average is above
`--max-load` (checks every 30 s, up to `--max-wait` s) and records the load it saw.
"""
import argparse
import copy
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import add_common_args, load1, machine, record, wait_for_load

from fcdm.build import build_dataset, build_model, build_objective
from fcdm.config import load_config
from fcdm.train import train
from fcdm.train.state import StepBatchSampler, ema_decay, update_ema

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "ablations" / "configs" / "smoke.yaml"


def trainer_config(steps: int, seed: int, every: int):
    return load_config(SMOKE, overrides=["eval.at=[]", "eval.metrics=[]", "log.checkpoint_every=1000000000",
                                         f"log.every={every}", f"train.steps={steps}", f"seed={seed}"])


def time_trainer(cfg, store: str, skip: int) -> dict:
    """Run the trainer; steps/s over steps skip+1..end from MLflow timestamps, plus its steps_per_sec metric."""
    from mlflow import MlflowClient

    from fcdm.store.layout import resolve_tracking_uri

    t0 = time.perf_counter()
    result = train(cfg, store=store, progress=False)
    wall = time.perf_counter() - t0
    client = MlflowClient(tracking_uri=resolve_tracking_uri(Path(store)))
    loss = {m.step: m.timestamp for m in client.get_metric_history(result.run_id, "loss")}
    sps = {m.step: m.value for m in client.get_metric_history(result.run_id, "steps_per_sec")}
    last = max(loss)
    if skip not in loss:
        raise SystemExit(f"--skip {skip} must be a multiple of log.every ({cfg.log.every}) below --steps")
    rate = (last - skip) / ((loss[last] - loss[skip]) / 1000)
    # The trainer's own windows: each holds log.every steps timed without the MLflow write.
    steps = sorted(s for s in sps if s > skip)
    prev = [skip] + steps[:-1]
    own = (last - skip) / sum((s - p) / sps[s] for s, p in zip(steps, prev))
    return {"rate": rate, "own": own, "wall": wall}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_bare(cfg, steps: int, skip: int, device: torch.device) -> float:
    """The same training in a bare loop on `device`; steps/s over steps skip+1..steps."""
    dataset = build_dataset(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, dataset).to(device)
    objective = build_objective(cfg)
    ema = copy.deepcopy(model).float().requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            betas=cfg.train.betas)
    torch.manual_seed(cfg.seed * 1_000_003)
    images, labels = dataset.images.to(device), dataset.labels.to(device)
    batches = StepBatchSampler(len(dataset), cfg.train.batch_size, 0, 1, cfg.seed, 0, steps)
    model.train()
    t0 = None
    for step, idx in enumerate(batches):
        if step == skip:
            sync(device)
            t0 = time.perf_counter()
        x, y = images[idx], labels[idx]
        t = objective.sample_t(len(x), device=device)
        loss = objective.training_losses(lambda xt, tt: model(xt, tt, y), x, t)["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        update_ema(ema, model, ema_decay(cfg, step))
    sync(device)
    return (steps - skip) / (time.perf_counter() - t0)


def micro(fn, n: int = 2000) -> float:
    """Median microseconds per call of fn over n calls (after 50 warm-up calls)."""
    for _ in range(50):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def breakdown(cfg, store: str, device: torch.device) -> list[tuple[str, float]]:
    """Per-call cost (us) of what the trainer adds per step, measured in isolation on the trainer's device."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from fcdm.store.tracking import Tracker

    acc = Accelerator(cpu=device.type == "cpu")  # the trainer's choice: accelerate's state cannot change device
    dataset = build_dataset(cfg)
    sampler = StepBatchSampler(len(dataset), cfg.train.batch_size, 0, 1, cfg.seed, 0, 10**7)
    loader = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=0, generator=torch.Generator().manual_seed(0)))
    idx_iter = iter(sampler)
    out = [("DataLoader batch of 64 (per-item __getitem__ + collate)", micro(lambda: next(loader))),
           ("tensor indexing of the same batch (bare loop)", micro(lambda: (lambda i: (dataset.images[i], dataset.labels[i]))(next(idx_iter))))]
    loss = torch.tensor(0.5, device=device)

    def reduce_item():
        packed = acc.reduce(torch.stack([loss.detach().float(), torch.tensor(0.0, device=device)]), reduction="sum")
        return packed[0].item(), int(packed[1].item())
    out.append(("accelerator.reduce(stack of 2) + 2 x .item(), one process", micro(reduce_item)))
    torch.manual_seed(0)
    model = build_model(cfg, dataset).to(device)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    raw = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    out.append(("torch AdamW.step (bare loop)", micro(lambda: (raw.step(), sync(device)), 500)))
    model2 = build_model(cfg, dataset).to(device)
    for p in model2.parameters():
        p.grad = torch.zeros_like(p)
    _, wrapped = acc.prepare(model2, torch.optim.AdamW(model2.parameters(), lr=cfg.train.lr))
    out.append(("AcceleratedOptimizer.step (trainer)", micro(lambda: (wrapped.step(), sync(device)), 500)))
    tracker = Tracker(Path(store))
    tracker.open(trainer_config(20, 999, 10), tags={})
    step = iter(range(10**7))
    out.append((f"Tracker.log_metrics (4 metrics, one SQLite write; every {cfg.log.every} steps)",
                micro(lambda: tracker.log_metrics({"loss": 0.1, "steps_per_sec": 1.0, "lr": 1e-3, "train_gflops": 1.0},
                                                  next(step)), 200)))
    tracker.end("FINISHED")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each side (default 3)")
    p.add_argument("--skip", type=int, default=10, help="steps left out of the timing at the start of each run; "
                   "a multiple of log.every (default 10)")
    p.add_argument("--every", type=int, default=10, help="log.every of the trainer (default 10, the config's)")
    p.add_argument("--breakdown", action="store_true", help="also time the trainer's per-step extras in isolation")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where both sides train (default auto: CUDA when available, else the CPU)")
    add_common_args(p)
    args = p.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before CUDA is first queried: the trainer then sees no GPU
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    load_before, waited = wait_for_load(args.max_load, args.max_wait)
    started = datetime.datetime.now().astimezone()
    runs = {"trainer": [], "bare": []}
    with tempfile.TemporaryDirectory() as store:
        # Warm-up (untimed): creates the MLflow database and touches every code path once.
        time_trainer(trainer_config(args.skip + 2 * args.every, 1000, args.every), store, args.skip)
        time_bare(trainer_config(args.skip + 20, 1000, args.every), args.skip + 20, args.skip, device)
        for r in range(args.repeats):
            cfg = trainer_config(args.steps, r, args.every)
            for side in (("trainer", "bare") if r % 2 == 0 else ("bare", "trainer")):
                if side == "trainer":
                    res = time_trainer(cfg, store, args.skip)
                    runs["trainer"].append(res)
                    print(f"  repeat {r + 1}/{args.repeats} trainer: {res['rate']:.2f} steps/s "
                          f"(own steps_per_sec {res['own']:.2f}, train() wall {res['wall']:.2f} s)", file=sys.stderr)
                else:
                    rate = time_bare(cfg, args.steps, args.skip, device)
                    runs["bare"].append({"rate": rate})
                    print(f"  repeat {r + 1}/{args.repeats} bare:    {rate:.2f} steps/s", file=sys.stderr)
        load_after = load1()
        extras = breakdown(trainer_config(args.steps, 0, args.every), store, device) if args.breakdown else []

    med = {k: statistics.median(x["rate"] for x in v) for k, v in runs.items()}
    own = statistics.median(x["own"] for x in runs["trainer"])
    wall = statistics.median(x["wall"] for x in runs["trainer"])
    overhead = (med["bare"] / med["trainer"] - 1) * 100
    fmt = lambda v: ", ".join(f"{x['rate']:.2f}" for x in v)
    rows = ["| loop | steps/s median | per repeat | ms/step |", "|---|---|---|---|",
            f"| bare PyTorch | {med['bare']:.2f} | {fmt(runs['bare'])} | {1000 / med['bare']:.2f} |",
            f"| fcdm.train.train (MLflow timestamps) | {med['trainer']:.2f} | {fmt(runs['trainer'])} | "
            f"{1000 / med['trainer']:.2f} |",
            f"| fcdm.train.train (its steps_per_sec metric, excludes the MLflow write) | {own:.2f} | "
            f"{', '.join(format(x['own'], '.2f') for x in runs['trainer'])} | {1000 / own:.2f} |"]
    body = "\n".join(rows)
    body += (f"\n\nTrainer overhead vs bare loop: **{overhead:+.1f}%** (target <= 5%); "
             f"{1000 / med['trainer'] - 1000 / med['bare']:+.2f} ms/step. Median of {args.repeats} interleaved "
             f"repeats x steps {args.skip + 1}..{args.steps}; a whole `train()` call of {args.steps} steps took "
             f"{wall:.1f} s (median), start-up and final checkpoint + sample grid included.")
    if extras:
        body += ("\n\n| trainer per-step extra (in isolation) | us per call |\n|---|---|\n"
                 + "\n".join(f"| {name} | {us:.1f} |" for name, us in extras))
    print(body)
    if args.record:
        command = "python bench/train.py " + " ".join(sys.argv[1:])
        section = (f"\n## {started:%Y-%m-%d %H:%M %Z} - trainer overhead vs a bare PyTorch loop (smoke config)\n\n"
                   f"- Command: `{command.strip()}`\n- Machine: {machine()}\n"
                   f"- 1-minute load average: {load_before:.2f} before the run"
                   + (f" (after waiting {waited:.0f} s for it to drop below {args.max_load})" if waited else "")
                   + f", {load_after:.2f} at the end of the timed repeats (the latter includes this benchmark)\n"
                   "- Work: smoke config (FCDM width 32, depths [1,1,2,1,1], flow, digits 8x8, batch 64, AdamW, "
                   f"grad clip 1.0, EMA with warm-up), one process on {device.type}; trainer with eval.at=[], "
                   "eval.metrics=[], "
                   "only the final checkpoint, log.every 10. Trainer timed by MLflow metric timestamps "
                   "(steady-state loop incl. its MLflow writes); bare loop by perf_counter over the same steps.\n\n"
                   + body + "\n")
        record(section)


if __name__ == "__main__":
    main()
