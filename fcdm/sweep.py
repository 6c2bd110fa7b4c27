"""`fcdm-ablate sweep --optuna`: an Optuna study over a spec's `search` space, trials trained as jobs.

    fcdm-ablate sweep --optuna --trials 20 --workers 2                  # ablations/sweep.yaml, smoke profile
    fcdm-ablate sweep ablations/sweep.yaml --optuna --profile paper --storage postgresql://user@db/optuna

    from fcdm.sweep import run_sweep
    summary = run_sweep("ablations/sweep.yaml", profile="smoke", trials=8, workers=2)

- Storage: `sqlite:///<store>/optuna.db` by default; any Optuna RDB URL (`postgresql://...` uses psycopg 3),
  or `journal:PATH` (a journal file on a shared filesystem). The study is `<spec>-<profile>` unless
  `--study` names it; the same command on other machines with the same storage joins it.
- Workers: `--workers N` threads in this process, each running one trial at a time; every trial trains
  in its own process, so N trials train at once.
- `--trials N` is the study's total: COMPLETE + PRUNED + RUNNING + WAITING trials count, FAIL ones do
  not (they are replaced). Local workers count under one lock, so a rerun with a larger N adds exactly
  the difference; workers on other machines count the storage too, which can overshoot by one trial
  per machine when they start trials at the same instant.
- Dead workers (RDB storages): trials heartbeat; a trial whose worker died (SIGKILL, lost machine) is
  failed after the grace period by whichever worker looks next and re-queued with the same parameters
  (RetryFailedTrialCallback), so its job resumes from its checkpoint. A worker that reached the target
  waits for trials still RUNNING elsewhere, so the command ends with the study complete. The journal
  storage has no heartbeat: there, a dead worker's trial stays RUNNING.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .search_space import SAMPLERS, SearchSpace, parse_search
from .sweep_results import SweepSummary, format_summary, log_study_run, summarize  # noqa: F401 (re-exported)
from .sweep_trial import SweepInterrupted, TrialContext, TrialFailed, build_job, run_trial

DEFAULT_SPEC = "ablations/sweep.yaml"
DEFAULT_TRIALS = 20
PRUNER_CHOICES = ("median", "hyperband", "none", "always")
MAX_CONSECUTIVE_FAILURES = 3  # a broken setup fails every trial: stop instead of sampling forever


class SweepError(ValueError):
    """A sweep cannot start (bad option, storage or study); the message names the fix."""


# -- storage -----------------------------------------------------------------------------------------

def storage_url(storage: str | None, store: Path) -> str:
    """The Optuna storage URL: the argument, else the store's SQLite file."""
    if not storage:
        return f"sqlite:///{Path(store) / 'optuna.db'}"
    if storage.startswith(("postgresql://", "postgres://")):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the `postgres` extra installs psycopg 3.
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            storage = "postgresql+psycopg://" + storage.split("://", 1)[1]
    return storage


def redact(url: str) -> str:
    """The URL without its password, for printing."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def make_storage(url: str, heartbeat: int | None = 60):
    """An Optuna storage for `url`; RDB storages get trial heartbeats and retry of dead workers' trials."""
    import warnings

    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:")).expanduser()
        if not path.parent.is_dir():
            raise SweepError(f"--storage {url}: the folder {path.parent} does not exist; create it or pass another path")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # workers and machines wait for SQLite's lock, not fail
    else:
        engine = {"pool_pre_ping": True}
    kwargs = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental" since 2.9
            if heartbeat:
                kwargs = dict(heartbeat_interval=heartbeat, grace_period=max(2 * heartbeat, heartbeat + 5),
                              heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
    except ImportError as e:
        raise SweepError(f"--storage {redact(url)}: its database driver is missing ({e}); for PostgreSQL install "
                         "pip install 'fcdm-ablate[postgres]'") from None
    except Exception as e:  # sqlalchemy's ArgumentError, OperationalError, ...
        raise SweepError(f"--storage {redact(url)}: cannot open it ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); pass an Optuna storage URL such as "
                         "sqlite:///runs/optuna.db, postgresql://user@host/db or journal:PATH") from None


# -- sampler and pruner ------------------------------------------------------------------------------

class AfterFirstTrialPruner:
    """Test setting `--pruner always`: prunes every trial except trial 0 at its first evaluation.

    Trial 0 runs to completion so the study has a finished value; with this pruner the outcome of a
    study does not depend on timing, which makes the pruning path testable."""

    def prune(self, study, trial) -> bool:
        return trial.number > 0 and bool(trial.intermediate_values)


def make_sampler(name: str, space: SearchSpace, trials: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(constant_liar=True)  # parallel workers avoid suggesting the same point
    if name == "random":
        return optuna.samplers.RandomSampler()
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid())
    if name == "nsga2":
        # A population of a quarter of the study (4..50) gives a few generations even in short studies.
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, trials // 4)))
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise SweepError("--sampler cmaes needs the `cmaes` package: pip install cmaes (or use tpe)") from None
        return optuna.samplers.CmaEsSampler()
    raise SweepError(f"--sampler {name!r} is invalid; allowed values: {', '.join(SAMPLERS)}")


def make_pruner(name: str, first_eval: int, steps: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":  # resource = training steps, from the first evaluation to the end
        return optuna.pruners.HyperbandPruner(min_resource=max(1, first_eval), max_resource=steps)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "always":
        return _wrap_pruner(AfterFirstTrialPruner())
    raise SweepError(f"--pruner {name!r} is invalid; allowed values: {', '.join(PRUNER_CHOICES)}")


def _wrap_pruner(p):
    import optuna

    class _Pruner(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return p.prune(study, trial)
    return _Pruner()


# -- the study ---------------------------------------------------------------------------------------

def open_study(storage, name: str, space: SearchSpace, sampler, pruner, spec_name: str, profile: str):
    """Create or load the study; refuse one that was created for another spec, profile or search space."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                directions=space.directions, load_if_exists=True)
    expected = {"fcdm.spec": spec_name, "fcdm.profile": profile, "fcdm.search": space.fingerprint()}
    found = study.user_attrs
    if not found and not study.get_trials(deepcopy=False):
        for k, v in expected.items():
            study.set_user_attr(k, v)
        found = expected
    diff = [k for k in expected if found.get(k) != expected[k]]
    if diff or [d.name.lower() for d in study.directions] != space.directions:
        what = diff[0].removeprefix("fcdm.") if diff else "objective directions"
        raise SweepError(f"study {name!r} already exists in this storage with another {what} ({found.get(diff[0]) if diff else [d.name.lower() for d in study.directions]!r}, "
                         f"now {expected[diff[0]] if diff else space.directions!r}); pass --study NEW_NAME for a new "
                         "study, or restore the spec's search section")
    return study


class _Budget:
    """Decides, under one lock for this process's workers, whether another trial may start.

    claim() returns True holding the lock; the trial releases it once it exists in the storage
    (so the next count includes it). Waiting (retried) trials always run: they replace failed ones."""

    def __init__(self, study, target: int, timeout: float | None, stop: threading.Event, heartbeat: bool,
                 log: Callable[[str], None], poll: float = 2.0):
        self.study, self.target, self.stop, self.heartbeat, self.log, self.poll = study, target, stop, heartbeat, log, poll
        self.deadline = time.monotonic() + timeout if timeout else None
        self.lock = threading.Lock()
        self.local = threading.local()
        self.failures = 0
        self.notes: list[str] = []
        self._waiting_said = False

    def claim(self) -> bool:
        from optuna.trial import TrialState

        while True:
            if self.stop.is_set() or self.failures >= MAX_CONSECUTIVE_FAILURES:
                return False
            if self.deadline and time.monotonic() > self.deadline:
                self._note("--timeout reached: no new trials started")
                return False
            self.lock.acquire()
            self.local.held = True
            try:
                if self.heartbeat:
                    import warnings

                    import optuna

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # fail_stale_trials is marked experimental
                        optuna.storages.fail_stale_trials(self.study)
                states = [t.state for t in self.study.get_trials(deepcopy=False)]
            except BaseException:
                self.release()
                raise
            done = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
            running, waiting = states.count(TrialState.RUNNING), states.count(TrialState.WAITING)
            if waiting or done + running < self.target:
                return True
            self.release()
            if done >= self.target or not running or not self.heartbeat:
                return False
            if not self._waiting_said:
                self._waiting_said = True
                self.log(f"{done} of {self.target} trials done; waiting for {running} trial(s) still running "
                         "(in other workers or machines; a dead worker's trial is retried after its heartbeat lapses)")
            if self.stop.wait(self.poll):
                return False

    def release(self) -> None:
        if getattr(self.local, "held", False):
            self.local.held = False
            self.lock.release()

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


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


def prepare(spec_path=DEFAULT_SPEC, profile: str | None = None, trials: int | None = None,
            storage: str | None = None, study_name: str | None = None, sampler: str | None = None,
            pruner: str | None = None, launcher: str = "local", store: str | Path | None = None,
            tracking_uri: str | None = None, heartbeat: int | None = 60, launcher_options: dict | None = None,
            log: Callable[[str], None] = print, stop: threading.Event | None = None) -> Sweep:
    """Load and validate the spec and search space, open the storage and study. Raises SpecError or
    SweepError before anything is written when the spec, a search combination or an option is bad."""
    from .launchers import make_launcher
    from .spec import Spec, SpecError, expand, load_spec, resolve_profile
    from .tracking import resolve_store, resolve_tracking_uri

    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    if not spec.search:
        raise SpecError(f"{spec.source}: search: (missing): `sweep` needs a search section, e.g. search: {{metric: fid, "
                        "params: {model.args.kernel_size: [3, 5, 7]}}; or use `fcdm-ablate run` for a grid")
    profile = resolve_profile(spec, profile)
    space = parse_search(spec.search, spec.source, profile, list(spec.profiles))
    make_launcher(launcher, launcher_options)  # a bad launcher option fails now, not in every trial
    base_jobs = expand(spec, profile)
    seed = base_jobs[0].seed
    base_cfg = base_jobs[0].config
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
                       stop or threading.Event(), log)
    _validate_probes(ctx, space)
    if sampler == "grid":
        trials = min(trials, _grid_size(space))
    evals = base_cfg.eval_steps()
    pruner_obj = make_pruner(pruner, evals[0] if evals else 1, base_cfg.train.steps)
    url = storage_url(storage, store_path)
    ctx.study_name = study_name or f"{spec.name}-{profile}"
    study = open_study(make_storage(url, heartbeat), ctx.study_name, space, make_sampler(sampler, space, trials),
                       pruner_obj, spec.name, profile)
    experiment = base_cfg.log.experiment or spec.name
    return Sweep(ctx, study, redact(url), trials, sampler, pruner, experiment)


def flat_config(cfg) -> dict[str, Any]:
    """Dotted key -> value of a RunConfig, for `when` conditions."""
    from .config import _flatten

    return dict(_flatten(cfg.to_dict()))


def _validate_probes(ctx: TrialContext, space: SearchSpace) -> None:
    """Build the job of every bound and choice once, so a bad key or value fails before any trial."""
    from .search_space import _spec_error
    from .spec import SpecError

    for probe in space.probes(ctx.base):
        try:
            build_job(ctx, probe)
        except SpecError as e:
            raise _spec_error(f"{space.source}: search.params with {_short(probe)}: {_strip_source(str(e))}") from None


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
    the trials' jobs at a checkpoint and re-queues them; SweepInterrupted is raised afterwards."""
    if workers < 1:
        raise SweepError(f"--workers {workers} is invalid: give 1 or more")
    stop = stop or threading.Event()
    sweep = prepare(spec_path, log=log, stop=stop, **options)
    return execute(sweep, workers=workers, timeout=timeout, log_study=log_study)


def execute(sweep: Sweep, workers: int = 1, timeout: float | None = None, log_study: bool = True) -> SweepSummary:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    from .launchers import cpu_count, detect_gpus, make_launcher, slot_env
    from .sweep_trial import slot

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
    budget = _Budget(study, sweep.target, timeout, ctx.stop, is_heartbeat_enabled(study._storage), ctx.log)
    errors: list[BaseException] = []

    def objective(trial):
        try:
            result = run_trial(ctx, trial, on_start=budget.release)
        except TrialFailed as e:
            budget.failures += 1
            ctx.log(f"trial {trial.number} failed: {e}")
            raise
        budget.failures = 0
        return result

    def worker(index: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
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
    from .tracking import Tracker

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
    except ImportError:
        raise SweepError("optuna-dashboard is not installed; install it with pip install 'fcdm-ablate[dashboard]'") from None
    from .tracking import resolve_store

    url = storage_url(storage, resolve_store(store))
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise SweepError(f"no study storage at {url}; run `fcdm-ablate sweep --optuna` first, or pass --storage URL")
    log(f"optuna-dashboard on {redact(url)}: http://{host}:{port}/")
    optuna_dashboard.run_server(make_storage(url, heartbeat=None), host=host, port=port)

