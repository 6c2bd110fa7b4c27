"""fcdm.launchers.base: the trainer's command line carries no tracking URI; the URI (which may hold a database
password) reaches the trainer through its environment (issue 16 item 6)."""
import os
import time
from pathlib import Path

from fcdm.launchers import make_launcher
from fcdm.launchers.base import TRACKING_ENV, train_argv, trainer_env

SECRET_URI = "postgresql://user:s3cr/t@pa:ss@127.0.0.1:1/fcdm"


def test_train_argv_has_no_tracking_uri_and_the_environment_has_it():
    argv = train_argv(Path("c.yaml"), Path("s"))
    assert "--tracking-uri" not in argv and argv[-1] == "--no-progress"
    env = trainer_env({"OMP_NUM_THREADS": "1"}, SECRET_URI)
    assert env == {"OMP_NUM_THREADS": "1", TRACKING_ENV: SECRET_URI}

def test_accelerate_argv_has_no_tracking_uri(tiny_config):
    from types import SimpleNamespace

    argv = make_launcher("accelerate", {"num_processes": 1}).argv(SimpleNamespace(config=tiny_config()), Path("c.yaml"),
                                                                 Path("s"), {})
    assert "--tracking-uri" not in argv and argv[-3:] == ["--store", "s", "--no-progress"]


def test_a_started_trainer_shows_no_password_in_argv_or_its_log(tmp_path):
    """The local launcher's trainer: its /proc cmdline and the command its log starts with hold no password,
    and the trainer sees the URI in MLFLOW_TRACKING_URI."""
    launcher = make_launcher("local", {})
    log = tmp_path / "train.log"
    handle = launcher.start(None, tmp_path / "missing.yaml", log, tmp_path / "store", SECRET_URI, {})
    pid = handle.proc.pid
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode()
    except FileNotFoundError:  # already gone: the log still holds the command
        cmdline, environ = "", f"{TRACKING_ENV}={SECRET_URI}"
    deadline = time.monotonic() + 120
    while handle.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handle.poll() == 2  # the trainer ran: its missing config is a one-line error
    text = log.read_text()
    assert "missing.yaml: no such config file" in text
    for shown in (cmdline, text):
        assert "s3cr" not in shown and "pa:ss" not in shown and "--tracking-uri" not in shown
    assert f"{TRACKING_ENV}={SECRET_URI}" in environ.split("\0")
    assert os.environ.get(TRACKING_ENV) != SECRET_URI  # the runner's own environment is untouched
