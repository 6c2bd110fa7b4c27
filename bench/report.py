"""Time `fcdm-ablate report` on a synthetic store of 500 or 5,000 runs x 8 evaluations (goals: under 10 s
and under 30 s).

    python bench/report.py --record                        # 500 runs: build the store in a temp folder, time, record
    python bench/report.py --runs 5000 --store /tmp/r5000 --record   # 5,000 runs; keep (and reuse) the store

Steps:
1. A spec `bench_report` (written next to the store): kernel size {3, 5, 7, 9, 11} x width {8, 16, ...}
   (20 widths for 500 runs, 200 for 5,000), 5 seeds: 100 (1,000) configurations, baseline k=7; profile
   `smoke` (the digits smoke config).
2. `analysis.synthetic.build_store`: one FINISHED MLflow run per job with what the trainer records (tags,
   every config key as a param, loss / steps_per_sec / lr / train_gflops every 10 steps, FID, IS, KID,
   precision, recall, class consistency at 8 evaluation steps, a sample grid for each seed-0 run).
   Not timed: it stands in for days of training.
3. Time the CLI end to end, `fcdm-ablate report SPEC --store STORE` in a fresh process (imports, spec
   expansion, the MLflow read, tables in md/tex/csv, 4 figures in PNG + PDF, report.md/html, logging the
   report run), twice; then the same steps in-process one by one for the breakdown.
Before timing the script waits while the 1-minute load average is above `--max-load` and records it.
"""
import argparse
import datetime
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_common_args, load1, machine, record, wait_for_load

ROOT = Path(__file__).resolve().parent.parent
TARGETS_S = {500: 10.0, 5000: 30.0}
KERNELS, SEEDS = (3, 5, 7, 9, 11), (0, 1, 2, 3, 4)
EVAL_STEPS = [50, 100, 150, 200, 250, 300, 350, 400]


def widths(runs: int) -> list[int]:
    """The hidden sizes that make `runs` jobs with 5 kernel sizes and 5 seeds: 8, 16, ..."""
    return list(range(8, 8 * (runs // (len(KERNELS) * len(SEEDS))) + 1, 8))


def spec_text(runs: int) -> str:
    return f"""# {runs // len(SEEDS)} configurations x {len(SEEDS)} seeds: the report benchmark's spec (bench/report.py)
name: bench_report
base: {ROOT / 'ablations' / 'configs' / 'smoke.yaml'}
default_profile: smoke
axes:
  model.args.kernel_size: {list(KERNELS)}
  model.args.hidden_size: {widths(runs)}
seeds: {list(SEEDS)}
baseline: {{model.args.kernel_size: 7}}
profiles:
  smoke:
    eval.at: {EVAL_STEPS}
"""


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def build(store: Path, runs: int) -> tuple[Path, float]:
    """The spec file and the seconds it took to build the store (0 when reused)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic store is test support
    from synthetic import build_store

    from fcdm.spec import expand

    spec = store.parent / "bench_report.yaml"
    spec.write_text(spec_text(runs))
    if (store / "done").exists():
        return spec, 0.0
    jobs = expand(spec)
    assert len(jobs) == runs, (len(jobs), runs)
    t, _ = timed(build_store, store, jobs, EVAL_STEPS, grids=True, spec_experiment="bench_report")
    (store / "done").touch()
    return spec, t


def timed_cpu(fn, *args, **kwargs):
    """(wall seconds, CPU seconds of this process, result)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - w0, time.process_time() - c0, out


def import_cost() -> tuple[float, float]:
    """Wall and CPU seconds a fresh process spends importing what `report` imports."""
    code = "import fcdm.cli, fcdm.spec, analysis.specs, analysis.report, mlflow, matplotlib.pyplot"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def breakdown(spec: Path, store: Path) -> list[tuple[str, float, float]]:
    """In-process: each step of `report` on its own, (what, wall s, CPU s)."""
    from analysis.collect import collect_spec
    from analysis.mlflow_log import log_report
    from analysis.report import build_report

    rows = [("imports (python, torch, mlflow, pandas, scipy, matplotlib; a fresh process)", *import_cost())]
    uri = f"sqlite:///{store / 'mlflow.db'}"
    w, c, frame = timed_cpu(collect_spec, spec, None, uri)
    rows.append((f"expand the spec ({frame['job'].nunique()} configurations) + collect: MLflow read -> frame "
                 f"({len(frame)} rows x {frame.shape[1]} columns)", w, c))
    with tempfile.TemporaryDirectory() as tmp:
        w, c, rep = timed_cpu(build_report, frame, Path(tmp) / "r", "bench_report", "smoke")
        rows.append((f"tables + figures + report.md/html ({len(rep.files)} files)", w, c))
        w, c, _ = timed_cpu(log_report, rep, uri, store, "bench_report")
        rows.append(("log the report run's artifacts", w, c))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, help="store folder to build (or reuse); default: a temp folder")
    p.add_argument("--runs", type=int, choices=sorted(TARGETS_S), default=500, help="runs in the store")
    add_common_args(p)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = (args.store or Path(tmp) / "store").resolve()
        spec, build_s = build(store, args.runs)
        print(f"store: {store} (built in {build_s:.1f} s)" if build_s else f"store: {store} (reused)", flush=True)
        load_before, waited = wait_for_load(args.max_load, args.max_wait)
        cli, cpu = [], []
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "fcdm.cli", "report", str(spec), "--store", str(store)],
                                 capture_output=True, text=True, cwd=ROOT)
            cli.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU seconds (user + sys) of the report process: on a shared machine, wall time mostly measures
            # the other processes; the CPU time is the work the report itself did.
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if out.returncode:
                sys.exit(f"report failed ({out.returncode}):\n{out.stderr[-2000:]}")
            print(f"fcdm-ablate report: {cli[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU", flush=True)
        rows = breakdown(spec, store)
        for what, w, c in rows:
            print(f"  {what}: {w:.2f} s wall, {c:.2f} s CPU", flush=True)
        load_after = load1()
    best, best_cpu = min(cli), min(cpu)
    target = TARGETS_S[args.runs]
    verdict = "meets" if best < target else "misses"
    section = (f"\n## {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC - `report` on {args.runs} runs x 8 "
               f"evaluations\n\n"
               f"- Command: `python bench/report.py {' '.join(sys.argv[1:])}`\n"
               f"- Machine: {machine()}\n"
               f"- 1-minute load average: {load_before:.2f} before the run"
               f"{f' (after waiting {waited:.0f} s)' if waited else ''}, {load_after:.2f} at the end\n"
               f"- Store: {args.runs} FINISHED runs ({args.runs // len(SEEDS)} configurations x 5 seeds), "
               f"8 evaluations each, FID/IS/KID/precision/recall/class consistency, training metrics every 10 "
               f"steps, a sample grid per seed-0 run; SQLite"
               f"{f'; built in {build_s:.0f} s (not timed)' if build_s else ''}\n\n"
               f"| step | wall s | CPU s |\n|---|---|---|\n"
               f"| `fcdm-ablate report SPEC --store STORE`, fresh process (run 1; run 2) | "
               f"{cli[0]:.2f}; {cli[1]:.2f} | {cpu[0]:.2f}; {cpu[1]:.2f} |\n"
               + "".join(f"| {what} | {w:.2f} | {c:.2f} |\n" for what, w, c in rows)
               + f"\nEnd to end: **{best:.2f} s** wall (best of 2), {verdict} the {target:.0f} s goal; "
               f"{best_cpu:.2f} s of CPU time.\n")
    print(section)
    if args.record:
        record(section)


if __name__ == "__main__":
    main()
