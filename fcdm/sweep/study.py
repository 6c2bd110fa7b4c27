"""The Optuna side of a sweep: storages, samplers, pruners, the study, and the trial budget.

- Storage: `sqlite:///<store>/optuna.db` by default; any Optuna RDB URL (`postgresql://...` uses psycopg
  3 unless psycopg2 is installed), or `journal:PATH` (a journal file on a shared filesystem). RDB
  storages get trial heartbeats: a trial whose worker died (SIGKILL, lost machine) is failed after the
  grace period by whichever worker looks next and re-queued with the same parameters
  (RetryHeartbeatStaleTrialCallback). The journal storage has no heartbeat.
- Budget: `--trials N` is the study's total: COMPLETE + PRUNED + RUNNING + WAITING trials count, FAIL
  ones do not (they are replaced). One lock serialises this process's workers from counting to the
  trial's creation, so a rerun with a larger N adds exactly the difference; workers on other machines
  count the storage too, and can overshoot by one trial per machine if they start at the same instant.
"""
from __future__ import annotations

import json
import random
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from fcdm.errors import UserError, reason
from fcdm.spec.search import PRUNERS, SAMPLERS, SearchSpace
from fcdm.util.redact import redact

MAX_CONSECUTIVE_FAILURES = 3  # a broken setup fails every trial: stop instead of sampling forever
MAX_CONSECUTIVE_INFEASIBLE = 20  # combinations match_flops cannot fit: resampled, up to this many in a row


class SweepError(UserError, ValueError):
    """A sweep cannot start (bad option, storage or study); the message names the fix."""


# -- storage -----------------------------------------------------------------------------------------

def storage_url(storage: str | None, store: Path) -> str:
    """The Optuna storage URL: the argument, else the store's SQLite file."""
    if not storage:
        return f"sqlite:///{Path(store) / 'optuna.db'}"
    if storage.startswith(("postgresql://", "postgres://")):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the `postgres` extra installs psycopg 3.
        try:
            import psycopg2  # noqa: F401  (a probe: is the optional driver installed?)
        except ImportError:
            storage = "postgresql+psycopg://" + storage.split("://", 1)[1]
    return storage


# Optuna 4.9 renamed the heartbeat's retry callback (RetryFailedTrialCallback -> RetryHeartbeatStaleTrialCallback,
# failed_trial_callback -> heartbeat_stale_trial_callback); pyproject.toml declares the same minimum.
OPTUNA_MIN = "4.9"


def check_optuna() -> None:
    """SweepError unless the installed Optuna has the heartbeat API the sweep uses (OPTUNA_MIN)."""
    import optuna  # heavy: optuna only once a sweep runs

    if not hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        raise SweepError(f"optuna {optuna.__version__} is installed; sweeps need optuna>={OPTUNA_MIN} (its trial "
                         f"heartbeat API): pip install -U 'optuna>={OPTUNA_MIN}'")


def make_storage(url: str, heartbeat: int | None = 60):
    """An Optuna storage for `url`; RDB storages get trial heartbeats and retry of dead workers' trials."""
    import optuna  # heavy: optuna only once a sweep runs

    check_optuna()

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:")).expanduser()
        if not path.parent.is_dir():
            raise SweepError(f"--storage {redact(url)}: the folder {path.parent} does not exist; create it or pass "
                             "another path")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # workers and machines wait for SQLite's lock, not fail
    else:
        engine = {"pool_pre_ping": True}
    kwargs = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
            if heartbeat:
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
                kwargs = dict(heartbeat_interval=heartbeat, grace_period=max(2 * heartbeat, heartbeat + 5),
                              heartbeat_stale_trial_callback=retry)
            from sqlalchemy.exc import DBAPIError  # heavy: with optuna's RDB storage

            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
            except DBAPIError:  # another worker creating the tables at this moment: they exist in a second
                time.sleep(1.0 + random.random())
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
    except ImportError as e:
        raise SweepError(f"--storage {redact(url)}: its database driver is missing ({e}); for PostgreSQL install "
                         "pip install 'fcdm-ablate[postgres]'") from None
    except Exception as e:  # sqlalchemy's ArgumentError, OperationalError, ...
        raise SweepError(f"--storage {redact(url)}: cannot open it ("
                         f"{redact(reason(e))}); pass an Optuna storage URL such as "
                         "sqlite:///runs/optuna.db, postgresql://user@host/db or journal:PATH") from None


# -- sampler and pruner ------------------------------------------------------------------------------

class AfterFirstTrialPruner:
    """Test setting `--pruner always`: prunes every trial except trial 0 at its first evaluation.

    Trial 0 runs to completion so the study has a finished value; with this pruner the outcome of a
    study does not depend on timing, which makes the pruning path testable."""

    def prune(self, study, trial) -> bool:
        return trial.number > 0 and bool(trial.intermediate_values)


def make_sampler(name: str, space: SearchSpace, trials: int):
    import optuna  # heavy: optuna only once a sweep runs

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
            import cmaes  # noqa: F401  (a probe: is the optional package installed?)
        except ImportError:
            raise SweepError("--sampler cmaes needs the `cmaes` package: pip install cmaes (or use tpe)") from None
        return optuna.samplers.CmaEsSampler()
    raise SweepError(f"--sampler {name!r} is invalid; allowed values: {', '.join(SAMPLERS)}")


def make_pruner(name: str, first_eval: int, steps: int):
    import optuna  # heavy: optuna only once a sweep runs

    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":  # resource = training steps, from the first evaluation to the end
        return optuna.pruners.HyperbandPruner(min_resource=max(1, first_eval), max_resource=steps)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "always":
        return _wrap_pruner(AfterFirstTrialPruner())
    raise SweepError(f"--pruner {name!r} is invalid; allowed values: {', '.join(PRUNERS)}")


def _wrap_pruner(p):
    """`p` as an optuna BasePruner (the class exists only once optuna is imported)."""
    import optuna  # heavy: optuna only once a sweep runs

    class _Pruner(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return p.prune(study, trial)
    return _Pruner()


# -- the study ---------------------------------------------------------------------------------------

def sets_text(sets: Sequence[str]) -> str:
    """The `--set` overrides as a study records them: 'key=value' (stripped; the last of a key wins), sorted, as
    JSON: '["train.steps=100"]'."""
    pairs = dict(tuple(p.strip() for p in item.split("=", 1)) for item in sets if "=" in item)
    return json.dumps([f"{k}={v}" for k, v in sorted(pairs.items())])


def open_study(storage, name: str, space: SearchSpace, sampler, pruner, spec_name: str, profile: str,
               sets: Sequence[str] = ()):
    """Create or load the study; refuse one that was created for another spec, profile, search space or
    `--set` overrides (a rerun with other train.steps is another search, not more trials of this one)."""
    import optuna  # heavy: optuna only once a sweep runs

    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                directions=space.directions, load_if_exists=True)
    expected = {"fcdm.spec": spec_name, "fcdm.profile": profile, "fcdm.search": space.fingerprint(),
                "fcdm.sets": sets_text(sets)}
    found = study.user_attrs
    if found:
        found = {"fcdm.sets": "[]", **found}  # a study from before --set was recorded: it had none
    if not found and not study.get_trials(deepcopy=False):
        for k, v in expected.items():
            study.set_user_attr(k, v)
        found = expected
    diff = [k for k in expected if found.get(k) != expected[k]]
    directions = [d.name.lower() for d in study.directions]
    if diff or directions != space.directions:
        what, was, now = (({"fcdm.sets": "--set overrides"}.get(diff[0], diff[0].removeprefix("fcdm.")),
                            found.get(diff[0]), expected[diff[0]]) if diff
                          else ("objective directions", directions, space.directions))
        raise SweepError(f"study {name!r} already exists in this storage with another {what} ({was!r}, now "
                         f"{now!r}); pass --study NEW_NAME for a new study, or restore the spec's search section")
    return study


class Budget:
    """Whether another trial may start: counted under one lock for this process's workers.

    claim() returns True holding the lock; the trial releases it once it exists in the storage
    (so the next count includes it). Waiting (retried) trials always run: they replace failed ones."""

    def __init__(self, study, target: int, timeout: float | None, stop: threading.Event, heartbeat: bool,
                 log: Callable[[str], None], poll: float = 2.0):
        self.study, self.target, self.stop, self.heartbeat = study, target, stop, heartbeat
        self.log, self.poll = log, poll
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self.lock = threading.Lock()
        self.local = threading.local()
        self.failures = 0  # trials in a row whose job failed
        self.infeasible = 0  # trials in a row whose combination is not a valid config
        self.notes: list[str] = []
        self._waiting_said = False

    def claim(self) -> bool:
        import optuna  # heavy: optuna only once a sweep runs
        from optuna.trial import TrialState

        while True:
            if (self.stop.is_set() or self.failures >= MAX_CONSECUTIVE_FAILURES
                    or self.infeasible >= MAX_CONSECUTIVE_INFEASIBLE):
                return False
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self._note("--timeout reached: no new trials started")
                return False
            self.lock.acquire()
            self.local.held = True
            try:
                if self.heartbeat:
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
