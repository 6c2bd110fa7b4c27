"""`fcdm-ablate sweep --optuna`: the search space, the study machinery, and end-to-end sweeps of tiny trials.

The end-to-end tests train real (tiny) jobs in subprocesses through the job runner, on SQLite storage
and a real MLflow store; the PostgreSQL ones are in test_sweep_postgres.py.
"""
from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.search_space import overrides, parse_search
from fcdm.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
optuna.logging.set_verbosity(optuna.logging.WARNING)


def search(**extra) -> dict:
    return {"metric": "fid", "params": {"model.args.kernel_size": [3, 5]}, **extra}


# -- the search space --------------------------------------------------------------------------------

def test_parse_forms_and_suggest_conditional():
    space = parse_search({"params": {
        "model.args.kernel_size": [3, 5, 7],
        "model.args.mlp_ratio": {"low": 2, "high": 4},
        "train.lr": {"low": "3e-4", "high": 3.0e-3, "log": True},  # PyYAML 1.1 reads 3e-4 as a string
        "model.args.depth": {"choices": [[1, 1, 2, 1, 1], [2, 1, 1, 1, 2]]},
        "model.args.grn": {"choices": [True, False], "when": {"model.args.kernel_size": [5, 7]}},
        "train.ema_decay": {"low": 0.99, "high": 0.999, "step": 0.001, "when": {"model.name": "DiT-S/2"}},
    }}, "s.yaml")
    kinds = {p.key: p.kind for p in space.params}
    assert kinds == {"model.args.kernel_size": "categorical", "model.args.mlp_ratio": "int", "train.lr": "float",
                     "model.args.depth": "categorical", "model.args.grn": "categorical", "train.ema_decay": "float"}
    assert space.objectives[0].direction == "minimize" and not space.multi
    assert space.base_keys == ("model.name",)
    seen_grn = set()
    for k in (3, 5):
        trial = optuna.trial.FixedTrial({"model.args.kernel_size": k, "model.args.mlp_ratio": 3, "train.lr": 1e-3,
                                         "model.args.depth": "[2,1,1,1,2]", "model.args.grn": False})
        chosen = space.suggest(trial, {"model.name": "FCDM-S"})
        assert chosen["model.args.depth"] == [2, 1, 1, 1, 2]  # decoded from Optuna's string choice
        assert "train.ema_decay" not in chosen  # its condition (a base-config value) does not hold
        seen_grn.add("model.args.grn" in chosen)
    assert seen_grn == {False, True}  # grn only when kernel_size is 5 or 7
    # Every bound and choice is probed once, each with its conditions true.
    probes = space.probes({"model.name": "FCDM-S"})
    assert {p["model.args.kernel_size"] for p in probes} == {3, 5, 7}
    assert any(p.get("model.args.grn") is False for p in probes) and all(
        p["model.args.kernel_size"] != 3 for p in probes if "model.args.grn" in p)


def test_override_strings_parse_back_to_the_same_values():
    for v in (1e-5, 0.001, 3, True, None, "yes", "FCDM-S", [1, 1, 2, 1, 1], {"fcdm.study": "s", "fcdm.trial": "3"}):
        (item,) = overrides({"k": v})
        assert yaml.safe_load(item.split("=", 1)[1]) == v, item


def test_profiles_change_ranges_and_unknown_profile_is_refused():
    raw = search(params={"train.lr": {"low": 1.0e-4, "high": 1.0e-3, "log": True}, "model.args.kernel_size": [3, 5]},
                 profiles={"paper": {"params": {"train.lr": {"low": 5.0e-5, "high": 2.0e-4, "log": True}}}})
    base = parse_search(raw, "s.yaml", "smoke", ["smoke", "paper"])
    paper = parse_search(raw, "s.yaml", "paper", ["smoke", "paper"])
    assert base.params[0].low == 1.0e-4 and paper.params[0].low == 5.0e-5 and len(paper.params) == 2
    with pytest.raises(SpecError, match=r"^s\.yaml: search\.profiles\.papr: papr: no such profile; did you mean 'paper'"):
        parse_search({**raw, "profiles": {"papr": {}}}, "s.yaml", None, ["smoke", "paper"])


BAD = [  # (search section, the message after "s.yaml: ")
    ([1, 2], r"search: \[1, 2\]: must be a mapping with 'params'"),
    (search(metrc="fid"), r"search\.metrc: unknown key; did you mean 'metric'\? allowed keys: params, metric"),
    ({"metric": "fid"}, r"search\.params: null: must be a non-empty mapping of dotted config keys"),
    (search(params={"lr": [1, 2]}), r"search\.params\.lr: lr: not a dotted config key; use e\.g\. model\.args"),
    (search(params={"train.lr": {"low": 1, "high": 2, "choices": [1]}}),
     r"search\.params\.train\.lr\.low: 1: 'choices' and a range exclude each other"),
    (search(params={"train.lr": {"low": 0.1, "high": 0.01}}),
     r"search\.params\.train\.lr: \{\"low\": 0\.1, \"high\": 0\.01\}: low 0\.1 is greater than high 0\.01; swap them"),
    (search(params={"train.lr": {"low": 0.0, "high": 0.1, "log": True}}), r"search\.params\.train\.lr\.low: 0\.0: a log range needs low > 0"),
    (search(params={"train.lr": {"low": 1.0e-4}}), r"search\.params\.train\.lr: \{\"low\": 0\.0001\}: needs both low and high"),
    (search(params={"train.lr": {"low": "abc", "high": 1.0}}), r"search\.params\.train\.lr\.low: abc: must be a finite number"),
    (search(params={"model.args.kernel_size": []}), r"search\.params\.model\.args\.kernel_size\.choices: \[\]: must be a non-empty list"),
    (search(params={"model.args.kernel_size": [3, 3]}), r"search\.params\.model\.args\.kernel_size\.choices: \[3, 3\]: lists a value twice"),
    (search(params={"model.args.kernel_size": {"choices": [3], "wen": {}}}),
     r"search\.params\.model\.args\.kernel_size\.wen: unknown key; did you mean 'when'\?"),
    (search(params={"model.args.mlp_ratio": {"low": 2, "high": 4, "step": 0.5, "type": "int"}}),
     r"search\.params\.model\.args\.mlp_ratio\.step: 0\.5: an int range needs whole numbers"),
    (search(params={"model.args.grn": {"choices": [True], "when": {"model.args.kernel_size": 5}},
                    "model.args.kernel_size": [3, 5]}),
     r"search\.params\.model\.args\.grn\.when\.model\.args\.kernel_size: model\.args\.kernel_size: model\.args\.kernel_size is searched after"),
    (search(params={"model.args.grn": {"choices": [True], "when": {"model.args.grn": True}}}),
     r"search\.params\.model\.args\.grn\.when\.model\.args\.grn: model\.args\.grn: a parameter cannot depend on itself"),
    (search(metric="sharpness"), r"search\.metric: sharpness: no known direction: add direction: minimize or maximize"),
    (search(direction="down"), r"search\.direction: down: allowed values: minimize, maximize"),
    ({"objectives": ["fid", "fid"], "params": {"model.args.kernel_size": [3]}},
     r"search\.objectives: \[\"fid\", \"fid\"\]: lists a metric twice"),
    ({"objectives": ["fid"], "metric": "fid", "params": {"model.args.kernel_size": [3]}},
     r"search\.objectives: \[\"fid\"\]: 'objectives' and 'metric'/'direction' exclude each other"),
    ({"objectives": [{"metric": "is", "directon": "max"}], "params": {"model.args.kernel_size": [3]}},
     r"search\.objectives\[0\]\.directon: unknown key; did you mean 'direction'\?"),
    (search(sampler="bayes"), r"search\.sampler: bayes: unknown sampler; allowed values: tpe, random, grid, nsga2, cmaes"),
    (search(pruner="early"), r"search\.pruner: early: unknown pruner; allowed values: median, hyperband, none, always"),
    (search(trials=0), r"search\.trials: 0: must be a positive integer"),
    (search(profiles={"paper": {"params": {"train.lr": {"low": 2.0, "high": 1.0}}}}),
     r"search\.profiles\.paper\.params\.train\.lr: .*: low 2 is greater than high 1"),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_search_sections_are_one_line_errors(raw, message):
    with pytest.raises(SpecError) as err:
        parse_search(raw, "s.yaml")
    text = str(err.value)
    assert "\n" not in text
    assert re.match(r"s\.yaml: " + message, text), text


def test_grid_needs_a_finite_space():
    space = parse_search(search(params={"model.args.kernel_size": [3, 5], "model.args.mlp_ratio": {"low": 2, "high": 4},
                                        "train.lr": {"low": 0.001, "high": 0.003, "step": 0.001}}), "s.yaml")
    assert space.grid() == {"model.args.kernel_size": [3, 5], "model.args.mlp_ratio": [2, 3, 4],
                            "train.lr": [0.001, 0.002, 0.003]}
    with pytest.raises(SpecError, match=r"^s\.yaml: search\.params\.train\.lr: \{\"low\": 0\.001, \"high\": 0\.003\}: no finite grid"):
        parse_search(search(params={"train.lr": {"low": 0.001, "high": 0.003}}), "s.yaml").grid()


# -- the study machinery -----------------------------------------------------------------------------

def test_storage_urls(tmp_path):
    from fcdm.sweep import SweepError, make_storage, redact, storage_url

    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path}/optuna.db"
    assert storage_url("postgresql://u:secret@h/db", tmp_path).startswith("postgresql+psycopg://u:secret@h/db")
    assert redact("postgresql+psycopg://u:secret@h:5/db") == "postgresql+psycopg://u:***@h:5/db"
    journal = make_storage(f"journal:{tmp_path / 'j.log'}")
    assert type(journal).__name__ == "JournalStorage"
    with pytest.raises(SweepError, match=r"--storage journal:/nonexistent/x\.log: the folder /nonexistent does not exist"):
        make_storage("journal:/nonexistent/x.log")
    with pytest.raises(SweepError, match=r"--storage nosuchdb://x: cannot open it"):
        make_storage("nosuchdb://x")


def test_always_pruner_spares_trial_zero():
    from fcdm.sweep import make_pruner

    pruner = make_pruner("always", 10, 20)
    study = optuna.create_study(pruner=pruner)
    pruned = []
    for _ in range(3):
        t = study.ask()
        t.report(1.0, 10)
        pruned.append(t.should_prune())
        study.tell(t, 1.0)
    assert pruned == [False, True, True]


def test_open_dashboard_without_the_package_says_how_to_install(monkeypatch, tmp_path):
    from fcdm.sweep import SweepError, open_dashboard

    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if not installed
    with pytest.raises(SweepError, match=r"pip install 'fcdm-ablate\[dashboard\]'"):
        open_dashboard(None, 8080, tmp_path)


def test_cli_sweep_without_an_engine_flag_names_the_flags():
    result = runner.invoke(app, ["sweep"])
    assert result.exit_code == 2
    assert "--optuna" in result.output
