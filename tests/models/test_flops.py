"""FLOPs in DiT's convention against the published tables (analysis/reference/published.csv)."""
import csv

import pytest
import torch
from helpers import ROOT

from fcdm.models import DIT_PRESETS, create_model
from fcdm.models.costs import training_gflops
from fcdm.models.flops import config_gflops, model_gflops, preset_gflops

REFERENCE = ROOT / "analysis" / "reference" / "published.csv"


def published_dit_gflops() -> dict[str, float]:
    with open(REFERENCE) as f:
        rows = [r for r in csv.DictReader(f) if r["family"] == "dit" and r["resolution"] == "256"]
    return {r["model"]: float(r["gflops_mac"]) for r in rows if r["model"] in DIT_PRESETS}


def test_reference_table_holds_all_twelve_dit_presets():
    assert set(published_dit_gflops()) == set(DIT_PRESETS)


@pytest.mark.parametrize("name", sorted(DIT_PRESETS))
def test_dit_gflops_match_published_within_0_1(name):
    assert preset_gflops(name, 256) == pytest.approx(published_dit_gflops()[name], abs=0.1)


@pytest.mark.parametrize("name,g256,g512", [
    ("FCDM-S", 3.07, None), ("FCDM-B", 12.14, None), ("FCDM-L", 48.22, None), ("FCDM-XL", 64.5, 257.5),
    ("DiT-XL/2", 118.64, 524.6),
])
def test_gflops_at_256_and_512(name, g256, g512):
    assert preset_gflops(name, 256) == pytest.approx(g256, abs=0.1)
    if g512 is not None:
        assert preset_gflops(name, 512) == pytest.approx(g512, abs=0.1)


def test_counting_repeated_blocks_once_equals_running_them_all():
    for name, kwargs in [("FCDM-S", dict(kernel_size=5)), ("DiT-S/4", {})]:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
        assert model_gflops(model, (4, 32, 32)) == model_gflops(model, (4, 32, 32), reuse_repeated=False)


def test_kernel_size_barely_moves_flops_but_width_and_depth_do():
    base = config_gflops("FCDM-L", (4, 32, 32))[1]
    k3 = config_gflops("FCDM-L", (4, 32, 32), kernel_size=3)[1]
    assert 0 < base - k3 < 0.01 * base  # FCDM Table 6: 48.3 vs 48.1
    assert config_gflops("FCDM-L", (4, 32, 32), hidden_size=256)[1] < base / 3
    assert config_gflops("FCDM-L", (4, 32, 32), mlp_ratio=1.5)[1] < base * 0.7  # the 1x1 convs dominate


def test_counting_is_on_the_meta_device_and_leaves_no_state():
    with torch.device("meta"):
        model = create_model("FCDM-XL")
    assert model_gflops(model, (4, 64, 64)) == pytest.approx(257.5, abs=0.1)
    assert all("forward" not in vars(m) for m in model.modules())  # temporary patches are undone
    assert model.training


def test_training_compute():
    assert training_gflops(118.64, batch_size=256, steps=400_000) == pytest.approx(118.64 * 3 * 256 * 400_000)


def test_unconditional_and_joint_label_dropout_count_exactly():
    """No class embedders: FCDM-S loses its three (1000 + 1)-row tables of widths 128, 256, 512 and
    no FLOPs (a table lookup is not a multiply-add); joint label dropout changes neither."""
    params, gflops = config_gflops("FCDM-S", (4, 32, 32))
    assert params == 32_699_912
    uncond_params, uncond_gflops = config_gflops("FCDM-S", (4, 32, 32), conditioning="unconditional")
    assert uncond_params == 32_699_912 - 1001 * (128 + 256 + 512) == 31_803_016
    assert uncond_gflops == gflops
    assert config_gflops("FCDM-S", (4, 32, 32), label_dropout="joint") == (params, gflops)
    assert config_gflops("DiT-S/8", (4, 32, 32), label_dropout="joint") == config_gflops("DiT-S/8", (4, 32, 32))
