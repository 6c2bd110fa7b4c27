"""Sweep throughput: trials per hour of `ablations/sweep.yaml` (smoke profile) with 1 and 2 workers, and
the sweep machinery's own time per trial.

    python bench/sweep.py --trials 4 --record      # as recorded
    python bench/sweep.py --trials 2               # print only

Both settings train the same `--trials` configurations (drawn once with a seeded random sampler and
enqueued, so 1 and 2 workers do identical work), each in a fresh temporary store, with the median pruner
off (`none`: every trial trains to the end), exactly as `fcdm-ablate sweep --optuna --workers W` runs them:
each trial is a job trained by the runner in its own process (2 workers: one CPU thread each).

- trials/hour = trials / wall time of `execute` (all trials, from the first claim to the last result,
  plus the study's MLflow summary run);
- machinery overhead per trial = the trial's Optuna duration (start to complete) minus its job's own
  time as the runner measured it (launch of the trainer process to its exit, user attr `job_seconds`):
  suggesting, building the job (expand + FLOPs matching), the reuse check, claiming, watching for
  pruning, reading the objective from MLflow. Goal: under 2 s;
- fixed costs per sweep (not per trial): `prepare` (spec, search-space validation of every bound and
  choice, storage and study) and the summary (plots and the study run).
"""
import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, load1, machine, record, wait_for_load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "ablations" / "sweep.yaml"


def draw(trials: int, seed: int) -> list[dict]:
    """`trials` parameter sets of the spec's search space, from a seeded random sampler (Optuna-encoded)."""
    import optuna

    from fcdm.spec import load_spec
    from fcdm.spec.search import parse_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(SPEC)
    space = parse_search(spec.search, str(SPEC), "smoke", list(spec.profiles))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(trials):
        t = study.ask()
        space.suggest(t, {})
        out.append(dict(t.params))
        study.tell(t, 0.0)
    return out


def one(workers: int, params: list[dict]) -> dict:
    from fcdm.sweep.run import execute, prepare

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sweep = prepare(SPEC, profile="smoke", trials=len(params), pruner="none", store=tmp,
                        log=lambda line: print(f"  [{workers}w] {line}", flush=True))
        for p in params:
            sweep.study.enqueue_trial(p)
        t1 = time.perf_counter()
        summary = execute(sweep, workers=workers)
        t2 = time.perf_counter()
        trials = sweep.study.get_trials(deepcopy=False)
        if summary.interrupted or not all("job_seconds" in t.user_attrs for t in trials):
            raise SystemExit(f"interrupted, or a trial did not train to the end: {summary.counts}")
        overhead = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["job_seconds"]
                    for t in trials if "job_seconds" in t.user_attrs]
        return {"workers": workers, "trials": len(trials), "complete": summary.counts.get("COMPLETE", 0),
                "prepare_s": t1 - t0, "wall_s": t2 - t1, "per_hour": len(trials) / (t2 - t1) * 3600,
                "overhead_median": statistics.median(overhead), "overhead_max": max(overhead),
                "job_s_median": statistics.median(t.user_attrs["job_seconds"] for t in trials)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4, help="trials per setting")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random draw of configurations")
    add_common_args(ap)
    args = ap.parse_args()
    params = draw(args.trials, args.seed)
    load_before, waited = wait_for_load(args.max_load, args.max_wait)
    rows = [one(1, params), one(2, params)]
    load_after = load1()
    table = ["| workers | trials | wall (s) | trials/hour | job time per trial, median (s) | sweep overhead per trial, median / max (s) | prepare (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['workers']} | {r['trials']} ({r['complete']} complete) | {r['wall_s']:.1f} | {r['per_hour']:.1f} | "
                     f"{r['job_s_median']:.1f} | {r['overhead_median']:.2f} / {r['overhead_max']:.2f} | {r['prepare_s']:.1f} |")
    print("\n".join(table))
    if args.record:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        record(f"\n## {now} - sweep throughput (ablations/sweep.yaml, smoke profile)\n\n"
               f"- Command: `python bench/sweep.py --trials {args.trials} --record`\n"
               f"- Machine: {machine()}\n"
               f"- 1-minute load average: {load_before:.2f} before the run (waited {waited:.0f} s), "
               f"{load_after:.2f} at the end (the latter includes this benchmark)\n"
               f"- The same {args.trials} configurations (seeded random draw) for both settings, pruner none, "
               "fresh store each; overhead = Optuna trial duration - the job's own time (runner: trainer launch to exit)\n\n"
               + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
