"""`fcdm-ablate sweep --optuna`: the search space, the study machinery, and end-to-end sweeps of tiny trials.

The end-to-end tests train real (tiny) jobs in subprocesses through the job runner, on SQLite storage
and a real MLflow store; the PostgreSQL ones are in test_postgres.py.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import ROOT
from optuna.trial import TrialState
from sweep_specs import LR, mlflow_runs, write_spec
from typer.testing import CliRunner

from fcdm.cli import app
from fcdm.spec import SpecError
from fcdm.spec.search import overrides, parse_search

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
    from fcdm.sweep import SweepError
    from fcdm.sweep.study import make_storage, redact, storage_url

    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path}/optuna.db"
    assert storage_url("postgresql://u:secret@h/db", tmp_path).startswith("postgresql+psycopg://u:secret@h/db")
    assert redact("postgresql+psycopg://u:secret@h:5/db") == "postgresql+psycopg://u:***@h:5/db"
    journal = make_storage(f"journal:{tmp_path / 'j.log'}")
    assert type(journal).__name__ == "JournalStorage"
    with pytest.raises(SweepError, match=r"--storage journal:/nonexistent/x\.log: the folder /nonexistent does not exist"):
        make_storage("journal:/nonexistent/x.log")
    with pytest.raises(SweepError, match=r"--storage nosuchdb://x: cannot open it"):
        make_storage("nosuchdb://x")
    garbage = tmp_path / "garbage.db"  # a damaged storage file: one line, not a traceback
    garbage.write_bytes(b"\x00" * 10 + b"not a database" * 100)
    with pytest.raises(SweepError, match=r"--storage sqlite:///.*garbage\.db: cannot open it \(\w+"):
        make_storage(f"sqlite:///{garbage}")
    empty = tmp_path / "empty.db"  # zero bytes: SQLite takes it for an empty database
    empty.write_bytes(b"")
    assert type(make_storage(f"sqlite:///{empty}")).__name__ == "RDBStorage"
    for secret in ("postgresql+psycopg://:pa/ss@127.0.0.1:1/db", "postgresql+psycopg://u:pa/ss@127.0.0.1:1/db",
                   "postgresql+psycopg://u@127.0.0.1:1/db?password=pa/ss"):  # issue 16 item 6: never shown
        with pytest.raises(SweepError, match=r"--storage postgresql\+psycopg://") as e:
            make_storage(secret, heartbeat=None)
        assert "pa/ss" not in str(e.value) and "pa%2Fss" not in str(e.value), str(e.value)


def test_an_older_optuna_is_named_with_the_version_needed(tmp_path, monkeypatch):
    """Issue 16 item 12: without the heartbeat API of OPTUNA_MIN, one line naming the installed and needed
    versions (it was a misleading storage error); pyproject.toml declares the same minimum."""
    import tomllib

    from fcdm.sweep import SweepError
    from fcdm.sweep.study import OPTUNA_MIN, make_storage

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"optuna>={OPTUNA_MIN}" in [d.replace(" ", "") for d in deps]
    monkeypatch.delattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
    with pytest.raises(SweepError, match=rf"optuna {optuna.__version__} is installed; sweeps need optuna>=4\.9"):
        make_storage(f"sqlite:///{tmp_path / 'o.db'}")
    assert not list(tmp_path.iterdir())


def test_always_pruner_spares_trial_zero():
    from fcdm.sweep.study import make_pruner

    pruner = make_pruner("always", 10, 20)
    study = optuna.create_study(pruner=pruner)
    pruned = []
    for _ in range(3):
        t = study.ask()
        t.report(1.0, 10)
        pruned.append(t.should_prune())
        study.tell(t, 1.0)
    assert pruned == [False, True, True]


def test_a_study_refuses_another_search_space_and_counts_its_budget(tmp_path):
    from fcdm.sweep import SweepError
    from fcdm.sweep.study import Budget, make_storage, open_study

    storage = make_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat=None)
    space = parse_search(search(), "s.yaml")
    study = open_study(storage, "s", space, None, None, "spec", "smoke")
    assert study.user_attrs["fcdm.search"] == space.fingerprint()
    other = parse_search(search(params={"model.args.kernel_size": [3, 7]}), "s.yaml")
    with pytest.raises(SweepError, match=r"^study 's' already exists in this storage with another search .*pass --study NEW_NAME"):
        open_study(storage, "s", other, None, None, "spec", "smoke")
    # Issue 15: a rerun with other --set overrides (e.g. train.steps) is another search, not more of this one
    with pytest.raises(SweepError, match=r"another --set overrides \('\[\]', now '\[\"train.steps=99\"\]'\)"):
        open_study(storage, "s", space, None, None, "spec", "smoke", ["train.steps=99"])
    with_set = open_study(storage, "t", space, None, None, "spec", "smoke", [" train.steps = 99", "train.lr=1e-3"])
    assert with_set.user_attrs["fcdm.sets"] == '["train.lr=1e-3", "train.steps=99"]'
    open_study(storage, "t", space, None, None, "spec", "smoke", ["train.lr=1e-3", "train.steps=99"])  # the same
    import threading

    stop = threading.Event()
    budget = Budget(study, 2, None, stop, heartbeat=False, log=print)
    for _ in range(2):  # two trials may start; each one counts as soon as it exists
        assert budget.claim()
        study.tell(study.ask(), 1.0)
        budget.release()
    assert not budget.claim()
    study.enqueue_trial({"model.args.kernel_size": 3})  # a retried trial always runs
    assert budget.claim()
    budget.release()
    assert not Budget(study, 5, 0.0, stop, heartbeat=False, log=print).claim()  # --timeout 0: none starts


def test_open_dashboard_without_the_package_says_how_to_install(monkeypatch, tmp_path):
    from fcdm.sweep import SweepError, open_dashboard

    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if not installed
    with pytest.raises(SweepError, match=r"pip install 'fcdm-ablate\[dashboard\]'"):
        open_dashboard(None, 8080, tmp_path)


def test_cli_sweep_without_an_engine_flag_names_the_flags():
    result = runner.invoke(app, ["sweep"])
    assert result.exit_code == 2
    assert "choose a search engine: --optuna" in result.output


def test_cli_ui_optuna_without_the_dashboard_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    result = runner.invoke(app, ["ui", "--optuna", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "pip install 'fcdm-ablate[dashboard]'" in result.output


@pytest.mark.parametrize("search_section,args,message", [
    ({"metric": "fid", "params": {"model.args.kernal_size": [3, 5]}}, [],
     r"search\.params with model\.args\.kernal_size=3: .*unknown key 'model\.args\.kernal_size'.*did you mean 'model\.args\.kernel_size'"),
    ({"metric": "fid", "params": {"train.lr": {"low": 1.0e-3, "high": 1.0e-4}}}, [],
     r"search\.params\.train\.lr: .*low 0\.001 is greater than high 0\.0001; swap them"),
    (None, [], r"search: \(missing\): `sweep` needs a search section"),
    ({"metric": "fid", "params": {"train.lr": {"low": 1.0e-3, "high": 1.0e-2}}}, ["--sampler", "grid"],
     r"search\.params\.train\.lr: .*no finite grid"),
    ({"metric": "fid", "params": {"model.args.kernel_size": [3]}}, ["--storage", "journal:/nonexistent/j.log"],
     r"--storage journal:/nonexistent/j\.log: the folder /nonexistent does not exist"),
    ({"metric": "fid", "params": {"train.lr": [1.0e-3]}}, ["--study", "a b"], r"--study 'a b': use letters, digits"),
    ({"metric": "fid", "params": {"train.lr": [1.0e-3]}}, ["--set", "train.lrr=1"],
     r"--set train\.lrr=1: unknown config key; did you mean 'train\.lr'\?"),
    ({"metric": "fid", "params": {"train.lr": [1.0e-3]}, "axes": {"model.args.kernel_size": [3, 5]}}, [],
     r"axes: 2 grid points .*a sweep searches around ONE configuration"),
])
def test_cli_sweep_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, search_section, args, message):
    search_section = dict(search_section) if search_section else None
    extra = {"axes": search_section.pop("axes")} if search_section and "axes" in search_section else {}
    spec = write_spec(tmp_path, "tbad", search_section, **extra)
    store = tmp_path / "store"
    result = runner.invoke(app, ["sweep", str(spec), "--optuna", "--store", str(store), *args])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: "), line
    assert re.search(message, line), line
    assert not store.exists()  # nothing written: no store, no study, no MLflow database


# -- end to end: tiny trials trained by the job runner, SQLite storage, one store shared by these tests --

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep-store")


def sweep(spec: Path, store: Path, *args: str):
    result = runner.invoke(app, ["sweep", str(spec), "--optuna", "--store", str(store), *args])
    assert result.exit_code == 0, result.output
    return result.output


def load(store: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{store / 'optuna.db'}")


@pytest.mark.e2e
def test_sweep_two_workers_then_rerun_adds_the_difference(store):
    spec = write_spec(store, "tsweep", {"metric": "fid", "params": {**LR, "model.args.kernel_size": [3, 5]}})
    out = sweep(spec, store, "--trials", "4", "--workers", "2")
    assert "best trial (fid, minimize):" in out and "study run" in out
    study = load(store, "tsweep-smoke")
    assert len(study.trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials), \
        (out, [(t.number, t.state, t.user_attrs.get("error")) for t in study.trials])
    sweep(spec, store, "--trials", "6", "--workers", "2")
    study = load(store, "tsweep-smoke")
    assert len(study.trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    # Every trial has exactly one MLflow run, tagged with the study and its trial number.
    _, runs = mlflow_runs(store, "tags.`fcdm.study` = 'tsweep-smoke'")
    runs = [r for r in runs if r.data.tags.get("fcdm.kind") != "study"]
    by_id = {r.info.run_id: r for r in runs}
    assert len(by_id) == 6 and {t.user_attrs["run_id"] for t in study.trials} == set(by_id)
    for t in study.trials:
        assert by_id[t.user_attrs["run_id"]].data.tags["fcdm.trial"] == str(t.number)
        assert sorted(t.intermediate_values) == [15, 30] or t.state == TrialState.PRUNED
    # The study-level run: best params as tags, plots as artifacts.
    client, (study_run,) = mlflow_runs(store, "tags.`fcdm.kind` = 'study' and tags.`fcdm.study` = 'tsweep-smoke'")
    names = {a.path for a in client.list_artifacts(study_run.info.run_id)}
    assert {"trials.csv", "best.json", "best_config.yaml", "optimization_history.png"} <= names
    assert study_run.data.tags["best.trial"] == str(study.best_trial.number)


@pytest.mark.e2e
def test_always_pruner_prunes_every_trial_but_the_first_under_accelerate_launch(store):
    """Each trial trains as two gloo processes under `accelerate launch`; a pruned trial's whole process
    group checkpoints and stops, and its intermediate value stays recorded."""
    spec = write_spec(store, "tprune", {"metric": "fid", "params": LR})
    sweep(spec, store, "--trials", "3", "--workers", "2", "--pruner", "always", "--launcher", "accelerate",
          "--num-processes", "2")
    study = load(store, "tprune-smoke")
    states = [t.state for t in sorted(study.trials, key=lambda t: t.number)]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    client, _ = mlflow_runs(store)
    assert client.get_run(study.trials[0].user_attrs["run_id"]).data.tags["fcdm.processes"] == "2"
    for t in study.trials[1:]:
        assert list(t.intermediate_values) == [15]  # pruned at the first evaluation, its value recorded
        run = client.get_run(t.user_attrs["run_id"])
        assert run.data.tags["fcdm.pruned"] == "true" and run.data.tags["fcdm.processes"] == "2"
        assert run.info.status in ("KILLED", "FINISHED")  # FINISHED: the trainer outran the watcher
        ckpt = Path(run.data.tags["fcdm.checkpoint_dir"])
        assert any(ckpt.glob("step_*.pt"))  # the checkpoint is kept: a later trial resumes it


@pytest.mark.e2e
def test_a_trial_of_an_already_trained_config_trains_nothing(store):
    from fcdm.spec import expand
    from fcdm.store.jobs import LOG, job_dir

    spec = write_spec(store, "tdedup", {"metric": "fid", "params": {"model.args.kernel_size": [7]}})  # the base's k
    result = runner.invoke(app, ["run", str(spec), "--store", str(store), "--no-progress"])
    assert result.exit_code == 0, result.output
    (job,) = expand(spec, "smoke")
    journal = store / "tdedup.journal"  # the journal-file storage (a shared filesystem's), here
    out = sweep(spec, store, "--trials", "2", "--storage", f"journal:{journal}")
    assert out.count("was already trained") == 2 and "training nothing" in out
    study = optuna.load_study(study_name="tdedup-smoke", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    _, (run,) = mlflow_runs(store, f"tags.`fcdm.config_hash` = '{job.hash}'")
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and t.user_attrs["reused"] is True
        assert t.user_attrs["run_id"] == run.info.run_id and t.user_attrs["config_hash"] == job.hash
        assert t.values[0] == pytest.approx(run.data.metrics["fid"])
    assert (job_dir(store, job) / LOG).read_text().count("=== ") == 1  # trained once, by `run`


@pytest.mark.e2e
def test_multi_objective_gives_a_pareto_front_and_its_plot(store):
    spec = write_spec(store, "tpareto", {"objectives": ["fid", "gflops"],
                                         "params": {"model.args.kernel_size": [3, 5]}})
    out = sweep(spec, store, "--trials", "2", "--sampler", "grid", "--workers", "2")
    assert "Pareto front (fid (min) vs gflops (min)):" in out
    study = load(store, "tpareto-smoke")
    assert study.best_trials and all(len(t.values) == 2 for t in study.best_trials)
    client, (study_run,) = mlflow_runs(store, "tags.`fcdm.kind` = 'study' and tags.`fcdm.study` = 'tpareto-smoke'")
    names = {a.path for a in client.list_artifacts(study_run.info.run_id)}
    assert {"pareto_front.png", "pareto.json"} <= names
    front = json.loads(Path(client.download_artifacts(study_run.info.run_id, "pareto.json")).read_text())
    assert len(front) == len(study.best_trials) >= 1


@pytest.mark.e2e
def test_interrupted_sweep_requeues_its_trial_and_the_rerun_resumes_it(store):
    """Ctrl-C (here: the stop event a signal handler sets) checkpoints the running job and queues the
    trial again; the rerun trains that queued trial from the checkpoint."""
    import threading

    from fcdm.sweep import run_sweep

    spec = write_spec(store, "tstop", {"metric": "fid", "params": LR})
    stop, lines = threading.Event(), []
    ckpts_before = set((store / "checkpoints").glob("*")) if (store / "checkpoints").exists() else set()
    threading.Thread(target=lambda: (stop_after_ckpt(store, ckpts_before), stop.set()), daemon=True).start()
    summary = run_sweep(spec, trials=1, store=store, stop=stop, log=lines.append)
    assert summary.interrupted and "interrupted: rerun the same command to resume the study" in summary.notes
    study = load(store, "tstop-smoke")
    failed, waiting = study.trials
    assert failed.state == TrialState.FAIL and waiting.state == TrialState.WAITING
    assert waiting.system_attrs["fixed_params"] == failed.params and waiting.user_attrs["retry_of"] == failed.number
    summary = run_sweep(spec, trials=1, store=store, log=lines.append)
    study = load(store, "tstop-smoke")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert any(f"trial {waiting.number}: training" in ln and "resuming at step" in ln for ln in lines), lines


def stop_after_ckpt(store: Path, before: set) -> None:
    """Return once a new job folder of the store holds a checkpoint."""
    while True:
        for d in set((store / "checkpoints").glob("*")) - before if (store / "checkpoints").exists() else ():
            if any(d.glob("step_*.pt")):
                return
        time.sleep(0.05)

