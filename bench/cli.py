"""Command-line latency: `fcdm-ablate --help` (goal < 0.3 s) and `fcdm-ablate plan` on every shipped spec and
profile (goal < 1 s each), as whole processes, against `python -c "import torch"` as a yardstick.

    python bench/cli.py --record          # 5 timed runs each (after one warm-up), medians; appended to RESULTS.md
    python bench/cli.py --repeats 11

Each command is started as a user would start it (`python -m fcdm.cli ...`, a fresh interpreter, output
discarded) against a store that does not exist (so `plan` reads no status files). Wall time is a
monotonic clock around the child; CPU time is the child's user + system time (resource.getrusage).
Before timing, the script waits while the 1-minute load average is above --max-load.
"""
import argparse
import datetime
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import add_common_args, load1, machine, record, wait_for_load

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HELP_GOAL_S, PLAN_GOAL_S = 0.3, 1.0


def timed(cmd: list[str], repeats: int) -> tuple[float, float, float, float]:
    """(median wall, min wall, max wall, median CPU) seconds of `repeats` runs after one warm-up."""
    walls, cpus = [], []
    for i in range(repeats + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-1000:]}")
        if i:  # the first run warms the file cache
            walls.append(wall)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), min(walls), max(walls), statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    add_common_args(p)
    args = p.parse_args()
    seen, waited = wait_for_load(args.max_load, args.max_wait)
    rows = []

    def row(what: str, cmd: list[str], goal: float | None) -> None:
        med, lo, hi, cpu = timed(cmd, args.repeats)
        verdict = "" if goal is None else ("meets" if med < goal else "MISSES")
        rows.append(f"| `{what}` | {med:.3f} ({lo:.3f}-{hi:.3f}) | {cpu:.3f} | {verdict} |")
        print(rows[-1], flush=True)

    row('python -c "import torch"', [PYTHON, "-c", "import torch"], None)
    row("fcdm-ablate --help", [PYTHON, "-m", "fcdm.cli", "--help"], HELP_GOAL_S)
    for spec in sorted((ROOT / "ablations").glob("*.yaml")):
        for profile in ("smoke", "paper"):
            row(f"fcdm-ablate plan ablations/{spec.name} --profile {profile}",
                [PYTHON, "-m", "fcdm.cli", "plan", str(spec), "--profile", profile, "--store", str(ROOT / "no-such-store")],
                PLAN_GOAL_S)
    after = load1()
    section = (f"\n## {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC - command-line latency\n\n"
               f"- Command: `python bench/cli.py --repeats {args.repeats} --record`\n- Machine: {machine()}\n"
               f"- 1-minute load average: {seen:.2f} before (waited {waited:.0f} s), {after:.2f} at the end\n\n"
               f"| command (fresh process, output discarded) | wall s, median (min-max) of {args.repeats} | CPU s, "
               f"median | goal (--help < {HELP_GOAL_S} s, plan < {PLAN_GOAL_S} s) |\n|---|---|---|---|\n"
               + "\n".join(rows) + "\n")
    print(section)
    if args.record:
        record(section)


if __name__ == "__main__":
    main()
