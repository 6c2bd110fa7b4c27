"""The MLflow run of each configuration: one per (configuration hash, seed), tagged `fcdm.config_hash`
and `fcdm.seed`, so re-running a config finds its run again and a resumed run continues it; and the
names of every tag fcdm-ablate writes on runs (TAG_*).

    tracker = Tracker(store, tracking_uri); run_id, existed = tracker.open(cfg, tags)
    tracker.log_metrics({"loss": 0.1}, step); tracker.end("FINISHED")
    tracker.log_dataset(cfg, num_examples=1437)         # what the run trained on: MLflow's Datasets column
    find_run("kernel_size=3 s0", store)       # by run id, run name, or the older '<name>-<hash8>-s<seed>'
    reopen_run(client, experiment_id, {TAG_KIND: "study", TAG_STUDY: name}, "study-" + name)   # one run per key
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fcdm.config.identity import digest
from fcdm.errors import RunNotFoundError
from fcdm.store.layout import resolve_tracking_uri, short_name

if TYPE_CHECKING:
    from fcdm.config import RunConfig

# The tags fcdm-ablate writes on MLflow runs. A job's run: its identity (hash, seed), its checkpoint folder, and
# every spec whose runner trained or skipped it (",spec_a,spec_b,", so `tags."fcdm.specs" LIKE '%,spec_a,%'`
# finds a run shared by several specs). A sweep's runs: the study-level run (kind "study") and each trial's
# job run (its study, trial number, and whether it was pruned).
TAG_HASH, TAG_SEED, TAG_CKPT = "fcdm.config_hash", "fcdm.seed", "fcdm.checkpoint_dir"
TAG_SPECS = "fcdm.specs"
TAG_THREADS = "fcdm.threads"  # the CPU threads a run trained with: '1', or '1; 2 from step 212' (fcdm.train.threads)
TAG_KIND, TAG_STUDY, TAG_TRIAL, TAG_PRUNED = "fcdm.kind", "fcdm.study", "fcdm.trial", "fcdm.pruned"


class Tracker:
    """Thin layer over MlflowClient for one run; only the main process creates one."""

    def __init__(self, store: Path, tracking_uri: str | None = None):
        from mlflow import MlflowClient  # heavy: mlflow only once a run is tracked or looked up

        self.store = store
        self.uri = resolve_tracking_uri(store, tracking_uri)
        if self.uri.startswith("sqlite:"):
            store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self._pending: list = []

    # -- finding and opening runs -----------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        # Keep artifacts in the store; MLflow's default is ./mlruns of whatever directory we run in.
        location = (self.store / "artifacts").as_uri() if self.uri.startswith("sqlite:") else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # trainers of one spec start together: another may have created it since we looked
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def find(self, config_hash: str, seed: int):
        """The newest run tagged with this configuration hash and seed, in any experiment, or None."""
        ids = [e.experiment_id for e in self.client.search_experiments()]
        if not ids:
            return None
        runs = self.client.search_runs(
            ids, filter_string=f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_SEED}` = '{seed}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def open(self, cfg: RunConfig, tags: dict[str, str]) -> tuple[str, bool]:
        """Continue the run of (cfg.hash, cfg.seed) or create it in experiment cfg.log.experiment (default:
        cfg.name); `tags` and cfg.log.tags are set either way. Returns (run_id, existed)."""
        from mlflow.entities import Param, RunTag  # heavy: mlflow only once a run is tracked

        tags = {**{k: str(v) for k, v in tags.items()}, **cfg.log.tags}
        existing = self.find(cfg.hash, cfg.seed)
        if existing is not None:
            self.run_id = existing.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            return self.run_id, True
        run = self.client.create_run(self.experiment_id(cfg.log.experiment or cfg.name),
                                     run_name=short_name(cfg.name, cfg.seed),
                                     tags={**tags, TAG_HASH: cfg.hash, TAG_SEED: str(cfg.seed)})
        self.run_id = run.info.run_id
        # MLflow params are immutable: logged once, when the run is created.
        params = [Param(k, str(v)) for k, v in cfg.flat().items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_text(self.run_id, cfg.to_yaml(), "config.yaml")
        return self.run_id, False

    def log_dataset(self, cfg: RunConfig, num_examples: int) -> None:
        """Record what the run trains on with MLflow's dataset tracking (once per run): named `data.name`,
        its digest that of the data identity the configuration hash covers, its source the data's path
        (or scikit-learn's bundled digits), its profile the number of examples and their shape."""
        from mlflow.entities import Dataset, DatasetInput, InputTag  # heavy: mlflow only once a run is tracked
        from mlflow.exceptions import MlflowException

        if self.client.get_run(self.run_id).inputs.dataset_inputs:
            return
        d = cfg.data
        source = {"uri": str(Path(d.path).resolve())} if d.path else {"uri": "sklearn.datasets.load_digits"}
        dataset = Dataset(name=d.name, digest=digest(cfg.identity()["data"]),
                          source_type="local" if d.path else "sklearn", source=json.dumps(source),
                          profile=json.dumps({"num_examples": num_examples, "shape": list(cfg.data_shape),
                                              "num_classes": cfg.num_classes}))
        inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])]
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, inputs)
                return
            except MlflowException:
                # MLflow looks the experiment's dataset up, then inserts it: trainers of one spec starting
                # together collide on its UNIQUE key. The other's row exists now, and the retry links it.
                if attempt == 2:
                    raise
                time.sleep(0.05 + 0.1 * attempt)

    def system_metrics(self, interval_s: float = 10.0):
        """MLflow's system metrics monitor on this run, started (`.finish()` stops it): CPU, memory, disk and
        network, and GPU where nvidia-ml-py finds one, logged as `system/*` every `interval_s` seconds."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # heavy: only when asked

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, tracking_uri=self.uri)
        monitor.start()
        return monitor

    # -- logging ----------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = True) -> None:
        from mlflow.entities import Metric  # heavy: mlflow only once a run is tracked

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if flush:
            self.flush()

    def flush(self) -> None:
        if self._pending and self.run_id:
            self.client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag  # heavy: mlflow only once a run is tracked

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


def reopen_run(client, experiment_id: str, match: dict[str, str], run_name: str,
               tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """The run of `experiment_id` tagged with every `match` pair, set RUNNING again; else a new run named
    `run_name` tagged with `match` and `tags`. Returns (run_id, created): one run per key, updated by reruns."""
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in match.items())
    found = client.search_runs([experiment_id], filter_string=flt, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id, False
    return client.create_run(experiment_id, run_name=run_name, tags={**match, **(tags or {})}).info.run_id, True


_LONG_NAME = re.compile(r"^(?P<name>.+)-(?P<hash>[0-9a-f]{8})-s(?P<seed>\d+)$")


def find_run(run: str, store: Path, tracking_uri: str | None = None):
    """An MLflow run by id or by run name ('kernel_size=3 s0', newest first), or by the long name older
    versions gave runs, '<name>-<hash8>-s<seed>' (found by its hash and seed tags). RunNotFoundError when
    none matches, or when a short name belongs to runs of several configurations."""
    from mlflow.exceptions import MlflowException  # heavy: mlflow only once a run is looked up

    uri = resolve_tracking_uri(store, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise RunNotFoundError(f"no run with id or name {run!r}: the store {store} has no runs yet; train one "
                               "with `fcdm-ablate train CONFIG`, or pass --store DIR / --tracking-uri URI")
    tracker = Tracker(store, tracking_uri)
    try:
        return tracker.client.get_run(run)
    except MlflowException:
        pass
    ids = [e.experiment_id for e in tracker.client.search_experiments()]
    # MLflow's filter strings have no escape: quote with the quote character the name does not contain.
    quote = next((q for q in ("'", '"') if q not in run), None)
    if quote is None:
        raise RunNotFoundError(f"RUN {run!r}: a run name holding both ' and \" cannot be looked up; pass the run "
                               "id instead (the first column of `mlflow ui`'s run table)")
    found = tracker.client.search_runs(ids, filter_string=f"attributes.run_name = {quote}{run}{quote}",
                                       order_by=["attributes.start_time DESC"]) if ids else []
    long = _LONG_NAME.match(run)
    if not found and long and ids:
        flt = f"tags.`{TAG_HASH}` LIKE '{long['hash']}%' and tags.`{TAG_SEED}` = '{int(long['seed'])}'"
        found = tracker.client.search_runs(ids, filter_string=flt, order_by=["attributes.start_time DESC"])
    configs = {r.data.tags.get(TAG_HASH) for r in found}
    if len(configs) > 1:
        listed = ", ".join(f"{r.info.run_id} (hash {r.data.tags.get(TAG_HASH)})" for r in found[:5])
        raise RunNotFoundError(f"run name {run!r} names runs of {len(configs)} configurations ({listed}); pass a "
                               "run id, or '<name>-<hash8>-s<seed>' for one configuration")
    if not found:
        raise RunNotFoundError(f"no run with id or name {run!r} in {tracker.uri}; list runs with "
                               f"`mlflow ui --backend-store-uri {tracker.uri}` or pass --store DIR")
    return found[0]
