"""Evaluation time: 1,000 digits samples with 50 sampling steps, measured end to end, on this machine's CPUs.

    python bench/eval.py --record                 # train the smoke config into a temp store, time, append to RESULTS.md
    python bench/eval.py --store runs             # reuse a store that already holds the finished smoke run

Steps:
1. Train ablations/configs/smoke.yaml to its end with `fcdm.train.train` (with `eval.at=[]`, so no
   evaluation runs during training and the metric caches stay cold; the run's `eval.metrics` keep their
   default, fid + is + kid + prc, which `evaluate_run` measures). An already finished run is skipped.
2. Time `fcdm.evaluate.evaluate_run(run_id, store, num_samples=N, sampling_steps=S)` twice: the first
   call trains the digits classifier (the feature extractor, cached under <store>/cache) and computes the
   reference (digits-test) features for torch-fidelity's cache; the second finds both cached. Both
   include opening the run (MLflow look-up, checkpoint load) and logging the metrics. torch-fidelity is
   imported first (its one-time import is shown on its own row).
3. Breakdown: `sample_images` (the run's protocol: Euler, guidance 2.0 so two model evaluations per
   step, batch 256) twice, and `measure` twice on those samples with a fresh cache directory, so the first
   `measure` is cold (classifier training + reference features) and the second warm. The classifier
   training alone is also timed (`ensure_digits_classifier` on another empty directory).

The target (issue) is < 60 s for the end-to-end evaluation. Before timing the script waits while the
1-minute load average is above `--max-load` (checks every 30 s, up to `--max-wait` s) and records it.

    python bench/eval.py --generator-overhead     # per-sample noise generators vs one per batch

`--generator-overhead` times `generate` (one generator per sample, seeded by (seed, global index), so
samples do not depend on batch size or process count) against the same loop with one generator per
batch, on the smoke architecture (freshly initialised: the cost does not depend on the weights),
`--num-samples` samples x `--sampling-steps` steps, batch 256, guidance 2.0, for `euler` (noise drawn once) and `euler-sde` (noise at every step,
the worst case). Interleaved repetitions, the fastest of each kept. Target (issue 7): under 2%.
"""
import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

from _common import add_common_args, load1, machine, record, wait_for_load

from fcdm.config import load_config
from fcdm.evaluation.evaluate import evaluate_run, make_decoder, measure
from fcdm.evaluation.protocol import Protocol
from fcdm.evaluation.sampling import sample_images
from fcdm.train import train

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "ablations" / "configs" / "smoke.yaml"
TARGET_S = 60.0


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def bench(store: Path, num_samples: int, steps: int, log) -> tuple[list[tuple[str, float, str]], dict]:
    """Rows (what, seconds, note) and the metrics of the last evaluation."""
    from fcdm.evaluation.trained import open_run

    rows = []
    already = "fcdm.metrics" in sys.modules
    t, _ = timed(__import__, "fcdm.metrics")
    rows.append(("import fcdm.metrics (torch-fidelity)", t, "already imported" if already else
                 "once per process, before everything else; not in the timed calls below"))
    log(rows[-1])
    cfg = load_config(SMOKE, overrides=["eval.at=[]"])
    t, res = timed(train, cfg, store=store, progress=False)
    rows.append((f"train smoke config ({cfg.train.steps} steps; {res.status})", t, "not part of the target"))
    log(rows[-1])

    from fcdm.metrics.digits_classifier import ensure_digits_classifier, weights_path

    run_id = open_run(f"{cfg.name}-{cfg.hash[:8]}-s{cfg.seed}", store).run_id if res.run_id is None else res.run_id
    values = {}
    for i in range(2):
        state = "warm" if weights_path(store / "cache").is_file() else "cold"
        t, (values, _) = timed(evaluate_run, run_id, store, num_samples=num_samples, sampling_steps=steps,
                               progress=False)
        note = ("cold: digits classifier trained + reference features computed" if state == "cold"
                else "warm: classifier and reference features cached")
        rows.append((f"evaluate_run #{i + 1} (end to end)", t, note))
        log(rows[-1])

    trained = open_run(run_id, store)
    proto = Protocol.from_config(trained.config, num_samples=num_samples, sampling_steps=steps)
    images = labels = None
    for i in range(2):
        t, (images, labels) = timed(sample_images, trained.ema, trained.objective, trained.shape,
                                    trained.num_classes, proto, trained.config.eval.batch_size, "cpu",
                                    make_decoder(proto.vae, "cpu"))
        rows.append((f"sample_images #{i + 1}", t, f"{proto.sampler}, {proto.sampling_steps} steps, guidance "
                     f"{proto.cfg_scale:g}, batch {trained.config.eval.batch_size}"))
        log(rows[-1])
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as cache2:
        for i in range(2):
            t, _ = timed(measure, images, labels, proto, trained.config.eval.metrics, Path(cache))
            rows.append((f"measure #{i + 1} ({', '.join(trained.config.eval.metrics)} + class consistency)", t,
                         "cold: fresh cache (classifier training + reference features)" if i == 0 else "warm cache"))
            log(rows[-1])
        t, _ = timed(ensure_digits_classifier, Path(cache2))
        rows.append(("of which: digits classifier training alone", t, "ensure_digits_classifier, empty cache"))
        log(rows[-1])
    return rows, values


def generator_overhead(num_samples: int, steps: int, repeats: int, log) -> list[tuple[str, float, str]]:
    """Rows (what, seconds, note): per-sample vs per-batch generators, and the overhead in percent."""
    import torch

    from fcdm.build import build_model, build_objective
    from fcdm.diffusion import guided_model_fn, sample
    from fcdm.diffusion.common import randn
    from fcdm.evaluation.sampling import generate, sample_generators, spread_labels

    cfg = load_config(SMOKE)
    model, objective = build_model(cfg).eval(), build_objective(cfg)
    labels, batch, shape = spread_labels(num_samples, cfg.num_classes), cfg.eval.batch_size, cfg.data_shape
    guidance = dict(cfg_scale=cfg.eval.cfg_scale, guided_channels=cfg.eval.guided_channels)

    @torch.no_grad()
    def one_per_batch(sampler):
        for i in range(0, len(labels), batch):
            y = labels[i:i + batch]
            fn = guided_model_fn(model, y, null_class=cfg.num_classes, **guidance)
            sample(objective, fn, (len(y), *shape), sampler, steps, generator=torch.Generator().manual_seed(i))

    def one_per_sample(sampler):
        generate(model, objective, shape, labels, sampler=sampler, num_steps=steps, batch_size=batch, **guidance)

    def draws(generators, n):  # the noise a stochastic sampler draws: one (batch, C, H, W) tensor per step
        for _ in range(n):
            randn((batch, *shape), generators, torch.device("cpu"))

    rows = []
    for sampler in ("euler", "euler-sde"):
        best = {one_per_batch: float("inf"), one_per_sample: float("inf")}
        for _ in range(repeats):
            for fn in best:
                t, _ = timed(fn, sampler)
                best[fn] = min(best[fn], t)
        base, per = best[one_per_batch], best[one_per_sample]
        note = f"{num_samples} samples x {steps} steps, batch {batch}, guidance {cfg.eval.cfg_scale:g}"
        rows += [(f"{sampler}: one generator per batch", base, note),
                 (f"{sampler}: one generator per sample", per, note),
                 (f"{sampler}: difference", per - base, f"{100 * (per - base) / base:+.2f}% (end to end; noisy "
                                                        "under load)")]
        for row in rows[-3:]:
            log(row)
    # The extra work alone, timed without the model around it: euler-sde draws noise at every step.
    n_draws = -(-num_samples // batch) * (steps + 1)
    single = torch.Generator().manual_seed(0)
    t_single = min(timed(draws, single, n_draws)[0] for _ in range(repeats))
    t_rows = min(timed(draws, sample_generators(0, range(batch)), n_draws)[0] for _ in range(repeats))
    t_make = min(timed(sample_generators, 0, range(num_samples))[0] for _ in range(repeats))
    extra = t_rows - t_single + t_make
    rows += [(f"{n_draws} noise draws of ({batch}, {', '.join(map(str, shape))}), one generator", t_single, ""),
             (f"{n_draws} noise draws, one generator per row", t_rows, ""),
             (f"creating {num_samples} seeded generators", t_make, ""),
             ("euler-sde: extra work of per-sample generators", extra,
              f"{100 * extra / best[one_per_batch]:.2f}% of its sampling time (one generator per batch)")]
    for row in rows[-4:]:
        log(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=1000, help="samples to evaluate (default 1000)")
    p.add_argument("--sampling-steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--store", type=Path, help="store to train into / reuse (default: a fresh temporary one)")
    p.add_argument("--generator-overhead", action="store_true",
                   help="only time per-sample against per-batch noise generators")
    p.add_argument("--repeats", type=int, default=3, help="--generator-overhead: interleaved repetitions (default 3)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice); on a shared machine 1 is "
                   "steadier")
    add_common_args(p)
    args = p.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    load_before, waited = wait_for_load(args.max_load, args.max_wait)
    started = datetime.datetime.now().astimezone()
    log = lambda row: print(f"  {row[0]}: {row[1]:.2f} s ({row[2]})", file=sys.stderr)
    if args.generator_overhead:
        rows = generator_overhead(args.num_samples, args.sampling_steps, args.repeats, log)
        body = "| what | seconds | note |\n|---|---|---|\n" + "\n".join(f"| {w} | {s:.2f} | {n} |" for w, s, n in rows)
        print(body)
        if args.record:
            command = "python bench/eval.py " + " ".join(sys.argv[1:])
            record(f"\n## {started:%Y-%m-%d %H:%M %Z} - per-sample noise generators vs one per batch\n\n"
                   f"- Command: `{command.strip()}`\n- Machine: {machine()}\n"
                   f"- 1-minute load average: {load_before:.2f} before, {load1():.2f} after\n\n" + body + "\n")
        return
    if args.store:
        rows, values = bench(args.store.resolve(), args.num_samples, args.sampling_steps, log)
    else:
        with tempfile.TemporaryDirectory() as store:
            rows, values = bench(Path(store), args.num_samples, args.sampling_steps, log)
    load_after = load1()

    e2e = [s for what, s, _ in rows if what.startswith("evaluate_run")]
    body = "| step | seconds | note |\n|---|---|---|\n" + "\n".join(f"| {w} | {s:.2f} | {n} |" for w, s, n in rows)
    body += (f"\n\nEnd-to-end evaluation of {args.num_samples} samples x {args.sampling_steps} steps: "
             f"**{e2e[0]:.1f} s cold, {e2e[1]:.1f} s warm** (target < {TARGET_S:g} s: "
             f"{'met' if max(e2e) < TARGET_S else 'not met'}). Metrics of the last evaluation: "
             + ", ".join(f"{k} {v:.4g}" for k, v in values.items()) + ".")
    print(body)
    if args.record:
        command = "python bench/eval.py " + " ".join(sys.argv[1:])
        section = (f"\n## {started:%Y-%m-%d %H:%M %Z} - evaluation time, {args.num_samples} digits samples x "
                   f"{args.sampling_steps} steps\n\n"
                   f"- Command: `{command.strip()}`\n- Machine: {machine()}\n"
                   f"- 1-minute load average: {load_before:.2f} before the run"
                   + (f" (after waiting {waited:.0f} s for it to drop below {args.max_load})" if waited else "")
                   + f", {load_after:.2f} at the end (the latter includes this benchmark)\n"
                   "- Run: smoke config trained to its end with eval.at=[] (caches cold), then "
                   "`evaluate_run(run_id, store, num_samples, sampling_steps)` twice, then `sample_images` and "
                   "`measure` separately, twice each.\n\n" + body + "\n")
        record(section)


if __name__ == "__main__":
    main()
