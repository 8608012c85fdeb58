"""Model work on a Ray cluster (bisection/ray_worker.py): watchers and provers whose generations
and re-executions run on actors of a local cluster started here (2 CPUs, no dashboard), with the
same results, bit for bit, as the local pool, and actors killed mid-task without a claim left
unchecked, undefended, duplicated or orphaned."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from refute.bisection.challenger import Challenger
from refute.bisection.demo import flip_bit
from refute.bisection.eventlog import EventLog
from refute.bisection.prover import Prover
from refute.bisection.service import Service
from refute.bisection.workers import GenerateJob, ModelWorker, ReexecutionJob
from refute.cli import main
from refute.contracts.game import ClaimStatus, GameClient, GameParams
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from tests.chain_fixtures import embedded_chain

try:
    import ray
except ImportError:  # the extra is not installed: every test but the error's skips
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install refute[ray])")

LONG = Request((5, 17, 250, 3), 120)  # ~1.4 s on one core: long enough to be killed mid-way
SHORT = Request((7, 1, 99), 6)


def events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def cluster():
    if ray is None:
        pytest.skip("ray is not installed (pip install refute[ray])")
    start = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    print(f"ray.init: {time.monotonic() - start:.1f} s", file=sys.stderr)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.fixture
def ray_worker(cluster, model):
    from refute.bisection.ray_worker import RayWorker

    worker = RayWorker("tiny-llama", model.root, actors=2)
    yield worker
    worker.close()


def _game(window: int) -> GameClient:
    """A game on a new embedded chain: a module's shared chain runs ahead of the wall clock
    after a dispute (a block a transaction), and a short window would wait for it."""
    w3 = embedded_chain()
    params = GameParams(claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15,
                        window=window)  # fmt: skip
    return GameClient.deploy(w3=w3, params=params)


def _kill_when_running(worker, key, after: float = 0.3, timeout: float = 30.0) -> int:
    """SIGKILL the actor process running job `key` once it has run for `after` seconds."""
    deadline = time.monotonic() + timeout
    while (pid := worker.running_on().get(key)) is None:
        assert time.monotonic() < deadline, f"{key} never started"
        time.sleep(0.01)
    time.sleep(after)
    assert worker.busy(key) and not worker.ready(key), "the job finished before the kill"
    os.kill(pid, signal.SIGKILL)
    return pid


def test_without_ray_the_error_names_the_extra(monkeypatch) -> None:
    from refute.bisection import ray_worker

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ray_worker.WorkerError, match=r"pip install 'refute\[ray\]'"):
        ray_worker.connect("auto")
    result = CliRunner().invoke(main, ["watch", "--model", "tiny-llama", "--ray", "auto",
                                       "--no-metrics", "--max-seconds", "1"])  # fmt: skip
    assert result.exit_code == 1 and "pip install 'refute[ray]'" in result.output


@needs_ray
def test_actors_give_the_local_pools_roots_and_recomputed_records(ray_worker, model) -> None:
    """The same job on an actor and on the local pool: identical tokens, every record root,
    and records recomputed in the coordinator from the actor's caches."""
    import numpy as np

    local = ModelWorker(threads=1)
    executor = Executor(model)
    for worker in (ray_worker, local):
        worker.submit("g", 1.0, GenerateJob(SHORT), executor=executor)
    deadline = time.monotonic() + 60
    while not (ray_worker.ready("g") and local.ready("g")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    remote, here = ray_worker.take("g"), local.take("g")
    local.close()
    assert remote.tokens == here.tokens and remote.trace.roots == here.trace.roots
    assert remote.trace.root() == here.trace.root()
    for t in (0, SHORT.positions - 1):
        for a, b in zip(executor.recompute(remote, t), executor.recompute(here, t), strict=True):
            assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))
    assert ray_worker.seconds["g"] > 0
    # a job that raises hands its error to whoever takes the result, as the local pool does
    from refute.errors import ExecutionError

    ray_worker.submit("bad", 1.0, GenerateJob(Request((999,), 2)))
    while not ray_worker.ready("bad"):
        time.sleep(0.01)
    with pytest.raises(ExecutionError, match="outside the vocabulary"):
        ray_worker.take("bad")


@needs_ray
def test_watcher_on_ray_survives_a_killed_actor_and_wins(model, ray_worker, tmp_path: Path) -> None:
    """A cheating prover's claim and an honest one: the watcher's re-executions run on actors;
    the actor re-executing the wrong claim is killed mid-way; the job is retried, its root is
    the local pool's, the dispute is opened and won before the window closes, and the log
    says what happened."""
    game = _game(window=30)
    game.register(model)
    acc = game.w3.eth.accounts
    target = (60, model.program.node_index("layers.1.mlp.down"), 3)
    cheat = Executor(model, tamper=flip_bit(target))
    cheater = Prover(game, model, tmp_path / "p", acc[1], executor=cheat, consistent_lies=True)
    honest = Prover(game, model, tmp_path / "h", acc[3])
    watcher = Challenger(game, model, tmp_path / "w", acc[2], worker=ray_worker)
    bad = cheater.claim(LONG)
    good = honest.claim(SHORT)
    watcher.poll()  # both re-executions queued on the actors
    pid = _kill_when_running(ray_worker, ("reexecute", bad))
    stream = io.StringIO()
    service = Service(game, [cheater, honest, watcher], EventLog(stream, "test"), interval=0.05)
    service.run(threading.Event(), until_idle=True, max_seconds=120)
    log = events(stream.getvalue())
    assert log[-1]["reason"] == "idle" and service.errors == 0
    (lost,) = [e for e in log if e["event"] == "worker.actor_lost"]
    assert lost["pid"] == pid and lost["level"] == "warning"
    (retried,) = [e for e in log if e["event"] == "worker.retried"]
    assert retried["job"] == repr(("reexecute", bad)) and retried["attempt"] == 2
    assert watcher.verdict(bad) == "dispute" and watcher.verdict(good) == "match"
    here = Executor(model).generate([LONG])[0]
    assert watcher.store["claims"][str(bad)]["own_root"] == here.trace.root().hex()
    (did,) = (int(k) for k in watcher.disputes)
    assert watcher.disputes[str(did)]["winner"] == "challenge"
    assert watcher.disputes[str(did)]["end"]["position"] == target[0]
    assert game.claim(bad).status == ClaimStatus.OVERTURNED
    assert game.claim(good).status == ClaimStatus.FINALIZED
    assert pid not in [a.pid for a in ray_worker.actors] and len(ray_worker.actors) == 2
    # re-executions came back without their caches; the disputed claim's Side was recomputed
    # by a job of its own, on an actor
    assert ("side", bad) in ray_worker.seconds and ("side", good) not in ray_worker.seconds
    summary = ReexecutionJob(GenerateJob(LONG)).run(Executor(model))
    assert summary.trace_root == here.trace.root() and summary.tokens == here.tokens
    assert len(pickle.dumps(summary)) * 100 < len(pickle.dumps(here))


@needs_ray
def test_prover_on_ray_survives_a_killed_actor(model, ray_worker, tmp_path: Path) -> None:
    """Requests generated on actors, one actor killed mid-generation: every request is served
    by exactly one claim (none twice, none orphaned), every claim finalises, and each claim's
    root is the local executor's."""
    game = _game(window=15)  # the local watcher must see each claim within W on a busy machine
    game.register(model)
    acc = game.w3.eth.accounts
    prover = Prover(game, model, tmp_path / "p", acc[1], worker=ray_worker)
    watcher = Challenger(game, model, tmp_path / "w", acc[2])  # local, inline
    stream = io.StringIO()
    service = Service(game, [prover, watcher], EventLog(stream, "test"), interval=0.05)
    requests = [LONG, SHORT, Request((3, 3, 3), 5, 0.7, 11)]
    keys = [service.submit(r, key=f"r{i}") for i, r in enumerate(requests)]
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,),
                              kwargs={"until_idle": True, "max_seconds": 120})  # fmt: skip
    runner.start()
    try:
        pid = _kill_when_running(ray_worker, ("generate", keys[0]))
    finally:
        runner.join(timeout=150)
        stop.set()
    log = events(stream.getvalue())
    assert log[-1]["reason"] == "idle" and service.errors == 0
    assert [e["pid"] for e in log if e["event"] == "worker.actor_lost"] == [pid]
    posted = game.events("ClaimPosted", 0)
    assert len(posted) == 3 and game.game.functions.claimCount().call() == 3
    served = {k: v["claim"] for k, v in prover.store["requests"].items()}
    assert sorted(served) == sorted(keys) and sorted(served.values()) == [0, 1, 2]
    for key, request in zip(keys, requests, strict=True):
        cid = served[key]
        assert game.claim(cid).status == ClaimStatus.FINALIZED
        root = Executor(model).generate([request])[0].trace.root()
        assert game.claim(cid).trace_root == root
        assert watcher.verdict(cid) == "match"
    assert not [i for i in prover.store.intents(("open", "sent"))]


@needs_ray
def test_cli_prove_and_watch_with_ray(cluster, tmp_path: Path) -> None:
    """`refute prove --watch --cheat ... --ray auto`: the cheating prover's generations and the
    watcher's re-executions on actors (one each, of the one cluster); the dispute is won."""
    args = ["prove", "--model", "tiny-llama", "--prompt-tokens", "5,17,250,3",
            "--max-new-tokens", "4", "--cheat", "2,layers.1.mlp.down,3", "--watch",
            "--window", "6", "--until-idle", "--interval", "0.1", "--max-seconds", "120",
            "--no-metrics", "--state", str(tmp_path / "s"), "--ray", "auto",
            "--ray-actors", "1"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    log = events(result.stdout)
    assert log[-1]["reason"] == "idle" and log[-1]["errors"] == 0
    resolved = [e for e in log if e["event"] == "dispute.resolved"]
    assert sorted((e["winner"], e["won"]) for e in resolved) == [("challenge", False),
                                                                  ("challenge", True)]  # fmt: skip
    assert any(e["event"] == "claim.overturned" for e in log)
    # both workers' actors ended with the command: the cluster's CPUs are free again
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.1)


@needs_ray
def test_serve_with_ray_answers_from_actors(cluster, tmp_path: Path) -> None:
    """`refute serve --ray auto`: the official openai client's completion (and a stream) is
    generated on an actor; the claim has `refute run`'s tokens and trace root and finalises."""
    import openai

    from refute.cli.serve import start

    serving = start(["--model", "demo", "--port", "0", "--window", "3", "--interval", "0.2",
                     "--no-metrics", "--state", str(tmp_path / "s"), "--ray", "auto",
                     "--ray-actors", "1", "--log-file", str(tmp_path / "log")])  # fmt: skip
    try:
        assert type(serving.prover.worker).__name__ == "RayWorker"
        client = openai.OpenAI(base_url=serving.url + "/v1", api_key="none", max_retries=0)
        answer = client.completions.create(model="demo", prompt="Return a new", max_tokens=8)
        streamed = list(client.completions.create(model="demo", prompt="Return a new",
                                                  max_tokens=8, seed=3, stream=True))  # fmt: skip
        run = CliRunner().invoke(main, ["run", "--model", "demo", "--prompt", "Return a new",
                                        "--max-new-tokens", "8", "--json"])  # fmt: skip
        expected = json.loads(run.stdout.splitlines()[-1])
        ext = answer.model_extra["refute"]
        assert ext["tokens"] == expected["tokens"] and ext["trace_root"] == expected["trace_root"]
        assert streamed[-1].model_extra["refute"]["claim"] == ext["claim"] + 1
        text = "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
        assert text and streamed[-1].choices[0].finish_reason is not None
        deadline = time.monotonic() + 60
        while True:
            status = serving.api.inbox.call(lambda: serving.game.claim(ext["claim"]).status)
            serving.stop.wake()
            if status.result(timeout=30) == ClaimStatus.FINALIZED:
                break
            assert time.monotonic() < deadline, "the claim did not finalise"
            time.sleep(0.5)
    finally:
        serving.close()
