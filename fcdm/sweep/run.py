"""`fcdm-ablate sweep --optuna`: an Optuna study over a spec's `search` space, trials trained as jobs.

    fcdm-ablate sweep --optuna --trials 20 --workers 2                  # ablations/sweep.yaml, smoke profile
    fcdm-ablate sweep ablations/sweep.yaml --optuna --profile paper --storage postgresql://user@db/optuna

    from fcdm.sweep import run_sweep
    summary = run_sweep("ablations/sweep.yaml", profile="smoke", trials=8, workers=2)

- The study is `<spec>-<profile>` unless `--study` names it, in the store's SQLite file unless
  `--storage` names another (fcdm.sweep.study); the same command on other machines with the same
  storage (and one tracking server) joins it.
- Workers: `--workers N` threads in this process, each running one trial at a time; every trial trains
  in its own process (fcdm.sweep.trial), so N trials train at once, each with its share of the CPU
  threads or its own GPU(s), as `run --jobs N` gives them.
- `--trials N` is the study's total (finished + pruned + running): a rerun with a larger N adds the
  difference. A worker that reached the target waits for trials still RUNNING elsewhere (RDB storages),
  so a dead worker's trial is retried and the command ends with the study complete.
- At the end: the best trial (or the Pareto front) is printed and logged as the study's MLflow run
  (fcdm.sweep.results). Ctrl-C stops the running trials at a checkpoint and queues them again.
"""
from __future__ import annotations

import math
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fcdm.errors import DataError
from fcdm.launchers import make_launcher
from fcdm.launchers.resources import cpu_count, detect_gpus, slot_envs
from fcdm.spec import Job, Spec, SpecError, expand, load_spec, resolve_profile
from fcdm.spec.search import SAMPLERS, SearchSpace, parse_search
from fcdm.store.layout import resolve_store, resolve_tracking_uri
from fcdm.store.tracking import Tracker
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
    storage_url,
)
from fcdm.sweep.trial import (
    InfeasibleTrial,
    SweepInterrupted,
    TrialContext,
    TrialFailed,
    build_job,
    run_trial,
    slot,
)
from fcdm.util.redact import redact
from fcdm.util.signals import handled_signals

DEFAULT_SPEC = "ablations/sweep.yaml"
DEFAULT_TRIALS = 20
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each one stops the sweep: its trials checkpoint


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
    if study_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study_name):
        raise SweepError(f"--study {study_name!r}: use letters, digits, '_', '-' and '.' (it names MLflow tags "
                         "and files), e.g. --study kernel-lr-2")
    spec, profile, space, base = _load(spec_path, profile, launcher, launcher_options, sets)
    trials, sampler, pruner = _choose(space, trials, sampler, pruner)
    store_path = resolve_store(store)
    ctx = TrialContext(spec, profile, base.seed, space, base.config.flat(), "", store_path,
                       resolve_tracking_uri(store_path, tracking_uri), launcher, launcher_options or {},
                       stop or threading.Event(), log, sets=tuple(sets))
    _validate_probes(ctx, space)
    if sampler == "grid":
        trials = min(trials, math.prod(len(v) for v in space.grid().values()))
    evals = base.config.eval_steps()
    pruner_obj = make_pruner(pruner, evals[0] if evals else 1, base.config.train.steps)
    import optuna  # heavy: optuna only once a sweep runs

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own line for each trial event
    url = storage_url(storage, store_path)
    ctx.study_name = study_name or f"{spec.name}-{profile}"
    study = open_study(make_storage(url, heartbeat), ctx.study_name, space, make_sampler(sampler, space, trials),
                       pruner_obj, spec.name, profile, sets)
    experiment = base.config.log.experiment or spec.name
    return Sweep(ctx, study, redact(url), trials, sampler, pruner, experiment,
                 heartbeat=bool(heartbeat) and not url.startswith("journal:"))


def _load(spec_path, profile: str | None, launcher: str, launcher_options: dict | None,
          sets: list[str] | tuple[str, ...]) -> tuple[Spec, str, SearchSpace, Job]:
    """The spec, its profile, its search space and the job every trial varies (the spec's one grid point, at
    its first seed); SpecError or SweepError when one of them is unusable."""
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
    try:
        base_jobs[0].config.hash  # latent data: the run's identity covers its files, which must be on this machine
    except DataError as e:
        raise SweepError(f"{spec.source}: profile {profile}: {e} (sweep takes --set data.path=PATH)") from None
    return spec, profile, space, base_jobs[0]  # every trial trains the spec's first seed


def _choose(space: SearchSpace, trials: int | None, sampler: str | None, pruner: str | None) -> tuple[int, str, str]:
    """The trial target, sampler and pruner: the options, else the search section's, else the defaults."""
    trials = trials or space.trials or DEFAULT_TRIALS
    sampler = sampler or space.sampler or ("nsga2" if space.multi else "tpe")
    pruner = pruner or space.pruner or "median"
    if sampler not in SAMPLERS:
        raise SweepError(f"--sampler {sampler!r} is invalid; allowed values: {', '.join(SAMPLERS)}")
    if space.multi and sampler == "cmaes":
        raise SweepError("--sampler cmaes optimises one objective; the spec lists several: use nsga2, tpe or random")
    return trials, sampler, pruner


def _validate_probes(ctx: TrialContext, space: SearchSpace) -> None:
    """Build the job of every bound and choice once, so a bad key or value fails before any trial."""
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
    ctx, study = sweep.ctx, sweep.study
    ctx.log = _serialised(ctx.log)
    # Each worker's trials get its share of the CPU threads or its own GPU(s), as `run --jobs N` does.
    procs = make_launcher(ctx.launcher, ctx.launcher_options).processes_per_job()
    envs = slot_envs(workers, detect_gpus(), cpu_count(), procs, cluster=ctx.launcher == "slurm")
    ctx.log(f"study {study.study_name!r} in {sweep.storage_label}: target {sweep.target} trials, sampler "
            f"{sweep.sampler}, pruner {sweep.pruner}, {workers} worker(s), profile {ctx.profile}")
    budget = Budget(study, sweep.target, timeout, ctx.stop, sweep.heartbeat, ctx.log)
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_worker, args=(ctx, study, budget, envs[i], errors), name=f"fcdm-sweep-{i}",
                                daemon=True) for i in range(workers)]
    interrupted = _run_workers(threads, ctx)
    if errors:
        raise errors[0]
    return _finish(sweep, budget, log_study, interrupted)


def _serialised(say: Callable[[str], None]) -> Callable[[str], None]:
    """`say`, one line at a time from several worker threads."""
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock:
            say(line)
    return log


def _objective(ctx: TrialContext, budget: Budget) -> Callable:
    """The Optuna objective: the trial's value(s), its job trained; counts the budget's failures in a row."""
    def objective(trial):
        try:
            result = run_trial(ctx, trial, on_start=budget.release)
        except TrialFailed as e:
            if isinstance(e, InfeasibleTrial):  # not a valid configuration: it does not count, another is sampled
                budget.infeasible += 1
                ctx.log(f"trial {trial.number} failed (it does not count; another is sampled): {e}")
            else:
                budget.failures += 1
                ctx.log(f"trial {trial.number} failed: {e}")
            raise
        budget.failures = budget.infeasible = 0
        return result
    return objective


def _worker(ctx: TrialContext, study, budget: Budget, env: dict[str, str], errors: list[BaseException]) -> None:
    """One worker thread: trials one at a time while the budget allows; an error stops every worker."""
    slot.env = env
    objective = _objective(ctx, budget)
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


def _run_workers(threads: list[threading.Thread], ctx: TrialContext) -> bool:
    """Start the workers and wait for them. Ctrl-C / SIGTERM / SIGHUP set the stop event: the workers
    interrupt their trials' jobs (which checkpoint). True when a signal arrived."""
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        ctx.stop.set()

    with handled_signals(on_signal, STOP_SIGNALS):
        for t in threads:
            t.start()
        said = False
        while any(t.is_alive() for t in threads):
            if received and not said:
                said = True
                ctx.log("interrupted: the running trials checkpoint and stop; they are queued again for a rerun")
            for t in threads:
                t.join(0.2)
    return bool(received)


def _finish(sweep: Sweep, budget: Budget, log_study: bool, interrupted: bool) -> SweepSummary:
    """The study's summary, with why it stopped early; logged as the study's MLflow run when a trial completed."""
    if budget.failures >= MAX_CONSECUTIVE_FAILURES:
        budget.notes.append(f"stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row; see the errors above")
    if budget.infeasible >= MAX_CONSECUTIVE_INFEASIBLE:
        budget.notes.append(f"stopped after {MAX_CONSECUTIVE_INFEASIBLE} invalid combinations in a row: narrow the "
                            "search space or loosen match_flops.tolerance")
    summary = summarize(sweep.study, sweep.ctx.space, sweep.storage_label)
    summary.notes += budget.notes
    if log_study and summary.best:
        _log_study(sweep, summary)
    if interrupted or sweep.ctx.stop.is_set():
        summary.interrupted = True
        summary.notes.append("interrupted: rerun the same command to resume the study")
    return summary


def _log_study(sweep: Sweep, summary: SweepSummary) -> None:
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
        import optuna_dashboard  # an optional dependency, imported only for `ui --optuna`
    except ImportError as e:
        missing = f" (its dependency {e.name} is missing)" if e.name not in (None, "optuna_dashboard") else ""
        raise SweepError(f"optuna-dashboard is not installed{missing}; install it with "
                         "pip install 'fcdm-ablate[dashboard]'") from None
    url = storage_url(storage, resolve_store(store))
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise SweepError(f"no study storage at {redact(url)}; run `fcdm-ablate sweep --optuna` first, or pass --storage URL")
    log(f"optuna-dashboard on {redact(url)}: http://{host}:{port}/")
    optuna_dashboard.run_server(make_storage(url, heartbeat=None), host=host, port=port)
