"""Job runner: README command one (`fcdm-ablate run ablations/kernel_size.yaml`) end to end, how well it
packs the machine, and per-job start-up; optionally `--jobs 1`, `--jobs 2`, ... and the orchestration
overhead against training the same configs one after another.

    python bench/run.py --record                 # README command one, then its rerun; appended to RESULTS.md
    python bench/run.py --jobs 1 2 --sequential  # also `run --jobs N` and the sequential baseline
    python bench/run.py --set train.steps=60 --set eval.num_samples=100   # a scaled-down spec (busy machine)

Each measurement starts from an empty store (a temporary directory) and times, wall clock, a real
command in a subprocess, as a user would type it:

- README command one: `fcdm-ablate run ablations/kernel_size.yaml --store S --no-progress` (the runner's
  defaults: one job per core, longest first, cores handed to the last jobs, trainers forked from one
  process), then the same command again on the finished store (trains nothing);
- with `--jobs N`: the same with `--jobs N`; with `--sequential`: `fcdm-ablate train <job config> --store S
  --no-progress` for each job in turn, each with torch's default threads (all cores);
  overhead % = (run --jobs 1 / sequential - 1) * 100 (goal <= 5%).

From each job's train.log (the runner's header line when it asked for the job to start, then the
trainer's own timestamped lines) the script reads, per job: its start (the header), its first step, its
end (the last line), and its thread count over time (the start line's `N thread(s)`, each `threads: N
from step S` line). Then:

- per-job start-up, process start to first step: the trainer's own line "first step N s after the
  process started" (a forked trainer starts at its fork). Goal: < 3 s. Also shown: the runner's request
  (its header line) to the first step, which for the first jobs includes waiting for the trainer server's
  one-off imports (and for the second, for the first job's fork);
- packing efficiency = sum over jobs of threads x seconds / (cores x wall of the command). Goal: >= 0.9;
- wall time of README command one. Goal: < 270 s on 2 cores (220 s stretch goal).

Before timing, the script waits while the 1-minute load average is above --max-load (bench/_common.py).
"""
import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_common_args, load1, machine, record, wait_for_load

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "ablations" / "kernel_size.yaml"
CLI = [sys.executable, "-m", "fcdm.cli"]
_HEADER = re.compile(r"^=== (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) ")
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\] (.*)$")


def _timed(cmd: list[str], cwd=ROOT) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return wall, done.stdout


def _time(text: str) -> float:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.datetime.strptime(text, fmt).timestamp()


def job_timeline(log: Path) -> dict:
    """start, first step, end (unix times) and [(time, threads)] of the last start of a job in its log."""
    lines = log.read_text(errors="replace").split("\n=== ")[-1].splitlines()
    out = {"start": _time(_HEADER.match("=== " + lines[0]).group(1)), "first": None, "end": None, "threads": [],
           "process": None}
    for ln in lines[1:]:
        m = _STAMP.match(ln)
        if not m:
            continue
        t, text = _time(m.group(1)), m.group(2)
        out["end"] = t
        if text.startswith("start ") and (n := re.search(r"(\d+) thread\(s\)", text)):
            out["threads"].append((out["start"], int(n.group(1))))
        elif text.startswith("first step"):
            out["first"], out["process"] = t, float(text.split()[2])
        elif text.startswith("threads: "):
            out["threads"].append((t, int(text.split()[1])))
    return out


def thread_seconds(job: dict) -> float:
    """Sum of threads x seconds from the job's start to its end."""
    marks = job["threads"] + [(job["end"], 0)]
    return sum(n * (marks[i + 1][0] - t) for i, (t, n) in enumerate(marks[:-1]))


def readme_command(spec: Path, profile: str | None, sets: list[str], jobs: int | None) -> dict:
    """Run the spec in a fresh store (and again, finished); the wall times and each job's timeline."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        cmd = [*CLI, "run", str(spec), "--store", str(store), "--no-progress"]
        cmd += ["--jobs", str(jobs)] if jobs else []
        cmd += ["--profile", profile] if profile else []
        cmd += [a for kv in sets for a in ("--set", kv)]
        wall, out = _timed(cmd)
        rerun, _ = _timed(cmd)
        logs = sorted(p for p in (store / "jobs").glob("*/train.log"))
        timelines = {p.parent.name: job_timeline(p) for p in logs}
        names = {p.parent.name: next((ln.split("start ", 1)[1].split(" (hash")[0] for ln in p.read_text().splitlines()
                                      if "] start " in ln), p.parent.name) for p in logs}
    cores = len(os.sched_getaffinity(0))
    busy = sum(thread_seconds(t) for t in timelines.values())
    return {"wall": wall, "rerun": rerun, "cores": cores, "efficiency": busy / (cores * wall), "busy": busy,
            "jobs": [(names[k], t["end"] - t["start"], t["process"], t["first"] - t["start"], thread_seconds(t),
                      "; ".join(f"{n}@{t_ - t['start']:.0f}s" for t_, n in t["threads"]))
                     for k, t in sorted(timelines.items(), key=lambda kv: kv[1]["start"])],
            "summary": out.strip().splitlines()}


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


def report(res: dict, title: str) -> str:
    rows = ["| job (in start order) | seconds (runner's start to end) | start-up: process start to first step (s) | "
            "runner's request to first step (s) | thread-seconds | threads from its start |", "|---|---|---|---|---|---|"]
    rows += [f"| {n} | {s:.1f} | {p:.2f} | {f:.2f} | {ts:.1f} | {th} |" for n, s, p, f, ts, th in res["jobs"]]
    process, request = [j[2] for j in res["jobs"]], [j[3] for j in res["jobs"]]
    return (f"{title}: **{res['wall']:.1f} s** wall, packing efficiency **{res['efficiency']:.3f}** "
            f"({res['busy']:.0f} thread-seconds on {res['cores']} cores in {res['wall']:.1f} s; goal >= 0.9), "
            f"per-job start-up **{min(process):.2f}-{max(process):.2f} s** from process start to first step "
            f"(goal < 3 s; {min(request):.2f}-{max(request):.2f} s from the runner's request); rerun (all "
            f"finished) {res['rerun']:.1f} s.\n\n" + "\n".join(rows) + "\n\nSummary printed by the run:\n\n```\n"
            + "\n".join(res["summary"][-12:]) + "\n```\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--profile", default=None, help="spec profile (default: the spec's default)")
    parser.add_argument("--jobs", type=int, nargs="*", default=[], help="also time `run --jobs N` for these N")
    parser.add_argument("--sequential", action="store_true", help="also time the sequential `train` baseline")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="override in every job, as run --set")
    add_common_args(parser)
    args = parser.parse_args()

    seen, waited = wait_for_load(args.max_load, args.max_wait)
    print(f"machine: {machine()}\nload before timing: {seen:.2f} (waited {waited:.0f} s)", flush=True)
    sections = []
    res = readme_command(args.spec, args.profile, args.sets, None)
    sections.append(report(res, f"`fcdm-ablate run {args.spec.relative_to(ROOT) if args.spec.is_relative_to(ROOT) else args.spec}`"))
    print(sections[-1], flush=True)
    for n in args.jobs:
        res = readme_command(args.spec, args.profile, args.sets, n)
        sections.append(report(res, f"`... --jobs {n}`"))
        print(sections[-1], f"(load {load1():.2f})", flush=True)
    if args.sequential:
        seq = sequential(args.spec, args.profile, args.sets)
        sections.append(f"Sequential `fcdm-ablate train` per job (all cores each): {seq:.1f} s.\n")
        print(sections[-1], flush=True)
    after = load1()
    if args.record:
        sets = "".join(f" --set {kv}" for kv in args.sets)
        record(f"\n## {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC - job runner: {args.spec.name} "
               f"({args.profile or 'default profile'})\n\n- Command: `python bench/run.py{sets}"
               f"{' --jobs ' + ' '.join(map(str, args.jobs)) if args.jobs else ''}"
               f"{' --sequential' if args.sequential else ''} --record`\n- Machine: {machine()}\n"
               f"- 1-minute load average: {seen:.2f} before (waited {waited:.0f} s), {after:.2f} at the end "
               f"(the latter includes this benchmark)\n\n" + "\n".join(sections))


if __name__ == "__main__":
    main()
