"""Serial or on numba's threads: for each product shape, whichever ran faster here lately.

A parallel region costs a wake-up and a barrier. On an idle machine two threads finish a
768 x 2048 GEMV in about half the time; on an oversubscribed one the barrier waits for a
descheduled thread, and the same GEMV took 16 ms against 0.25 ms serially (docs/performance.md).
No fixed size threshold is right for both, so mid-sized products are timed both ways (a few
calls each), the faster way is kept, and the choice is measured again every `RECHECK` calls of
that shape, as the machine's load changes. The bits are the same either way: only time is at
stake.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

TRIALS = 3
"""Calls timed each way before choosing (the median of each decides)."""

RECHECK = 4096
"""Calls of one shape after which both ways are timed again."""

MIN_WORK = 1 << 16
"""Multiply-adds below which products always run serially (a region costs more than it saves)."""

PARALLEL_LAUNCH = threading.Lock()
"""Held around every launch of a parallel numba kernel: numba's default (workqueue) thread pool
aborts on launches from two Python threads at once (a watcher's game loop and its model
worker), so they go one at a time."""


def compile_variant(fn: Callable, parallel: bool, **options: object) -> Callable:
    """`fn` compiled by numba threaded over its prange loops (`parallel`) or serially. numba's
    on-disk cache is keyed by a function's name and bytecode, not by its compile options, so
    each variant is a renamed copy (`<name>_parallel`, `<name>_serial`): else one would load the
    other's code. numba is imported here, on first use, like the kernels."""
    from numba import njit

    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__)
    copy.__qualname__ = f"{fn.__qualname__}_{'parallel' if parallel else 'serial'}"
    return njit(parallel=parallel, **options)(copy)


ALWAYS_WORK = 1 << 21
"""Multiply-adds from which products always run on the threads (also `tree_dot.matmul`'s
default threshold, `PARALLEL_MIN_WORK`)."""


@dataclass
class _Timings:
    serial: list[float] = field(default_factory=list)
    threaded: list[float] = field(default_factory=list)
    calls: int = 0
    threads_win: bool | None = None


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


class SplitChooser:
    """Decides `parallel` for `tree_dot.matmul` per product shape, from timed calls."""

    def __init__(self) -> None:
        self._shapes: dict[Hashable, _Timings] = {}

    def choose(self, key: Hashable, work: int, threads: int) -> bool:
        """Whether the next product of shape `key` (`work` multiply-adds) runs on `threads`."""
        if threads < 2 or work < MIN_WORK:
            return False
        if work >= ALWAYS_WORK:
            return True
        t = self._shapes.get(key)
        if t is None or t.calls >= RECHECK:
            t = self._shapes[key] = _Timings()
        t.calls += 1
        if t.threads_win is not None:
            return t.threads_win
        return len(t.serial) >= TRIALS  # serial trials first, then threaded ones

    def record(self, key: Hashable, parallel: bool, seconds: float) -> None:
        """The time a product of shape `key` took, run the way `choose` said."""
        t = self._shapes.get(key)
        if t is None or t.threads_win is not None:
            return
        (t.threaded if parallel else t.serial).append(seconds)
        if len(t.serial) >= TRIALS and len(t.threaded) >= TRIALS:
            t.threads_win = _median(t.threaded) < _median(t.serial)
