"""The job runner behind `fcdm-ablate run` and `plan`: train a spec's jobs, each in its own process,
skipping finished ones, resuming partial ones, sharing the work with other runners on the same store.

    from fcdm.runner import run_jobs
    summary = run_jobs(expand("ablations/kernel_size.yaml"), parallel=2)   # what `run` does

Modules: `run` (scheduling: slots, live view, Ctrl-C), `job_run` (one job, for the sweep), `session` (what
every job goes through: claim, start, poll, record), `summary` (outcomes), `live` (the terminal view),
`plan` (what a spec will run and cost, without running it).
"""
from fcdm.runner.job_run import JobRun, run_one
from fcdm.runner.run import run_jobs
from fcdm.runner.summary import JobOutcome, RunSummary

__all__ = ["JobOutcome", "JobRun", "RunSummary", "run_jobs", "run_one"]
