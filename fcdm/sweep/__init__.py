"""`fcdm-ablate sweep --optuna`: an Optuna study over a spec's `search` space, each trial trained as a job.

    from fcdm.sweep import run_sweep
    summary = run_sweep("ablations/sweep.yaml", profile="smoke", trials=8, workers=2)

Modules: `run` (the sweep: workers, budget, Ctrl-C), `study` (storages, samplers, pruners, the study),
`trial` (one trial: suggested values -> job -> reuse or train, pruning), `results` (the best trial or
Pareto front, printed and logged as a study-level MLflow run).
"""
from fcdm.sweep.results import SweepSummary, format_summary
from fcdm.sweep.run import open_dashboard, run_sweep
from fcdm.sweep.study import SweepError

__all__ = ["SweepError", "SweepSummary", "format_summary", "open_dashboard", "run_sweep"]
