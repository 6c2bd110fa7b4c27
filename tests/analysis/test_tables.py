"""Every cell of the report's tables over a synthetic store of known values (tests/synthetic.py, KNOWN_FID):
k=7 is the baseline (FID 30/20/10, 32/22/12, 31/21/11 at steps 100/200/300), k=3 crosses its final FID
between steps 200 and 300, k=5 never does (one seed FAILED), k=9 is RUNNING and reaches it at its first
evaluation, k=1 was evaluated under another protocol, k=11 never ran."""
import math

import pytest
from scipy import stats as st
from synthetic import SUFFIX, known_for_tests

from analysis import tables
from analysis.aggregate import ReportError, View, protocols
from analysis.published import published_table
from analysis.render import cell_text, to_csv, to_latex, to_markdown
from analysis.stats import Summary

T = float(st.t.ppf(0.975, 2) / math.sqrt(3))  # CI half-width per unit std with 3 seeds
PROTO = "FID-0.5K vs digits-test, digits-classifier"


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
    assert protocols(frame, "fid") == [PROTO, "FID-1K vs digits-test, digits-classifier"]
    assert view.protocol == PROTO and view.values("k=1", 100) == []  # k=1 measured under the 1K protocol only
    other = View.build(frame, "fid", protocol="FID-1K vs digits-test, digits-classifier")
    assert other.values("k=1", 300) == [44] and other.values("k=7", 300) == []
    post = View.build(frame, f"fid/{SUFFIX}")
    assert post.steps() == [300] and post.values("k=7", 300) == [9, 11, 10] and post.values("k=3", 300) == []


def test_fid_vs_steps_every_cell(view):
    t = tables.fid_vs_steps(view, "p")
    assert t.columns == ["configuration", "seeds", "100", "200", "300"]
    labels = [r[0].value for r in t.rows]
    assert labels == ["k=7 (baseline)", "k=3", "k=5 †", "k=9 †", "k=1", "k=11 †"]
    cells = {r[0].value: [stat(c) for c in r[2:]] for r in t.rows}
    assert cells["k=7 (baseline)"] == [approx_stat(31, 1, 3), approx_stat(21, 1, 3), approx_stat(11, 1, 3)]
    assert cells["k=3"] == [approx_stat(26, 1, 3), approx_stat(13, 1, 3), approx_stat(9, 1, 3)]
    assert cells["k=5 †"] == [approx_stat(41, 1, 3), approx_stat(35.5, math.sqrt(0.5), 2),
                              approx_stat(33.5, math.sqrt(0.5), 2)]
    assert cells["k=9 †"] == [approx_stat(8.5, math.nan, 1), None, None]
    assert cells["k=1"] == [None] * 3 and cells["k=11 †"] == [None] * 3
    assert [r[1].value for r in t.rows] == [3, 3, 3, 1, 1, 1]
    bold = {(r[0].value, t.columns[i]) for r in t.rows for i, c in enumerate(r) if c.bold}
    assert bold == {("k=9 †", "100"), ("k=3", "200"), ("k=3", "300")}  # best (lowest) per column
    assert t.notes[:3] == ["† k=5: seed 2 FAILED at step 150/300", "† k=9: seed 0 RUNNING at step 120/300",
                           "† k=11: seed 0 not run"]
    # text: one seed has no interval; fewer seeds than the configuration has shows n
    assert cell_text(t.rows[0][2]) == f"31.00 ± 1.00 [{31 - T:.2f}, {31 + T:.2f}]"
    assert cell_text(t.rows[2][3]).endswith("(n=2)") and cell_text(t.rows[3][2]) == "8.50"


def test_fid_vs_gflops_every_cell(view):
    t = tables.fid_vs_gflops(view, "p")
    assert t.columns == ["configuration", "params (M)", "GFLOPs", "step", "train compute (GFLOP)", "FID", "IS",
                         "Precision", "Recall", "train steps/s"]
    r = {row[0].value: row for row in t.rows}
    k7 = r["k=7 (baseline)"]
    assert [k7[i].value for i in range(1, 5)] == [pytest.approx(0.007), pytest.approx(0.007), 300,
                                                 pytest.approx(0.007 * 3 * 16 * 300)]
    assert stat(k7[5]) == approx_stat(11, 1, 3) and stat(k7[6]) == approx_stat(89, 1, 3)
    assert stat(k7[7]) == approx_stat(0.57, 0, 3) and stat(k7[8]) == approx_stat(0.6, 0, 3)
    assert stat(k7[9]) == approx_stat(11, 0, 3)  # 4 + k steps/s on every seed
    k9 = r["k=9 †"]
    assert k9[3].value == 100 and k9[4].value == pytest.approx(0.009 * 3 * 16 * 100)  # compute at ITS final step
    assert stat(k9[5]) == approx_stat(8.5, math.nan, 1)
    assert [r["k=1"][i].value for i in (3, 4, 5)] == [None, None, None]
    assert r["k=11 †"][1].value is None  # never ran: no recorded params
    assert [row[0].value for row in t.rows if row[5].bold] == ["k=9 †"]
    assert [row[0].value for row in t.rows if row[6].bold] == ["k=9 †"]  # IS: higher is better


def test_ablation_table_deltas_and_welch(view):
    t = tables.ablation(view, "p")
    r = {row[0].value: row for row in t.rows}
    d, p, verdict, dis = (col(t, c) for c in ("ΔFID vs baseline [95% CI]", "p (Welch)", "beyond seed noise?", "ΔIS"))
    assert [r["k=7 (baseline)"][i].value for i in (d, p, verdict, dis)] == ["baseline"] * 4
    ref = st.ttest_ind([8, 9, 10], [10, 12, 11], equal_var=False)
    half = st.t.ppf(0.975, 4) * math.sqrt(2 / 3)
    assert r["k=3"][d].value == f"-2.00 [{-2 - half:+.2f}, {-2 + half:+.2f}]"
    assert r["k=3"][p].value == pytest.approx(ref.pvalue) and r["k=3"][verdict].value == "no"
    assert r["k=3"][dis].value == "+2.00"
    assert r["k=5 †"][d].value.startswith("+22.50 [") and r["k=5 †"][verdict].value == "yes"
    assert r["k=5 †"][p].value == pytest.approx(st.ttest_ind([33, 34], [10, 12, 11], equal_var=False).pvalue)
    assert r["k=9 †"][d].value == "-2.50" and r["k=9 †"][verdict].value == "n/a (n=1 vs 3)"
    assert r["k=9 †"][col(t, "step")].value == 100
    assert all(r["k=1"][i].value is None for i in (d, p, verdict, dis))
    at200 = tables.ablation(view, "p", step=200)
    k3 = next(row for row in at200.rows if row[0].value == "k=3")
    assert k3[d].value.startswith("-8.00 [") and stat(k3[col(at200, "FID")]) == approx_stat(13, 1, 3)


def test_steps_and_compute_to_match(view):
    t, matches = tables.steps_to_match(view, "p")
    m = {x.config: x for x in matches}
    assert m["k=3"].target.mean == 11 and m["k=3"].baseline == "k=7" and m["k=3"].baseline_step == 300
    assert m["k=3"].step == pytest.approx(math.sqrt(200 * 300))  # 13 at 200, 9 at 300: halfway in log steps
    per_seed = [200 * 1.5 ** f for f in (0.25, 0.6, 2 / 3)]  # each seed's own crossing of 11
    assert m["k=3"].seed_steps.mean == pytest.approx(sum(per_seed) / 3) and m["k=3"].seeds_reached == 3
    assert m["k=3"].speedup == pytest.approx(300 / math.sqrt(60000))
    assert m["k=3"].compute == pytest.approx(0.003 * 48 * math.sqrt(60000))
    assert m["k=3"].compute_speedup == pytest.approx(0.007 * 48 * 300 / (0.003 * 48 * math.sqrt(60000)))
    assert m["k=7"].step == pytest.approx(300) and m["k=7"].speedup == pytest.approx(1)
    assert m["k=5"].step is None and (m["k=5"].seeds_reached, m["k=5"].seeds) == (0, 3)
    assert m["k=9"].step == 100 and m["k=9"].at_first and m["k=9"].speedup == 3
    r = {row[0].value: [cell_text(c) for c in row] for row in t.rows}
    assert r["k=3"][3:] == ["245", f"{sum(per_seed) / 3:,.0f} ± {st.tstd(per_seed):,.0f} "
                            f"[{sum(per_seed) / 3 - T * st.tstd(per_seed):,.0f}, "
                            f"{sum(per_seed) / 3 + T * st.tstd(per_seed):,.0f}]",
                            "3/3", "1.22x", "35.3", "2.86x"]
    assert r["k=5 †"][3:] == ["not reached", "–", "0/3", "not reached", "not reached", "not reached"]
    assert r["k=9 †"][3] == "≤ 100" and r["k=9 †"][6] == "≥ 3.00x" and r["k=9 †"][7] == "≤ 43.2"
    assert r["k=1"][3] == "no evaluations" and r["k=11 †"][3] == "no evaluations"


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
    assert r[("k=7", 0)][4] == "100, 200, 300" and r[("k=1", 0)][5].startswith("FID-1K")


def test_renderers(view):
    t = tables.fid_vs_steps(view, "a_b & 100%")
    md = to_markdown(t)
    assert "| k=3 | 3 | 26.00 ± 1.00" in md and f"**9.00 ± 1.00 [{9 - T:.2f}, {9 + T:.2f}]**" in md
    assert "|---|---:|---:|---:|---:|" in md and "- † k=11: seed 0 not run" in md
    tex = to_latex(t)
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrrr}", r"a\_b \& 100\%",
                  r"\textbf{9.00 $\pm$ 1.00", r"k=7 (baseline) & 3 & 31.00 $\pm$ 1.00", r"k=5 $^\dagger$"):
        assert piece in tex
    csv_lines = to_csv(t).splitlines()
    assert csv_lines[0] == ("configuration,seeds,100,100_std,100_ci_low,100_ci_high,100_n,200,200_std,200_ci_low,"
                            "200_ci_high,200_n,300,300_std,300_ci_low,300_ci_high,300_n")
    assert csv_lines[1].startswith(f"k=7 (baseline),3,31.0,1.0,{31 - T!r},{31 + T!r},3,21.0,")
    assert csv_lines[4] == "k=9 †,1,8.5,,,,1,,,,,0,,,,,0"


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
