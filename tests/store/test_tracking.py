"""fcdm.store.tracking.find_run: a RUN argument is a literal name, never part of the filter's syntax
(issue 16 item 10: MLflow's filter strings have no escape character)."""
import pytest
from mlflow import MlflowClient

from fcdm.errors import RunNotFoundError
from fcdm.store.tracking import find_run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.create_experiment("x")
    for name in ("it's", 'say "hi"', "a\\b", "plain"):
        client.create_run(exp, run_name=name)
    return store


@pytest.mark.parametrize("name", ["it's", 'say "hi"', "a\\b", "plain"])
def test_names_with_quotes_are_found_literally(store, name):
    assert find_run(name, store).info.run_name == name


@pytest.mark.parametrize("name", ["x' or attributes.run_name != '", 'x" or attributes.run_name != "', "'", '"'])
def test_a_quote_cannot_widen_the_search(store, name):
    with pytest.raises(RunNotFoundError, match="no run with id or name"):
        find_run(name, store)


def test_a_name_with_both_quotes_is_refused_in_one_line(store):
    with pytest.raises(RunNotFoundError, match=r"""RUN '.*': a run name holding both ' and " cannot be looked up; """
                                               "pass the run id instead"):
        find_run("""it's "x\"""", store)


def test_an_experiment_created_by_another_trainer_since_we_looked_is_used(tmp_path, monkeypatch):
    """Two trainers of one spec start together on a store without the spec's experiment: both look it up,
    find nothing, and create it; the second create fails (UNIQUE) and must use the first one's."""
    from fcdm.store.tracking import Tracker

    first, second = Tracker(tmp_path), Tracker(tmp_path)
    looked = second.client.get_experiment_by_name
    misses = iter([True])
    # the interleaving: `second` looks before `first` creates, then tries to create it after
    monkeypatch.setattr(second.client, "get_experiment_by_name",
                        lambda name: None if next(misses, False) else looked(name))
    made = first.experiment_id("kernel_size")
    assert second.experiment_id("kernel_size") == made
    assert [e.name for e in MlflowClient(first.uri).search_experiments()].count("kernel_size") == 1


def test_trainers_logging_one_dataset_at_once_each_record_it(tmp_path, tiny_config):
    """Trainers of one spec log the same dataset into one experiment as they start: MLflow looks the dataset
    up, then inserts it, so two at once collide on its UNIQUE key (IntegrityError). Each must record it."""
    import threading

    from fcdm.store.tracking import Tracker

    for round_ in range(6):
        cfg = tiny_config(f"log.experiment=race{round_}")
        trackers = [Tracker(tmp_path) for _ in range(6)]
        for i, t in enumerate(trackers):
            t.run_id = t.client.create_run(t.experiment_id(cfg.log.experiment), run_name=f"r{i}").info.run_id
        gate, errors = threading.Barrier(len(trackers)), []

        def log(t):
            gate.wait()
            try:
                t.log_dataset(cfg, 1437)
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=log, args=(t,)) for t in trackers]
        [th.start() for th in threads]
        [th.join() for th in threads]
        assert not errors, errors
        for t in trackers:
            (only,) = t.client.get_run(t.run_id).inputs.dataset_inputs
            assert only.dataset.name == cfg.data.name
