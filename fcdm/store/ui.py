"""`fcdm-ablate ui`: the MLflow UI on a store, bound to 127.0.0.1, opened on the training-runs table.

    with start_ui("runs", port=5000) as ui:      # `mlflow server` on runs/mlflow.db and runs/artifacts
        print(ui.experiment_url(ui.experiments["kernel_size"]))

MLflow 3's UI opens on its GenAI view, where training runs sit under "Evaluation runs"; the query
`?workflowType=machine_learning` opens the classic runs table and charts, so every URL printed here
carries it. A spec's runs are its experiment (log.experiment = the spec's name); a run shared with
another spec is in one experiment but tagged with both in `fcdm.specs`, so the filter
`tags."fcdm.specs" LIKE '%,kernel_size,%'` (in any experiment view) lists all of a spec's runs.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fcdm.errors import UserError
from fcdm.store.layout import resolve_store
from fcdm.store.tracking import TAG_SPECS
from fcdm.util.process import signal_session, spawn


class UIError(UserError, ValueError):
    """The UI cannot start; the message says why and what to do."""


def experiment_url(base: str, experiment_id: str) -> str:
    """The URL of an experiment's model-training runs table (not MLflow 3's GenAI view)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


@dataclass
class UIServer:
    """A running `mlflow server`; stop() ends it (and its workers)."""
    proc: subprocess.Popen
    port: int
    store: Path
    log: Path
    experiments: dict[str, str] = field(default_factory=dict)  # name -> id, non-empty ones first

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def experiment_url(self, experiment_id: str) -> str:
        return experiment_url(self.url, experiment_id)

    def banner(self, spec: str | None = None) -> str:
        """What `fcdm-ablate ui` prints once the server answers: its URL, then each experiment's runs table
        (only `spec`'s when given) and how to list the runs a spec shares with others."""
        shown = {spec: self.experiments[spec]} if spec else self.experiments
        return "\n".join([f"MLflow UI on {self.url} (store {self.store}; log {self.log}); Ctrl-C stops it",
                          *(f"  {name}: {self.experiment_url(exp_id)}" for name, exp_id in shown.items()),
                          "  (a run shared by several specs lives in the experiment that trained it first; to list "
                          f"every run of a spec, select all experiments and search tags.`{TAG_SPECS}` LIKE "
                          "'%,<spec>,%')"])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            signal_session(self.proc, sig)  # the server and its uvicorn workers
            try:
                self.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> UIServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def experiments(store: Path) -> dict[str, str]:
    """name -> id of the store's experiments with at least one run, newest first, then the empty ones."""
    from mlflow import MlflowClient  # heavy: only when the UI starts

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    found = client.search_experiments(order_by=["last_update_time DESC"])
    used = [e for e in found if client.search_runs([e.experiment_id], max_results=1)]
    return {e.name: e.experiment_id for e in used + [e for e in found if e not in used]}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_ui(store: str | Path | None = None, port: int = 5000, spec: str | None = None,
             timeout: float = 90.0) -> UIServer:
    """Start `mlflow server` on the store's SQLite database and artifacts (127.0.0.1:`port`, one
    worker) and return once it answers (4-8 s here). Its output goes to `<store>/ui.log`. With
    `spec`, the store must hold that spec's experiment (checked before the server starts)."""

    store = resolve_store(store)
    db = store / "mlflow.db"
    if not db.is_file():
        raise UIError(f"the store {store} has no runs yet ({db} does not exist); train some with "
                      "`fcdm-ablate run ablations/kernel_size.yaml`, or pass --store DIR")
    if not _port_free(port):
        raise UIError(f"port {port} on 127.0.0.1 is in use (another UI?); pass --port with a free port")
    found = experiments(store)
    if spec is not None and spec not in found:
        raise UIError(f"--spec {spec}: the store {store} has no experiment {spec!r}; run it with `fcdm-ablate run "
                      f"ablations/{spec}.yaml`, or pick one of: {', '.join(found) or '(none)'}")
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
            "--default-artifact-root", (store / "artifacts").as_uri(), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    log = store / "ui.log"
    server = UIServer(spawn(argv, log), port, store, log, found)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise UIError(f"mlflow server exited with code {server.proc.returncode}: {tail[0][:300]} (full "
                          f"output in {log})")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    server.stop()
    raise UIError(f"mlflow server did not answer on {server.url} within {timeout:.0f} s; see {log}")
