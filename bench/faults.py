"""Fault injection: two runners on one small spec, SIGKILLs of runners and trainers at chosen moments,
restarts, then what must hold: every job FINISHED exactly once in MLflow, no two trainers ever held one job
at once (the lock's own record, lock.log), no claim or temporary file left, and final weights equal to an
uninterrupted run's bit for bit. tests/runner/test_faults.py runs a few kills; this script runs more.

    python bench/faults.py --kills 30 --seed 0      # prints kills survived, jobs trained twice, runs left RUNNING

Moments: mid-step (a trainer past a seeded step), mid-checkpoint (a checkpoint's temporary file exists: a
`sitecustomize` put on the trainers' path makes each checkpoint's fsync sleep, so the window is real),
mid-evaluation (its checkpoint written, its evaluation not yet logged). Targets: the trainer itself, or the
runner that started it (its trainers then get SIGTERM from the kernel and checkpoint). A killed runner is
started again at once; the runs end when every job finished. Each runner is pinned to its own core (one
thread per job, no threads handed over), so results are bitwise reproducible; the reference is the same
spec run once without faults.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "ablations" / "configs" / "smoke.yaml"
MOMENTS = ("step", "checkpoint", "evaluation")
TARGETS = ("trainer", "runner")
# Three tiny jobs, each a few seconds on one core: evaluations halfway and at the end (sampling only).
PROFILE = {"model.args.hidden_size": 8, "model.args.depth": [1, 0, 1, 0, 1], "train.batch_size": 16,
           "train.steps": 120, "log.every": 5, "log.checkpoint_every": 10, "eval.at": [0.5, 1.0],
           "eval.grid_per_class": 1, "eval.sampling_steps": 8, "eval.num_samples": 256, "eval.metrics": ["kid"]}
KERNELS = (3, 5, 7)
HOOK = textwrap.dedent('''
    """Fault injection (bench/faults.py): each checkpoint's fsync sleeps, so a kill can land mid-write."""
    import os
    _delay = float(os.environ.get("FCDM_FAULT_SLOW_CHECKPOINT_S") or 0)
    if _delay:
        import time
        _fsync = os.fsync

        def fsync(fd):
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                name = ""
            if "/.step_" in name and name.endswith(".tmp"):
                time.sleep(_delay)
            return _fsync(fd)
        os.fsync = fsync
''')


def write_spec(directory: Path, steps: int | None = None) -> Path:
    import yaml

    profile = {**PROFILE, **({"train.steps": steps} if steps else {})}
    spec = {"name": "faults", "base": str(SMOKE), "profiles": {"smoke": profile},
            "axes": {"model.args.kernel_size": list(KERNELS)}}
    path = directory / "faults.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def jobs_of(spec: Path):
    from fcdm.spec import expand

    return expand(spec, "smoke")


def start_runner(spec: Path, store: Path, core: int, hooks: Path, log: Path) -> subprocess.Popen:
    """`fcdm-ablate run SPEC --jobs 1` pinned to one core, its output appended to `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "FCDM_FAULT_SLOW_CHECKPOINT_S": "0.4", "FCDM_LOCK_WAIT_S": "20"}
    with open(log, "ab") as out:
        return subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m", "fcdm.cli", "run", str(spec),
                                 "--store", str(store), "--jobs", "1", "--no-progress"], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _progress(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def trainer_pid(ckpt: Path) -> int | None:
    """The pid of the trainer holding the job's lock now, None when none does."""
    from fcdm.store.lock import TrainerLock, trainer_lock_held

    if not trainer_lock_held(ckpt):
        return None
    holder = TrainerLock(ckpt).holder() or {}
    return holder.get("pid") if holder.get("role") == "trainer" else None


def in_moment(moment: str, ckpt: Path, at_step: int) -> bool:
    side = _progress(ckpt)
    if side.get("status") != "running":
        return False
    if moment == "step":
        return side.get("step", 0) >= at_step
    if moment == "checkpoint":
        return any(p.name.startswith(".step_") and p.name.endswith(".tmp") for p in ckpt.iterdir())
    step, done = side.get("step", 0), set(side.get("evals_done") or [])
    return step in (side.get("evals_due") or []) and step not in done  # checkpointed, evaluation not logged


def ancestor_in(pid: int, candidates: dict[int, object]) -> int | None:
    """The first of `candidates` among pid's ancestors (a trainer's runner: trainer -> fork server -> runner)."""
    for _ in range(8):
        if pid in candidates:
            return pid
        try:
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


@dataclass
class Campaign:
    """Two runners on one store, kills by a seeded schedule, restarts; `events` says what was done."""
    spec: Path
    store: Path
    hooks: Path
    reference: Path
    seed: int = 0
    runners: dict = field(default_factory=dict)  # pid -> (Popen, core)
    events: list = field(default_factory=list)

    def __post_init__(self):
        from fcdm.store.layout import checkpoint_dir

        self.jobs = jobs_of(self.spec)
        self.ckpts = [checkpoint_dir(self.store, j.config) for j in self.jobs]
        self.log = self.store.parent / f"{self.store.name}-runners.log"
        self.rng = random.Random(self.seed)
        self.rounds: list[dict] = []  # the figures of each finished round but the last

    def ensure_runners(self) -> None:
        """Two runners while any job is unfinished (a runner that exited is started again)."""
        for pid, (proc, core) in list(self.runners.items()):
            if proc.poll() is not None:
                del self.runners[pid]
        if self.all_finished():
            return
        for core in (0, 1):
            if core not in [c for _, c in self.runners.values()]:
                proc = start_runner(self.spec, self.store, core, self.hooks, self.log)
                self.runners[proc.pid] = (proc, core)

    def all_finished(self) -> bool:
        return all(_progress(c).get("status") == "finished" for c in self.ckpts)

    def kill_once(self, moment: str, target: str, timeout: float) -> bool:
        """Wait for a trainer in `moment`, SIGKILL it or its runner; False when none came in time."""
        at_step = self.rng.randrange(3, PROFILE["train.steps"] - 10)
        deadline = time.time() + timeout
        while time.time() < deadline and not self.all_finished():
            self.ensure_runners()
            for i in self.rng.sample(range(len(self.jobs)), len(self.jobs)):
                pid = trainer_pid(self.ckpts[i])
                if pid is None or not in_moment(moment, self.ckpts[i], at_step):
                    continue
                if moment == "step":  # land between two checkpoints, not at one
                    time.sleep(self.rng.uniform(0.0, 0.3))
                    if trainer_pid(self.ckpts[i]) != pid:
                        continue
                victim = pid if target == "trainer" else ancestor_in(pid, self.runners)
                if victim is None:
                    continue
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.events.append({"moment": moment, "target": target, "job": self.jobs[i].label, "pid": victim,
                                    "step": _progress(self.ckpts[i]).get("step"), "round": len(self.rounds)})
                return True
            time.sleep(0.01)
        return False

    def finish(self, timeout: float) -> None:
        """Keep two runners going until every job finished and both exited."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.ensure_runners()
            if self.all_finished() and not self.runners:
                return
            time.sleep(0.2)
        for proc, _ in self.runners.values():
            proc.kill()
        raise TimeoutError(f"jobs unfinished after {timeout:.0f} s; see {self.log}")

    def run(self, kills: int, timeout: float = 900) -> None:
        plan = [(MOMENTS[k % len(MOMENTS)], TARGETS[k % len(TARGETS)]) for k in range(kills)]  # 6 kills: all pairs
        deadline = time.time() + timeout
        for moment, target in plan:
            if self.all_finished():  # start another round: the schedule is longer than one pass over the jobs
                self.finish(max(1.0, deadline - time.time()))
                self.restart_round()
            self.kill_once(moment, target, timeout=max(1.0, min(120.0, deadline - time.time())))
        self.finish(max(1.0, deadline - time.time()))

    def restart_round(self) -> None:
        """Train the spec again from nothing in a new store, keeping the figures of the finished round."""
        self.rounds.append(check(self.store, self.jobs, self.reference))
        shutil.rmtree(self.store)
        self.store.mkdir()


def reference_run(spec: Path, store: Path, hooks: Path) -> None:
    """The spec once, without faults, on one core."""
    proc = start_runner(spec, store, 0, hooks, store.parent / f"{store.name}-runner.log")
    if proc.wait(timeout=900) != 0:
        raise RuntimeError(f"the reference run failed; see {store.parent / f'{store.name}-runner.log'}")


def lock_overlaps(ckpt: Path) -> list[str]:
    """Two trainers holding one run at once, by lock.log: an acquire while the previous holder neither
    released nor had ended, or naming another previous holder than the last one recorded."""
    from fcdm.store.lock import read_lock_log

    problems, holder = [], None
    for e in read_lock_log(ckpt):
        if e["event"] == "acquire":
            if holder is not None and e.get("previous_running") is not False:
                problems.append(f"pid {e['pid']} acquired while pid {holder} held it ({e.get('previous_running')})")
            if holder is not None and (e.get("previous") or {}).get("pid") != holder:
                problems.append(f"pid {e['pid']} found pid {(e.get('previous') or {}).get('pid')}, not {holder}")
            holder = e["pid"]
        elif e["event"] == "release" and e["pid"] == holder:
            holder = None
    return problems


def check(store: Path, jobs, reference: Path) -> dict:
    """The figures of one store against the reference: runs per job and their status, lock overlaps,
    leftover claims and temporary files, weights equal bit for bit."""
    import torch
    from mlflow import MlflowClient

    from fcdm.store import claims
    from fcdm.store.checkpoints import load_latest
    from fcdm.store.layout import checkpoint_dir

    c = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    by_key = {}
    for r in runs:
        by_key.setdefault(f"{r.data.tags['fcdm.config_hash']}-s{r.data.tags['fcdm.seed']}", []).append(r)
    out = {"jobs": len(jobs), "finished_once": 0, "trained_twice": 0, "left_running": 0, "weights_equal": 0,
           "lock_overlaps": [], "live_claims": 0, "temp_files": []}
    for j in jobs:
        mine = by_key.get(j.key, [])
        out["finished_once"] += len(mine) == 1 and mine[0].info.status == "FINISHED"
        out["left_running"] += sum(r.info.status == "RUNNING" for r in mine)
        overlaps = lock_overlaps(checkpoint_dir(store, j.config))
        out["trained_twice"] += len(mine) > 1 or bool(overlaps)
        out["lock_overlaps"] += overlaps
        out["live_claims"] += claims.is_live(claims.holder(store, j.key))
        a, b = load_latest(checkpoint_dir(store, j.config)), load_latest(checkpoint_dir(reference, j.config))
        out["weights_equal"] += bool(a and b and a["step"] == b["step"] and all(
            torch.equal(a[part][k], b[part][k]) for part in ("model", "ema") for k in b[part]))
    out["temp_files"] = [str(p.relative_to(store)) for p in store.rglob("*.tmp")]
    return out


def campaign(directory: Path, kills: int, seed: int, timeout: float = 900) -> tuple[Campaign, list[dict]]:
    """Reference run, then the kills; the figures of every round (one per pass over the spec)."""
    hooks = directory / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOK)
    spec = write_spec(directory)
    reference = directory / "reference"
    reference_run(spec, reference, hooks)
    store = directory / "store"
    store.mkdir()
    camp = Campaign(spec, store, hooks, reference, seed)
    camp.run(kills, timeout)
    rounds = [*camp.rounds, check(store, camp.jobs, reference)]
    return camp, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the stores (printed) for a look")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    t0 = time.time()
    directory = Path(tempfile.mkdtemp(prefix="fcdm-faults-"))
    camp, rounds = campaign(directory, args.kills, args.seed, args.timeout)
    ok = [r["finished_once"] == r["jobs"] and not r["trained_twice"] and r["weights_equal"] == r["jobs"]
          and not r["left_running"] and not r["live_claims"] and not r["temp_files"] for r in rounds]
    survived = sum(ok)
    print(f"{len(camp.events)} kills in {len(rounds)} round(s) of {len(camp.jobs)} jobs, {time.time() - t0:.0f} s "
          f"(load {os.getloadavg()[0]:.2f}); seed {args.seed}")
    for moment in MOMENTS:
        for target in TARGETS:
            n = sum(e["moment"] == moment and e["target"] == target for e in camp.events)
            print(f"  {moment:>10} x {target:<7}: {n}")
    print(f"kills survived: {sum(ok[e['round']] for e in camp.events)}/{len(camp.events)} (rounds where every check "
          f"held: {survived}/{len(rounds)})")
    print(f"jobs trained twice: {sum(r['trained_twice'] for r in rounds)}; runs left RUNNING: "
          f"{sum(r['left_running'] for r in rounds)}; weights equal to the reference: "
          f"{sum(r['weights_equal'] for r in rounds)}/{sum(r['jobs'] for r in rounds)}; live claims left: "
          f"{sum(r['live_claims'] for r in rounds)}; temporary files left: {sum(len(r['temp_files']) for r in rounds)}")
    for r in rounds:
        for problem in r["lock_overlaps"]:
            print(f"  overlap: {problem}")
    if args.keep:
        print(f"stores in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
