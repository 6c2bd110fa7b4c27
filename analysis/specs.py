"""Reports of specs: expand, collect, write, and log the files to a report run in MLflow; and finding
every spec that has runs in a store (what `fcdm-ablate report` with no SPEC reports).

    rep = report_spec("ablations/kernel_size.yaml", "smoke", store="runs")
    for path, profile in specs_in_store(uri)[0]: ...
"""
from __future__ import annotations

from pathlib import Path

from analysis.report import FORMATS, Report, build_report
from analysis.store import read_tags, spec_names

REPORT_TAG = "fcdm.report"  # "<spec>-<profile>" on the report run; it has no fcdm.config_hash: it is no job
ROOT_ABLATIONS = Path(__file__).resolve().parents[1] / "ablations"


def default_spec_dirs() -> list[Path]:
    """Where spec files are looked for: ./ablations, then the package checkout's ablations/."""
    dirs = [Path("ablations").resolve(), ROOT_ABLATIONS]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def find_spec_file(name: str, dirs: list[Path]) -> Path | None:
    """The spec file whose `name:` is `name`: `<dir>/<name>.yaml` first, else any spec in the folders."""
    from fcdm.spec import SpecError, load_spec

    candidates = [d / f"{name}{ext}" for d in dirs for ext in (".yaml", ".yml")]
    candidates += [p for d in dirs for p in sorted(d.glob("*.y*ml")) if p not in candidates]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            if load_spec(path).name == name:
                return path
        except SpecError:
            continue
    return None


def specs_in_store(tracking_uri: str, dirs: list[Path] | None = None) -> tuple[list[tuple[Path, str | None]], list[str]]:
    """([(spec file, profile)], [warnings]) for every spec some run in the store is tagged with
    (`fcdm.spec`, `fcdm.specs`), one entry per profile its runs were tagged with (`fcdm.profile`; None:
    untagged, the spec's default). A spec whose file is not found is a warning, not an error."""
    dirs = default_spec_dirs() if dirs is None else dirs
    found: dict[str, set] = {}
    for tags in read_tags(tracking_uri):
        for name in spec_names(tags):
            found.setdefault(name, set()).add(tags.get("fcdm.profile") or None)
    out, warnings = [], []
    for name in sorted(found):
        path = find_spec_file(name, dirs)
        if path is None:
            warnings.append(f"runs are tagged with spec {name!r} but no spec file with that name is in "
                            f"{', '.join(map(str, dirs)) or './ablations'}; pass its path: fcdm-ablate report PATH")
            continue
        out += [(path, p) for p in sorted(found[name], key=lambda p: p or "")]
    return out, warnings


def report_spec(spec, profile: str | None = None, store=None, tracking_uri: str | None = None,
                out: Path | None = None, metric: str = "fid", step: int | None = None, formats=FORMATS,
                overrides: tuple[str, ...] = (), log: bool = True) -> Report:
    """Collect `spec` (path or Spec) under `profile` from the store and write its report into `out`
    (default `<store>/reports/<spec>-<profile>/`); with `log`, log the files to the spec's experiment."""
    from fcdm.store.layout import resolve_store, resolve_tracking_uri

    from analysis.collect import collect_spec

    store = resolve_store(store)
    uri = resolve_tracking_uri(store, tracking_uri)
    # Never create a store by reporting on it: without its database this is the collect's StoreError.
    exists = not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()
    logger = _Logger(uri, store) if log and exists else None
    try:
        frame = collect_spec(spec, profile, uri, overrides)
        name, profile = frame.attrs["spec"], frame.attrs["profile"]
        out = Path(out) if out is not None else store / "reports" / f"{name}-{profile}"
        rep = build_report(frame, out, name, profile, metric=metric, step=step, formats=formats,
                           published_sources=None)
        if logger:
            rep.run_id = logger.log(rep, frame.attrs["experiment"])
    finally:
        if logger:
            logger.close()
    return rep


class _Logger:
    """log_report in a helper process started before the report is made: MLflow's import and its SQL
    store's set-up are ~3 s of CPU (measured, bench/report.py) that this overlaps with expanding,
    reading and drawing on a second core. Protocol: one JSON line in (uri, store), one JSON line in (what
    to log), one JSON line out ({"run_id"} or {"error"})."""

    def __init__(self, uri: str, store: Path):
        import json
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-m", "analysis.specs"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.proc.stdin.write(json.dumps({"uri": uri, "store": str(store)}) + "\n")
        self.proc.stdin.flush()

    def log(self, rep: Report, experiment: str) -> str:
        import json

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


class LogError(RuntimeError):
    """The report's files were written, but logging them to MLflow failed."""


def _log_worker() -> None:
    """The helper process of _Logger: set MLflow up at once, then log when told to."""
    import json
    import sys

    try:
        first = json.loads(sys.stdin.readline())
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=first["uri"]).search_experiments(max_results=1)  # imports + opens the store
        job = json.loads(sys.stdin.readline())
        rep = Report(job["spec"], job["profile"], Path(job["out"]), summary=job["summary"])
        run_id = log_report(rep, first["uri"], Path(first["store"]), job["experiment"])
        print(json.dumps({"run_id": run_id}), flush=True)
    except Exception as e:  # one line back to the parent, which says it in its own words
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)


def log_report(rep: Report, tracking_uri: str, store: Path, experiment: str) -> str:
    """Log the report folder as artifacts of the report run `<spec>-<profile>` in `experiment` (created, with
    its artifacts in the store, as the trainer creates experiments); the same run is reused each time."""
    from mlflow import MlflowClient

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
    found = client.search_runs([exp_id], filter_string=f"tags.`{REPORT_TAG}` = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(exp_id, run_name=f"report-{key}", tags={
            REPORT_TAG: key, "fcdm.report_spec": rep.spec, "fcdm.report_profile": rep.profile}).info.run_id
    client.log_artifacts(run_id, str(rep.out), "report")
    note = "\n".join(f"- {s}" for s in rep.summary)
    if len(note) > 7000:  # MLflow truncates tag values at 8000 characters, with a warning
        note = note[:note.rfind("\n", 0, 7000)] + "\n- ... (the rest in report/report.md)"
    client.set_tag(run_id, "mlflow.note.content", f"Report of {key} (artifacts: report/report.html)\n\n{note}")
    client.set_terminated(run_id, status="FINISHED")
    return run_id


if __name__ == "__main__":
    _log_worker()
