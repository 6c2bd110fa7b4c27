"""Spec format and expansion (fcdm.spec.load, fcdm.spec.expansion) and the shipped specs."""
import json
from pathlib import Path

import pytest
from helpers import ROOT, SMOKE

from fcdm.spec import SpecError, expand, load_spec, resolve_profile
from fcdm.spec.matching import cost

SPECS = ("kernel_size", "block_depth", "conditioning", "flops_budget", "dit_comparison", "design")
SHIPPED = sorted((ROOT / "ablations").glob("*.yaml"))  # these six, and any other spec shipped beside them


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the shipped specs -----------------------------------------------------------------------------

def test_six_specs_ship_with_smoke_and_paper_profiles():
    assert set(SPECS) <= {p.stem for p in SHIPPED}
    for path in SHIPPED:
        spec = load_spec(path)
        assert spec.name == path.stem and {"smoke", "paper"} <= set(spec.profiles), path
        assert resolve_profile(spec, None) == "smoke"


# Matched smoke rows that may not land within 3%, each with the reason its spec states.
SMOKE_LOOSE = {"design/no-inverted-bottleneck": 0.04}  # r = 1 is the ablated setting; no even width within 3%


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spec_expands_and_matched_jobs_land_within_tolerance(path):
    spec = load_spec(path)
    for profile in ("smoke", "paper"):
        jobs = expand(spec, profile)
        assert jobs and len({(j.name, j.seed) for j in jobs}) == len(jobs)
        for job in jobs:
            cfg = job.config
            assert cfg.name == job.name and cfg.log.experiment == spec.name
            assert cfg.log.tags["fcdm.profile"] == profile and cfg.log.tags["fcdm.job"] == job.name
            flops, params = (cfg.log.tags.get(f"fcdm.{k}_target") for k in ("flops", "params"))
            if flops or params:
                c = cost(cfg)
                off = abs(c.gflops / float(flops) - 1) if flops else abs(c.params / float(params) - 1)
                view = spec.view(profile)
                assert off <= view.matching(view.variant(job.variant) if job.variant else None).tolerance, job.name
                # within 3% on the smoke profile (or the spec says why not), 2% on the paper's
                assert off <= (0.02 if profile == "paper" else SMOKE_LOOSE.get(job.name, 0.03)), job.name
            if profile == "paper" and spec.name in SPECS:  # the paper's protocol (Table 6; DiT's recipe)
                assert cfg.train.steps >= 200_000 and cfg.train.batch_size == 256 and cfg.train.mixed_precision == "bf16"
                assert cfg.eval.sampling_steps == 250 and cfg.eval.num_samples == 50_000 and cfg.eval.sampler == "ddpm"
            elif profile == "smoke":
                assert cfg.data.name == "digits"


def test_kernel_size_smoke_is_five_kernels_and_shares_runs_with_design():
    jobs = expand(ROOT / "ablations" / "kernel_size.yaml")
    assert [j.axes["model.args.kernel_size"] for j in jobs] == [3, 5, 7, 9, 11]
    assert [j.name for j in jobs][:2] == ["kernel_size/kernel_size=3", "kernel_size/kernel_size=5"]
    design = {j.variant: j for j in expand(ROOT / "ablations" / "design.yaml")}
    # The same configuration in two specs is one run: same hash, same seed, same key.
    assert design["k3"].key == jobs[0].key and design["default"].key == jobs[2].key
    assert design["no-inverted-bottleneck"].key != jobs[2].key


def test_dit_comparison_smoke_pairs_dit_at_matched_flops_and_matched_parameters():
    jobs = expand(ROOT / "ablations" / "dit_comparison.yaml")
    assert sorted({j.seed for j in jobs}) == [0, 1, 2]
    first = {j.variant: j for j in jobs if j.seed == 0}
    assert list(first) == ["dit", "fcdm@flops", "fcdm@params"]
    dit, at_flops, at_params = (cost(first[v].config) for v in first)
    assert first["dit"].config.model.name == "DiT-S/2" and first["dit"].config.model.args["hidden_size"] == 68
    assert abs(at_flops.gflops / dit.gflops - 1) <= 0.03 and abs(at_params.params / dit.params - 1) <= 0.03
    assert first["fcdm@flops"].config.model.args["hidden_size"] == 24
    assert first["fcdm@params"].config.model.args["hidden_size"] == 20
    tags = {v: j.config.log.tags for v, j in first.items()}
    assert tags["dit"]["fcdm.role"] == "baseline"
    assert (tags["fcdm@flops"]["fcdm.baseline"], tags["fcdm@flops"]["fcdm.matched_on"]) == ("dit_comparison/dit", "FLOPs")
    assert (tags["fcdm@params"]["fcdm.baseline"], tags["fcdm@params"]["fcdm.matched_on"]) == (
        "dit_comparison/dit", "parameters")
    assert first["dit"].config.train.lr == first["fcdm@flops"].config.train.lr == 5e-3  # one recipe for both


def test_dit_comparison_paper_forms_the_papers_pairs():
    jobs = {j.variant: j.config.log.tags for j in expand(ROOT / "ablations" / "dit_comparison.yaml", "paper")}
    for size in ("S", "B", "L", "XL"):
        assert jobs[f"FCDM-{size}"]["fcdm.baseline"] == f"dit_comparison/DiT-{size}/2"
        assert jobs[f"FCDM-{size}"]["fcdm.matched_on"] == "size"
        assert jobs[f"FCDM-{size}@DiT-{size}/2"]["fcdm.baseline"] == f"dit_comparison/DiT-{size}/2"
        assert jobs[f"FCDM-{size}@DiT-{size}/2"]["fcdm.matched_on"] == "FLOPs"
        assert jobs[f"DiT-{size}/2"]["fcdm.role"] == "baseline"


def test_flops_budget_pairs_each_fcdm_with_the_dit_at_its_budget():
    for profile, pairs in (("smoke", {"fcdm-s": "dit-s", "fcdm-b": "dit-b"}),
                           ("paper", {f"FCDM-{s}": f"DiT-{s}/2@FCDM-{s}" for s in ("S", "B", "L", "XL")})):
        tags = {j.variant: j.config.log.tags for j in expand(ROOT / "ablations" / "flops_budget.yaml", profile)}
        for fcdm, dit in pairs.items():
            assert tags[fcdm]["fcdm.baseline"] == f"flops_budget/{dit}" and tags[fcdm]["fcdm.matched_on"] == "FLOPs"
            assert tags[dit]["fcdm.role"] == "baseline"


# -- the format ----------------------------------------------------------------------------------

GRID = f"""
name: grid
base: {SMOKE}
variants:
  - {{name: plain}}
  - {{name: wide, set: {{model.args.hidden_size: 48}}}}
axes:
  model.args.kernel_size: [3, 5]
zip:
  - {{train.lr: [1.0e-3, 3e-4], train.batch_size: [64, 32]}}
seeds: [0, 1]
exclude:
  - {{variant: wide, model.args.kernel_size: 5}}
include:
  - {{variant: plain, model.args.kernel_size: 9, model.args.grn: false}}
"""


def test_grid_order_names_seeds_exclude_include_and_tags(tmp_path):
    jobs = expand(write(tmp_path, GRID), overrides=["train.steps=7"])
    names = [j.name for j in jobs if j.seed == 0]
    assert names == ["grid/plain,kernel_size=3,lr=0.001,batch_size=64", "grid/plain,kernel_size=3,lr=0.0003,batch_size=32",
                     "grid/plain,kernel_size=5,lr=0.001,batch_size=64", "grid/plain,kernel_size=5,lr=0.0003,batch_size=32",
                     "grid/wide,kernel_size=3,lr=0.001,batch_size=64", "grid/wide,kernel_size=3,lr=0.0003,batch_size=32",
                     "grid/plain,kernel_size=9,grn=false"]
    assert [j.seed for j in jobs[:4]] == [0, 1, 0, 1]  # seeds innermost: a configuration's seeds are adjacent
    assert len(jobs) == 14 and all(j.config.train.steps == 7 for j in jobs)  # --set reaches every job
    wide = next(j for j in jobs if j.variant == "wide")
    assert wide.config.model.args["hidden_size"] == 48 and wide.config.train.lr == 1e-3  # 1e-3 and 3e-4 are floats
    last = jobs[-1]
    assert last.axes == {"model.args.kernel_size": 9, "model.args.grn": False} and last.config.model.args["grn"] is False
    tags = dict(jobs[1].config.log.tags)
    assert tags.pop("fcdm.config_key") == jobs[1].config.config_key  # finds the run where the hash cannot be computed
    assert tags == {"fcdm.spec": "grid", "fcdm.profile": "default", "fcdm.variant": "plain", "fcdm.job": jobs[1].name,
                    "fcdm.axes": json.dumps(jobs[1].axes, separators=(",", ":")), "fcdm.role": "unpaired",
                    "fcdm.baseline": "", "fcdm.matched_on": ""}
    assert jobs[1].seed == 1 and jobs[1].config.seed == 1 and jobs[1].key == f"{jobs[1].hash}-s1"


def test_dotted_and_nested_overrides_are_the_same(tmp_path):
    dotted = write(tmp_path, f"name: a\nbase: {SMOKE}\nprofiles:\n  smoke: {{train.steps: 9, model.args.kernel_size: 5}}\n", "a.yaml")
    nested = write(tmp_path, f"name: b\nbase: {SMOKE}\nprofiles:\n  smoke:\n    train: {{steps: 9}}\n"
                             "    model: {args: {kernel_size: 5}}\n", "b.yaml")
    (a,), (b,) = expand(dotted), expand(nested)
    assert a.key == b.key and a.config.train.steps == 9 and a.config.model.args["depth"] == [1, 1, 2, 1, 1]
    assert a.name == "a/base"


def test_profiles_replace_base_and_grid_and_default_profile(tmp_path):
    spec = load_spec(write(tmp_path, f"""
name: p
base: {{model: {{name: FCDM-S, args: {{hidden_size: 16, depth: [1, 0, 1, 0, 1]}}}}, train: {{steps: 5}}}}
default_profile: quick
axes: {{model.args.kernel_size: [3, 5]}}
profiles:
  quick: {{seeds: [3]}}
  other:
    base: {SMOKE}
    axes: {{model.args.kernel_size: [7]}}
"""))
    assert resolve_profile(spec, None) == "quick"
    quick = expand(spec)
    assert [(j.seed, j.config.model.args["kernel_size"], j.config.train.steps) for j in quick] == [(3, 3, 5), (3, 5, 5)]
    (other,) = expand(spec, "other")
    assert other.config.train.steps == 400 and other.profile == "other"  # the smoke config's own steps
    with pytest.raises(SpecError, match="no such profile"):
        expand(spec, "paper")


def test_yaml_1_2_scalars_and_implicit_profile(tmp_path):
    spec = load_spec(write(tmp_path, f"name: y\nbase: {SMOKE}\ndescription: no\naxes: {{train.lr: [1e-4, 2.5e-4]}}\n"))
    assert spec.description == "no" and spec.axes["train.lr"] == [1e-4, 2.5e-4]  # YAML 1.1 would say False, '1e-4'
    assert resolve_profile(spec, None) == "default" and len(expand(spec)) == 2


def test_baseline_and_reference_rows():
    spec = load_spec(ROOT / "ablations" / "conditioning.yaml")
    jobs = expand(spec)
    assert [j.variant for j in jobs if spec.is_baseline(j)] == ["adaln-zero"]
    unconditional = spec.variant("unconditional")
    assert unconditional["reference"] is True
    assert next(j for j in jobs if j.variant == "unconditional").config.eval.cfg_scale == 1.0
    roles = {j.variant: (j.config.log.tags["fcdm.role"], j.config.log.tags["fcdm.baseline"]) for j in jobs}
    assert roles == {"adaln-zero": ("baseline", ""), "adaln": ("compared", "conditioning/adaln-zero"),
                     "additive": ("compared", "conditioning/adaln-zero"), "unconditional": ("reference", "")}


def test_search_section_is_validated_by_the_sweep_parser(tmp_path):
    head = f"name: s\nbase: {SMOKE}\n"
    ok = write(tmp_path, head + "search: {metric: fid, params: {train.lr: {low: 1.0e-4, high: 1.0e-3, log: true}}}\n", "ok.yaml")
    assert load_spec(ok).search["metric"] == "fid"
    bad = write(tmp_path, head + "search: {params: {train.lr: {low: 2, high: 1}}}\n", "bad.yaml")
    with pytest.raises(SpecError, match="greater than high"):
        load_spec(bad)
