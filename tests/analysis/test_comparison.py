"""analysis.comparison, analysis.noise and analysis.comparison_figures: the shipped dit_comparison spec (smoke)
over a synthetic store shaped like its real runs: 3 seeds of each row under ONE protocol, each final checkpoint
re-sampled with 3 more sampling seeds, DiT faster per step than FCDM."""
import math

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT
from synthetic import experiment, log_run, protocol_tags, resamplings

from analysis import comparison_figures
from analysis.aggregate import View
from analysis.collect import collect_spec
from analysis.comparison import compare
from analysis.noise import noise_rows, pooled
from analysis.render import cell_text
from analysis.specs import report_spec
from analysis.stats import first_crossing
from fcdm.spec import expand

SPEC = ROOT / "ablations" / "dit_comparison.yaml"
STEPS = [50, 100, 200, 400, 800]
# As in the real smoke run, DiT dips below its final FID at step 400 and rises again by 800: it reached its own
# final value between 200 and 400, and the speed-ups are against that, not against its 800 steps.
CURVES = {"dit": [3.5, 2.0, 1.0, 0.45, 0.55], "fcdm@flops": [1.2, 0.6, 0.45, 0.42, 0.40],
          "fcdm@params": [2.0, 0.9, 0.55, 0.50, 0.50]}
SPEED = {"dit": 23.0, "fcdm@flops": 10.0, "fcdm@params": 12.0}  # steps/s: DiT runs faster per step


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient  # heavy: only to build the store

    store = tmp_path_factory.mktemp("dit")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = experiment(client, "dit_comparison", store)
    rng = np.random.default_rng(0)
    from fcdm.spec.matching import cost

    for job in expand(SPEC):
        fids = [v + rng.normal(0, 0.03) for v in CURVES[job.variant]]
        c = cost(job.config)
        log_run(client, exp, job, {s: {"fid": f} for s, f in zip(STEPS, fids)}, params=c.params, gflops=c.gflops,
                steps_per_sec=SPEED[job.variant], protocol=protocol_tags(300),
                extra_metrics=resamplings(fids[-1], 800, 0.02, rng))
    return store


@pytest.fixture(scope="module")
def view(store):
    return View.build(collect_spec(SPEC, "smoke", f"sqlite:///{store / 'mlflow.db'}"), "fid")


def test_the_spec_pairs_are_the_views_baselines(view):
    assert [view.baseline_of(c) for c in view.configs] == ["dit", "dit", "dit"]
    assert (view.matched_on("fcdm@flops"), view.matched_on("fcdm@params")) == ("FLOPs", "parameters")
    assert view.target_text("fcdm@flops") == "FLOPs +1.1%" and view.target_text("fcdm@params") == "parameters +1.6%"
    assert view.baseline_note == "baseline: variant=dit (the spec's `baseline`)"  # the smoke profile's, not the spec's


def test_steps_compute_and_time_to_match_disagree_and_each_has_an_interval(view):
    flops, params = compare(view)
    assert (flops.config, params.config) == ("fcdm@flops", "fcdm@params") and flops.family == params.family == 2
    assert flops.reached == 3 and 100 < flops.steps.mean < 200  # crosses DiT's final FID between 100 and 200
    assert 200 < flops.baseline_reach < 400 and flops.baseline_step == 800  # DiT's own crossing of its final FID
    dit = view.curve("dit")
    assert flops.baseline_reach == pytest.approx(first_crossing(sorted(dit), [dit[s].mean for s in sorted(dit)],
                                                                flops.target.mean).step)
    assert flops.speedup_steps.mean == pytest.approx(np.exp(np.mean(np.log([flops.baseline_reach / s for s in view_steps(
        view, "fcdm@flops")]))))  # speed-ups are ratios: the geometric mean
    # compute: FCDM@flops has 1.1% more FLOPs per step; time: DiT runs 2.3x more steps per second
    assert flops.speedup_compute.mean == pytest.approx(flops.speedup_steps.mean / 1.0114, rel=1e-3)
    assert flops.speedup_time.mean == pytest.approx(flops.speedup_steps.mean * 10 / 23)
    for s in (flops.speedup_steps, flops.speedup_compute, flops.speedup_time):
        assert s.n == 3 and s.ci_low < s.mean < s.ci_high
    assert flops.beyond_noise and flops.p_holm == pytest.approx(min(1.0, 2 * min(flops.diff.p, params.diff.p))
                                                               if flops.diff.p <= params.diff.p else flops.diff.p)


def view_steps(view, config):
    target = np.mean(view.values("dit", 800))
    return [first_crossing(st, v, target).step for st, v in view.seed_curves(config).values()]


def test_evaluation_noise_per_configuration_beside_the_seed_noise(view):
    rows = noise_rows(view)
    assert [r.config for r in rows] == ["dit", "fcdm@flops", "fcdm@params"]
    for r in rows:
        assert (r.step, r.checkpoints, r.samples) == (800, 3, 4)
        expected = math.sqrt(np.mean([np.var(v, ddof=1) for v in r.values.values()]))
        assert r.eval_sd == pytest.approx(expected) and r.seed_sd == pytest.approx(np.std(view.values(r.config, 800),
                                                                                          ddof=1))
    assert pooled(rows) == pytest.approx(math.sqrt(np.mean([r.eval_sd ** 2 for r in rows])))


def test_report_of_the_comparison_one_protocol_n3_holm_noise_and_a_verdict_per_pair(store, tmp_path):
    rep = report_spec(SPEC, "smoke", store=store, out=tmp_path / "rep", log=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Results under another protocol" not in md  # the three seeds of each row pool: one protocol
    assert "chosen by ablations/dit_comparison_lr.yaml on seeds 100-101" in md  # the recipe, said at the top
    steps = next(t for t in rep.tables if t.name == "fid_vs_steps")
    for row in steps.rows:
        assert row[2].value == 3 and all(c.value.n == 3 and "[" in cell_text(c) for c in row[3:])
    ablation = next(t for t in rep.tables if t.name == "fid_ablation")
    holm = ablation.columns.index("p (Holm)")
    assert [isinstance(r[holm].value, float) for r in ablation.rows] == [False, True, True]
    noise = next(t for t in rep.tables if t.name == "fid_evaluation_noise")
    assert [r[0].value for r in noise.rows] == ["dit (baseline)", "fcdm@flops", "fcdm@params",
                                                "all configurations (pooled)"]
    figures = {p.name for p in (tmp_path / "rep" / "figures").iterdir()}
    assert {"fid_pairs.png", "fid_evaluation_noise.png", "fid_pairs.pdf"} <= figures
    assert "fid_heatmap.png" not in figures  # one grid dimension (the variants)
    verdicts = rep.summary[1:]
    assert len(verdicts) == 2
    assert verdicts[0].startswith("**fcdm@flops** vs **dit** (matched on FLOPs, +1.1% of its target): FID 0.")
    assert verdicts[1].startswith("**fcdm@params** vs **dit** (matched on parameters, +1.6% of its target)")
    for v in verdicts:
        assert "Holm-adjusted p = " in v and "over 2 rows vs dit" in v and "speed-up in steps" in v
        assert "in training compute" in v and "in wall time" in v and "evaluation noise SD 0.0" in v
    assert "**beyond seed noise**" in verdicts[0]


def test_heatmap_of_a_two_dimensional_grid_with_seed_counts(store):
    frame = collect_spec(SPEC, "smoke", f"sqlite:///{store / 'mlflow.db'}")
    frame["axis.train.lr"] = frame["variant"].map({"dit": 0.005, "fcdm@flops": 0.005, "fcdm@params": 0.002})
    dims = comparison_figures.grid_dimensions(frame)
    assert dims == ["variant", "axis.train.lr"]
    view = View.build(frame, "fid")
    fig = comparison_figures.heatmap(view, dims, "P")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum(t.endswith("n=3") for t in texts) == 3 and texts.count("") == 3  # 3 x 2 cells, 3 in the grid
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.005", "0.002"]
    assert comparison_figures.grid_dimensions(frame.drop(columns="axis.train.lr")) == ["variant"]
    assert isinstance(frame, pd.DataFrame)
