"""Stop signals agreed across ranks: every rank must stop at the same step, with the same signal.

    flags = stop_flags(signum)          # this rank's: one slot per signal number, 1.0 where it received one
    signum = agreed_signal(summed)      # after a sum all-reduce of every rank's flags: the signal to stop with

Summed flags count how many ranks received each signal; the agreed signal is the highest number any rank
received (SIGTERM, a preemption, over SIGINT), 0 when none did. Summing the signal numbers themselves would
turn SIGTERM on five ranks into 75, no signal at all.
"""
from __future__ import annotations

import signal
from collections.abc import Sequence

SLOTS = int(signal.NSIG)  # signal numbers 0 .. NSIG-1 (slot 0: none)


def stop_flags(signum: int) -> list[float]:
    """This rank's flags for the all-reduce: 1.0 in slot `signum` (nothing for 0)."""
    flags = [0.0] * SLOTS
    if 0 < signum < SLOTS:
        flags[signum] = 1.0
    return flags


def agreed_signal(summed: Sequence[float]) -> int:
    """The signal every rank stops with, from the summed flags of all ranks: the highest one received, else 0."""
    received = [s for s in range(1, min(len(summed), SLOTS)) if summed[s] > 0.5]
    return max(received, default=0)
