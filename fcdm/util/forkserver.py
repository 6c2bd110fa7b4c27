"""A fork server: one process imports what every job's process needs once (for a trainer: torch,
accelerate, MLflow, about 5 s of CPU), then forks a ready child per job instead of starting a fresh
interpreter that imports them again.

    server = ForkServer.start([sys.executable, "-m", "fcdm.cli", "serve-trainers"], log)  # in the runner
    pid = server.fork(["train", "cfg.yaml", ...], env, job_log)                          # one job
    server.exit_code(pid)   # None while it runs, then its exit status (negative: killed by that signal)
    server.close()          # the server exits; children still running get SIGTERM (they checkpoint)

    serve(fd, run)          # the server's side: `run(argv) -> exit code` in each forked child

A forked child behaves as a spawned one (fcdm.util.process.spawn): its own session (a Ctrl-C in the
terminal reaches only the runner; `os.killpg(pid, sig)` reaches it), its output appended to its log,
stdin empty, the job's environment, and SIGTERM when its parent (the server) dies; the server gets
SIGTERM when the runner dies. The server must never have started threads that matter, CUDA or an
OpenMP pool before forking: it only imports. Messages are JSON lines over a socket pair.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from fcdm.util.process import die_with_parent, is_alive, log_header, spawn

FD_ENV = "FCDM_FORKSERVER_FD"  # the server's end of the socket pair, in its environment
START_TIMEOUT_S = 300.0  # how long the first fork may wait for the server's imports


# -- the server ---------------------------------------------------------------------------------------

def serve(fd: int, run: Callable[[list[str]], int], idle: Callable[[], None] | None = None) -> None:
    """Fork a child per request on socket `fd` until the other end closes; report each child's exit.
    `idle`: called once, the first time no request is waiting after the first fork (more imports that
    later children inherit, without delaying the first ones)."""
    sock = socket.socket(fileno=fd)
    sock.sendall(b'{"ready": true}\n')
    buffer, children = b"", set()
    while True:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if not readable and idle is not None and children:
            idle()
            idle = None
            continue
        if readable:
            data = sock.recv(65536)
            if not data:
                return  # the runner is done (or gone): children still running get SIGTERM as this exits
            buffer += data
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                request = json.loads(raw)
                pid = _fork(sock, request, run)
                children.add(pid)
                sock.sendall(json.dumps({"id": request["id"], "pid": pid}).encode() + b"\n")
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                sock.sendall(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


def _fork(sock: socket.socket, request: dict, run: Callable[[list[str]], int]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never return into the server's loop
        os.setsid()
        die_with_parent(parent)
        sock.close()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        sys.stdout.reconfigure(line_buffering=True, write_through=True)  # as PYTHONUNBUFFERED
        sys.stderr.reconfigure(line_buffering=True, write_through=True)
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = [request["argv0"], *request["argv"]]
        code = run(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


# -- the runner's side ----------------------------------------------------------------------------------

class ForkServer:
    """The runner's handle on a fork server process (see the module docstring)."""

    def __init__(self, proc, sock: socket.socket, log: Path):
        self.proc, self.sock, self.log = proc, sock, log
        self._buffer, self._exits, self._next = b"", {}, 0
        self.ready, self._eof = False, False

    @classmethod
    def start(cls, argv: list[str], log: Path, env: dict[str, str] | None = None) -> ForkServer:
        """Start the server (it imports in the background); call from a thread that outlives it."""
        ours, theirs = socket.socketpair()
        try:
            proc = spawn(argv, log, {**(env or {}), FD_ENV: str(theirs.fileno())}, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        return cls(proc, ours, log)

    def fork(self, argv: list[str], env: dict[str, str], log: Path, argv0: str = "fcdm-ablate") -> int:
        """A child running `argv` with `env` over the server's, output appended to `log`; its pid.
        Waits for the server's imports on the first call. RuntimeError when the server is gone."""
        self._next += 1
        log_header(log, [argv0, *argv, f"(forked by pid {self.proc.pid})"])
        self._send({"id": self._next, "argv": argv, "env": env, "log": str(log), "argv0": argv0})
        deadline = time.time() + START_TIMEOUT_S
        while True:
            for message in self._receive(timeout=max(0.0, deadline - time.time())):
                if message.get("id") == self._next:
                    return message["pid"]
            if time.time() > deadline or self._eof or self.proc.poll() is not None:
                raise RuntimeError(f"the fork server (pid {self.proc.pid}) did not answer; see {self.log}")

    def exit_code(self, pid: int) -> int | None:
        """None while child `pid` runs; its exit status once it ended (negative: the signal that ended it)."""
        if self.sock.fileno() != -1:
            self._receive(timeout=0.0)
        if pid in self._exits:
            return self._exits[pid]
        if self.proc.poll() is not None and not is_alive(pid):  # the server is gone: its children too
            return self._exits.setdefault(pid, -signal.SIGTERM)
        return None

    def close(self) -> None:
        """End the server: children still running get SIGTERM and checkpoint."""
        try:
            self.sock.close()
        finally:
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()

    def _send(self, message: dict) -> None:
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as e:
            raise RuntimeError(f"the fork server (pid {self.proc.pid}) is gone ({e}); see {self.log}") from None

    def _receive(self, timeout: float) -> list[dict]:
        """Messages that arrived (waiting up to `timeout` for the first); exits are recorded."""
        out = []
        while select.select([self.sock], [], [], timeout)[0]:
            data = self.sock.recv(65536)
            if not data:
                self._eof = True
                break
            self._buffer += data
            timeout = 0.0
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(raw)
            if "exit" in message:
                self._exits[message["exit"]] = message["code"]
            self.ready = self.ready or bool(message.get("ready"))
            out.append(message)
        return out
