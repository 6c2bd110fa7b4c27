"""What a sweep found: the best trial (or the Pareto front), printed and logged as a study-level MLflow run.

The study run lives in the spec's MLflow experiment, tagged `fcdm.kind=study` and `fcdm.study=<name>`,
one per study (a rerun that adds trials updates it). It holds the search space as params, the best
values as metrics (step = finished trials, so reruns draw a curve), the best parameters as tags
`best.<key>`, and artifacts: `trials.csv`, `best.json` (or `pareto.json`), the best configuration as
YAML, and optuna's matplotlib plots (optimisation history, intermediate values, parameter importances,
Pareto front).
"""
from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fcdm.spec.search import SearchSpace
from fcdm.store.tracking import TAG_KIND, TAG_STUDY, reopen_run


@dataclass
class TrialRow:
    """One finished trial as the summary shows it."""
    number: int
    values: list[float]
    params: dict[str, Any]
    run_id: str | None
    run_name: str | None
    config_hash: str | None
    reused: bool = False
    config_path: str | None = None  # the job's full run config, as the trainer read it


@dataclass
class SweepSummary:
    study: str
    storage: str
    objectives: list[str]
    directions: list[str]
    counts: dict[str, int]  # Optuna state name -> trials
    best: list[TrialRow] = field(default_factory=list)  # one row, or the Pareto front
    study_run_id: str | None = None
    artifacts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False


def _row(t) -> TrialRow:
    a = t.user_attrs
    return TrialRow(t.number, list(t.values), dict(a.get("config", t.params)), a.get("run_id"), a.get("run_name"),
                    a.get("config_hash"), bool(a.get("reused")), a.get("config_path"))


def summarize(study, space: SearchSpace, storage_label: str) -> SweepSummary:
    """Counts per state and the best trial (single objective) or the Pareto front (several)."""
    from optuna.trial import TrialState  # heavy: optuna only once a sweep runs

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    summary = SweepSummary(study.study_name, storage_label, [o.metric for o in space.objectives], space.directions,
                           counts)
    if counts.get("COMPLETE"):
        best = study.best_trials if space.multi else [study.best_trial]
        summary.best = [_row(t) for t in sorted(best, key=lambda t: t.values)]
    return summary


def format_summary(s: SweepSummary) -> str:
    """Plain text: counts, then the best trial or every Pareto-optimal trial with its config and run."""
    counts = ", ".join(f"{n} {k.lower()}" for k, n in s.counts.items()) or "no trials"
    lines = [f"study {s.study!r} ({s.storage}): {counts}"]
    if not s.best:
        lines.append("no completed trial yet: nothing to report")
    else:
        lines.append("Pareto front (" + " vs ".join(f"{m} ({d[:3]})" for m, d in zip(s.objectives, s.directions))
                     + "):" if len(s.objectives) > 1 else f"best trial ({s.objectives[0]}, {s.directions[0]}):")
        for r in s.best:
            values = ", ".join(f"{m}={v:.6g}" for m, v in zip(s.objectives, r.values))
            params = " ".join(f"{k}={f'{v:.6g}' if isinstance(v, float) else v}" for k, v in r.params.items())
            reused = ", reused" if r.reused else ""
            lines.append(f"  trial {r.number}: {values}  {params}")
            lines.append(f"    run {r.run_name or '?'} ({r.run_id or '?'}{reused}); "
                         f"config {r.config_hash}: {r.config_path}")
    if s.study_run_id:
        lines.append(f"study run {s.study_run_id}: {', '.join(s.artifacts)}")
    lines += [f"note: {n}" for n in s.notes]
    return "\n".join(lines)


# -- the study-level MLflow run ----------------------------------------------------------------------

def log_study_run(study, space: SearchSpace, summary: SweepSummary, client, experiment_id: str,
                  best_config: Callable[[TrialRow], str] | None = None) -> SweepSummary:
    """Create or update the study's MLflow run; fills summary.study_run_id, .artifacts and .notes."""
    from mlflow.entities import Metric, Param, RunTag  # heavy: only when a sweep ends

    run_id, created = reopen_run(client, experiment_id, {TAG_KIND: "study", TAG_STUDY: study.study_name},
                                 f"study-{study.study_name}")
    if created:  # MLflow params are immutable: the search space, logged once with the run.
        client.log_batch(run_id, params=[Param(f"search.{p.key}", _describe(p)[:500]) for p in space.params]
                         + [Param("objectives", ",".join(f"{o.metric}:{o.direction}" for o in space.objectives))])
    n_done = summary.counts.get("COMPLETE", 0) + summary.counts.get("PRUNED", 0)
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{k.lower()}", float(v), now, n_done) for k, v in summary.counts.items()]
    tags = [RunTag("fcdm.storage", summary.storage)]
    if summary.best and not space.multi:
        b = summary.best[0]
        metrics.append(Metric(f"best_{space.objectives[0].metric}", b.values[0], now, n_done))
        tags += [RunTag(f"best.{k}", str(v)[:5000]) for k, v in b.params.items()]
        tags += [RunTag("best.trial", str(b.number)), RunTag("best.run_id", b.run_id or "")]
    if space.multi:
        metrics.append(Metric("pareto_size", float(len(summary.best)), now, n_done))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_artifacts(study, space, summary, Path(tmp), best_config)
        for f in files:
            client.log_artifact(run_id, str(f))
        summary.artifacts = [f.name for f in files]
    client.set_terminated(run_id, "FINISHED")
    summary.study_run_id = run_id
    return summary


def _describe(p) -> str:
    if p.kind == "categorical":
        text = f"categorical{json.dumps(list(p.choices), default=str)}"
    else:
        text = f"{p.kind}[{p.low}, {p.high}]" + (" log" if p.log else "") + (f" step {p.step}" if p.step else "")
    return text + (f" when {dict((k, list(v)) for k, v in p.when)}" if p.when else "")


def _write_artifacts(study, space: SearchSpace, summary: SweepSummary, out: Path,
                     best_config: Callable[[TrialRow], str] | None) -> list[Path]:
    files = []
    df = study.trials_dataframe(attrs=("number", "state", "values", "params", "user_attrs", "duration"))
    files.append(out / "trials.csv")
    df.to_csv(files[-1], index=False)
    rows = [r.__dict__ for r in summary.best]
    files.append(out / ("pareto.json" if space.multi else "best.json"))
    files[-1].write_text(json.dumps(rows, indent=1, default=str))
    if best_config and summary.best:
        files.append(out / "best_config.yaml")
        files[-1].write_text("".join(f"# trial {r.number}\n{best_config(r)}\n---\n" for r in summary.best))
    files += _plots(study, space, out, summary.notes)
    return files


def _plots(study, space: SearchSpace, out: Path, notes: list[str]) -> list[Path]:
    """optuna's matplotlib plots as PNG files; a plot optuna cannot draw yet is skipped with a note."""
    import matplotlib  # heavy: only when a sweep ends

    matplotlib.use("Agg")  # no display, and safe in worker threads
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as vis

    names = [o.metric for o in space.objectives]
    wanted: list[tuple[str, Callable]] = []
    if space.multi:
        wanted.append(("pareto_front", lambda: vis.plot_pareto_front(study, target_names=names)))
        for i, n in enumerate(names):
            wanted.append((f"param_importances_{n}", lambda i=i, n=n: vis.plot_param_importances(
                study, target=lambda t: t.values[i], target_name=n)))
    else:
        wanted += [("optimization_history", lambda: vis.plot_optimization_history(study, target_name=names[0])),
                   ("intermediate_values", lambda: vis.plot_intermediate_values(study)),
                   ("param_importances", lambda: vis.plot_param_importances(study, target_name=names[0]))]
    files = []
    for name, draw in wanted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                ax = draw()
        except Exception as e:  # e.g. importances need two completed trials with varied parameters
            notes.append(f"{name}.png not drawn: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        files.append(out / f"{name}.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
    return files
