"""A throw-away PostgreSQL server for tests: Debian's postgresql package, run as the `postgres` user.

PostgreSQL refuses to run as root (the tests do), so initdb and pg_ctl run as `postgres` on a temporary
directory it owns; the server listens on 127.0.0.1 and a free port only, trusts local connections,
and is stopped and deleted afterwards.

    with postgres_server() as url:      # "postgresql+psycopg://postgres@127.0.0.1:PORT/fcdm"
        ...
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers import free_port


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))  # Debian keeps them off PATH
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; install Debian's "
                           "`postgresql` package (.ci/run does when it is missing)")
    return Path(found[-1]).parent


def _as_postgres(*cmd: str) -> list[str]:
    if os.geteuid() != 0:  # already an unprivileged user: run directly
        return list(cmd)
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def postgres_server(database: str = "fcdm"):
    """Start a fresh cluster; yields a SQLAlchemy URL using psycopg 3; removes everything on exit."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="fcdm-pg-"))
    root.chmod(0o755)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run(_as_postgres(*cmd), check=True, capture_output=True, text=True, cwd=root)  # noqa: E731
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
            f"-h 127.0.0.1 -p {port} -c unix_socket_directories={sock} -c fsync=off -c max_connections=200", "start")
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    except subprocess.CalledProcessError as e:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        raise RuntimeError(f"{' '.join(e.cmd)} failed: {e.stderr or e.stdout}\n{log[-2000:]}") from None
    finally:
        subprocess.run(_as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"),
                       capture_output=True, cwd=root)
        shutil.rmtree(root, ignore_errors=True)
