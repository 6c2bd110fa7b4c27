"""Writing a report: a collected frame's tables, figures, report.md and a self-contained report.html
(analysis.specs collects a spec and calls this; analysis.mlflow_log logs the folder to MLflow).

    rep = build_report(frame, "runs/reports/kernel_size-smoke", "kernel_size", "smoke")
    rep.summary, rep.main, rep.files

Everything is written to a temporary folder beside the output and moved into place at the end, so
a failed report never leaves a half-written one. A report folder carries the marker file `.fcdm-report`;
`--out` may name only a missing or empty folder, or a previous report (with the marker): any other folder
is refused (check_out), never renamed or deleted. Nothing here trains or imports the trainer.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from analysis import comparison_figures, figures, tables
from analysis.aggregate import ReportError, View, describe_protocol, protocol_keys, protocols
from analysis.collect import MISSING, metric_columns
from analysis.comparison import compare, verdict
from analysis.html import to_html_document
from analysis.noise import noise_clause, noise_rows, noise_table
from analysis.published import published_table
from analysis.render import WRITERS, to_markdown

FORMATS = ("md", "tex", "csv", "html")
MARKER = ".fcdm-report"  # in every folder a report wrote: the next report may replace that folder as a whole
# What a report written before the marker existed holds: such a folder (with report.md) is a report too.
LEGACY_ENTRIES = frozenset({"report.md", "report.html", "data.csv", "tables", "figures"})
STATISTICS = ("Statistics: seeds of one configuration evaluated under one protocol pool into one cell: mean ± std "
              "over seeds with a 95% confidence interval of the mean (Student's t, n - 1 degrees of freedom). Each "
              "row is compared with its baseline (the row the spec pairs it with, and what the two are matched on) "
              "by Welch's two-sided t-test (unequal variances); the p-values of the rows compared with one baseline "
              "are adjusted with Holm's method, and 'beyond seed noise' means Holm-adjusted p < 0.05. One seed on "
              "either side, or no spread on both: no test, no claim. Speed-ups (steps, training compute and wall "
              "time to reach the baseline's final value) are ratios, summarised over seeds on the log scale: "
              "geometric mean [95% t-interval of the mean log speed-up]. "
              "Evaluation noise (one checkpoint evaluated with several sampling seeds) is shown beside the seed "
              "noise where it was measured.")


@dataclass
class Report:
    spec: str
    profile: str
    out: Path
    tables: list[tables.Table] = field(default_factory=list)
    main: tables.Table | None = None  # the ablation table of the main protocol (printed by the CLI)
    summary: list[str] = field(default_factory=list)  # one sentence per comparison with the baseline
    description: str = ""  # the spec's description (what it compares, and its recipe)
    counts: dict[str, int] = field(default_factory=dict)  # jobs per status
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None  # the MLflow report run the files were logged to


def build_report(frame: pd.DataFrame, out: Path, spec: str, profile: str, metric: str = "fid",
                 step: int | None = None, formats=FORMATS, baseline=None,
                 published_sources: tuple[str, ...] | None = None, title: str | None = None) -> Report:
    """Write the report of a collected frame into `out` (replaced as a whole at the end)."""
    formats = tuple(formats)
    _check_request(frame, metric, step)
    out = Path(out)
    check_out(out)
    rep = Report(spec, profile, out, counts=_counts(frame), description=frame.attrs.get("description", ""))
    with _staged(out) as tmp:
        (tmp / "tables").mkdir()
        (tmp / "figures").mkdir()
        sections = _sections(frame, rep, tmp, metric, step, baseline, published_sources)
        for t in rep.tables:
            for fmt in formats:
                if fmt in WRITERS:
                    (tmp / "tables" / f"{t.name}.{fmt}").write_text(WRITERS[fmt](t))
        frame.drop(columns=["axes"]).to_csv(tmp / "data.csv", index=False)
        md = _markdown(rep, frame, sections, metric, title)
        (tmp / "report.md").write_text(md)
        if "html" in formats:
            (tmp / "report.html").write_text(to_html_document(rep, sections, tmp, title or _title(rep)))
    rep.files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MARKER)
    return rep


def is_report_folder(out: Path) -> bool:
    """True when `out` is a folder a report wrote: it carries the marker (or, written before the marker
    existed, holds report.md and nothing but a report's files)."""
    if (out / MARKER).is_file():
        return True
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    return "report.md" in names and names <= LEGACY_ENTRIES


def check_out(out: Path) -> None:
    """ReportError unless a report may be written to `out`: a missing or empty folder, or a previous report."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out}: exists and is not a folder; pass a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not is_report_folder(out):
        raise ReportError(f"--out {out}: the folder holds files that are not a report (no {MARKER} marker); "
                          "nothing was changed; pass a new or empty folder")


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A new folder beside `out` that replaces `out` when the block succeeds; removed otherwise. `out` is
    replaced only when it is empty or a previous report (checked again just before)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # as a plain mkdir would (mkdtemp makes it private)
    try:
        yield tmp
        (tmp / MARKER).write_text("written by fcdm-ablate report: the next report to this folder replaces it\n")
        check_out(out)
        if out.is_dir() and not is_report_folder(out):
            out.rmdir()  # empty (checked): rmdir refuses a folder that filled meanwhile
            tmp.rename(out)
        elif out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed report's; gone already when it replaced `out`


def _check_request(frame: pd.DataFrame, metric: str, step: int | None) -> None:
    recorded = metric_columns(frame)
    if recorded and metric not in recorded:
        raise ReportError(f"--metric {metric!r} was not recorded by any run of this report; recorded metrics: "
                          f"{', '.join(recorded)}; pass one of those")
    if step is not None and recorded and metric in frame:
        steps = sorted(int(s) for s in frame.loc[frame[metric].notna(), "step"].unique())
        if step not in steps:
            raise ReportError(f"--step {step}: no run recorded {metric} at step {step}; evaluation steps: "
                              f"{', '.join(map(str, steps))}; pass one of those or leave --step out (each "
                              f"configuration's final evaluation)")


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    jobs = frame.drop_duplicates(["hash", "seed"])
    return {str(k): int(v) for k, v in jobs["status"].value_counts().items()}


@dataclass
class Section:
    heading: str
    protocol_text: str
    tables: list[tables.Table]
    figures: list[Path]  # PNGs relative to the report folder


def _sections(frame, rep: Report, tmp: Path, metric: str, step, baseline, published_sources) -> list[Section]:
    found = protocols(frame, metric) or [""]
    sections = []
    for i, proto in enumerate(found):
        view = View.build(frame, metric, proto, baseline)
        rows = frame[(protocol_keys(frame, metric) == proto) & frame[metric].notna()] if metric in frame else frame
        text = describe_protocol(rows, metric)
        suffix = "" if i == 0 else f"_protocol{i + 1}"
        results = compare(view, step)
        noise = noise_rows(view)
        made = [tables.fid_vs_steps(view, text), tables.fid_vs_gflops(view, text, step),
                tables.ablation(view, text, results, step), tables.steps_to_match(view, text, results)]
        if noise:
            made.append(noise_table(view, noise, text))
        for t in made:
            t.name += suffix
        figs = _figures(frame, view, text, results, noise, step, tmp / "figures", suffix)
        if i == 0:
            rep.main = made[2]
            rep.summary = [f"{view.baseline_note[0].upper()}{view.baseline_note[1:]}."]
            rep.summary += [verdict(view, r, noise_clause(noise, r.config)) for r in results]
            rep.summary += _unmeasured(view, results)
            grids = _last_grids(frame)
            if grids:
                figs += figures.save_image(figures.montage(grids, f"Newest logged grid of each configuration's "
                                                               f"lowest-seed run. Protocol: {text}."),
                                           tmp / "figures", "samples")
        rep.tables += made
        heading = "Results" if i == 0 else f"Results under another protocol ({i + 1} of {len(found)})"
        sections.append(Section(heading, text, made, [p.relative_to(tmp) for p in figs if p.suffix == ".png"]))
    extractor = frame.get("eval.extractor", pd.Series(dtype=object)).dropna()
    pub = published_table(rep.spec, comparable=bool(len(extractor)) and (extractor == "inception-v3-compat").all(),
                          sources=published_sources)
    runs = tables.runs_table(frame)
    extra = [pub] if pub else []
    rep.tables += extra + [runs]
    sections.append(Section("Published reference", "", extra, []))
    sections.append(Section("Runs", "", [runs], []))
    return sections


def _figures(frame, view: View, text: str, results, noise, step, out: Path, suffix: str) -> list[Path]:
    """The section's figures: the metric vs steps, compute and GFLOPs; the pairs; evaluation noise; a heatmap of
    a two-dimensional grid."""
    if not view.measured():
        return []
    base = view.metric.split("/")[0]
    figs = figures.save(figures.steps_figure(view, text), out, f"{base}_vs_steps{suffix}")
    figs += figures.save(figures.compute_figure(view, text), out, f"{base}_vs_compute{suffix}")
    figs += figures.save(figures.gflops_figure(view, text, step), out, f"{base}_vs_gflops{suffix}")
    drawn = [r for r in results if view.curve(r.config) and view.curve(r.baseline)]
    if 0 < len(drawn) <= comparison_figures.MAX_PAIRS:  # a grid of many rows vs one baseline: the tables say it
        figs += figures.save(comparison_figures.pair_figure(view, drawn, text), out, f"{base}_pairs{suffix}",
                             dpi=comparison_figures.PAIR_DPI)
    if noise:
        figs += figures.save(comparison_figures.noise_figure(view, noise, text), out,
                             f"{base}_evaluation_noise{suffix}")
    dims = comparison_figures.grid_dimensions(frame)
    if len(dims) == 2:
        figs += figures.save(comparison_figures.heatmap(view, dims, text, step), out, f"{base}_heatmap{suffix}")
    return figs


def _unmeasured(view: View, results) -> list[str]:
    """A line for each compared row with no comparison yet (no value under this protocol, or its baseline none)."""
    done, name, out = {r.config for r in results}, tables.metric_name(view.metric), []
    for c in view.configs:
        if not view.compared(c) or c in done:
            continue
        b = view.baseline_of(c)
        if view.final_step(b) is None:
            out.append(f"**{c}**: its baseline {b} has no {name} recorded yet; nothing to compare.")
        else:
            why = "; ".join(view.incomplete(c)) or "see the Runs table"
            out.append(f"**{c}**: no {name} recorded under this protocol yet ({why}); nothing to compare.")
    return out


def _last_grids(frame: pd.DataFrame) -> list[tuple[str, Path]]:
    """(label, local PNG) of the newest `samples/step_*.png` of each configuration's lowest-seed run."""
    runs: dict[str, list] = {}
    for r in frame.loc[frame["run_id"].notna(), ["config", "seed", "run_id", "artifact_uri"]].drop_duplicates(
            "run_id").to_dict("records"):
        runs.setdefault(r["config"], []).append(r)
    out = []
    for config in dict.fromkeys(frame["config"]):
        for r in sorted(runs.get(config, []), key=lambda r: r["seed"]):
            path = _newest_grid(r["artifact_uri"], r["run_id"], frame.attrs.get("tracking_uri"))
            if path is not None:
                out.append((f"{config} (seed {int(r['seed'])}, step {int(path.stem.split('_')[-1]):,})", path))
                break
    return out


def _newest_grid(artifact_uri: str | None, run_id: str, tracking_uri: str | None) -> Path | None:
    if not artifact_uri:
        return None
    if artifact_uri.startswith("file://") or "://" not in artifact_uri:
        folder = Path(urlparse(artifact_uri).path if "://" in artifact_uri else artifact_uri) / "samples"
        grids = sorted(folder.glob("step_*.png")) if folder.is_dir() else []
        return grids[-1] if grids else None
    try:  # a remote artifact store: list, then download the newest
        from mlflow import MlflowClient  # heavy (seconds): only for a remote artifact store

        client = MlflowClient(tracking_uri=tracking_uri)
        names = sorted(a.path for a in client.list_artifacts(run_id, "samples") if a.path.endswith(".png"))
        if not names:
            return None
        return Path(client.download_artifacts(run_id, names[-1], tempfile.mkdtemp(prefix="fcdm-grid-")))
    except Exception:  # a grid we cannot fetch must not stop the report; the montage just lacks it
        return None


def _title(rep: Report) -> str:
    return f"Report: {rep.spec} ({rep.profile} profile)"


def _markdown(rep: Report, frame: pd.DataFrame, sections: list[Section], metric: str, title: str | None) -> str:
    jobs = sum(rep.counts.values())
    state = ", ".join(f"{v} {'not run' if k == MISSING else k.lower()}" for k, v in sorted(rep.counts.items()))
    lines = [f"# {title or _title(rep)}", "", *([rep.description, ""] if rep.description else []),
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
             f"`{frame.attrs.get('tracking_uri', '?')}`: {jobs} jobs ({state}), "
             f"{frame['config'].nunique()} configurations. Metric: `{metric}`.", "", "## Summary", ""]
    lines += [f"- {s}" for s in rep.summary] or ["- No evaluations recorded yet."]
    lines += ["", STATISTICS, ""]
    for s in sections:
        lines += [f"## {s.heading}", ""] + ([f"Protocol: {s.protocol_text}.", ""] if s.protocol_text else [])
        if s.heading == "Published reference" and not s.tables:
            lines += ["No published rows are listed for this spec.", ""]
        for t in s.tables:
            lines += [to_markdown(t), ""]
        for fig in s.figures:
            lines += [f"![{fig.stem}]({fig.as_posix()})", "",
                      f"[PDF]({fig.with_suffix('.pdf').as_posix()})", ""]
    return "\n".join(lines)
