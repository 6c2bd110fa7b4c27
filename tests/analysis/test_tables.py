"""Every cell of the report's tables over a synthetic store of known values (tests/synthetic.py, KNOWN_FID):
k=7 is the baseline (FID 30/20/10, 32/22/12, 31/21/11 at steps 100/200/300), k=3 crosses its final FID
between steps 200 and 300, k=5 never does (one seed FAILED), k=9 is RUNNING and reaches it at its first
evaluation, k=1 was evaluated under another protocol, k=11 never ran."""
import dataclasses
import math

import pytest
from scipy import stats as st
from synthetic import SUFFIX, known_for_tests, protocol_tags

from analysis import tables
from analysis.aggregate import ReportError, View, protocols
from analysis.comparison import compare
from analysis.published import published_table
from analysis.render import cell_text, to_csv, to_latex, to_markdown
from analysis.stats import Summary

T = float(st.t.ppf(0.975, 2) / math.sqrt(3))  # CI half-width per unit std with 3 seeds
PROTO = protocol_tags(500)["eval.protocol"]  # the digest Protocol computes, as the trainer logs it
PROTO_1K = protocol_tags(1000)["eval.protocol"]


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return known_for_tests(tmp_path_factory)[2]


@pytest.fixture(scope="module")
def view(frame):
    return View.build(frame, "fid", baseline={"model.args.kernel_size": 7})


def stat(cell) -> tuple:
    s = cell.value
    return (s.mean, s.std, s.n, s.ci_low, s.ci_high) if isinstance(s, Summary) else s


def approx_stat(mean, std, n):
    half = st.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return pytest.approx((mean, std, n, mean - half, mean + half), nan_ok=True)


def col(table, name):
    return table.columns.index(name)


def test_protocols_are_separate_views(frame, view):
    assert protocols(frame, "fid") == [PROTO, PROTO_1K]
    assert view.protocol == PROTO and view.values("k=1", 100) == []  # k=1 measured under the 1K protocol only
    other = View.build(frame, "fid", protocol=PROTO_1K)
    assert other.values("k=1", 300) == [44] and other.values("k=7", 300) == []
    post = View.build(frame, f"fid/{SUFFIX}")
    assert post.steps() == [300] and post.values("k=7", 300) == [9, 11, 10] and post.values("k=3", 300) == []


def test_fid_vs_steps_every_cell(view):
    t = tables.fid_vs_steps(view, "p")
    assert t.columns == ["configuration", "matched (vs target)", "seeds", "100", "200", "300"]
    labels = [r[0].value for r in t.rows]
    assert labels == ["k=7 (baseline)", "k=3", "k=5 †", "k=9 †", "k=1", "k=11 †"]
    assert [r[1].value for r in t.rows] == ["–"] * 6  # a baseline asked for: no spec, no matching to show
    cells = {r[0].value: [stat(c) for c in r[3:]] for r in t.rows}
    assert cells["k=7 (baseline)"] == [approx_stat(31, 1, 3), approx_stat(21, 1, 3), approx_stat(11, 1, 3)]
    assert cells["k=3"] == [approx_stat(26, 1, 3), approx_stat(13, 1, 3), approx_stat(9, 1, 3)]
    assert cells["k=5 †"] == [approx_stat(41, 1, 3), approx_stat(35.5, math.sqrt(0.5), 2),
                              approx_stat(33.5, math.sqrt(0.5), 2)]
    assert cells["k=9 †"] == [approx_stat(8.5, math.nan, 1), None, None]
    assert cells["k=1"] == [None] * 3 and cells["k=11 †"] == [None] * 3
    assert [r[2].value for r in t.rows] == [3, 3, 3, 1, 1, 1]
    bold = {(r[0].value, t.columns[i]) for r in t.rows for i, c in enumerate(r) if c.bold}
    assert bold == {("k=9 †", "100"), ("k=3", "200"), ("k=3", "300")}  # best (lowest) per column
    assert t.notes[:3] == ["† k=5: seed 2 FAILED at step 150/300", "† k=9: seed 0 RUNNING at step 120/300",
                           "† k=11: seed 0 not run"]
    # text: one seed has no interval; fewer seeds than the configuration has shows n
    assert cell_text(t.rows[0][3]) == f"31.00 ± 1.00 [{31 - T:.2f}, {31 + T:.2f}]"
    assert cell_text(t.rows[2][4]).endswith("(n=2)") and cell_text(t.rows[3][3]) == "8.50"


def test_fid_vs_gflops_every_cell(view):
    t = tables.fid_vs_gflops(view, "p")
    assert t.columns == ["configuration", "matched (vs target)", "params (M)", "GFLOPs", "step", "train compute (GFLOP)",
                         "FID", "IS", "Precision", "Recall", "train steps/s", "train img/s", "peak memory (MiB)"]
    r = {row[0].value: row[:1] + row[2:] for row in t.rows}  # without the matched column: as before it existed
    k7 = r["k=7 (baseline)"]
    assert [k7[i].value for i in range(1, 5)] == [pytest.approx(0.007), pytest.approx(0.007), 300,
                                                 pytest.approx(0.007 * 3 * 16 * 300)]
    assert stat(k7[5]) == approx_stat(11, 1, 3) and stat(k7[6]) == approx_stat(89, 1, 3)
    assert stat(k7[7]) == approx_stat(0.57, 0, 3) and stat(k7[8]) == approx_stat(0.6, 0, 3)
    assert stat(k7[9]) == approx_stat(11, 0, 3)  # 4 + k steps/s on every seed
    assert stat(k7[10]) == approx_stat(11 * 16, 0, 3) and k7[11].value == 512  # img/s: steps/s x batch 16
    k9 = r["k=9 †"]
    assert k9[3].value == 100 and k9[4].value == pytest.approx(0.009 * 3 * 16 * 100)  # compute at ITS final step
    assert stat(k9[5]) == approx_stat(8.5, math.nan, 1)
    assert [r["k=1"][i].value for i in (3, 4, 5)] == [None, None, None]
    assert r["k=11 †"][1].value is None  # never ran: no recorded params
    assert [row[0].value for row in r.values() if row[5].bold] == ["k=9 †"]
    assert [row[0].value for row in r.values() if row[6].bold] == ["k=9 †"]  # IS: higher is better


def test_ablation_table_deltas_welch_and_holm(view):
    t = tables.ablation(view, "p", compare(view))
    r = {row[0].value: row for row in t.rows}
    d, p, ph, verdict, dis = (col(t, c) for c in ("ΔFID vs baseline [95% CI]", "p (Welch)", "p (Holm)",
                                                   "beyond seed noise?", "ΔIS"))
    assert [r["k=7 (baseline)"][i].value for i in (d, p, ph, verdict, dis)] == ["baseline", None, None, None, None]
    ref = st.ttest_ind([8, 9, 10], [10, 12, 11], equal_var=False)
    ref5 = st.ttest_ind([33, 34], [10, 12, 11], equal_var=False)
    half = st.t.ppf(0.975, 4) * math.sqrt(2 / 3)
    assert r["k=3"][d].value == f"-2.00 [{-2 - half:+.2f}, {-2 + half:+.2f}]"
    assert r["k=3"][p].value == pytest.approx(ref.pvalue) and r["k=3"][verdict].value == "no"
    # Holm over the two tested rows vs k=7 (k=9 has one seed): the smaller p doubled, the larger kept
    assert r["k=3"][ph].value == pytest.approx(ref.pvalue) and r["k=5 †"][ph].value == pytest.approx(2 * ref5.pvalue)
    assert r["k=3"][dis].value == "+2.00"
    assert r["k=5 †"][d].value.startswith("+22.50 [") and r["k=5 †"][verdict].value == "yes"
    assert r["k=5 †"][p].value == pytest.approx(ref5.pvalue)
    assert r["k=9 †"][d].value == "-2.50" and r["k=9 †"][verdict].value == "n/a (n=1 vs 3)"
    assert r["k=9 †"][col(t, "step")].value == 100
    assert all(r["k=1"][i].value is None for i in (d, p, ph, verdict, dis))
    assert "Holm's step-down method across the rows compared with the same baseline" in t.caption
    at200 = tables.ablation(view, "p", compare(view, 200), step=200)
    k3 = next(row for row in at200.rows if row[0].value == "k=3")
    assert k3[d].value.startswith("-8.00 [") and stat(k3[col(at200, "FID")]) == approx_stat(13, 1, 3)


def test_holm_can_turn_a_welch_yes_into_a_no(frame):
    """Two rows vs one baseline: p = 0.03 and 0.04 are each < 0.05 alone, but not after Holm (0.06, 0.06)."""
    view = View.build(frame, "fid", baseline={"model.args.kernel_size": 7})
    results = compare(view)
    results[0].diff = dataclasses.replace(results[0].diff, p=0.03)
    results[1].diff = dataclasses.replace(results[1].diff, p=0.04)
    from analysis.stats import holm

    for r, adj in zip(results[:2], holm([0.03, 0.04])):
        r.p_holm = adj
    assert [r.beyond_noise for r in results[:2]] == [False, False] and [r.diff.significant for r in results[:2]] == [
        True, True]


def test_steps_compute_and_time_to_match(view):
    results = compare(view)
    m = {x.config: x for x in results}
    assert list(m) == ["k=3", "k=5", "k=9"]  # the compared rows with a value (k=1: another protocol; k=11: none)
    k3 = m["k=3"]
    assert k3.target.mean == 11 and k3.baseline == "k=7" and k3.baseline_step == 300
    assert k3.mean_step == pytest.approx(math.sqrt(200 * 300))  # 13 at 200, 9 at 300: halfway in log steps
    per_seed = [200 * 1.5 ** f for f in (0.25, 0.6, 2 / 3)]  # each seed's own crossing of 11
    assert k3.steps.mean == pytest.approx(sum(per_seed) / 3) and k3.reached == 3
    gmean = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))  # noqa: E731 - speed-ups are ratios
    assert k3.speedup_steps.mean == pytest.approx(gmean([300 / x for x in per_seed]))
    assert k3.compute.mean == pytest.approx(0.003 * 48 * sum(per_seed) / 3)
    assert k3.speedup_compute.mean == pytest.approx(gmean([0.007 * 48 * 300 / (0.003 * 48 * x) for x in per_seed]))
    # time: the baseline's 300 steps at 11 steps/s against each seed's steps at 7 steps/s (4 + k)
    assert k3.seconds.mean == pytest.approx(sum(per_seed) / 3 / 7)
    assert k3.speedup_time.mean == pytest.approx(gmean([(300 / 11) / (x / 7) for x in per_seed]))
    assert k3.speedup_time.n == 3 and k3.speedup_time.ci_low < k3.speedup_time.mean < k3.speedup_time.ci_high
    assert m["k=5"].mean_step is None and (m["k=5"].reached, m["k=5"].seeds) == (0, 3)
    assert m["k=9"].mean_step == 100 and m["k=9"].at_first and m["k=9"].speedup_steps.mean == pytest.approx(3)
    t = tables.steps_to_match(view, "p", results)
    r = {row[0].value: [cell_text(c) for c in row] for row in t.rows}
    logs = [math.log(300 / x) for x in per_seed]
    lo, mid, hi = (math.exp(sum(logs) / 3 + k * T * st.tstd(logs)) for k in (-1, 0, 1))
    assert r["k=3"][4:9] == ["300", "245", f"{sum(per_seed) / 3:,.0f} ± {st.tstd(per_seed):,.0f}", "3/3",
                             f"{mid:.2f}x [{lo:.2f}, {hi:.2f}]"]
    assert r["k=5 †"][5:] == ["not reached", "–", "0/3", "not reached", "–", "not reached", "–", "not reached"]
    assert r["k=9 †"][5] == "≤ 100" and r["k=9 †"][8] == "≥ 3.00x"
    assert "steps, compute and seconds can disagree, so all three are shown" in t.caption


def test_pairs_of_the_spec_are_the_baselines_and_reference_rows_are_not_compared(frame):
    """What collect_spec records from the spec (fcdm.spec.pairs): k=3 vs k=7 matched on FLOPs, k=5 a reference row."""
    paired = frame.copy()
    paired.attrs = {**frame.attrs, "pairs": {
        "k=7": {"role": "baseline", "baseline": None, "matched_on": "", "target_kind": None, "target": None},
        "k=3": {"role": "compared", "baseline": "k=7", "matched_on": "FLOPs", "target_kind": "FLOPs",
                "target": 0.00294},
        "k=5": {"role": "reference", "baseline": None, "matched_on": "", "target_kind": None, "target": None},
        "k=9": {"role": "compared", "baseline": "k=7", "matched_on": "size", "target_kind": None, "target": None}}}
    view = View.build(paired, "fid")
    assert [view.baseline_of(c) for c in ("k=7", "k=3", "k=5", "k=9", "k=1")] == ["k=7", "k=7", None, "k=7", None]
    assert view.target_text("k=3") == "FLOPs +2.0%" and view.matched_on("k=9") == "size"
    t = tables.ablation(view, "p", compare(view))
    r = {row[0].value: row for row in t.rows}
    assert "k=5 (reference) †" in r and r["k=5 (reference) †"][col(t, "ΔFID vs baseline [95% CI]")].value == (
        "reference: not compared")
    assert r["k=3"][col(t, "matched (vs target)")].value == "FLOPs +2.0%"
    assert r["k=9 †"][col(t, "matched (vs target)")].value == "size"
    steps = tables.fid_vs_steps(view, "p")
    assert not any(c.bold for row in steps.rows if "reference" in row[0].value for c in row)  # k=5 never bolded


def test_baseline_choices(frame):
    assert View.build(frame, "fid", baseline="k=3").baseline_of("k=5") == "k=3"
    first = View.build(frame, "fid")
    assert first.baseline_of("k=3") == "k=7" and "first row" in first.baseline_note
    frame.attrs["axis_defaults"] = {"model.args.kernel_size": 3}
    try:
        assert View.build(frame, "fid").baseline_of("k=7") == "k=3"
    finally:
        del frame.attrs["axis_defaults"]
    with pytest.raises(ReportError, match="baseline 'k=4' is not a configuration of this report; configurations: k=7"):
        View.build(frame, "fid", baseline="k=4")


def test_runs_table_lists_every_job(frame):
    t = tables.runs_table(frame)
    r = {(row[0].value, row[1].value): [cell_text(c) for c in row] for row in t.rows}
    assert len(r) == 12
    assert r[("k=5", 2)][2:5] == ["FAILED", "150/300", "100"]
    assert r[("k=9", 0)][2:5] == ["RUNNING", "120/300", "100"]
    assert r[("k=11", 0)][2:5] + [r[("k=11", 0)][6]] == ["not run", "0/300", "none", "–"]
    assert r[("k=7", 0)][4] == "100, 200, 300" and r[("k=1", 0)][5] == PROTO_1K


def test_renderers(view):
    t = tables.fid_vs_steps(view, "a_b & 100%")
    md = to_markdown(t)
    assert "| k=3 | – | 3 | 26.00 ± 1.00" in md and f"**9.00 ± 1.00 [{9 - T:.2f}, {9 + T:.2f}]**" in md
    assert "|---|---:|---:|---:|---:|---:|" in md and "- † k=11: seed 0 not run" in md
    tex = to_latex(t)
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrrrr}", r"a\_b \& 100\%",
                  r"\textbf{9.00 $\pm$ 1.00", r"k=7 (baseline) & -- & 3 & 31.00 $\pm$ 1.00", r"k=5 $^\dagger$"):
        assert piece in tex
    csv_lines = to_csv(t).splitlines()
    assert csv_lines[0] == ("configuration,matched (vs target),seeds,100,100_std,100_ci_low,100_ci_high,100_n,200,"
                            "200_std,200_ci_low,200_ci_high,200_n,300,300_std,300_ci_low,300_ci_high,300_n")
    assert csv_lines[1].startswith(f"k=7 (baseline),–,3,31.0,1.0,{31 - T!r},{31 + T!r},3,21.0,")
    assert csv_lines[4] == "k=9 †,–,1,8.5,,,,1,,,,,0,,,,,0"


def test_published_rows_are_their_own_table():
    t = published_table("kernel_size", comparable=False)
    assert all(r[0].value == "published" for r in t.rows) and t.rows[0][1].value == "FCDM-L k7 (default)"
    k3 = next(r for r in t.rows if r[1].value == "FCDM-L k3")
    assert (k3[7].value, k3[8].value, k3[-1].value) == (21.28, 64.11, "FCDM Table 6 ablation")
    assert "Not comparable" in t.caption
    assert "Not comparable" not in published_table("dit_comparison", comparable=True).caption
    assert published_table("no_such_spec", comparable=True) is None


def test_the_terminal_table_shows_its_first_rows_and_says_how_many_more_there_are():
    from rich.console import Console

    from analysis.render import to_rich
    from analysis.tables import Cell, Table

    t = Table("t", "FID [post-hoc]", ["config", "FID [ddpm-250]"], [[Cell(f"k={i}"), Cell(float(i))] for i in range(60)],
              "caption")
    console = Console(record=True, width=120)
    console.print(to_rich(t, max_rows=50))
    text = " ".join(console.export_text().split())
    assert "k=49" in text and "k=50" not in text and "10 more rows in the report's files." in text
    assert "FID [post-hoc]" in text and "FID [ddpm-250]" in text  # brackets are text, not markup
    console.print(to_rich(t))
    assert "k=59" in console.export_text()
