"""analysis.collect and analysis.store against a synthetic MLflow store of known values (no training)."""
import math

import pandas as pd
import pytest
from helpers import SMOKE, make_config
from synthetic import SUFFIX, experiment, known_for_tests, log_run, protocol_tags

from analysis.aggregate import View
from analysis.collect import MISSING, collect, collect_spec, config_label
from analysis.store import StoreError, read_store, read_via_client, spec_names
from fcdm.spec import expand
from fcdm.spec.job import Job


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    return known_for_tests(tmp_path_factory)


def rows(frame, k, seed=None):
    r = frame[frame["config"] == f"k={k}"]
    return r if seed is None else r[r["seed"] == seed]


def test_one_row_per_run_and_evaluation_step_with_every_metric(known):
    jobs, uri, frame = known
    assert list(dict.fromkeys(frame["config"])) == ["k=7", "k=3", "k=5", "k=9", "k=1", "k=11"]  # expansion order
    k7 = rows(frame, 7, 1)
    assert k7["step"].tolist() == [100, 200, 300]
    assert k7["fid"].tolist() == [32, 22, 12] and k7["is"].tolist() == [68, 78, 88]
    assert k7["precision"].tolist() == pytest.approx([0.57] * 3) and set(k7["status"]) == {"FINISHED"}
    # the post-hoc protocol is its own column, only where it was logged
    assert k7[f"fid/{SUFFIX}"].tolist()[:2] == [pytest.approx(math.nan, nan_ok=True)] * 2
    assert k7[f"fid/{SUFFIX}"].tolist()[2] == 11
    assert frame.attrs["metrics"][:4] == ["fid", "is", "precision", "recall"]  # bare keys first
    assert frame.attrs["metrics"][-1] == f"fid/{SUFFIX}"


def test_cost_columns_identity_and_protocol(known):
    jobs, uri, frame = known
    r = rows(frame, 3, 0).iloc[-1]
    assert (r.params, r.gflops, r.batch_size, r.train_steps) == (3000, pytest.approx(0.003), 16, 300)
    assert r.train_compute == pytest.approx(0.003 * 3 * 16 * 300)
    assert r.throughput == 7.0 and r.last_step == 300 and r.model == "FCDM-S" and r.peak_memory_mb == 512
    assert r["axis.model.args.kernel_size"] == 3 and r.spec == "known" and r.profile == "smoke"
    job = next(j for j in jobs if j.axes["model.args.kernel_size"] == 3 and j.seed == 0)
    assert (r.hash, r.seed, r.job) == (job.hash, 0, "known/k=3")
    assert r.protocol == protocol_tags(500)["eval.protocol"] and r["eval.num_samples"] == "500"
    assert rows(frame, 1).iloc[0].protocol == protocol_tags(1000)["eval.protocol"]


def test_failed_running_and_missing_jobs_are_kept_and_marked(known):
    jobs, uri, frame = known
    failed = rows(frame, 5, 2)
    assert failed["status"].tolist() == ["FAILED"] and failed["fid"].tolist() == [42] and failed.last_step.item() == 150
    running = rows(frame, 9, 0)
    assert running["status"].tolist() == ["RUNNING"] and running["step"].tolist() == [100]
    missing = rows(frame, 11, 0)
    assert len(missing) == 1 and missing.status.item() == MISSING and math.isnan(missing.step.item())
    assert pd.isna(missing.run_id.item()) and math.isnan(missing.fid.item())
    assert frame.drop_duplicates(["hash", "seed"]).shape[0] == len(jobs)  # every job, none dropped


def test_newest_run_of_a_hash_and_seed_wins_and_deleted_runs_are_ignored(known):
    from mlflow import MlflowClient  # heavy: only for the test that logs

    _, uri, _ = known
    # a configuration of its own (k=13) in the same store, so the other tests' jobs are untouched
    job = Job(spec="other", name="other/k=13", config=make_config("model.args.kernel_size=13"))
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("known").experiment_id
    log_run(c, exp, job, {100: {"fid": 50.0}})
    newest = log_run(c, exp, job, {100: {"fid": 40.0}})
    deleted = log_run(c, exp, job, {100: {"fid": 30.0}})
    c.delete_run(deleted)
    frame = collect([job], uri)
    assert frame["run_id"].tolist() == [newest] and frame["fid"].tolist() == [40.0]


def test_direct_sql_read_equals_the_mlflow_client_read(known):
    jobs, uri, _ = known
    hashes = {j.hash for j in jobs}
    runs, metrics = read_store(uri, hashes)
    runs2, metrics2 = read_via_client(uri, hashes, None)
    key = lambda df: df.sort_values("run_id").reset_index(drop=True)  # noqa: E731
    assert key(runs).drop(columns="tags").equals(key(runs2).drop(columns="tags"))
    assert key(runs)["tags"].tolist() == key(runs2)["tags"].tolist()
    assert metrics.equals(metrics2) and len(metrics) > 0


def test_a_store_without_a_database_is_one_clear_error(tmp_path):
    with pytest.raises(StoreError, match=r"no MLflow database at .*mlflow.db.*--store"):
        read_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store


def test_spec_tags_and_labels():
    assert spec_names({"fcdm.spec": "a", "fcdm.specs": ",a,b,"}) == {"a", "b"}
    job = Job(spec="s", name="s/k=3,width=8", config=make_config(), axes={"model.args.kernel_size": 3})
    assert config_label(job) == "k=3,width=8"
    bare = Job(spec="s", name="plain", config=make_config(), axes={"model.name": "DiT-S/2", "train.lr": 0.001},
               variant="no-grn")
    assert config_label(bare) == "no-grn, DiT-S/2, lr=0.001"


def test_the_caption_names_the_profiles_baseline_and_noise_keys_are_not_metrics(tmp_path):
    """Issue 15: the baseline caption named the spec's top-level baseline, not the profile's that is used."""
    from mlflow import MlflowClient  # heavy: only to build the store

    spec = tmp_path / "b.yaml"
    spec.write_text(f"name: b\nbase: {SMOKE}\naxes: {{model.args.kernel_size: [3, 7]}}\nbaseline: "
                    "{model.args.kernel_size: 7}\nprofiles:\n  smoke: {baseline: {model.args.kernel_size: 3}}\n")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = experiment(client, "b", tmp_path)
    for job in expand(spec):
        log_run(client, exp, job, {400: {"fid": 5.0, "fid.eval_seed1": 5.1}}, protocol=protocol_tags())
    frame = collect_spec(spec, "smoke", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert frame.attrs["baseline_given"] == {"model.args.kernel_size": 3}
    view = View.build(frame, "fid")
    assert view.baseline_note == "baseline: kernel_size=3 (the spec's `baseline`)" and view.baseline_of("kernel_size=7") \
        == "kernel_size=3"
    assert frame.attrs["metrics"] == ["fid"] and frame.attrs["noise"] == ["fid.eval_seed1"]
    assert view.noise("kernel_size=7") == {0: [5.0, 5.1]}


def test_a_run_reevaluated_under_the_specs_protocol_joins_that_protocols_section(tmp_path):
    """Issue 15: a run another spec trained (protocol A: 25 sampling steps) evaluated under this spec's protocol B
    logs `fid/<slug>` (and re-samplings `fid.eval_seed<S>/<slug>`) with the tag `eval/<slug>.digest` = B; it
    belongs to B's section with those values, its bare fid (A) never in it."""
    from mlflow import MlflowClient  # heavy: only to build the store

    from analysis.report import build_report  # the report's sections, read from its files

    spec = tmp_path / "r.yaml"
    spec.write_text(f"name: r\nbase: {SMOKE}\naxes: {{model.args.kernel_size: [3, 5, 7]}}\n"
                    "baseline: {model.args.kernel_size: 7}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = experiment(client, "r", tmp_path)
    a, b = protocol_tags(steps=25), protocol_tags(steps=50)
    slug = f"euler-50-cfg2-n500-fp32-seed0-{b['eval.protocol'][:8]}"
    for job in expand(spec):
        k = job.axes["model.args.kernel_size"]
        if k != 7:
            log_run(client, exp, job, {400: {"fid": 10.0 + k, "fid.eval_seed1": 10.5 + k}}, protocol=b)
            continue
        rid = log_run(client, exp, job, {200: {"fid": 99.0}, 400: {"fid": 98.0, "fid.eval_seed1": 97.0}}, protocol=a,
                      extra_metrics={400: {f"fid/{slug}": 8.0, f"fid.eval_seed1/{slug}": 8.5}})
        client.set_tag(rid, f"eval/{slug}.digest", b["eval.protocol"])
    frame = collect_spec(spec, None, uri)
    assert frame.attrs["metrics"] == ["fid"] and frame.attrs["noise"] == ["fid.eval_seed1"]
    k7 = frame[frame["config"] == "kernel_size=7"]
    own, joined = k7[k7["evaluated_as"].isna()], k7[k7["evaluated_as"] == slug]
    assert own["protocol"].tolist() == [a["eval.protocol"]] * 2 and own["fid"].tolist() == [99.0, 98.0]
    assert joined["protocol"].tolist() == [b["eval.protocol"]] and joined["step"].tolist() == [400]
    assert joined[["fid", "fid.eval_seed1"]].values.tolist() == [[8.0, 8.5]]
    assert joined["eval.sampling_steps"].tolist() == ["50"] and set(own["eval.sampling_steps"]) == {"25"}
    assert f"fid/{slug}" not in frame  # taken as B's fid, not a protocol column of its own
    view = View.build(frame, "fid")  # the main protocol: B, every configuration
    assert view.protocol == b["eval.protocol"]
    assert {c: view.curve(c)[400].mean for c in view.configs} == {"kernel_size=3": 13.0, "kernel_size=5": 15.0,
                                                                  "kernel_size=7": 8.0}
    assert view.noise("kernel_size=7") == {0: [8.0, 8.5]}
    assert View.build(frame, "fid", a["eval.protocol"]).curve("kernel_size=7")[400].mean == 98.0  # A: its own
    build_report(frame, tmp_path / "rep", "r", "smoke")
    ablation = pd.read_csv(tmp_path / "rep" / "tables" / "fid_ablation.csv")  # the main section's table: B
    assert ablation["configuration"].tolist() == ["kernel_size=3", "kernel_size=5", "kernel_size=7 (baseline)"]
    assert ablation["FID"].tolist() == [13.0, 15.0, 8.0]
