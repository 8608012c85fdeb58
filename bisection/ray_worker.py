"""Model work on a Ray cluster: the `ModelWorker` interface, served by actors.

    worker = RayWorker("tiny-llama", model.root, actors=2)     # ray.init first (or `connect`)
    watcher = Challenger(game, model, "state/watcher", account, worker=worker)

The game loop, the chain follower and the store stay in the one coordinator process; only model
work moves. A job is the same picklable description the local pool runs (`GenerateJob`); here it
goes to an actor that loaded the model once, from a reference every node can read (a built-in
name or a checkpoint directory, memory-mapped at its stored width as on one machine), and that
returns the whole `Generation`: trace roots and the KV caches, the checkpoints from which the
coordinator recomputes any record (`Executor.recompute`) for the dispute moves, so no move waits
for an actor. Every actor checks on start that its model has the coordinator's model root.

Jobs are dispatched most urgent first (as the local pool: priority, then submission order), at
most `per_actor` in flight on an actor (1: the next free actor always takes the most urgent job).
An actor that dies (its process killed, its node lost) fails its jobs with a Ray actor error:
each is queued again at its own priority for the next free actor, the dead actor is replaced by
a new one, and a `worker.actor_lost` note says so (the Service logs it). The executor is
deterministic, so the retried result is bit-identical; after `attempts` losses of one job it
fails with `WorkerError` (a claim the watcher could not re-execute is then reported, never
skipped silently). An exception the job itself raises (an unexecutable request) is handed to
whoever takes the result, as by the local pool.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refute.bisection.workers import Job, JobQueue, QueuedJob
from refute.errors import RefuteError

EXTRA = "pip install 'refute[ray]'"


class WorkerError(RefuteError):
    """The cluster could not run a job (Ray missing, actors lost again and again, a node whose
    model differs from the coordinator's)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise WorkerError(f"--ray needs Ray, an optional extra: {EXTRA}") from exc
    return ray


def connect(address: str, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address` (`auto`: the local one, started here if none runs).
    Actor output is not forwarded: the coordinator's stdout is its JSON event log."""
    ray = _ray()
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "warning"}
    if address == "auto":
        kwargs |= {"include_dashboard": False, "num_cpus": num_cpus}
        ray.init(**kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise WorkerError(f"no Ray cluster at {address}: {exc}") from None


def model_reference(ref: str | Path) -> str:
    """What an actor loads: a built-in name as is, a checkpoint directory as an absolute path
    (it must be readable at that path on every node: a shared or replicated filesystem)."""
    path = Path(ref)
    return str(path.resolve()) if path.exists() else str(ref)


class ModelActor:
    """One model loaded once (memory-mapped), and an executor over it. Runs in a Ray actor."""

    def __init__(self, model_ref: str, backend: str | None, drill: str | None) -> None:
        from refute.bisection.drills import parse_target
        from refute.engine import backends
        from refute.engine.checkpoint import load_model
        from refute.engine.executor import Executor

        model = load_model(model_ref)
        tamper = parse_target(drill, model) if drill else None
        self.executor = Executor(model, backend=backends.make(backend), tamper=tamper)
        self.root = model.root

    def info(self) -> dict[str, Any]:
        import ray

        return {"root": self.root, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}  # fmt: skip

    def run(self, job: Job) -> tuple[Any, float]:
        start = time.monotonic()
        result = job.run(self.executor)
        return result, time.monotonic() - start


@dataclass
class _Actor:
    name: str
    handle: Any
    info: Any  # the ObjectRef of its info() until it has answered
    pid: int | None = None
    node: str | None = None
    flight: int = 0
    lost: bool = False


class RayWorker(JobQueue):
    """A priority queue of model jobs served by `actors` Ray actors (the `ModelWorker`
    interface: submit, ready, take, busy, queue, running, seconds, take_notes, close)."""

    REMOTE = True

    def __init__(
        self,
        model_ref: str | Path,
        model_root: bytes,
        *,
        actors: int | None = None,
        backend: str | None = None,
        drill: str | None = None,
        per_actor: int = 1,
        attempts: int = 4,
        num_cpus: float = 1,
        num_gpus: float | None = None,
        start_timeout: float = 300.0,
    ) -> None:
        """`actors`: default one per GPU of the cluster if it has any (each holding one), else
        one per CPU. `drill`: a --cheat/--lie target the actors' executors apply."""
        ray = self._ray = _ray()
        if not ray.is_initialized():
            raise WorkerError("Ray is not initialised: call refute.bisection.ray_worker.connect")
        gpus = ray.cluster_resources().get("GPU", 0)
        if num_gpus is None:
            num_gpus = 1 if gpus else 0
        if actors is None:
            actors = int(gpus) if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.model_ref = model_reference(model_ref)
        self.model_root = model_root
        self.per_actor = per_actor
        self.attempts = attempts
        super().__init__()
        self._remote = ray.remote(ModelActor).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, max_concurrency=1
        )
        self._args = (self.model_ref, backend, drill)
        self._names = itertools.count()
        self._running: dict[Hashable, tuple[float, _Actor]] = {}
        self._flight: dict[Any, tuple[QueuedJob, _Actor]] = {}  # ObjectRef -> (job, actor)
        self.actors = [self._spawn() for _ in range(actors)]
        deadline = time.monotonic() + start_timeout
        for actor in self.actors:  # the first actors are waited for: a wrong model fails here
            try:
                info = ray.get(actor.info, timeout=max(1, deadline - time.monotonic()))
            except ray.exceptions.RayError as exc:
                self.close()
                raise WorkerError(f"actor {actor.name} did not start: {exc}"[:1000]) from None
            self._started(actor, info)
        self._thread = threading.Thread(target=self._dispatch, name="ray-worker", daemon=True)
        self._thread.start()

    # --- the ModelWorker interface ---------------------------------------------------------

    def submit(
        self,
        key: Hashable,
        priority: float,
        job: Job,
        *,
        executor: Any = None,
        on_position: Callable[[int], None] | None = None,
    ) -> None:
        """Queue `job` under `key` (once, as `ModelWorker.submit`). `executor` and
        `on_position` are the local pool's: an actor runs the job with its own executor (built
        from the same model reference, backend and drill) and reports no progress."""
        with self._lock:
            entry = self._enqueue(key, priority, job)
            if entry is not None:
                self._push(entry)

    def running(self) -> dict[Hashable, float]:
        """Jobs running now (sent to an actor), with the time they were sent."""
        with self._lock:
            return {k: t for k, (t, _) in self._running.items()}

    def running_on(self) -> dict[Hashable, int | None]:
        """Job -> the process id of the actor running it (for operators and fault drills)."""
        with self._lock:
            return {k: a.pid for k, (_, a) in self._running.items()}

    def _note(self, note: tuple[str, dict[str, Any]]) -> None:
        with self._lock:
            self.notes.append(note)

    def close(self) -> None:
        """Stop dispatching and end the actors (the cluster itself is left running)."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if hasattr(self, "_thread"):
            self._thread.join(timeout=10)
        for actor in self.actors:
            try:
                self._ray.kill(actor.handle)
            except Exception:  # already gone
                pass

    # --- actors ---------------------------------------------------------------------------

    def _spawn(self) -> _Actor:
        name = f"refute-model-{next(self._names)}"
        handle = self._remote.remote(*self._args)
        return _Actor(name, handle, handle.info.remote())

    def _started(self, actor: _Actor, info: dict[str, Any]) -> None:
        if info["root"] != self.model_root:
            raise WorkerError(
                f"actor {actor.name} on node {info['node']} loaded {self.model_ref} with model "
                f"root {info['root'].hex()}, not the coordinator's {self.model_root.hex()}: "
                "every node must read the same checkpoint"
            )
        actor.info, actor.pid, actor.node = None, info["pid"], info["node"]

    def _lose(self, actor: _Actor, detail: str) -> None:
        """Replace a dead actor (once, however many of its jobs report it)."""
        if actor.lost:
            return
        actor.lost = True
        try:
            self._ray.kill(actor.handle)
        except Exception:
            pass
        new = self._spawn()
        with self._lock:
            self.actors[self.actors.index(actor)] = new
        self._note(("worker.actor_lost", {"actor": actor.name, "pid": actor.pid,
                           "node": actor.node, "replaced_by": new.name,
                           "detail": detail[:300]}))  # fmt: skip

    # --- the dispatcher thread -------------------------------------------------------------

    def _dispatch(self) -> None:
        ray = self._ray
        while True:
            with self._lock:
                if self._stop:
                    return
                self._send()
                waiting = list(self._flight) + [a.info for a in self.actors if a.info is not None]
                if not waiting:
                    self._lock.wait(timeout=1.0)
                    continue
            try:
                done, _ = ray.wait(waiting, num_returns=1, timeout=0.05)
            except Exception:  # the cluster's connection: tried again
                time.sleep(0.1)
                continue
            for ref in done:
                self._finish(ref)

    def _send(self) -> None:
        """Hand the most urgent jobs to the actors with a free slot (lock held)."""
        for actor in sorted(self.actors, key=lambda a: a.flight):
            while (
                self._heap
                and actor.info is None
                and not actor.lost
                and actor.flight < self.per_actor
            ):
                entry = heapq.heappop(self._heap)
                del self._queued[entry.key]
                entry.attempts += 1
                ref = actor.handle.run.remote(entry.payload)
                actor.flight += 1
                self._flight[ref] = (entry, actor)
                self._running[entry.key] = (time.time(), actor)

    def _finish(self, ref: Any) -> None:
        ray = self._ray
        with self._lock:
            flown = self._flight.pop(ref, None)
        if flown is None:  # an actor's info: started (or lost before it answered)
            actor = next((a for a in self.actors if a.info == ref), None)
            if actor is None:
                return
            try:
                self._started(actor, ray.get(ref))
            except WorkerError as exc:
                actor.lost = True
                self._note(("worker.failed", {"actor": actor.name, "detail": str(exc)}))
            except ray.exceptions.RayError as exc:
                self._lose(actor, f"{type(exc).__name__}: {exc}")
            return
        entry, actor = flown
        actor.flight -= 1
        try:
            result, seconds = ray.get(ref)
            outcome: tuple[bool, Any] = (True, result)
        except ray.exceptions.RayTaskError as exc:  # the job raised: its caller gets it
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            outcome, seconds = (False, cause or WorkerError(str(exc)[:500])), 0.0
        except ray.exceptions.RayError as exc:  # the actor (or its node) is gone
            self._lose(actor, f"{type(exc).__name__}: {exc}")
            self._retry(entry, actor, type(exc).__name__)
            return
        with self._lock:
            self._running.pop(entry.key, None)
            self._done[entry.key] = outcome
            self.seconds[entry.key] = seconds

    def _retry(self, entry: QueuedJob, actor: _Actor, error: str) -> None:
        with self._lock:
            self._running.pop(entry.key, None)
            if entry.attempts >= self.attempts:
                lost = f"job {entry.key!r} lost its actor {entry.attempts} times ({error})"
                self._done[entry.key] = (False, WorkerError(lost))
                self._note(("worker.failed", {"job": repr(entry.key),
                                   "attempts": entry.attempts, "error": error}))  # fmt: skip
                return
            self._queued[entry.key] = entry
            heapq.heappush(self._heap, entry)
            self._note(("worker.retried", {"job": repr(entry.key), "attempt":
                               entry.attempts + 1, "lost_actor": actor.name,
                               "priority": entry.priority}))  # fmt: skip
            self._lock.notify_all()
