"""Read what the trainer recorded in MLflow, in bulk: runs with their tags, and metric histories.

MLflow's `search_runs` returns only each metric's LAST value, so the evaluation history needs
`get_metric_history` once per (run, metric): measured on 2 CPU cores, 500 runs x 8 keys takes ~5 s
that way, against ~0.6 s for one direct read of the whole `metrics` table. So a database tracking
URI (sqlite, postgresql, mysql, mssql: the SQLAlchemy store) is read with three SQL queries over
MLflow's documented tables (`runs`, `tags`, `metrics`); any other URI (an `http://` tracking server)
goes through `MlflowClient`, with the per-run history calls on a thread pool. Both return the same
frames (tested against one store).

    runs, metrics = read_store("sqlite:///runs/mlflow.db", hashes={"ba22508326dc"})
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from fcdm.errors import UserError
from fcdm.spec.job import TAG_CONFIG_KEY, TAG_SPEC
from fcdm.store.tracking import TAG_HASH, TAG_SPECS

# Logged every log.every steps by the trainer; every other metric key is an evaluation metric.
TRAINING_METRICS = ("loss", "steps_per_sec", "lr", "train_gflops", "img_per_sec", "peak_memory_mb")
# Read for the throughput and peak memory columns; the other histories are not needed (and are most rows);
# img/s is steps/s x batch.
READ_TRAINING = ("steps_per_sec", "peak_memory_mb")
SYSTEM_PREFIX = "system/"  # MLflow's system metrics (log.system_metrics): never read
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

RUN_COLUMNS = ["run_id", "experiment_id", "run_name", "status", "start_time", "end_time", "artifact_uri", "tags"]
METRIC_COLUMNS = ["run_id", "key", "step", "value", "timestamp"]


class StoreError(UserError, RuntimeError):
    """The tracking URI cannot be read (no database there, no server answering)."""


def is_sql_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES


def read_store(uri: str, hashes: set[str] | None = None, spec: str | None = None,
               keys: set[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, metrics) of every active run tagged with a configuration hash in `hashes` or a configuration key
    (`fcdm.config_key`, the hash without the data) in `keys` (all tagged runs when both are None) or, with
    `spec`, tagged `fcdm.spec` = spec.

    runs: one row per run, RUN_COLUMNS (tags: a dict of every tag); metrics: one row per logged value of
    every evaluation metric and of steps_per_sec, METRIC_COLUMNS, NaN where MLflow stored a NaN.
    """
    if is_sql_uri(uri):
        try:
            return _read_sql(uri, hashes, spec, keys)
        except StoreError:
            raise
        except Exception as e:  # an MLflow schema this reader does not know: the client still works
            warnings.warn(f"direct read of {uri} failed ({type(e).__name__}: {e}); reading through MlflowClient "
                          "(slower)", stacklevel=2)
    return read_via_client(uri, hashes, spec, keys)


def _select(runs: pd.DataFrame, hashes: set[str] | None, spec: str | None, keys: set[str] | None = None) -> pd.DataFrame:
    tags = runs["tags"]
    keep = tags.map(lambda t: TAG_HASH in t)
    if hashes is not None or keys is not None:
        hashes, keys = hashes or set(), keys or set()
        keep &= tags.map(lambda t: t.get(TAG_HASH) in hashes or t.get(TAG_CONFIG_KEY) in keys)
    if spec is not None:
        keep &= tags.map(lambda t: spec in spec_names(t))
    return runs[keep].reset_index(drop=True)


def spec_names(tags: dict) -> set[str]:
    """The specs a run belongs to: `fcdm.spec` (the spec that last opened it) and `fcdm.specs` (every
    spec that ran or reused it, comma-wrapped: ',kernel_size,design,')."""
    return {s.strip() for key in (TAG_SPEC, TAG_SPECS) for s in tags.get(key, "").split(",") if s.strip()}


# -- SQL (SQLAlchemy store) ----------------------------------------------------------------------------

@contextmanager
def _connection(uri: str) -> Iterator[sa.Connection]:
    """A connection to the MLflow database at `uri`; StoreError when there is none or it cannot be read."""
    _check_sqlite(uri)
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as con:
            yield con
    except sa.exc.OperationalError as e:
        raise StoreError(f"cannot read the MLflow database {uri}: {e.orig}; check --store / --tracking-uri") from None
    finally:
        engine.dispose()


def _read_sql(uri: str, hashes: set[str] | None, spec: str | None,
              keys: set[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    with _connection(uri) as con:
        runs = pd.read_sql_query(sa.text(
            "SELECT r.run_uuid AS run_id, r.experiment_id, r.name AS run_name, r.status, r.start_time, "
            "r.end_time, r.artifact_uri FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
            "WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active'"), con)
        # Tags of every run (a few dozen per run): cheaper than an IN list over thousands of ids.
        tags = pd.read_sql_query(sa.text("SELECT run_uuid AS run_id, key, value FROM tags"), con)
        grouped = _tags_by_run(tags)
        runs["tags"] = runs["run_id"].map(lambda r: grouped.get(r, {}))
        runs["experiment_id"] = runs["experiment_id"].astype(str)
        runs = _select(runs[RUN_COLUMNS], hashes, spec, keys)
        if runs.empty:
            return runs, pd.DataFrame(columns=METRIC_COLUMNS)
        skipped = [k for k in TRAINING_METRICS if k not in READ_TRAINING]
        query = sa.text("SELECT run_uuid AS run_id, key, step, value, timestamp, is_nan FROM metrics "
                        f"WHERE key NOT IN :skip AND key NOT LIKE '{SYSTEM_PREFIX}%' AND run_uuid IN :ids").bindparams(
            sa.bindparam("skip", expanding=True), sa.bindparam("ids", expanding=True))
        ids = runs["run_id"].tolist()
        # Chunks keep the IN list under every backend's bound-parameter limit (SQLite: 32766).
        parts = [pd.read_sql_query(query, con, params={"skip": skipped, "ids": ids[i:i + 5000]})
                 for i in range(0, len(ids), 5000)]
    metrics = pd.concat(parts, ignore_index=True)
    metrics.loc[metrics["is_nan"].astype(bool), "value"] = np.nan  # MLflow stores NaN as 0 + is_nan
    return runs, _tidy_metrics(metrics.drop(columns="is_nan"))


def _tidy_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    metrics = metrics.astype({"step": "int64", "value": "float64", "timestamp": "int64"})
    return metrics[METRIC_COLUMNS].sort_values(["run_id", "key", "step", "timestamp"], kind="stable",
                                               ignore_index=True)


# -- MlflowClient (any tracking server) ----------------------------------------------------------------

def read_via_client(uri: str, hashes: set[str] | None = None, spec: str | None = None,
                    keys: set[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """read_store through MlflowClient, for any tracking server (read_store's fallback; the same frames)."""
    from mlflow import MlflowClient  # heavy (seconds): only for a tracking server, not for the SQL read
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=uri)
    try:
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    except Exception as e:
        raise StoreError(f"cannot reach the MLflow tracking server at {uri} ({type(e).__name__}); start it, or "
                         "pass --tracking-uri URI") from None
    found, token = [], None
    while ids:
        page = client.search_runs(ids, filter_string=f"tags.`{TAG_HASH}` != ''", max_results=1000, page_token=token)
        found += page
        token = page.token
        if not token:
            break
    runs = pd.DataFrame([{"run_id": r.info.run_id, "experiment_id": str(r.info.experiment_id),
                          "run_name": r.info.run_name, "status": r.info.status, "start_time": r.info.start_time,
                          "end_time": r.info.end_time, "artifact_uri": r.info.artifact_uri,
                          "tags": dict(r.data.tags), "_keys": list(r.data.metrics)} for r in found],
                        columns=[*RUN_COLUMNS, "_keys"])
    runs = _select(runs, hashes, spec, keys)
    calls = [(rid, key) for rid, logged in zip(runs["run_id"], runs["_keys"])
             for key in logged if (key not in TRAINING_METRICS or key in READ_TRAINING)
             and not key.startswith(SYSTEM_PREFIX)]

    def history(call):
        rid, key = call
        return [(rid, key, m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, key)]

    # Each call is one round trip to the server: overlap them.
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = [row for part in pool.map(history, calls) for row in part]
    return runs[RUN_COLUMNS], _tidy_metrics(pd.DataFrame(rows, columns=METRIC_COLUMNS))


def read_tags(uri: str) -> list[dict[str, str]]:
    """The tags of every active run carrying a configuration hash (finding specs needs nothing else)."""
    if not is_sql_uri(uri):
        return list(read_via_client(uri, None, None)[0]["tags"]) if uri else []
    with _connection(uri) as con:
        tags = pd.read_sql_query(sa.text(
            "SELECT t.run_uuid AS run_id, t.key, t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
            "WHERE r.lifecycle_stage = 'active'"), con)
    return [t for t in _tags_by_run(tags).values() if TAG_HASH in t]


def _tags_by_run(tags: pd.DataFrame) -> dict[str, dict[str, str]]:
    """{run id: {tag: value}} of a (run_id, key, value) frame, in one pass over plain lists (a groupby per
    run, or iterating pandas' Arrow-backed columns, is several times slower at thousands of runs)."""
    out: dict[str, dict[str, str]] = {}
    for rid, key, value in zip(*(tags[c].tolist() for c in ("run_id", "key", "value"))):
        out.setdefault(rid, {})[key] = value
    return out


def _check_sqlite(uri: str) -> None:
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise StoreError(f"no MLflow database at {uri.removeprefix('sqlite:///')}: nothing has run in this store "
                         "yet; run a spec first (`fcdm-ablate run SPEC`), or pass --store DIR / --tracking-uri URI")
