"""`fcdm-ablate ui`: a real `mlflow server` on a store with a finished tiny job, queried over its REST API."""
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import SMOKE, TINY, free_port
from typer.testing import CliRunner

from fcdm.cli import app


@pytest.fixture(scope="module")
def store(tmp_path_factory, request):
    """A store holding one finished tiny run in the experiment 'uitest'."""
    from fcdm.config import load_config
    from fcdm.train import train

    store = tmp_path_factory.mktemp("ui-store")
    cfg = load_config(SMOKE, [*TINY, "train.steps=10", "name=uitest/k=7", "log.experiment=uitest"])
    result = train(cfg, store=store, progress=False)
    return store, result.run_id


def test_ui_serves_the_runs_of_a_spec_and_stops_on_ctrl_c(store):
    store_dir, run_id = store
    port = free_port()
    # SIGINT's disposition is set, not inherited: ignored, as in a child of a non-interactive background shell
    # (where Python installs no KeyboardInterrupt handler); `ui` must still stop on Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-m", "fcdm.cli", "ui", "--port", str(port), "--store", str(store_dir),
                             "--spec", "uitest"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:  # the URL is printed once the server answers
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "ui exited early"
            m = re.search(r"uitest: (http://127\.0\.0\.1:(\d+)/#/experiments/(\d+)/runs\?workflowType=machine_learning)",
                          line)
            if m:
                url, exp_id = m.group(1), m.group(3)
        assert url and int(url.split(":")[2].split("/")[0]) == port
        body = json.dumps({"experiment_ids": [exp_id], "max_results": 10}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            runs = json.load(r)["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id] and runs[0]["info"]["status"] == "FINISHED"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        with pytest.raises(OSError):  # the server is gone with it
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ui_bad_input_is_one_line_and_exit_2(store, tmp_path):
    store_dir, _ = store
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cases = [(["--store", str(tmp_path / "empty")], "has no runs yet"),
                 (["--store", str(store_dir), "--spec", "nosuch"], "no experiment 'nosuch'; run it with"),
                 (["--store", str(store_dir), "--port", str(busy.getsockname()[1])], "is in use")]
        for args, needle in cases:
            result = CliRunner().invoke(app, ["ui", *args])
            lines = result.output.strip().splitlines()
            assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (args, result.output)
    finally:
        busy.close()
    assert not (tmp_path / "empty").exists()
