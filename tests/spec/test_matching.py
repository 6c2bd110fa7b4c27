"""FLOPs matching (fcdm.spec.matching): the closed forms are the counter's numbers, and matching obeys the
family's constraints."""
import inspect
from pathlib import Path

import pytest
from helpers import SMOKE

from fcdm.models import FAMILIES, family_of, preset_kwargs
from fcdm.models.costs import architecture_cost, closed_form_gflops
from fcdm.models.flops import config_gflops
from fcdm.spec import expand
from fcdm.spec.matching import cost


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


ARCHS = [
    ("FCDM-S", {}, (4, 32, 32)), ("FCDM-L", {"kernel_size": 11}, (4, 32, 32)), ("FCDM-XL", {}, (4, 64, 64)),
    ("FCDM-S", {"hidden_size": 36, "depth": [2, 1, 0, 1, 2], "mlp_ratio": 1.5, "grn": False}, (1, 8, 8)),
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
    assert fcdm.config.model.args["hidden_size"] % 4 == 0 and fcdm.config.model.args["hidden_size"] != 32
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
