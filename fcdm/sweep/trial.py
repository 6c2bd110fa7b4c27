"""One Optuna trial of a sweep: suggested values -> job -> reuse, or train while watching for pruning.

A trial is a job like those of `fcdm-ablate run`: the spec's single grid point with the suggested
values applied as overrides (so `match_flops` re-solves the width for every trial), trained by the
job runner in its own process (local, `accelerate launch` or Slurm) into its own MLflow run, tagged
`fcdm.study` and `fcdm.trial`.

- Reuse: when the job's (hash, seed) already finished (an earlier trial, another study, or `run`), the
  trial reads that run's metrics, records them, and trains nothing (user attrs `reused`, `run_id`).
  When another process is training that job right now, the trial waits for it and then reuses it.
- Pruning without a hook in the trainer: while the job trains, the sweep polls the job's progress
  sidecar and, at each new evaluation, reads the metric from MLflow and calls `trial.report(value,
  step)`. When `trial.should_prune()`, it sends the job's process SIGTERM (the trainer checkpoints and
  ends its run KILLED), tags the run `fcdm.pruned=true` and raises `optuna.TrialPruned`. Values are
  replayed in step order, so the pruner decides at the same step even when the process outran the
  poll (its run then simply trained further than needed).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from fcdm.config import model_kwargs
from fcdm.runner import JobOutcome, JobRun
from fcdm.spec import Job, SpecError, expand
from fcdm.spec.search import SearchSpace, overrides
from fcdm.store.checkpoints import list_checkpoints
from fcdm.store.jobs import CONFIG, job_dir, job_status
from fcdm.store.layout import checkpoint_dir, run_name
from fcdm.store.progress import evaluation_record, progress_or_empty
from fcdm.store.tracking import TAG_PRUNED, TAG_STUDY, TAG_TRIAL, Tracker


class TrialFailed(RuntimeError):
    """The trial's job could not produce its objective values (bad combination, crash, NaN, no metric)."""


class InfeasibleTrial(TrialFailed):
    """The suggested combination is not a valid configuration (e.g. match_flops cannot fit it)."""


class SweepInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM reached the sweep; the trial's job was checkpointed and will be retried."""


@dataclass
class TrialContext:
    """What every trial of one sweep shares."""
    spec: Any  # fcdm.spec.Spec
    profile: str
    seed: int  # the spec's first seed: every trial trains this seed
    space: SearchSpace
    base: dict[str, Any]  # flattened base config values, for `when` conditions on non-searched keys
    study_name: str
    store: Path
    tracking_uri: str
    launcher: str
    launcher_options: dict
    stop: threading.Event
    log: Callable[[str], None]
    poll: float = 0.5  # seconds between looks at a training trial's progress
    sets: tuple[str, ...] = ()  # --set key=value overrides for every trial (and the FLOPs target)


def build_job(ctx: TrialContext, chosen: dict[str, Any], number: int | None = None):
    """The job of one set of suggested values (SpecError when the combination is invalid).

    The values become the spec's (single-point) grid, as if written under `axes`: so `match_flops`
    with `target: base` aims at the base config without them (an `expand` override would move the
    target along with the job) and the job is named by them like any grid point."""
    tags = {TAG_STUDY: ctx.study_name, TAG_PRUNED: "false"}
    if number is not None:
        tags[TAG_TRIAL] = str(number)
    jobs = expand(point_spec(ctx.spec, ctx.profile, chosen), ctx.profile,
                  overrides=[*ctx.sets, *overrides({"log.tags": tags})])
    return next(j for j in jobs if j.seed == ctx.seed)


def point_spec(spec, profile: str, chosen: dict[str, Any]):
    """A copy of `spec` whose grid (under `profile`) has the chosen values as one-value axes."""
    axes = {k: [v] for k, v in chosen.items()}
    own = spec.profiles.get(profile, {})
    if "axes" in own:  # the profile replaces the spec's axes: extend the profile's
        return replace(spec, profiles={**spec.profiles, profile: {**own, "axes": {**own["axes"], **axes}}})
    return replace(spec, axes={**spec.axes, **axes})


def run_trial(ctx: TrialContext, trial, on_start: Callable[[], None] = lambda: None):
    """The objective: returns the trial's value(s); raises TrialPruned, TrialFailed or SweepInterrupted."""
    on_start()  # the trial exists in the storage now: the next worker may count it
    chosen = ctx.space.suggest(trial, ctx.base)
    job = _trial_job(ctx, trial, chosen)
    if _wait_while_running(ctx, job, trial.number) == "finished":
        return _reuse(ctx, trial, job)
    watcher = _Watcher(ctx, trial, job)
    ctx.log(f"trial {trial.number}: training {_fmt(chosen)} (config {job.hash}, seed {job.seed}"
            + (f", resuming at step {watcher.start_step}" if watcher.start_step else "") + ")")
    outcome = _train(ctx, trial, job, watcher)
    if outcome.state in ("skipped", "elsewhere"):  # another process finished it between our look and the claim
        return _reuse(ctx, trial, job)
    return _settle(ctx, trial, watcher, outcome)


def _trial_job(ctx: TrialContext, trial, chosen: dict[str, Any]) -> Job:
    """The job of the suggested values, its identity recorded in the trial's user attrs; InfeasibleTrial when
    the values make no valid configuration."""
    trial.set_user_attr("config", chosen)
    try:
        job = build_job(ctx, chosen, trial.number)
    except SpecError as e:
        trial.set_user_attr("error", str(e))
        raise InfeasibleTrial(f"{_fmt(chosen)} is not a valid configuration: {e}") from None
    for k, v in (("config_hash", job.hash), ("seed", job.seed), ("run_name", run_name(job.config)), ("job", job.name),
                 ("config_path", str(job_dir(ctx.store, job) / CONFIG))):
        trial.set_user_attr(k, v)
    return job


def _train(ctx: TrialContext, trial, job: Job, watcher: _Watcher) -> JobOutcome:
    """Train the job through the runner, reporting its evaluations to the trial as they appear and
    interrupting it (it checkpoints) when the pruner says so; Ctrl-C abandons it and re-queues the trial."""
    run = launch(ctx, job)
    try:
        while run.poll() is None:
            if ctx.stop.wait(ctx.poll):
                run.abandon()
                _interrupted(ctx, trial)
            if run.running is None:  # not started yet: another runner holds the job; its values are not ours
                continue
            if watcher.check() and watcher.pruned is None and _should_prune(trial, watcher):
                run.interrupt()  # SIGINT: the trainer checkpoints and ends its run KILLED
    except BaseException:
        if run.outcome is None:
            run.abandon()
        raise
    return run.outcome


def _settle(ctx: TrialContext, trial, watcher: _Watcher, outcome: JobOutcome):
    """The trial's value(s) once its job ended; TrialPruned, SweepInterrupted or TrialFailed when it has none."""
    import optuna  # heavy: optuna only once a sweep runs

    watcher.check(final=True)
    if watcher.pruned is None:
        _should_prune(trial, watcher)  # replay values the poll had not seen yet
    if watcher.pruned is not None:
        step, value = watcher.pruned
        watcher.tag({TAG_PRUNED: "true"})
        trial.set_user_attr("pruned_at_step", step)
        trial.set_user_attr("run_id", watcher.run_id)
        ctx.log(f"trial {trial.number}: pruned at step {step} ({watcher.metric}={value:.6g}); checkpoint kept "
                f"(step {outcome.step}), run {watcher.run_id}")
        raise optuna.TrialPruned(f"pruned at step {step}")
    if outcome.state == "stopped" and ctx.stop.is_set():
        _interrupted(ctx, trial)
    if outcome.state != "finished":
        trial.set_user_attr("error", outcome.reason or outcome.state)
        raise TrialFailed(f"training {outcome.state}: {outcome.reason or 'no reason given'}"
                          + (f"; log: {outcome.log}" if outcome.log else ""))
    run = _find_run(ctx, watcher.job, outcome.run_id)
    values = objective_values(ctx, run, watcher.job)
    trial.set_user_attr("run_id", run.info.run_id)
    trial.set_user_attr("job_seconds", round(outcome.seconds, 3))  # the job's own time; the rest is the sweep's
    ctx.log(f"trial {trial.number}: finished, {_fmt_values(ctx.space, values)} (run {run.info.run_name})")
    return values if ctx.space.multi else values[0]


# -- reuse -------------------------------------------------------------------------------------------

def _wait_while_running(ctx: TrialContext, job, number: int) -> str:
    """The job's state, after waiting for any other process that is training it now."""
    status = job_status(ctx.store, job)
    if status.state == "running":
        ctx.log(f"trial {number}: config {job.hash} seed {job.seed} is being trained by {status.reason}; "
                "waiting for it, then reusing its result")
    while status.state == "running":
        if ctx.stop.wait(max(ctx.poll, 1.0)):
            raise SweepInterrupted(f"trial {number} interrupted while waiting")
        status = job_status(ctx.store, job)
    return status.state


def _reuse(ctx: TrialContext, trial, job):
    """A finished (hash, seed): record its values without training."""
    run = _find_run(ctx, job)
    if not ctx.space.multi:
        metric = ctx.space.objectives[0].metric
        if metric not in ("gflops", "params"):
            for step, value in metric_history(_client(ctx), run.info.run_id, protocol_metric(ctx, run, job, metric)):
                trial.report(value, step)
    values = objective_values(ctx, run, job)
    trial.set_user_attr("run_id", run.info.run_id)
    trial.set_user_attr("run_name", run.info.run_name)  # named by whichever spec trained it
    trial.set_user_attr("reused", True)
    ctx.log(f"trial {trial.number}: config {job.hash} seed {job.seed} was already trained (run "
            f"{run.info.run_name}, {run.info.run_id}); reusing {_fmt_values(ctx.space, values)}, training nothing")
    return values if ctx.space.multi else values[0]


# -- values ------------------------------------------------------------------------------------------

_clients: dict[str, Any] = {}


def _client(ctx: TrialContext):
    """One MlflowClient per tracking URI, shared by the worker threads."""
    from mlflow import MlflowClient  # heavy: mlflow only once a trial reads its values

    if ctx.tracking_uri not in _clients:
        _clients[ctx.tracking_uri] = MlflowClient(tracking_uri=ctx.tracking_uri)
    return _clients[ctx.tracking_uri]


def _find_run(ctx: TrialContext, job, run_id: str | None = None):
    """The job's MLflow run: by id when the runner knows it, else by (hash, seed)."""
    if run_id:
        return _client(ctx).get_run(run_id)
    run = Tracker(ctx.store, ctx.tracking_uri).find(job.hash, job.seed)
    if run is None:
        raise TrialFailed(f"config {job.hash} seed {job.seed} finished in {ctx.store} but has no MLflow run in "
                          f"{ctx.tracking_uri}; pass the --tracking-uri it was trained with")
    return run


def metric_history(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, one per step (the newest value when a step was logged twice), sorted."""
    latest: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, metric):
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    return [(s, v) for s, (_, v) in sorted(latest.items())]


def protocol_metric(ctx: TrialContext, run, job, metric: str) -> str:
    """The run's key of `metric` under the study's protocol: the bare name when the run's own protocol is the
    one the job's evaluation request resolved to (progress.json), else the suffixed key that protocol was
    logged under (`fid/<sampler>-...-<digest8>`, e.g. a run another spec trained, evaluated for the study)."""
    record = evaluation_record(progress_or_empty(checkpoint_dir(ctx.store, job.config)), job.config)
    digest = record.get("protocol")
    if not digest or run.data.tags.get("eval.protocol") in (None, digest):
        return metric
    suffixed = [k for k in run.data.metrics if k.startswith(f"{metric}/") and k.endswith(f"-{digest[:8]}")]
    if not suffixed:
        raise TrialFailed(f"run {run.info.run_id} ({run.info.run_name}) has no {metric!r} under the study's "
                          f"protocol {digest}; rerun the sweep to evaluate it")
    return suffixed[0]


def objective_values(ctx: TrialContext, run, job) -> list[float]:
    """Each objective of a finished run: a metric at its final evaluation, or gflops/params of the config."""
    values = []
    for o in ctx.space.objectives:
        if o.from_config:
            tag = run.data.tags.get(f"fcdm.{o.metric}")
            values.append(float(tag) if tag is not None else config_cost(job.config)[o.metric])
            continue
        history = metric_history(_client(ctx), run.info.run_id, protocol_metric(ctx, run, job, o.metric))
        if not history:
            raise TrialFailed(f"run {run.info.run_id} ({run.info.run_name}) logged no metric {o.metric!r}; the "
                              f"objective needs it: make the spec's eval.metrics measure it, or change search.metric")
        values.append(history[-1][1])
    return values


def config_cost(cfg) -> dict[str, float]:
    """gflops (DiT convention) and params of a config, counted on the meta device."""
    from fcdm.models.flops import config_gflops  # heavy: torch, only for a gflops / params objective

    params, gflops = config_gflops(cfg.model.name, cfg.data_shape, **model_kwargs(cfg))
    return {"gflops": gflops, "params": float(params)}


# -- watching a training trial -----------------------------------------------------------------------

class _Watcher:
    """Follows a training job's evaluations through its progress sidecar and MLflow."""

    def __init__(self, ctx: TrialContext, trial, job):
        self.ctx, self.trial, self.job = ctx, trial, job
        self.dir = checkpoint_dir(ctx.store, job.config)
        saved = list_checkpoints(self.dir)
        self.start_step = saved[-1][0] if saved else 0
        self.metric = ctx.space.objectives[0].metric
        self.reportable = not ctx.space.multi and self.metric not in ("gflops", "params")
        self.seen: list[tuple[int, float]] = []  # (step, value) known so far, in step order
        self.reported = 0  # how many of `seen` went to trial.report
        self.pruned: tuple[int, float] | None = None
        self.run_id: str | None = None
        self._signature = None

    def check(self, final: bool = False) -> bool:
        """Fetch new evaluations; True when there are unreported ones."""
        if not self.reportable:
            return False
        progress = progress_or_empty(self.dir)
        signature = (tuple(progress.get("evals_done") or ()), progress.get("status"))
        # The trainer updates its sidecar after each evaluation: MLflow is only asked when that changed.
        if not final and (not signature[0] or signature == self._signature):
            return self.reported < len(self.seen)
        self.run_id = self.run_id or progress.get("run_id")
        if self.run_id is None:
            run = Tracker(self.ctx.store, self.ctx.tracking_uri).find(self.job.hash, self.job.seed)
            self.run_id = run.info.run_id if run else None
        if self.run_id is None:
            return False
        try:  # under the study's protocol: a reused run may be evaluated for it beside its own
            key = protocol_metric(self.ctx, _client(self.ctx).get_run(self.run_id), self.job, self.metric)
        except TrialFailed:  # not logged yet under it (MLflow may lag the sidecar): look again later
            return False
        self.seen = metric_history(_client(self.ctx), self.run_id, key)
        if len(self.seen) >= len(signature[0]):  # MLflow may lag the sidecar by a moment: look again then
            self._signature = signature
        return self.reported < len(self.seen)

    def tag(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag  # heavy: mlflow only once a trial is pruned

        if self.run_id:
            _client(self.ctx).log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def _should_prune(trial, w: _Watcher) -> bool:
    """Report unreported values in step order; at the first the pruner rejects, remember it and say so.
    The final evaluation is reported (for plots) but never pruned: its work is done."""
    while w.reported < len(w.seen):
        step, value = w.seen[w.reported]
        trial.report(value, step)
        w.reported += 1
        if step < w.job.config.train.steps and trial.should_prune():
            w.pruned = (step, value)
            return True
    return False


def _interrupted(ctx: TrialContext, trial):
    """Queue the same parameters again (the rerun resumes the checkpoint) and stop this trial."""
    trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    trial.set_user_attr("error", "interrupted; retried as a new trial with the same parameters")
    raise SweepInterrupted(f"trial {trial.number} interrupted; its job was checkpointed and is queued again")


def _fmt(chosen: dict[str, Any]) -> str:
    return " ".join(f"{k.removeprefix('model.args.')}={f'{v:.6g}' if isinstance(v, float) else v}"
                    for k, v in chosen.items())


def _fmt_values(space: SearchSpace, values: list[float]) -> str:
    return ", ".join(f"{o.metric}={v:.6g}" for o, v in zip(space.objectives, values))


# -- launching the job -------------------------------------------------------------------------------

slot = threading.local()  # each sweep worker thread sets slot.env: its share of CPU threads / its GPU(s)


def launch(ctx: TrialContext, job: Job) -> JobRun:
    """Claim and start the job through the runner (fcdm.runner.JobRun) from this thread, which then
    polls it until it ends (the runner's children die with the thread that started them)."""
    return JobRun(job, ctx.store, ctx.tracking_uri, ctx.launcher, ctx.launcher_options,
                  env=getattr(slot, "env", None))
