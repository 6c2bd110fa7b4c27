"""FLOPs matching (fcdm.spec.matching): the closed forms are the counter's numbers, and matching obeys the
family's constraints."""
import inspect
from pathlib import Path

import pytest
from helpers import SMOKE

from fcdm.models import FAMILIES, family_of, preset_kwargs
from fcdm.models.costs import architecture_cost, closed_form_gflops
from fcdm.models.flops import config_gflops
from fcdm.spec import SpecError, expand
from fcdm.spec.matching import cost


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


ARCHS = [
    ("FCDM-S", {}, (4, 32, 32)), ("FCDM-L", {"kernel_size": 11}, (4, 32, 32)), ("FCDM-XL", {}, (4, 64, 64)),
    ("FCDM-S", {"hidden_size": 36, "depth": [2, 1, 0, 1, 2], "mlp_ratio": 1.5, "grn": False}, (1, 8, 8)),
    ("FCDM-S", {"hidden_size": 22, "depth": [1, 1, 2, 1, 1], "mlp_ratio": 3.3749}, (1, 8, 8)),  # even width
    ("FCDM-S", {"hidden_size": 32, "conditioning": "additive", "shared_embedders": True}, (1, 16, 16)),
    ("FCDM-S", {"hidden_size": 32, "conditioning": "adaln", "learn_sigma": False}, (1, 8, 8)),
    ("FCDM-S", {"hidden_size": 32, "conditioning": "unconditional", "depth": [1, 0, 1, 0, 1]}, (1, 8, 8)),
    ("DiT-XL/2", {}, (4, 32, 32)), ("DiT-S/8", {}, (4, 64, 64)),
    ("DiT-B/4", {"hidden_size": 96, "depth": 3, "num_heads": 4, "mlp_ratio": 3.0}, (1, 8, 8)),
]


@pytest.mark.parametrize("name,kwargs,shape", ARCHS, ids=[f"{a[0]}-{i}" for i, a in enumerate(ARCHS)])
def test_closed_form_gflops_equal_the_counter(name, kwargs, shape):
    family = family_of(name)
    full = {k: p.default for k, p in inspect.signature(FAMILIES[family].__init__).parameters.items()
            if k != "self" and p.default is not inspect.Parameter.empty}
    full.update(preset_kwargs(name, **kwargs), in_channels=shape[0])
    if family == "dit":
        full["input_size"] = shape[-1]
    params, counted = config_gflops(name, shape, **full)
    assert closed_form_gflops(family, full, shape) == pytest.approx(counted, rel=1e-12)
    assert architecture_cost(name, full, shape).params == params


def test_matching_resolves_width_on_the_family_grid(tmp_path):
    spec = write(tmp_path, f"""
name: m
base: {SMOKE}
match_flops: {{target: 0.004, tolerance: 0.05}}
variants:
  - {{name: fcdm}}
  - {{name: dit, set: {{model.name: DiT-S/2, model.args: {{depth: 2, num_heads: 6}}}}}}
""")
    fcdm, dit = expand(spec)
    for job in (fcdm, dit):
        assert abs(cost(job.config).gflops / 0.004 - 1) <= 0.05 and job.config.log.tags["fcdm.flops_target"] == "0.004"
    assert fcdm.config.model.args["hidden_size"] % 2 == 0 and fcdm.config.model.args["hidden_size"] != 32
    assert dit.config.model.args["hidden_size"] % 12 == 0  # whole heads, and the sin-cos embedding splits it in four


def test_within_tolerance_keeps_the_value_and_variant_targets(tmp_path):
    jobs = expand(write(tmp_path, f"""
name: v
base: {SMOKE}
variants:
  - {{name: ref, set: {{model.args.hidden_size: 48}}}}
  - {{name: k9, set: {{model.args.kernel_size: 9}}, match_flops: {{target: ref, tolerance: 0.03}}}}
  - {{name: near, match_flops: {{target: base, tolerance: 0.5}}, set: {{model.args.kernel_size: 5}}}}
"""))
    ref, k9, near = (j.config for j in jobs)
    assert "fcdm.flops_target" not in ref.log.tags  # no match_flops for this variant
    assert k9.model.args["hidden_size"] == 48 and near.model.args["hidden_size"] == 32  # re-solved; kept


def test_fcdm_widths_move_in_steps_of_two(tmp_path):
    """Width 30 is FCDM-valid (level 2 is 60 wide: 15 channels before PixelUnshuffle) and the closest to k=11's
    target; the old multiples-of-4 grid could only offer 28 (-12%) or 32 (+8%)."""
    (job,) = expand(write(tmp_path, f"""
name: even
base: {SMOKE}
variants: [{{name: k11, set: {{model.args.kernel_size: 11}}}}]
match_flops: {{target: 0.0067584, solve: model.args.hidden_size, tolerance: 0.06}}
"""))
    assert job.config.model.args["hidden_size"] == 30 and job.config.log.tags["fcdm.solved"] == "hidden_size=30"
    assert abs(cost(job.config).gflops / 0.0067584 - 1) <= 0.06


def test_a_second_argument_lands_within_tolerance_where_the_width_cannot(tmp_path):
    text = f"""
name: two
base: {SMOKE}
variants: [{{name: k3, set: {{model.args.kernel_size: 3}}}}]
match_flops: {{target: base, solve: SOLVE, tolerance: 0.01}}
"""
    with pytest.raises(SpecError, match="no hidden_size within 1.0%"):
        expand(write(tmp_path, text.replace("SOLVE", "model.args.hidden_size")))
    (job,) = expand(write(tmp_path, text.replace("SOLVE", "[model.args.hidden_size, model.args.mlp_ratio]")))
    args, base = job.config.model.args, cost(expand(write(tmp_path, f"name: b\nbase: {SMOKE}\n", "b.yaml"))[0].config)
    assert abs(cost(job.config).gflops / base.gflops - 1) <= 0.01
    assert args["hidden_size"] == 32 and args["mlp_ratio"] != 3 and 2 < args["mlp_ratio"] < 4
    assert job.config.log.tags["fcdm.solved"] == f"hidden_size=32,mlp_ratio={args['mlp_ratio']:g}"


def test_match_params_solves_the_parameter_count(tmp_path):
    dit, fcdm = expand(write(tmp_path, f"""
name: p
base: {SMOKE}
variants:
  - {{name: dit, set: {{model.name: DiT-S/2, model.args: {{hidden_size: 68, depth: 4, num_heads: 4}}}}}}
  - {{name: fcdm, match_params: {{target: dit, tolerance: 0.03}}}}
"""))
    target = cost(dit.config).params
    assert fcdm.config.log.tags["fcdm.params_target"] == f"{target:.6g}" and "fcdm.flops_target" not in fcdm.config.log.tags
    assert abs(cost(fcdm.config).params / target - 1) <= 0.03 and fcdm.config.model.args["hidden_size"] == 20
    assert (fcdm.config.log.tags["fcdm.baseline"], fcdm.config.log.tags["fcdm.matched_on"]) == ("p/dit", "parameters")


def test_pairs_follow_variant_baselines_match_targets_and_the_spec_baseline(tmp_path):
    from fcdm.spec import load_spec
    from fcdm.spec.pairs import pairs

    spec = load_spec(write(tmp_path, f"""
name: pr
base: {SMOKE}
axes: {{model.args.kernel_size: [3, 7]}}
variants:
  - {{name: a}}
  - {{name: b, set: {{model.args.grn: false}}, baseline: c}}
  - {{name: c, set: {{model.args.mlp_ratio: 2}}}}
  - {{name: d, set: {{model.args.kernel_size: 5, model.args.hidden_size: 36}}, match_flops: {{target: c, tolerance: 0.5}}}}
  - {{name: r, reference: true, set: {{model.args.conditioning: unconditional, eval.cfg_scale: 1.0}}}}
baseline: {{variant: a, model.args.kernel_size: 7}}
"""))
    got = {name.removeprefix("pr/"): (p.role, (p.baseline or "").removeprefix("pr/"), p.matched_on)
           for name, p in pairs(spec.view(), expand(spec)).items()}
    assert got == {
        "a,kernel_size=3": ("compared", "a,kernel_size=7", ""),  # the spec's baseline (the closest row of it)
        "a,kernel_size=7": ("baseline", "", ""),
        "b,kernel_size=3": ("compared", "c,kernel_size=3", ""),  # its own baseline, at its grid point
        "b,kernel_size=7": ("compared", "c,kernel_size=7", ""),
        "c,kernel_size=3": ("baseline", "", ""), "c,kernel_size=7": ("baseline", "", ""),  # named by b
        "d,kernel_size=3": ("compared", "c,kernel_size=3", "FLOPs"),  # its FLOPs target
        "d,kernel_size=7": ("compared", "c,kernel_size=7", "FLOPs"),
        "r,kernel_size=3": ("reference", "", ""), "r,kernel_size=7": ("reference", "", "")}
