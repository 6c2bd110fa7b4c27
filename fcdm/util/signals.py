"""Signal handlers for the length of a block, put back as they were afterwards.

    with handled_signals(on_stop, (signal.SIGINT, signal.SIGTERM)):
        ...   # on_stop(signum) runs for each signal; the previous handlers return at the end

Python lets only the main thread install handlers: from any other thread this installs nothing (the
caller then relies on whoever owns the main thread).
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def handled_signals(on_signal: Callable[[int], None], signals: Iterable[int]) -> Iterator[bool]:
    """Call `on_signal(signum)` for each of `signals` during the block; yields whether handlers were installed."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.signal(s, lambda signum, frame: on_signal(signum)) for s in signals}
    try:
        yield True
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def restore_interrupt() -> None:
    """Make SIGINT raise KeyboardInterrupt again when this process inherited it as ignored (started in the
    background of a non-interactive shell, where Python installs no handler), so Ctrl-C or `kill -INT`
    stops a foreground service such as `fcdm-ablate ui`. Only from the main thread; otherwise a no-op."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
