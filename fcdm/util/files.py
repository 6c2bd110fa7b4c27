"""Files written atomically and read back by digest.

    atomic_write(path, text_or_bytes)          # the whole file or nothing, durable on return
    with atomic_writer(path) as f: torch.save(state, f)
    tmp = durable_temp(directory, data)        # a complete temporary file, e.g. for os.link
    sha256_file(path)                          # hex digest, read in chunks

A writer writes a temporary file beside the target (a name no other process uses: pid and a random
part), flushes and fsyncs it, renames it over the target and fsyncs the directory, so a crash leaves
either the old file or the new one, never a truncated file under the target's name, and a completed
write survives a power cut. A failed write removes its temporary file and leaves the target alone.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def temp_name(path: Path) -> Path:
    """A temporary name beside `path` that no other writer (process or thread) uses."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_dir(directory: Path) -> None:
    """Make a rename or link inside `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A file object whose content replaces `path` atomically and durably when the block ends without an
    exception; on an exception the target is untouched and the temporary file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Replace `path` with `data` (text is UTF-8) atomically and durably; returns the path."""
    with atomic_writer(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def durable_temp(directory: str | os.PathLike, data: str | bytes) -> Path:
    """A complete, fsynced temporary file in `directory` holding `data`, for the caller to link or rename
    into place (and to remove afterwards)."""
    tmp = Path(directory) / f".{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 hex digest of a file's bytes, read `chunk` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
