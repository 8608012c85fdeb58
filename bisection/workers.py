"""Model work (generations and re-executions) apart from the game loop.

A dispute move must go out within its clock whatever else is queued, so the loop that plays the
game never runs a whole inference itself: it submits jobs here and picks the results up on a
later poll. Jobs run in order of priority, an absolute time (the moment the result is needed:
a dispute's turn deadline, a claim's window end), then in order of submission.

Why threads and not processes: a generation's caches and trace stay in the process that plays
its dispute (the Side recomputes records from them), the weights are shared without a copy, and
the heavy work runs in numpy and in numba kernels compiled with `nogil=True`, which release the
GIL; between kernel calls CPython hands the GIL to the game loop within its switch interval
(5 ms). The game loop itself only waits on the node. `ModelWorker(threads=0)` runs each job at
once in the caller's thread: the synchronous mode of the library API and of most tests.

A job is a small picklable description (`GenerateJob`) with a `run(executor)` method: this
worker runs it with the submitting client's executor, a `RayWorker` (bisection/ray_worker.py)
sends it to actors that run it with theirs: one code path, two executors.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from refute.engine.executor import Executor, Generation, Request

URGENT = 0.0
"""Priority of work a dispute is waiting for (before every deadline)."""


class Job(Protocol):
    def run(self, executor: Executor, on_position: Callable[[int], None] | None = None) -> Any: ...


@dataclass(frozen=True)
class GenerateJob:
    """Generate (or re-execute) one request: all a claim, a re-execution or a dispute's
    recomputation needs from model work (the caches are the checkpoints `Executor.recompute`
    opens any record from, in the process that plays the dispute)."""

    request: Request

    def run(
        self, executor: Executor, on_position: Callable[[int], None] | None = None
    ) -> Generation:
        (gen,) = executor.generate([self.request], on_position=on_position)
        return gen


@dataclass(frozen=True)
class Reexecution:
    """What a watcher's verdict needs of a re-execution, without the checkpoints: from a remote
    actor the KV caches cost more to move (positions x layers x 2 x KV width x 4 bytes, for
    every claim) than recomputing them for the rare claim that is disputed (its Side is
    rebuilt by a job of its own, `Player.ready_side`)."""

    request: Request
    tokens: list[int]
    trace_root: bytes
    positions: int

    @classmethod
    def of(cls, gen: Generation) -> Reexecution:
        return cls(gen.request, list(gen.tokens), gen.trace.root(), gen.trace.positions)

    @property
    def output_tokens(self) -> list[int]:
        return self.tokens[len(self.request.prompt) :]


@dataclass(frozen=True)
class ReexecutionJob:
    """`job` run where it is sent, returning only its `Reexecution`."""

    job: Any

    def run(
        self, executor: Executor, on_position: Callable[[int], None] | None = None
    ) -> Reexecution:
        return Reexecution.of(self.job.run(executor, on_position))


@dataclass(order=True)
class QueuedJob:
    """A job waiting in a queue: most urgent priority first, then first submitted."""

    priority: float
    seq: int
    key: Hashable = field(compare=False)
    payload: Any = field(compare=False)  # what the worker runs: a call, or the Job itself
    submitted: float = field(compare=False, default_factory=time.time)
    attempts: int = field(compare=False, default=0)


class JobQueue:
    """What every model worker shares: jobs by key (each key once), most urgent first, their
    results kept until taken, and notes for the service's log."""

    REMOTE = False
    """Whether results cross a network (then a watcher asks for `Reexecution`s only)."""

    def __init__(self) -> None:
        self._heap: list[QueuedJob] = []
        self._seq = itertools.count()
        self._lock = threading.Condition()
        self._queued: dict[Hashable, QueuedJob] = {}
        self._running: dict[Hashable, Any] = {}
        self._done: dict[Hashable, tuple[bool, Any]] = {}
        self._stop = False
        self.seconds: dict[Hashable, float] = {}
        self.notes: list[tuple[str, dict[str, Any]]] = []  # what the service should log

    def _enqueue(self, key: Hashable, priority: float, payload: Any) -> QueuedJob | None:
        """The new entry for `key` (not yet pushed), or None when the key is running, done or
        queued already (a more urgent priority moves a queued one up). Call with the lock."""
        if key in self._running or key in self._done:
            return None
        queued = self._queued.get(key)
        if queued is not None:
            if priority < queued.priority:
                queued.priority = priority
                heapq.heapify(self._heap)
            return None
        return QueuedJob(priority, next(self._seq), key, payload)

    def _push(self, entry: QueuedJob) -> None:
        """Queue an entry for the serving threads. Call with the lock."""
        self._queued[entry.key] = entry
        heapq.heappush(self._heap, entry)
        self._lock.notify_all()

    def ready(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._done

    def take(self, key: Hashable) -> Any:
        """The result of a finished job (removed; its exception is raised here)."""
        with self._lock:
            ok, value = self._done.pop(key)
        if not ok:
            raise value
        return value

    def busy(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._queued or key in self._running

    def queue(self) -> list[tuple[Hashable, float, float]]:
        """(key, priority, submitted) of the jobs waiting, most urgent first."""
        with self._lock:
            return [(j.key, j.priority, j.submitted) for j in sorted(self._heap)]

    def take_notes(self) -> list[tuple[str, dict[str, Any]]]:
        """Events for the service's log since the last call."""
        with self._lock:
            notes, self.notes = self.notes, []
        return notes


class ModelWorker(JobQueue):
    """A priority queue of model jobs served by `threads` threads (0: run at submission)."""

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        self.threads = threads
        self._pool = [
            threading.Thread(target=self._serve, name=f"model-worker-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._pool:
            t.start()

    def submit(
        self,
        key: Hashable,
        priority: float,
        job: Job,
        *,
        executor: Executor | None = None,
        on_position: Callable[[int], None] | None = None,
    ) -> None:
        """Queue `job` under `key`, to run with `executor` (once: a key queued, running or done
        is not queued again; a second submission with a more urgent priority moves it up)."""
        with self._lock:
            entry = self._enqueue(key, priority, functools.partial(job.run, executor, on_position))
            if entry is None:
                return
            if self.threads:
                self._push(entry)
                return
            self._running[key] = time.time()
        self._run(entry)

    def running(self) -> dict[Hashable, float]:
        """Jobs running now, with their start time."""
        with self._lock:
            return dict(self._running)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()

    # --- the threads -------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._heap and not self._stop:
                    self._lock.wait()
                if self._stop:
                    return
                job = heapq.heappop(self._heap)
                del self._queued[job.key]
                self._running[job.key] = time.time()
            self._run(job)

    def _run(self, job: QueuedJob) -> None:
        start = time.monotonic()
        try:
            outcome = (True, job.payload())
        except BaseException as exc:  # handed to whoever takes the result
            outcome = (False, exc)
        with self._lock:
            self._running.pop(job.key, None)
            self._done[job.key] = outcome
            self.seconds[job.key] = time.monotonic() - start
