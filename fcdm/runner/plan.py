"""`fcdm-ablate plan`: what a spec will run and what it costs, without running or writing anything.

    jobs = expand("ablations/kernel_size.yaml", "paper")
    rows = plan_rows(jobs, store=None)
    rows[0]["gflops"], rows[0]["train_gflops"], rows[0]["status"]
    add_estimates(rows, jobs)                     # --measure: est_seconds of each job
    print(to_csv(rows)); print_table(rows, "kernel_size", "paper")

Each row is one job: name, seed, hash, variant, axis values, parameters, forward GFLOPs (DiT's
convention), training compute (GFLOPs x 3 x batch x steps), the target it was matched to (GFLOPs or
parameters) and its deviation from it, the row it is compared with and what the two are matched on
(fcdm.spec.pairs), and its status in the store (new / partial at step N / finished / failed / running
elsewhere), read from files only: no store or database is created.
`measure_steps` times a few real training steps of each distinct architecture on this machine.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fcdm.models.costs import training_gflops
from fcdm.spec.job import TAG_BASELINE, TAG_MATCHED_ON, TAG_ROLE, TAG_SOLVED, TARGET_TAGS, Job
from fcdm.spec.matching import architecture, cost
from fcdm.store.jobs import job_status
from fcdm.store.layout import resolve_store

COLUMNS = ("name", "seed", "hash", "variant", "axes", "params", "gflops", "train_gflops", "steps", "batch_size",
           "flops_target", "params_target", "vs_target", "solved", "role", "baseline", "matched_on", "status")
NO_DATA = "needs data"  # latent jobs whose files are not on this machine have no hash (it covers the data)


def plan_rows(jobs: Sequence[Job], store: str | Path | None = None) -> list[dict[str, Any]]:
    """One dict per job (keys: COLUMNS). `store`: None means the default store; a store that does not exist
    means every job is new. Reads nothing but the store's files; writes nothing."""
    store_path = resolve_store(store)
    rows = []
    for job in jobs:
        cfg = job.config
        c = cost(cfg)
        h = cfg.try_hash()
        tags = cfg.log.tags
        flops_t, params_t = (_number(tags.get(TARGET_TAGS[k])) for k in ("flops", "params"))
        rows.append({"name": job.name, "seed": job.seed, "hash": h, "variant": job.variant or "", "axes": job.axes,
                     "params": c.params, "gflops": c.gflops,
                     "train_gflops": training_gflops(c.gflops, cfg.train.batch_size, cfg.train.steps),
                     "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
                     "flops_target": flops_t, "params_target": params_t,
                     "vs_target": (c.gflops / flops_t - 1 if flops_t else c.params / params_t - 1 if params_t else None),
                     "solved": tags.get(TAG_SOLVED, ""),
                     "role": tags.get(TAG_ROLE, ""), "baseline": tags.get(TAG_BASELINE, ""),
                     "matched_on": tags.get(TAG_MATCHED_ON, ""), "status": _status(store_path, job, h)})
    return rows


def _number(text: str | None) -> float | None:
    return float(text) if text else None


def _status(store: Path, job: Job, config_hash: str | None) -> str:
    if config_hash is None:
        return NO_DATA
    if not store.is_dir():
        return "new"
    return job_status(store, job).describe()  # the runner's view of the store: claims, progress, checkpoints


def totals(rows: Sequence[dict]) -> dict[str, Any]:
    out = {"jobs": len(rows), "train_gflops": sum(r["train_gflops"] for r in rows),
           "params_max": max((r["params"] for r in rows), default=0)}
    states: dict[str, int] = {}
    for r in rows:
        s = r["status"].split(" at ")[0].split(":")[0].split(" (")[0]  # 'partial at step 3/9' -> 'partial'
        states[s] = states.get(s, 0) + 1
    out["status"] = states
    if rows and "est_seconds" in rows[0]:
        known = [r["est_seconds"] for r in rows if r["est_seconds"] is not None]
        out["est_seconds"] = sum(known)
        out["not_measured"] = len(rows) - len(known)  # too large for this machine's memory
    return out


# -- measuring ---------------------------------------------------------------------------------------

BYTES_PER_PARAM = 20  # fp32 weights, gradients, two AdamW moments and the EMA copy


def measure_steps(jobs: Sequence[Job], steps: int = 3, max_batch: int = 64, budget_gflop: float = 60.0,
                  device: str | None = None) -> list[float | None]:
    """Seconds per training step of each job (at its global batch, on one process), in the jobs' order;
    None for a job whose weights, gradients and optimiser state would not fit in this machine's memory.

    Each distinct (architecture, objective, batch, precision) is timed once: a warm-up step, then
    `steps` timed steps of forward, loss, backward, clipping, AdamW and the EMA update on random data of
    the job's shape, at a micro-batch small enough that one step costs about `budget_gflop` GFLOP (at most
    `max_batch`), scaled linearly to the global batch. Evaluations, checkpoints, data loading and process
    start-up are not included. Nothing is written.
    """
    import torch  # heavy: only with `plan --measure`

    from fcdm.build import build_model, build_objective  # heavy (models, objectives): only with `plan --measure`

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    memory = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else \
        os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cache: dict[str, float | None] = {}
    out = []
    for job in jobs:
        cfg = job.config
        name, kwargs, shape = architecture(cfg)
        key = json.dumps([name, kwargs, shape, cfg.objective.name, cfg.train.batch_size, cfg.train.mixed_precision],
                         sort_keys=True, default=str)
        if key not in cache:
            c = cost(cfg)
            micro = max(1, min(cfg.train.batch_size, max_batch, int(budget_gflop / max(3 * c.gflops, 1e-9))))
            if c.params * BYTES_PER_PARAM > 0.6 * memory:  # an OOM kill would lose the whole plan
                cache[key] = None
            else:
                seconds = _time_steps(cfg, build_model(cfg).to(dev), build_objective(cfg), micro, steps, dev)
                cache[key] = seconds * cfg.train.batch_size / micro
        out.append(cache[key])
    return out


def add_estimates(rows: list[dict], jobs: Sequence[Job]) -> None:
    """Add each row's `est_seconds`: measured seconds per step x steps (None: too large for this machine)."""
    for row, seconds in zip(rows, measure_steps(jobs)):
        row["est_seconds"] = None if seconds is None else seconds * row["steps"]


def _time_steps(cfg, model, objective, batch: int, steps: int, dev) -> float:
    import torch  # heavy: only with `plan --measure`

    torch.manual_seed(0)
    c, h, w = cfg.data_shape
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            betas=cfg.train.betas)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.mixed_precision)
    if dev.type == "cpu" and dtype is torch.float16:
        dtype = None
    model.train()
    times = []
    for i in range(steps + 1):
        x = torch.randn(batch, c, h, w, device=dev)
        y = torch.randint(0, cfg.num_classes, (batch,), device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            t = objective.sample_t(batch, device=dev)
            loss = objective.training_losses(lambda xt, tt: model(xt, tt, y), x, t)["loss"].mean()
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - cfg.train.ema_decay)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step pays for allocation and kernel selection
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


# -- output ------------------------------------------------------------------------------------------

def profile_line(spec, chosen: str, asked: bool) -> str:
    """Which profile `plan` shows and why (`asked`: named by --profile), and the spec's other profiles."""
    how = "as asked" if asked else ("the spec's default_profile" if spec.default_profile else "the default")
    others = [p for p in spec.profiles if p != chosen]
    return f"{spec.name}: profile '{chosen}' ({how}" + (f"; others: {', '.join(others)})" if others else ")")


def compute(gflop: float) -> str:
    """Training compute with an SI prefix: 3.1e6 GFLOP -> '3.10 PFLOP'."""
    for unit, scale in (("EFLOP", 1e9), ("PFLOP", 1e6), ("TFLOP", 1e3)):
        if gflop >= scale:
            return f"{gflop / scale:.2f} {unit}"
    return f"{gflop:.2f} GFLOP"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def axes_text(axes: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
                     for k, v in axes.items())


def to_csv(rows: Sequence[dict]) -> str:
    cols = list(COLUMNS) + (["est_seconds"] if rows and "est_seconds" in rows[0] else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(r[k], separators=(",", ":")) if k == "axes" else
                         ("" if r.get(k) is None else r[k]) for k in cols})
    return buf.getvalue()


def to_json(rows: Sequence[dict], meta: dict) -> str:
    return json.dumps({**meta, "jobs": list(rows), "totals": totals(rows)}, indent=1)


def target_text(row: dict) -> str:
    """A matched row's deviation from its target, the target, and what was solved: '+1.1% of 0.003841 GFLOPs
    (hidden_size=24)' or '+1.6% of 371,012 params (...)'; '-' for a row not matched."""
    if row.get("flops_target") is not None:
        text = f"{row['vs_target']:+.1%} of {row['flops_target']:.4g} GFLOPs"
    elif row.get("params_target") is not None:
        text = f"{row['vs_target']:+.1%} of {row['params_target']:,.0f} params"
    else:
        return "-"
    return text + (f" ({row['solved'].replace(',', ', ')})" if row.get("solved") else "")


def pair_text(row: dict, spec_name: str) -> str:
    """The row's baseline and what they match on: 'dit (FLOPs)', 'baseline', 'reference' or '-'."""
    if row.get("role") in ("baseline", "reference"):
        return row["role"]
    if not row.get("baseline"):
        return "-"
    name = row["baseline"].removeprefix(f"{spec_name}/")
    return f"{name} ({row['matched_on'] or 'not matched'})"


def table(rows: Sequence[dict], title: str, spec_name: str = ""):
    """A rich Table of the rows with a totals line."""
    measured = bool(rows) and "est_seconds" in rows[0]
    matched = any(r["flops_target"] is not None or r.get("params_target") is not None for r in rows)
    paired = any(r.get("role") for r in rows)
    gridded = any(r["axes"] for r in rows)
    t = Table(title=title, show_footer=True)
    tot = totals(rows)
    cols = [("job", f"{tot['jobs']} jobs"), ("seed", ""), ("hash", ""), *([("axes", "")] if gridded else []),
            ("params (M)", ""), ("GFLOPs", ""), *([("vs target (solved)", "")] if matched else []),
            *([("compared with (matched on)", "")] if paired else []),
            ("train compute", compute(tot["train_gflops"])),
            *([("est. time", duration(tot["est_seconds"]) + (f" + {tot['not_measured']} too large here"
                                                              if tot["not_measured"] else ""))] if measured else []),
            ("status", ", ".join(f"{n} {s}" for s, n in tot["status"].items()))]
    for name, footer in cols:
        t.add_column(name, footer=footer, justify="right" if name in ("params (M)", "GFLOPs",
                                                                        "seed", "train compute", "est. time")
                     else "left", no_wrap=name == "job")  # a job's name is what `run` and `report` show: never cut
    for r in rows:
        cells = [r["name"], str(r["seed"]), (r["hash"] or NO_DATA)[:12], *([axes_text(r["axes"]) or "-"] if gridded else []),
                 f"{r['params'] / 1e6:.3g}", f"{r['gflops']:.4g}",
                 *([target_text(r)] if matched else []), *([pair_text(r, spec_name)] if paired else []),
                 compute(r["train_gflops"]),
                 *([duration(r["est_seconds"]) if r["est_seconds"] is not None else "too large here"] if measured else []),
                 r["status"]]
        t.add_row(*map(escape, cells))  # names and axis values are text, not rich markup
    return t


def print_table(rows: Sequence[dict], spec_name: str, profile: str) -> None:
    """The rows as a table on the terminal (at least 140 columns wide), and what a missing hash means."""
    title = f"{spec_name} ({profile}): GFLOPs per forward (batch 1); training compute = GFLOPs x 3 x batch x steps"
    Console(width=max(Console().width, 160)).print(table(rows, title, spec_name))
    if any(r["hash"] is None for r in rows):
        print(f"'{NO_DATA}': the hash covers the latent data's fingerprint; set --set data.path=... to a prepared "
              "dataset to see hashes and status")
