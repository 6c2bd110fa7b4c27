"""The torch-free registry (fcdm.models.registry) and closed-form costs (fcdm.models.costs) agree with the
real models: constructor defaults equal the signatures, parameter counts equal the built models', and
`plan` runs without importing torch."""
import inspect
import itertools
import subprocess
import sys

import pytest
from helpers import ROOT

from fcdm.models import FCDM, DiT, create_model
from fcdm.models.costs import architecture_cost, closed_form_cost
from fcdm.models.registry import FAMILY_ARGS, PRESETS, preset_kwargs, resolve_kwargs


@pytest.mark.parametrize("family,cls", [("fcdm", FCDM), ("dit", DiT)])
def test_registry_defaults_are_the_constructor_signatures(family, cls):
    params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    assert list(FAMILY_ARGS[family]) == list(params)  # same arguments, same order
    assert FAMILY_ARGS[family] == params


FCDM_GRID = list(itertools.product(
    [8, 12, 32], [[1, 1, 2, 1, 1], [2, 0, 1, 0, 2], [1, 2, 0, 2, 1]], [7, 3], [3.0, 1.5, 4],
    ["adaln-zero", "adaln", "additive", "unconditional"], [False, True], [True, False], [0.1, 0.0]))


def _fcdm_case(i):
    width, depth, k, ratio, cond, shared, grn, drop = FCDM_GRID[i]
    return dict(hidden_size=width, depth=depth, kernel_size=k, mlp_ratio=ratio, conditioning=cond,
                shared_embedders=shared, grn=grn, class_dropout_prob=drop, in_channels=1 + i % 4,
                num_classes=10 + i % 7, learn_sigma=bool(i % 2))


# Every 23rd point of the grid (which cycles every factor), plus the presets.
CASES = [("FCDM-S", _fcdm_case(i)) for i in range(0, len(FCDM_GRID), 23)]
CASES += [(name, {}) for name in PRESETS]
CASES += [("DiT-S/2", dict(hidden_size=48, depth=d, num_heads=h, patch_size=p, input_size=s, mlp_ratio=r,
                           class_dropout_prob=drop, learn_sigma=sigma, in_channels=c))
          for d, h, p, s, r, drop, sigma, c in [(1, 4, 2, 8, 4.0, 0.1, True, 4), (3, 6, 4, 16, 2.5, 0.0, False, 1),
                                                 (2, 2, 1, 4, 3, 0.2, True, 3)]]


@pytest.mark.parametrize("name,overrides", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_closed_form_params_equal_the_built_model(name, overrides):
    kwargs = resolve_kwargs(name, preset_kwargs(name, **overrides))
    cost = closed_form_cost(PRESETS[name][0], kwargs, (kwargs["in_channels"], 8, 8))
    assert cost is not None  # the closed forms cover every shipped argument
    import torch

    with torch.device("meta"):
        model = create_model(name, **kwargs)
    assert cost.params == sum(p.numel() for p in model.parameters())


def test_closed_forms_check_arguments_as_the_constructor_does():
    bad = resolve_kwargs("FCDM-S", preset_kwargs("FCDM-S", kernel_size=4))
    with pytest.raises(ValueError, match=r"^kernel_size=4 is not supported"):
        architecture_cost("FCDM-S", bad, (1, 8, 8))
    with pytest.raises(ValueError, match=r"^kernel_size=4 is not supported"):
        create_model("FCDM-S", kernel_size=4)
    dit = resolve_kwargs("DiT-S/2", preset_kwargs("DiT-S/2", hidden_size=50))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        architecture_cost("DiT-S/2", dit, (4, 32, 32))
    # A value of the wrong type is outside the closed forms: building the model says what is wrong.
    odd = resolve_kwargs("FCDM-S", preset_kwargs("FCDM-S", hidden_size="32"))
    assert closed_form_cost("fcdm", odd, (1, 8, 8)) is None
    with pytest.raises((ValueError, TypeError)):
        architecture_cost("FCDM-S", odd, (1, 8, 8))


def test_plan_and_config_hashes_import_no_torch():
    code = ("import sys; from typer.testing import CliRunner; from fcdm.cli import app\n"
            "for spec in ('kernel_size', 'dit_comparison', 'conditioning'):\n"
            "    for profile in ('smoke', 'paper'):\n"
            "        r = CliRunner().invoke(app, ['plan', f'ablations/{spec}.yaml', '--profile', profile,\n"
            "                                     '--store', 'no-such-store', '--format', 'csv'])\n"
            "        assert r.exit_code == 0, r.output\n"
            "from fcdm.config import load_config\n"
            "assert load_config('ablations/configs/smoke.yaml').hash\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
