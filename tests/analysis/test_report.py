"""`fcdm-ablate report` and analysis.report: files, figures, atomic output, MLflow logging, bad input, and
one end-to-end run on two tiny trained jobs (the only training in the analysis tests)."""
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import SMOKE
from synthetic import experiment, known_for_tests, log_run
from typer.testing import CliRunner

from analysis import figures
from analysis.aggregate import ReportError, View
from analysis.report import build_report
from fcdm.cli import app
from fcdm.spec import expand

runner = CliRunner()
SPEC = """name: {name}
base: {smoke}
default_profile: smoke
axes:
  model.args.kernel_size: [7, 3]
seeds: {seeds}
baseline: {{model.args.kernel_size: 7}}
profiles:
  smoke:
    model.args.hidden_size: 8
    model.args.depth: [1, 0, 1, 0, 1]
    train.batch_size: 16
    train.steps: 20
    log.every: 5
    log.checkpoint_every: 10
    eval.at: [10, 20]
    eval.num_samples: 50
    eval.sampling_steps: 2
    eval.grid_per_class: 1
    eval.metrics: [fid]
"""


def write_spec(folder: Path, name: str, seeds: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, smoke=SMOKE, seeds=seeds))
    return path


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    return known_for_tests(tmp_path_factory)[2]


@pytest.fixture(scope="module")
def spec_store(tmp_path_factory):
    """A spec of 2 kernel sizes x 2 seeds and a synthetic store of its runs (FID at steps 10 and 20)."""
    from mlflow import MlflowClient  # heavy: only for the tests that log

    root = tmp_path_factory.mktemp("spec")
    spec = write_spec(root / "ablations", "tinyks", "[0, 1]")
    store = root / "store"
    store.mkdir()
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = experiment(client, "tinyks", store)
    fid = {(7, 0): [20, 10], (7, 1): [22, 12], (3, 0): [14, 8], (3, 1): [16, 9]}
    for job in expand(spec):
        values = fid[(job.axes["model.args.kernel_size"], job.seed)]
        log_run(client, exp, job, {10: {"fid": values[0]}, 20: {"fid": values[1]}}, grids=True)
    return spec, store


def test_report_files_summary_and_self_contained_html(known, tmp_path):
    out = tmp_path / "rep"
    rep = build_report(known, out, "known", "smoke", baseline={"model.args.kernel_size": 7})
    names = {p.relative_to(out).as_posix() for p in rep.files}
    for stem in ("fid_vs_steps", "fid_vs_gflops", "fid_ablation", "fid_steps_to_match", "runs",
                 "fid_vs_steps_protocol2"):
        assert {f"tables/{stem}.{ext}" for ext in ("md", "tex", "csv")} <= names
    for stem in ("fid_vs_steps", "fid_vs_compute", "fid_vs_gflops", "fid_pairs", "samples", "fid_vs_steps_protocol2"):
        assert {f"figures/{stem}.png", f"figures/{stem}.pdf"} <= names
    assert not any("noise" in n or "heatmap" in n for n in names)  # no re-samplings; one grid dimension
    assert {"report.md", "report.html", "data.csv"} <= names
    assert rep.counts == {"FINISHED": 9, "FAILED": 1, "RUNNING": 1, "MISSING": 1}
    summary = "\n".join(rep.summary)
    assert ("**k=3** vs **k=7**: FID 9.00 ± 1.00 at step 300 vs 11.00 ± 1.00 at step 300 (3 seeds vs 3); 2.00 better "
            "[95% CI of the difference -4.27, +0.27], Welch p = 0.07, Holm-adjusted p = 0.07 over 2 rows vs k=7: "
            "within seed noise. Reaches k=7's final FID (11.00) at step 246 ± 22 (3 of 3 seeds; k=7 itself at step "
            "300): speed-up in steps "
            "1.22x [0.98, 1.53], in training compute 2.85x [2.28, 3.57], in wall time 0.78x [0.62, 0.97].") in summary
    assert ("**k=5** vs **k=7**: FID 33.50 ± 0.71 at step 300 vs 11.00 ± 1.00 at step 300 (2 seeds vs 3); 22.50 worse "
            "[95% CI of the difference +20.01, +24.99], Welch p = 1.2e-04, Holm-adjusted p = 2.3e-04 over 2 rows vs "
            "k=7: **beyond seed noise**. Does not reach k=7's final FID (11.00); best 33.50 at step 300 [incomplete "
            "runs: see the Runs table].") in summary
    assert ("**k=9** vs **k=7**: FID 8.50 at step 100 vs 11.00 ± 1.00 at step 300 (1 seed vs 3); 2.50 better, not "
            "tested (n=1 vs 3): no claim. Reaches k=7's final FID (11.00) at step 100 (1 of 1 seeds; k=7 itself at "
            "step 300): speed-up in "
            "steps ≥ 3.00x, in training compute ≥ 2.33x, in wall time ≥ 3.55x (already at the first evaluation: "
            "lower bounds)") in summary
    assert "**k=11**: no FID recorded under this protocol yet (seed 0 not run)" in summary
    md = (out / "report.md").read_text()
    assert "![fid_vs_steps](figures/fid_vs_steps.png)" in md and "No published rows are listed" in md
    assert "Results under another protocol (2 of 2)" in md and "FID of 1000 samples vs digits-test" in md
    html = (out / "report.html").read_text()
    pngs = [p for p in names if p.endswith(".png")]
    assert html.count('src="data:image/png;base64,') == len(pngs) == 8  # 3 per protocol, pairs (main), samples
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing outside the file


def test_figures_label_axes_and_draw_one_curve_per_configuration(known):
    view = View.build(known, "fid", baseline={"model.args.kernel_size": 7})
    fig = figures.steps_figure(view, "PROTO-TEXT")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "training steps (log scale)"
    assert ax.get_ylabel() == "FID (lower is better; unitless)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["k=7 (baseline)", "k=3", "k=5", "k=9"]  # configurations with a value under this protocol
    assert len(ax.get_lines()) == 4 and any("PROTO-TEXT" in t.get_text() for t in fig.texts)
    assert list(ax.get_lines()[1].get_xdata()) == [100, 200, 300]
    assert list(ax.get_lines()[1].get_ydata()) == [26, 13, 9]
    fig = figures.gflops_figure(view, "PROTO-TEXT")
    assert "forward GFLOPs" in fig.axes[0].get_xlabel()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][1] == "k=3, 0.003 M params"
    fig = figures.compute_figure(view, "PROTO-TEXT")
    assert fig.axes[0].get_xlabel().startswith("training compute (GFLOP")
    assert fig.axes[0].get_lines()[0].get_xdata()[-1] == pytest.approx(0.007 * 3 * 16 * 300)


def test_a_failing_report_leaves_the_previous_one_untouched(known, tmp_path):
    out = tmp_path / "rep"
    build_report(known, out, "known", "smoke", formats=("md",))
    before = (out / "report.md").read_text()
    with pytest.raises(ReportError, match="baseline 'k=4' is not a configuration"):
        build_report(known, out, "known", "smoke", baseline="k=4")
    with pytest.raises(ReportError, match=r"--metric 'fdi' was not recorded .*recorded metrics: fid, is, precision"):
        build_report(known, out, "known", "smoke", metric="fdi")
    assert (out / "report.md").read_text() == before and not (out / "report.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temporary folder left behind


def test_cli_report_of_a_spec_prints_writes_and_logs(spec_store):
    from mlflow import MlflowClient

    spec, store = spec_store
    result = runner.invoke(app, ["report", str(spec), "--store", str(store)])
    assert result.exit_code == 0, result.output
    out = store / "reports" / "tinyks-smoke"
    assert "Ablation (FID, Table 6 layout)" in result.output and "wrote" in result.output
    assert ("kernel_size=3 vs kernel_size=7 (not matched): FID 8.50 ± 0.71 at step 20 vs "
            "11.00 ± 1.41 at step 20 (2 seeds vs 2)") in re.sub(r"\s+", " ", result.output)
    assert (out / "report.html").is_file() and (out / "figures" / "samples.png").is_file()
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinyks").experiment_id
    reports = client.search_runs([exp], "tags.`fcdm.report` = 'tinyks-smoke'")
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(reports[0].info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/tables", "report/figures"} <= logged
    again = runner.invoke(app, ["report", str(spec), "--store", str(store), "--format", "csv", "--step", "10"])
    assert again.exit_code == 0, again.output
    assert len(client.search_runs([exp], "tags.`fcdm.report` = 'tinyks-smoke'")) == 1  # the same report run
    assert not (out / "report.html").exists() and (out / "tables" / "fid_ablation.csv").is_file()


@pytest.mark.parametrize("args, message", [
    (["--format", "md,pdf"], "--format 'md,pdf': pdf is not a report format; allowed values (comma-separated): "
                             "md, tex, csv, html"),
    (["--metric", "fdi"], "--metric 'fdi' was not recorded by any run of this report; recorded metrics: fid; "
                          "pass one of those"),
    (["--step", "7"], "--step 7: no run recorded fid at step 7; evaluation steps: 10, 20; pass one of those"),
    (["--profile", "smokee"], "profiles: 'smokee': no such profile; did you mean 'smoke'? allowed values: smoke"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(spec_store, args, message):
    spec, store = spec_store
    result = runner.invoke(app, ["report", str(spec), "--store", str(store), "--out", str(store / "bad"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert not (store / "bad").exists()


def test_cli_missing_spec_and_empty_stores(spec_store, tmp_path):
    spec, store = spec_store
    missing = runner.invoke(app, ["report", str(tmp_path / "nope.yaml"), "--store", str(store)])
    assert missing.exit_code == 2 and "nope.yaml: no such spec file" in missing.output
    empty = runner.invoke(app, ["report", str(spec), "--store", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "no MLflow database at" in empty.output and "--store" in empty.output
    assert not (tmp_path / "empty").exists()


def test_end_to_end_two_seeds_pool_under_one_protocol_every_spec_in_the_store(tmp_path, monkeypatch):
    """Issue 15 item 1: train k=7 and k=3 at seeds 0 and 1 through the real trainer and evaluation (20 steps, FID
    at 10 and 20); `report` with no SPEC finds the spec by its runs' tags in ./ablations, and each row's two seeds
    pool into cells of n = 2 with intervals, compared by Welch's test, in one protocol section."""
    from fcdm.train import train  # heavy (torch): only for the one end-to-end test

    spec = write_spec(tmp_path / "ablations", "tinyks", "[0, 1]")
    store = tmp_path / "store"
    for job in expand(spec):
        assert train(job.config, store=store, progress=False).status == "FINISHED"
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", "--store", str(store), "--no-log"])
    assert result.exit_code == 0, result.output
    out = store / "reports" / "tinyks-smoke"
    data = pd.read_csv(out / "data.csv")
    assert sorted(data["config"].unique()) == ["kernel_size=3", "kernel_size=7"]
    assert data.groupby(["config", "seed"])["step"].apply(list).tolist() == [[10, 20]] * 4
    assert data["fid"].notna().all() and (data["status"] == "FINISHED").all() and (data["params"] > 0).all()
    assert not math.isnan(data["throughput"].iloc[0])
    md = (out / "report.md").read_text()
    assert "Results under another protocol" not in md  # seeds 0 and 1 of one configuration: one protocol
    steps = pd.read_csv(out / "tables" / "fid_vs_steps.csv")
    assert (steps["seeds"] == 2).all() and (steps["20_n"] == 2).all() and steps["20_ci_low"].notna().all()
    ablation = pd.read_csv(out / "tables" / "fid_ablation.csv")
    assert ablation["p (Welch)"].notna().sum() == 1 and ablation["p (Holm)"].notna().sum() == 1  # k=3 vs k=7
    assert "**kernel_size=3** vs **kernel_size=7** (not matched): FID " in md and "Welch p = " in md
    assert "![samples](figures/samples.png)" in md and "![fid_pairs](figures/fid_pairs.png)" in md
    assert "FID of 50 samples vs digits-test; digits-classifier features; euler sampler, 2 steps" in md


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_out_refuses_a_folder_of_user_files_and_never_touches_it(known, tmp_path):
    """Issue 16 item 1: --out naming a folder that holds a user's files is refused (one line), untouched."""
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("chapter 1")
    (out / "data.csv").write_text("a,b\n1,2\n")
    before = _listing(tmp_path)
    with pytest.raises(ReportError, match=r"--out .*thesis: the folder holds files that are not a report "
                                          r"\(no \.fcdm-report marker\); nothing was changed"):
        build_report(known, out, "known", "smoke", formats=("md",))
    assert _listing(tmp_path) == before  # no temporary folder, nothing renamed


def test_out_writes_into_an_empty_folder_and_replaces_only_a_previous_report(known, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    build_report(known, out, "known", "smoke", formats=("md",))
    assert (out / ".fcdm-report").is_file() and (out / "report.md").is_file()
    (out / "tables" / "stale.md").write_text("from an older report")
    build_report(known, out, "known", "smoke", formats=("csv",))  # a report folder: replaced as a whole
    assert not (out / "tables" / "stale.md").exists() and (out / "tables" / "runs.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_cli_out_naming_the_store_leaves_the_store_unchanged(spec_store):
    """`report --out runs` (the store itself) must not rename or delete the store: one line, exit 2."""
    spec, store = spec_store
    before = _listing(store)
    result = runner.invoke(app, ["report", str(spec), "--store", str(store), "--out", str(store), "--no-log"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: --out ")
    assert "holds files that are not a report" in result.output and "pass a new or empty folder" in result.output
    assert _listing(store) == before
