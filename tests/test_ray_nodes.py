"""A node of a Ray cluster lost mid-task (bisection/ray_worker.py): on a cluster of a head and two
one-CPU worker nodes started here (`ray.cluster_utils.Cluster`), the node whose actor is
re-executing a claim is removed (its raylet and every process on it killed); the job is retried
on the other node's actor and its trace root is the local executor's, bit for bit; the loss is
noted with the lost node's id; a node added later takes the replacement actor, which serves."""

from __future__ import annotations

import time

import pytest

from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor
from tests.test_ray import LONG, SHORT, needs_ray

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:
    ray = None


@pytest.fixture(scope="module")
def nodes():
    if ray is None:
        pytest.skip("ray is not installed (pip install refute[ray])")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _wait(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow  # a three-node cluster takes ~2 minutes to start and settle on 2 cores
@needs_ray
def test_a_lost_node_s_job_is_retried_on_another_node(nodes) -> None:
    from refute.bisection.ray_worker import RayWorker
    from refute.bisection.workers import GenerateJob

    model = load_model("tiny-llama")
    worker = RayWorker("tiny-llama", model.root, actors=2)
    try:
        placed = {a.node for a in worker.actors}
        assert len(placed) == 2  # one actor on each one-CPU node
        key = ("reexecute", "long")
        worker.submit(key, 0.0, GenerateJob(LONG))
        _wait(lambda: key in worker.running(), "the job was never sent")
        time.sleep(0.3)  # mid-way through its ~1.4 s
        (actor,) = [a for a in worker.actors if a.pid == worker.running_on()[key]]
        (victim,) = [n for n in nodes.worker_nodes if n.node_id == actor.node]
        nodes.remove_node(victim, allow_graceful=False)
        _wait(lambda: worker.ready(key), "the job was not retried")
        gen = worker.take(key)
        assert gen.trace.root() == Executor(model).generate([LONG])[0].trace.root()
        notes = dict(worker.take_notes())
        assert notes["worker.actor_lost"]["node"] == actor.node
        assert notes["worker.retried"]["attempt"] == 2
        # the replacement actor waits for a CPU; a new node gives it one, and it serves
        nodes.add_node(num_cpus=1)
        live = lambda: [a for a in worker.actors if a.info is None and not a.lost]  # noqa: E731
        _wait(lambda: len(live()) == 2, "no replacement actor started on the new node")
        assert len([a for a in live() if a.node not in placed]) == 1  # on the new node
        short, busy = ("generate", "short"), ("generate", "busy")
        worker.submit(busy, 0.0, GenerateJob(LONG))  # occupies one actor
        worker.submit(short, 1.0, GenerateJob(SHORT))  # so the other serves this one
        _wait(lambda: worker.ready(short), "the second job was not served")
        assert not worker.ready(busy)  # both actors, the replacement one of them, ran at once
        assert worker.take(short).trace.root() == Executor(model).generate([SHORT])[0].trace.root()
        _wait(lambda: worker.ready(busy), "the first job was not served")
        assert {n for n, _ in worker.take_notes()} <= {"worker.actor_lost", "worker.retried"}
    finally:
        worker.close()
