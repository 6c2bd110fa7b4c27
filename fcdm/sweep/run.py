"""`fcdm-ablate sweep --optuna`: an Optuna study over a spec's `search` space, trials trained as jobs.

    fcdm-ablate sweep --optuna --trials 20 --workers 2                  # ablations/sweep.yaml, smoke profile
    fcdm-ablate sweep ablations/sweep.yaml --optuna --profile paper --storage postgresql://user@db/optuna

    from fcdm.sweep import run_sweep
    summary = run_sweep("ablations/sweep.yaml", profile="smoke", trials=8, workers=2)

- The study is `<spec>-<profile>` unless `--study` names it, in the store's SQLite file unless
  `--storage` names another (fcdm/sweep/study.py); the same command on other machines with the same
  storage (and one tracking server) joins it.
- Workers: `--workers N` threads in this process, each running one trial at a time; every trial trains
  in its own process (fcdm/sweep/trial.py), so N trials train at once, each with its share of the CPU
  threads or its own GPU(s), as `run --jobs N` gives them.
- `--trials N` is the study's total (finished + pruned + running): a rerun with a larger N adds the
  difference. A worker that reached the target waits for trials still RUNNING elsewhere (RDB storages),
  so a dead worker's trial is retried and the command ends with the study complete.
- At the end: the best trial (or the Pareto front) is printed and logged as the study's MLflow run
  (fcdm/sweep/results.py). Ctrl-C stops the running trials at a checkpoint and queues them again.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fcdm.spec.search import SAMPLERS, SearchSpace, parse_search
from fcdm.sweep.results import SweepSummary, log_study_run, summarize
from fcdm.sweep.study import (
    MAX_CONSECUTIVE_FAILURES,
    MAX_CONSECUTIVE_INFEASIBLE,
    Budget,
    SweepError,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
    redact,
    storage_url,
)
from fcdm.sweep.trial import InfeasibleTrial, SweepInterrupted, TrialContext, TrialFailed, build_job, run_trial

DEFAULT_SPEC = "ablations/sweep.yaml"
DEFAULT_TRIALS = 20


@dataclass
class Sweep:
    """Everything resolved from the spec and the options, before any trial runs."""
    ctx: TrialContext
    study: Any
    storage_label: str
    target: int
    sampler: str
    pruner: str
    experiment: str
    heartbeat: bool = False  # the storage fails and retries trials of dead workers


def prepare(spec_path=DEFAULT_SPEC, profile: str | None = None, trials: int | None = None,
            storage: str | None = None, study_name: str | None = None, sampler: str | None = None,
            pruner: str | None = None, launcher: str = "local", store: str | Path | None = None,
            tracking_uri: str | None = None, heartbeat: int | None = 60, launcher_options: dict | None = None,
            sets: list[str] | tuple[str, ...] = (), log: Callable[[str], None] = print,
            stop: threading.Event | None = None) -> Sweep:
    """Load and validate the spec and search space, open the storage and study. Raises SpecError or
    SweepError before anything is written when the spec, a search combination or an option is bad."""
    from fcdm.launchers import make_launcher
    from fcdm.spec import Spec, SpecError, expand, load_spec, resolve_profile
    from fcdm.store.layout import resolve_store, resolve_tracking_uri

    if study_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study_name):
        raise SweepError(f"--study {study_name!r}: use letters, digits, '_', '-' and '.' (it names MLflow tags "
                         "and files), e.g. --study kernel-lr-2")
    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    if not spec.search:
        raise SpecError(f"{spec.source}: search: (missing): `sweep` needs a search section, e.g. "
                        "search: {metric: fid, params: {model.args.kernel_size: [3, 5, 7]}}; or use "
                        "`fcdm-ablate run` for a grid")
    profile = resolve_profile(spec, profile)
    space = parse_search(spec.search, spec.source, profile, list(spec.profiles))
    make_launcher(launcher, launcher_options)  # a bad launcher option fails now, not in every trial
    base_jobs = expand(spec, profile, overrides=list(sets))
    points = sorted({j.name for j in base_jobs})
    if len(points) > 1:
        raise SpecError(f"{spec.source}: axes: {len(points)} grid points ({', '.join(points[:3])}"
                        f"{', ...' if len(points) > 3 else ''}): a sweep searches around ONE configuration; move the "
                        "axes, zip and variants of this spec under search.params (or use `fcdm-ablate run` for a grid)")
    seed = base_jobs[0].seed  # every trial trains the spec's first seed
    base_cfg = base_jobs[0].config
    from fcdm.data import DataError

    try:
        base_cfg.hash  # latent data: the run's identity covers its files, which must be on this machine
    except DataError as e:
        raise SweepError(f"{spec.source}: profile {profile}: {e} (sweep takes --set data.path=PATH)") from None
    trials = trials or space.trials or DEFAULT_TRIALS
    sampler = sampler or space.sampler or ("nsga2" if space.multi else "tpe")
    pruner = pruner or space.pruner or "median"
    if sampler not in SAMPLERS:
        raise SweepError(f"--sampler {sampler!r} is invalid; allowed values: {', '.join(SAMPLERS)}")
    if space.multi and sampler == "cmaes":
        raise SweepError("--sampler cmaes optimises one objective; the spec lists several: use nsga2, tpe or random")
    store_path = resolve_store(store)
    ctx = TrialContext(spec, profile, seed, space, flat_config(base_cfg), "", store_path,
                       resolve_tracking_uri(store_path, tracking_uri), launcher, launcher_options or {},
                       stop or threading.Event(), log, sets=tuple(sets))
    _validate_probes(ctx, space)
    if sampler == "grid":
        trials = min(trials, _grid_size(space))
    evals = base_cfg.eval_steps()
    pruner_obj = make_pruner(pruner, evals[0] if evals else 1, base_cfg.train.steps)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own line for each trial event
    url = storage_url(storage, store_path)
    ctx.study_name = study_name or f"{spec.name}-{profile}"
    study = open_study(make_storage(url, heartbeat), ctx.study_name, space, make_sampler(sampler, space, trials),
                       pruner_obj, spec.name, profile)
    experiment = base_cfg.log.experiment or spec.name
    return Sweep(ctx, study, redact(url), trials, sampler, pruner, experiment,
                 heartbeat=bool(heartbeat) and not url.startswith("journal:"))


def flat_config(cfg) -> dict[str, Any]:
    """Dotted key -> value of a RunConfig, for `when` conditions."""
    return cfg.flat()


def _validate_probes(ctx: TrialContext, space: SearchSpace) -> None:
    """Build the job of every bound and choice once, so a bad key or value fails before any trial."""
    from fcdm.spec import SpecError

    for probe in space.probes(ctx.base):
        try:
            build_job(ctx, probe)
        except SpecError as e:
            msg = _strip_source(str(e))
            key = re.match(r"axes\.(\S+): ", msg)  # the values are tried as a one-point grid (build_job)
            if key and key.group(1) in probe:
                raise SpecError(f"{space.source}: search.params.{msg.removeprefix('axes.')}") from None
            raise SpecError(f"{space.source}: search.params with {_short(probe)}: {msg}") from None


def _short(probe: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in probe.items())


def _strip_source(msg: str) -> str:
    return msg.split(": ", 1)[1] if ": " in msg and msg.split(": ", 1)[0].endswith((".yaml", ".yml")) else msg


def _grid_size(space: SearchSpace) -> int:
    import math

    return math.prod(len(v) for v in space.grid().values())


# -- running -----------------------------------------------------------------------------------------

def run_sweep(spec_path: str | Path = DEFAULT_SPEC, *, workers: int = 1, timeout: float | None = None,
              log: Callable[[str], None] = print, stop: threading.Event | None = None,
              log_study: bool = True, **options) -> SweepSummary:
    """Run the study to its trial target with `workers` concurrent trials; returns the summary (also
    logged as the study's MLflow run). options: those of `prepare`. Ctrl-C (or setting `stop`) stops
    the trials' jobs at a checkpoint and re-queues them; the summary then says `interrupted`."""
    if workers < 1:
        raise SweepError(f"--workers {workers} is invalid: give 1 or more")
    stop = stop or threading.Event()
    sweep = prepare(spec_path, log=log, stop=stop, **options)
    return execute(sweep, workers=workers, timeout=timeout, log_study=log_study)


def execute(sweep: Sweep, workers: int = 1, timeout: float | None = None, log_study: bool = True) -> SweepSummary:
    """Run the prepared study's trials with `workers` threads until its target; the summary of the study."""
    from fcdm.launchers import make_launcher
    from fcdm.launchers.resources import cpu_count, detect_gpus, slot_env
    from fcdm.sweep.trial import slot

    ctx, study = sweep.ctx, sweep.study
    say, lock = ctx.log, threading.Lock()

    def log(line: str) -> None:  # one line at a time from several workers
        with lock:
            say(line)
    ctx.log = log
    # Each worker's trials get its share of the CPU threads or its own GPU(s), as `run --jobs N` does.
    procs = make_launcher(ctx.launcher, ctx.launcher_options).processes_per_job()
    gpus, cpus = detect_gpus(), cpu_count()
    envs = [{} if ctx.launcher == "slurm" else slot_env(i, workers, gpus, cpus, procs) for i in range(workers)]
    ctx.log(f"study {study.study_name!r} in {sweep.storage_label}: target {sweep.target} trials, sampler "
            f"{sweep.sampler}, pruner {sweep.pruner}, {workers} worker(s), profile {ctx.profile}")
    budget = Budget(study, sweep.target, timeout, ctx.stop, sweep.heartbeat, ctx.log)
    errors: list[BaseException] = []

    def objective(trial):
        try:
            result = run_trial(ctx, trial, on_start=budget.release)
        except InfeasibleTrial as e:
            budget.infeasible += 1
            ctx.log(f"trial {trial.number} failed (it does not count; another is sampled): {e}")
            raise
        except TrialFailed as e:
            budget.failures += 1
            ctx.log(f"trial {trial.number} failed: {e}")
            raise
        budget.failures = budget.infeasible = 0
        return result

    def worker(index: int) -> None:
        slot.env = envs[index]
        try:
            while budget.claim():
                try:
                    study.optimize(objective, n_trials=1, catch=(TrialFailed,))
                finally:
                    budget.release()
        except SweepInterrupted:
            ctx.stop.set()
        except BaseException as e:  # a bug or a lost storage: stop the other workers too
            errors.append(e)
            ctx.stop.set()

    threads = [threading.Thread(target=worker, args=(i,), name=f"fcdm-sweep-{i}", daemon=True)
               for i in range(workers)]
    signals = {"n": 0}
    handlers = _install_handlers(ctx.stop, signals)
    for t in threads:
        t.start()
    said = False
    try:
        while any(t.is_alive() for t in threads):
            if signals["n"] and not said:
                said = True
                ctx.log("interrupted: the running trials checkpoint and stop; they are queued again for a rerun")
            for t in threads:
                t.join(0.2)
    finally:
        _restore_handlers(handlers)
    interrupted = signals["n"] > 0
    if errors:
        raise errors[0]
    if budget.failures >= MAX_CONSECUTIVE_FAILURES:
        budget.notes.append(f"stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row; see the errors above")
    if budget.infeasible >= MAX_CONSECUTIVE_INFEASIBLE:
        budget.notes.append(f"stopped after {MAX_CONSECUTIVE_INFEASIBLE} invalid combinations in a row: narrow the "
                            "search space or loosen match_flops.tolerance")
    summary = summarize(study, ctx.space, sweep.storage_label)
    summary.notes += budget.notes
    if log_study and summary.best:
        _log_study(sweep, summary)
    if interrupted or ctx.stop.is_set():
        summary.interrupted = True
        summary.notes.append("interrupted: rerun the same command to resume the study")
    return summary


def _install_handlers(stop: threading.Event, signals: dict) -> dict:
    """Ctrl-C / SIGTERM / SIGHUP set `stop`: workers interrupt their trials' jobs (which checkpoint)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        signals["n"] += 1
        stop.set()
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


def _restore_handlers(handlers: dict) -> None:
    import signal

    for s, h in handlers.items():
        signal.signal(s, h)


def _log_study(sweep: Sweep, summary: SweepSummary) -> None:
    from fcdm.store.tracking import Tracker

    ctx = sweep.ctx
    tracker = Tracker(ctx.store, ctx.tracking_uri)

    def best_config(row) -> str:
        return build_job(ctx, row.params, row.number).config.to_yaml()

    log_study_run(sweep.study, ctx.space, summary, tracker.client, tracker.experiment_id(sweep.experiment),
                  best_config)


# -- dashboard ---------------------------------------------------------------------------------------

def open_dashboard(storage: str | None = None, port: int = 8080, store: str | Path | None = None,
                   host: str = "127.0.0.1", log: Callable[[str], None] = print) -> None:
    """Serve optuna-dashboard on the study storage until Ctrl-C (optional dependency)."""
    try:
        import optuna_dashboard
    except ImportError as e:
        missing = f" (its dependency {e.name} is missing)" if e.name not in (None, "optuna_dashboard") else ""
        raise SweepError(f"optuna-dashboard is not installed{missing}; install it with "
                         "pip install 'fcdm-ablate[dashboard]'") from None
    from fcdm.store.layout import resolve_store

    url = storage_url(storage, resolve_store(store))
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise SweepError(f"no study storage at {url}; run `fcdm-ablate sweep --optuna` first, or pass --storage URL")
    log(f"optuna-dashboard on {redact(url)}: http://{host}:{port}/")
    optuna_dashboard.run_server(make_storage(url, heartbeat=None), host=host, port=port)

