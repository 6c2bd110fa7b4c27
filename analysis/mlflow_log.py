"""Logging a report to MLflow: its folder as the artifacts of the report run `<spec>-<profile>` in the spec's
experiment (one run per spec and profile, updated by each report), from a helper process.

    logger = ReportLogger(uri, store)           # starts `python -m analysis.mlflow_log` at once
    ...                                          # expand, collect, draw: MLflow's set-up overlaps this
    rep.run_id = logger.log(rep, experiment)     # LogError when MLflow refused the files
    logger.close()
    log_report(rep, uri, store, experiment)      # the same in this process (bench/report.py times it)

MLflow's import and its SQL store's set-up are ~3 s of CPU (measured, bench/report.py): the helper
process overlaps them with making the report on a second core. This module imports neither MLflow (until
it logs) nor the report's modules (pandas, matplotlib), so the helper starts fast.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fcdm.store.tracking import reopen_run

if TYPE_CHECKING:
    from analysis.report import Report

REPORT_TAG = "fcdm.report"  # "<spec>-<profile>" on the report run; it has no fcdm.config_hash: it is no job
NOTE_LIMIT = 7000  # MLflow truncates tag values at 8000 characters, with a warning


class LogError(RuntimeError):
    """The report's files were written, but logging them to MLflow failed."""


@dataclass(frozen=True)
class LoggedReport:
    """What logging reads of a Report (analysis.report.Report has these fields too)."""
    spec: str
    profile: str
    out: Path
    summary: list[str] = field(default_factory=list)


def log_report(rep: Report | LoggedReport, tracking_uri: str, store: Path, experiment: str) -> str:
    """Log the report folder as artifacts of the report run `<spec>-<profile>` in `experiment` (created, with
    its artifacts in the store, as the trainer creates experiments); the same run is reused each time."""
    from mlflow import MlflowClient  # heavy (seconds): only in the process that logs

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = (Path(store) / "artifacts").as_uri() if tracking_uri.startswith("sqlite:") else None
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        exp_id = exp.experiment_id
    key = f"{rep.spec}-{rep.profile}"
    run_id, _ = reopen_run(client, exp_id, {REPORT_TAG: key}, f"report-{key}",
                           {"fcdm.report_spec": rep.spec, "fcdm.report_profile": rep.profile})
    client.log_artifacts(run_id, str(rep.out), "report")
    note = "\n".join(f"- {s}" for s in rep.summary)
    if len(note) > NOTE_LIMIT:
        note = note[:note.rfind("\n", 0, NOTE_LIMIT)] + "\n- ... (the rest in report/report.md)"
    client.set_tag(run_id, "mlflow.note.content", f"Report of {key} (artifacts: report/report.html)\n\n{note}")
    client.set_terminated(run_id, status="FINISHED")
    return run_id


class ReportLogger:
    """log_report in a helper process started before the report is made. Protocol: one JSON line in (uri,
    store), one JSON line in (what to log), one JSON line out ({"run_id"} or {"error"})."""

    def __init__(self, uri: str, store: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "analysis.mlflow_log"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.proc.stdin.write(json.dumps({"uri": uri, "store": str(store)}) + "\n")
        self.proc.stdin.flush()

    def log(self, rep: Report, experiment: str) -> str:
        """The report run's id; LogError when the helper could not log."""
        self.proc.stdin.write(json.dumps({"out": str(rep.out), "spec": rep.spec, "profile": rep.profile,
                                          "summary": rep.summary, "experiment": experiment}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline() or '{"error": "the logging process died"}')
        if "error" in answer:
            raise LogError(f"the report was written to {rep.out} but logging it to MLflow failed: "
                           f"{answer['error']}; rerun with --no-log to skip logging")
        return answer["run_id"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # never asked to log (the report failed first), or done
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()


def _worker() -> None:
    """The helper process of ReportLogger: set MLflow up at once, then log when told to."""
    try:
        first = json.loads(sys.stdin.readline())
        from mlflow import MlflowClient  # heavy: imported first thing, while the parent makes the report

        MlflowClient(tracking_uri=first["uri"]).search_experiments(max_results=1)  # imports + opens the store
        job = json.loads(sys.stdin.readline())
        rep = LoggedReport(job["spec"], job["profile"], Path(job["out"]), job["summary"])
        run_id = log_report(rep, first["uri"], Path(first["store"]), job["experiment"])
        print(json.dumps({"run_id": run_id}), flush=True)
    except Exception as e:  # one line back to the parent, which says it in its own words
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    _worker()
