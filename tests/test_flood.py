"""A flood of honest maximum-length claims while the watcher is in a dispute (issue 10, item 1).

An attacker posts N honest claims of tiny-llama's whole context (max_positions positions each)
right after an honest watcher opened a dispute against a cheater. The watcher's re-executions run
on its `ModelWorker(threads=1)` inside a `Service`, apart from the game loop: it must still answer
every turn within its clock and win. The clock is shorter than the flood's re-execution time, so
a watcher that re-executed before it played (the behaviour issue 10 reported) would lose by
timeout. The reaction time is measured on chain: from the block of the prover's move that began
the watcher's turn to the block of the watcher's answer (anvil stamps blocks with wall time).
bench/flood.py measures the same for larger floods (not CI).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from refute.bisection.challenger import Challenger
from refute.bisection.demo import flip_bit
from refute.bisection.eventlog import EventLog
from refute.bisection.prover import Prover
from refute.bisection.service import Service
from refute.bisection.workers import ModelWorker
from refute.contracts.anvil import start_anvil
from refute.contracts.chain import connect
from refute.contracts.game import CHALLENGE, CLAIM, ClaimStatus, GameClient, GameParams, Stage
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Generation, Request
from refute.engine.model import Model

CLOCK = 15  # seconds, and the extension: every turn has at least this long


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def w3() -> Iterator[Web3]:
    with start_anvil() as url:
        yield connect(url)


def longest(model: Model) -> tuple[Generation, float]:
    """An honest generation filling the model's context (1 prompt token), and the seconds it
    took (what one re-execution of it takes here)."""
    p = model.program
    start = time.perf_counter()
    (gen,) = Executor(model).generate([Request((7,), p.max_positions)])
    assert gen.trace.positions == p.max_positions
    return gen, time.perf_counter() - start


def reactions(game: GameClient, did: int, side: int) -> list[int]:
    """Seconds from the block that began each turn of `side` (the other side's move, or the
    dispute's opening) to the block of `side`'s answer, in dispute `did`."""
    w3 = game.w3
    opened = game.events("DisputeOpened", disputeId=did)
    moved = game.events("Moved", disputeId=did)
    stamp = {b: w3.eth.get_block(b)["timestamp"] for b in
             {e["blockNumber"] for e in opened + moved}}  # fmt: skip
    out, previous = [], (opened[0]["blockNumber"], CHALLENGE)
    for e in moved:
        if e["side"] == side and previous[1] != side:
            out.append(stamp[e["blockNumber"]] - stamp[previous[0]])
        previous = (e["blockNumber"], e["side"])
    return out


def test_flood_during_a_dispute(w3: Web3, model: Model, tmp_path: Path) -> None:
    params = GameParams(claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15,
                        window=1800, clock=CLOCK, extension=CLOCK)  # fmt: skip
    acc = w3.eth.accounts
    game = GameClient.deploy(w3=w3, params=params, sender=acc[0])
    game.register(model, sender=acc[0])
    flood, one = longest(model)
    n = max(4, min(48, math.ceil(2 * CLOCK / one) + 1))  # two clocks of re-execution, at least
    node = model.program.node_index("layers.1.mlp.down")
    cheat = Executor(model, tamper=flip_bit((2, node, 3)))
    prover = Prover(game, model, tmp_path / "p", acc[1], executor=cheat, consistent_lies=True)
    worker = ModelWorker(threads=1)
    watcher = Challenger(game, model, tmp_path / "w", acc[2], worker=worker)
    stream = io.StringIO()
    service = Service(game, [prover, watcher], EventLog(stream, "flood"), interval=0.1)
    service.resume()
    try:
        cid = prover.claim(Request((5, 17, 250, 3), 3))
        deadline = time.monotonic() + 60
        while not watcher.disputes and time.monotonic() < deadline:
            service.step()
            time.sleep(0.05)
        assert list(watcher.disputes) == ["0"], "the dispute was not opened"
        flooded = [game.post_claim(model, flood, sender=acc[5]) for _ in range(n)]
        start = time.monotonic()
        busy_moves = 0  # watcher moves sent while flood claims were still not re-executed
        deadline = start + 240
        while game.dispute(0).stage != Stage.RESOLVED and time.monotonic() < deadline:
            before = len(watcher.moves)
            backlog = sum(watcher.verdict(c) is None for c in flooded)
            if service.step() and len(watcher.moves) > before and backlog:
                busy_moves += 1
            time.sleep(0.02)
        service.step()
        resolved = time.monotonic() - start
    finally:
        worker.close()
    d = game.dispute(0)
    assert d.stage == Stage.RESOLVED and d.winner == 2, "the watcher lost"
    assert game.claim(cid).status == ClaimStatus.OVERTURNED
    assert watcher.disputes["0"]["winner"] == "challenge"
    waits = reactions(game, 0, CHALLENGE)
    assert waits and max(waits) <= CLOCK // 3, waits
    # the flood was real: the watcher moved while flood claims were queued, and re-executing
    # them all takes longer than a clock (a watcher that re-executed first would have lost)
    assert busy_moves >= 3, busy_moves
    assert n * one > 2 * CLOCK
    print(f"\nflood N={n} x {model.program.max_positions} positions, re-execution "
          f"{one:.1f} s each; dispute resolved {resolved:.1f} s after the flood; "
          f"watcher reactions {waits} s (max {max(waits)}), prover's "
          f"{reactions(game, 0, CLAIM)}")  # fmt: skip
