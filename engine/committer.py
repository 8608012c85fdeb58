"""Hashing each step's outputs on a thread of its own while the next step is evaluated.

A step's commitments (its outputs' roots, its caches' grown roots, its trace records) are read
only once the generation ends, and nothing the evaluation does depends on them. So where a core
is free the executor hands each step's hashing to one commit thread, in order, and evaluates the
next step meanwhile. The bits cannot differ from hashing inline: one thread runs the jobs in the
order they were submitted, each over arrays that nothing writes after their step (outputs are
fresh arrays, caches only grow).

This pays only where the hashing releases the GIL (the CPU backend's compiled hasher) and the
outputs are large; elsewhere the executor runs the jobs inline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

AHEAD = 2
"""Steps whose hashing may wait behind the evaluation: the outputs they hold stay in memory, so
a slower hasher makes the evaluation wait rather than memory grow."""

BACKGROUND_MIN_CHUNKS = 1024
"""Chunks a position's outputs hash (1 MiB) from which the executor uses the commit thread: a
134M-parameter Llama's 1,351 gained, tiny-llama's 84 and the demo's 176 lost. Where outputs are
small, the thread's share of the GIL (its Python between compiled calls, per output) and its
wake-ups cost the evaluation more than the hashing it takes over (docs/performance.md)."""


class Committer:
    """The commitment jobs of one generation, run in submission order, each on the commit
    thread (started on first use) or inline.

    A job after a failed one does not run (it would build on a broken trace); the first error is
    raised by the next `submit` or by `close`."""

    def __init__(self, setup: Callable[[], None] | None = None) -> None:
        """`setup` runs once on the commit thread, before its first job."""
        self._setup = setup
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self._failed: BaseException | None = None

    def submit(self, job: Callable[[], None], background: bool) -> None:
        """Run `job` after the ones before it: on the commit thread (`background`) or here,
        once those have run."""
        if self._failed is not None:
            raise self._failed
        if not background:
            self._drain()
            if self._failed is not None:
                raise self._failed
            job()
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="refute-commit", initializer=self._setup
            )
        while self._pending and (self._pending[0].done() or len(self._pending) >= AHEAD):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._guarded, job))

    def close(self, discard: bool = False) -> None:
        """Wait for every job and stop the thread; raise the first job's error, unless
        `discard` (the caller is raising its own: no job outlives its generation)."""
        self._drain()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        failed, self._failed = self._failed, None
        if failed is not None and not discard:
            raise failed

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def _guarded(self, job: Callable[[], None]) -> None:
        if self._failed is None:  # written by the commit thread only: jobs run one at a time
            try:
                job()
            except BaseException as error:  # for the submitting thread, by submit or close
                self._failed = error
