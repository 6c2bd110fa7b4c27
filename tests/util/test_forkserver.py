"""The fork server (fcdm.util.forkserver): children behave like spawned processes (log, environment, exit
codes, signals to their session) and die with the server."""
import os
import signal
import sys
import time

from fcdm.util.forkserver import ForkServer

# A server whose "command" prints its argv and an environment variable, then sleeps or exits with a code.
SERVER = ("import os, sys, time\n"
          "from fcdm.util.forkserver import FD_ENV, serve\n"
          "def run(argv):\n"
          "    print('child', os.getpid(), argv, os.environ.get('X'), os.getpgid(0) == os.getpid(), flush=True)\n"
          "    if argv[0] == 'sleep':\n"
          "        time.sleep(60)\n"
          "    return int(argv[0]) if argv[0].isdigit() else 0\n"
          "def later():\n"
          "    os.environ['X'] = 'later'\n"
          "serve(int(os.environ[FD_ENV]), run, idle=later)\n")


def _wait(server, pid, timeout=30):
    deadline = time.time() + timeout
    while (code := server.exit_code(pid)) is None:
        assert time.time() < deadline, "the child did not end"
        time.sleep(0.05)
    return code


def test_forked_children_log_exit_and_take_signals_like_spawned_ones(tmp_path):
    server = ForkServer.start([sys.executable, "-c", SERVER], tmp_path / "server.log")
    try:
        log = tmp_path / "job.log"
        pid = server.fork(["3"], {"X": "one"}, log)
        assert _wait(server, pid) == 3
        text = log.read_text()
        assert text.startswith("\n=== ") and f"child {pid} ['3'] one True" in text  # own session, own environment
        sleeper = server.fork(["sleep"], {}, tmp_path / "sleep.log")
        time.sleep(0.5)
        assert server.exit_code(sleeper) is None
        os.killpg(sleeper, signal.SIGKILL)
        assert _wait(server, sleeper) == -signal.SIGKILL
        time.sleep(0.5)  # the server is idle: it runs `idle` once, and later children inherit what it did
        second = server.fork(["0"], {}, log)
        assert _wait(server, second) == 0 and log.read_text().count("\n=== ") == 2
        assert f"child {second} ['0'] later True" in log.read_text()
    finally:
        server.close()


def test_children_get_sigterm_when_the_server_ends(tmp_path):
    server = ForkServer.start([sys.executable, "-c", SERVER], tmp_path / "server.log")
    pid = server.fork(["sleep"], {}, tmp_path / "sleep.log")
    time.sleep(0.5)
    server.close()  # as when the runner dies: the server exits, its children get SIGTERM
    assert _wait(server, pid) == -signal.SIGTERM
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
