"""Job runner: wall time of the kernel-size smoke ablation with `--jobs 1`, `--jobs 2`, ..., and the
orchestration overhead of `fcdm-ablate run` against training the same configs one after another.

    python bench/run.py                      # jobs 1 and 2, one repeat, print only
    python bench/run.py --jobs 1 2 3 --record
    python bench/run.py --set train.steps=60 --set eval.num_samples=100   # a scaled-down spec (busy machine)

Each measurement starts from an empty store (a temporary directory) and times, wall clock, a real
command in a subprocess, as a user would type it:

- sequential: `fcdm-ablate train <job config> --store S --no-progress` for each of the spec's jobs
  in turn (the same configs `run` writes to `<store>/jobs/<key>/config.yaml`), each process with
  torch's default threads (all cores);
- run: `fcdm-ablate run ablations/kernel_size.yaml --store S --no-progress --jobs N`;
- rerun: the same `run` command again on the finished store (trains nothing; acceptance < 15 s).

Overhead % = (run --jobs 1 / sequential - 1) * 100 (goal <= 5%): `--jobs 1` gives its one job all
cores, like the sequential loop, so the difference is the runner itself (expansion, claims, MLflow
set-up, the live view, polling). Before timing, the script waits while the 1-minute load average is
above --max-load (see bench/_common.py).
"""
import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_common_args, load1, machine, record, wait_for_load

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "ablations" / "kernel_size.yaml"
CLI = [sys.executable, "-m", "fcdm.cli"]


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall


def sequential(spec: Path, profile: str | None, sets: list[str]) -> float:
    """`fcdm-ablate train` for each job, one after another, in a fresh store."""
    from fcdm.spec import expand

    jobs = expand(spec, profile, sets)
    with tempfile.TemporaryDirectory() as tmp:
        configs = []
        for i, job in enumerate(jobs):
            path = Path(tmp) / f"job{i}.yaml"
            path.write_text(job.config.to_yaml())
            configs.append(path)
        t0 = time.perf_counter()
        for path in configs:
            _timed([*CLI, "train", str(path), "--store", str(Path(tmp) / "store"), "--no-progress"])
        return time.perf_counter() - t0


def run(spec: Path, profile: str | None, jobs: int, sets: list[str]) -> tuple[float, float]:
    """(wall of `run --jobs N` in a fresh store, wall of the rerun that finds everything finished)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*CLI, "run", str(spec), "--store", str(Path(tmp) / "store"), "--no-progress", "--jobs", str(jobs)]
        cmd += ["--profile", profile] if profile else []
        cmd += [a for kv in sets for a in ("--set", kv)]
        return _timed(cmd), _timed(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--profile", default=None, help="spec profile (default: the spec's default)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="--jobs values to time")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-sequential", action="store_true", help="skip the sequential baseline")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="override in every job, as run --set")
    add_common_args(parser)
    args = parser.parse_args()

    seen, waited = wait_for_load(args.max_load, args.max_wait)
    print(f"machine: {machine()}\nload before timing: {seen:.2f} (waited {waited:.0f} s)")
    rows = []
    for rep in range(args.repeats):
        if not args.no_sequential:
            rows.append(("sequential `fcdm-ablate train` x jobs", rep, sequential(args.spec, args.profile, args.sets), None))
            print(f"  repeat {rep}: sequential {rows[-1][2]:.1f} s (load {load1():.2f})")
        for n in args.jobs:
            wall, rerun = run(args.spec, args.profile, n, args.sets)
            rows.append((f"`fcdm-ablate run --jobs {n}`", rep, wall, rerun))
            print(f"  repeat {rep}: run --jobs {n}: {wall:.1f} s, rerun {rerun:.1f} s (load {load1():.2f})")

    def median(name):
        vals = sorted(r[2] for r in rows if r[0] == name)
        return vals[len(vals) // 2] if vals else None

    names = list(dict.fromkeys(r[0] for r in rows))
    seq, one = median(names[0]) if not args.no_sequential else None, median("`fcdm-ablate run --jobs 1`")
    lines = ["| what | wall (s, median) | rerun, all finished (s) | vs sequential |", "|---|---|---|---|"]
    for name in names:
        reruns = sorted(r[3] for r in rows if r[0] == name and r[3] is not None)
        rel = f"{median(name) / seq:.3f}x" if seq else ""
        lines.append(f"| {name} | {median(name):.1f} | {reruns[len(reruns) // 2]:.1f} | {rel} |" if reruns
                     else f"| {name} | {median(name):.1f} | | {rel} |")
    table = "\n".join(lines)
    overhead = f"orchestration overhead (run --jobs 1 vs sequential): {(one / seq - 1) * 100:+.1f}%" if seq and one else ""
    print(table + "\n" + overhead)
    if args.record:
        sets = "".join(f" --set {kv}" for kv in args.sets)
        record(f"\n## Job runner: {args.spec.name} ({args.profile or 'default profile'}), "
               f"{datetime.date.today()}\n\n`python bench/run.py --jobs {' '.join(map(str, args.jobs))} --repeats "
               f"{args.repeats}{sets}`; {machine()}; load before timing {seen:.2f}; one fresh store per command.\n\n"
               f"{table}\n\n{overhead}\n")


if __name__ == "__main__":
    main()
