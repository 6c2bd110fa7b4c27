"""Reports of specs, as `fcdm-ablate report` makes them: expand, collect, write, and log the files to a
report run in MLflow (analysis.mlflow_log); finding every spec that has runs in a store; and the command's
whole job, several specs at once (report_many).

    rep = report_spec("ablations/kernel_size.yaml", "smoke", store="runs")
    for path, profile in specs_in_store(uri)[0]: ...
    failed = report_many([], store="runs", on_report=print, on_warning=print, on_error=print)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from analysis.aggregate import ReportError
from analysis.collect import collect_spec
from analysis.mlflow_log import LogError, ReportLogger
from analysis.report import FORMATS, MARKER, Report, build_report, check_out
from analysis.store import read_tags, spec_names
from fcdm.errors import UserError
from fcdm.spec import SpecError, load_spec
from fcdm.spec.job import TAG_PROFILE
from fcdm.store.layout import resolve_store, resolve_tracking_uri

ROOT_ABLATIONS = Path(__file__).resolve().parents[1] / "ablations"
# What one spec's report fails with when a user got something wrong (a spec, a config, the request, the
# store, data a spec needs): UserErrors, each one line (the CLI prints it and exits with 2).
REPORT_ERRORS = (UserError,)
Target = tuple[Path, str | None]  # a spec file and the profile to report (None: the spec's default)


def default_spec_dirs() -> list[Path]:
    """Where spec files are looked for: ./ablations, then the package checkout's ablations/."""
    dirs = [Path("ablations").resolve(), ROOT_ABLATIONS]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def find_spec_file(name: str, dirs: list[Path]) -> Path | None:
    """The spec file whose `name:` is `name`: `<dir>/<name>.yaml` first, else any spec in the folders."""
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


def specs_in_store(tracking_uri: str, dirs: list[Path] | None = None) -> tuple[list[Target], list[str]]:
    """([(spec file, profile)], [warnings]) for every spec some run in the store is tagged with
    (`fcdm.spec`, `fcdm.specs`), one entry per profile its runs were tagged with (`fcdm.profile`; None:
    untagged, the spec's default). A spec whose file is not found is a warning, not an error."""
    dirs = default_spec_dirs() if dirs is None else dirs
    found: dict[str, set] = {}
    for tags in read_tags(tracking_uri):
        for name in spec_names(tags):
            found.setdefault(name, set()).add(tags.get(TAG_PROFILE) or None)
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
    store = resolve_store(store)
    uri = resolve_tracking_uri(store, tracking_uri)
    # Never create a store by reporting on it: without its database this is the collect's StoreError.
    exists = not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()
    logger = ReportLogger(uri, store) if log and exists else None
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


def parse_formats(text: str) -> tuple[str, ...]:
    """'md,csv' -> ('md', 'csv'); ReportError for an unknown or empty list."""
    chosen = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise ReportError(f"--format {text!r}: {bad[0] if bad else 'empty'} is not a report format; allowed values "
                          f"(comma-separated): {', '.join(FORMATS)}")
    return chosen


def report_targets(specs: Sequence[Path] | None, profile: str | None, store: Path,
                   tracking_uri: str | None) -> tuple[list[Target], list[str]]:
    """([(spec file, profile)], [warnings]) to report: the given specs under `profile`, or with none, every
    spec with runs in the store and each profile its runs were tagged with (only `profile`'s when given).
    ReportError when the store has no spec's runs, StoreError when it cannot be read."""
    if specs:
        return [(Path(p), profile) for p in specs], []
    uri = resolve_tracking_uri(store, tracking_uri)
    found, warnings = specs_in_store(uri)
    targets = [(p, prof) for p, prof in found if profile is None or (prof or profile) == profile]
    if not targets:
        raise ReportError(f"no runs in {uri} are tagged with a spec" + (f" and profile {profile!r}" if profile else "")
                          + "; run one first (fcdm-ablate run ablations/kernel_size.yaml) or pass SPEC")
    return targets, warnings


def report_many(specs: Sequence[Path] | None, profile: str | None = None, store=None, tracking_uri: str | None = None,
                out: Path | None = None, formats: str = ",".join(FORMATS), *, metric: str = "fid",
                step: int | None = None, overrides: tuple[str, ...] = (), log: bool = True,
                on_report: Callable[[Report], None], on_warning: Callable[[str], None],
                on_error: Callable[[str], None]) -> int:
    """`fcdm-ablate report`: the report of each spec file in `specs`, or with none, of every spec (and
    profile) with runs in the store (report_targets); returns how many failed.

    Each report goes to `out`, or with several, to `out/<spec file stem>-<profile>/` (default: each in
    `<store>/reports/<spec>-<profile>/`), and is passed to `on_report` when written. Raises one of
    REPORT_ERRORS when nothing can be reported (bad formats, a missing spec file, an unreadable store, no
    runs) or the only spec asked for fails; with several specs asked for, a failing one goes to `on_error`
    (and counts as failed) and the others are still made. With no SPEC (every spec in the store), a spec that
    cannot be reported is a warning (`on_warning`), never a failure: the store holds runs of many specs, and
    one of them being unreportable here must not stop the others (ReportError only when none could be
    reported). A report written but not logged (LogError) goes to `on_error` either way."""
    chosen = parse_formats(formats)
    for path in specs or []:
        if not Path(path).is_file():
            raise ReportError(f"{path}: no such spec file; pass the path of a spec such as ablations/kernel_size.yaml")
    store = resolve_store(store)
    targets, warnings = report_targets(specs, profile, store, tracking_uri)
    for w in warnings:
        on_warning(w)
    if out is not None:  # before collecting anything: a folder that is not a report is refused at once
        check_out(Path(out))
        if len(targets) > 1:  # one sub-folder each, in a folder marked as a report's
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / MARKER).write_text("written by fcdm-ablate report: a folder of reports\n")
    failed, skipped = 0, []
    for path, prof in targets:
        dest = out if out is None or len(targets) == 1 else Path(out) / f"{path.stem}-{prof or 'default'}"
        try:
            rep = report_spec(path, prof, store, tracking_uri, dest, metric=metric, step=step, formats=chosen,
                              overrides=tuple(overrides), log=log)
        except (*REPORT_ERRORS, LogError) as e:  # LogError: the files are there; only MLflow did not take them
            if specs and len(targets) == 1 and not isinstance(e, LogError):
                raise
            if not specs and not isinstance(e, LogError):
                skipped.append(f"{path} ({prof or 'default profile'}): not reported: {e}")
                on_warning(skipped[-1])
                continue
            on_error(str(e))
            failed += 1
            continue
        on_report(rep)
    if skipped and len(skipped) == len(targets):
        raise ReportError(f"no spec in the store could be reported ({len(skipped)} tried; the warnings above say why)")
    return failed
