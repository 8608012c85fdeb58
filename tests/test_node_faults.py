"""A faulty node (issue 10): `refute prove` and `refute watch` as separate OS processes talking to
anvil through the loopback fault proxy (tests/rpc_proxy.py), which delays calls, answers HTTP 500
and JSON-RPC errors at random, drops sends before the node sees them, drops the node's answer to
sends it did execute (eth_sendTransaction of the prover's unlocked account, eth_sendRawTransaction
of the watcher's local key) and to receipt queries, and refuses every connection for longer than
`UNREACHABLE_AFTER` in the middle of the dispute, while a new request arrives.

The cheating prover still loses and the honest watcher wins, the request that arrived during the
outage is served once the node is back, no process exits before its work is done (no traceback),
nothing is posted twice, the withdrawals are exact, and the logs say what happened: `error`
events, `node.unreachable` / `node.reachable`, and for every send whose answer was lost the
intent closed from the chain (`intent.closed`) after `tx.unknown` or a TransactionUnknown error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from refute.bisection.service import UNREACHABLE_AFTER
from refute.contracts.game import ClaimStatus, GameClient, GameParams
from refute.engine.checkpoint import load_model
from tests.rpc_proxy import RpcProxy
from tests.test_crashes import (
    BONDS,
    CHALLENGE_WON,
    Proc,
    _account_of,
    _wait_all,
    disputes_by,
    jump_past_window,
    node,  # noqa: F401 (the module's private anvil)
    posted_by,
    withdrawn,
)
from tests.test_service import events

FIRST = {"tokens": [5, 17, 250, 3], "max_new_tokens": 4}  # 7 positions, the cheat at 6
LATE = {"tokens": [5, 17], "max_new_tokens": 2, "id": "late"}  # 3 positions: honest
CHEAT = "6,layers.0.mlp.down,5"
OUTAGE = UNREACHABLE_AFTER + 3.0
LIMIT = 240.0
PARAMS = GameParams(claim_bond=BONDS[0], challenge_bond=BONDS[1], move_bond=BONDS[2], window=600,
                    clock=600, extension=30)  # fmt: skip


@pytest.fixture
def proxy(node: Web3) -> Iterator[RpcProxy]:  # noqa: F811
    with RpcProxy(node.provider.endpoint_uri, seed=10) as p:
        yield p


def _names(proc: Proc) -> list[str]:
    return [e["event"] for e in proc.events()]


def test_processes_survive_a_faulty_node(node: Web3, proxy: RpcProxy, tmp_path: Path) -> None:  # noqa: F811
    key = Account.create()
    funder = node.eth.accounts[0]
    node.eth.wait_for_transaction_receipt(
        node.eth.send_transaction({"from": funder, "to": key.address, "value": 10**19})
    )
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(FIRST) + "\n")
    common = ["--rpc", proxy.url, "--model", "tiny-llama", "--interval", "0.2", "--until-idle",
              "--max-seconds", str(int(LIMIT)), "--no-metrics", "--rpc-timeout", "2"]  # fmt: skip
    prover = Proc(["prove", *common, "--state", str(tmp_path / "p"), "--requests", str(requests),
                   "--cheat", CHEAT],
                  tmp_path / "prover.log")  # fmt: skip
    watcher = Proc([], tmp_path / "watcher.log", env={"REFUTE_TEST_FAULT_KEY": key.key.hex()})
    # the game is deployed (by the prover's account: the fee recipient) and the model registered
    # here: start-up (deployment, registration) is not retried on node errors
    game = GameClient.deploy(w3=node, params=PARAMS, sender=node.eth.accounts[1])
    game.register(load_model("tiny-llama"), sender=node.eth.accounts[1])
    prover.args += ["--game", game.game.address]
    # noise all along (paused while a process starts): slow answers, HTTP 500s, RPC errors
    noise = [
        proxy.delay(0.3, probability=0.03, times=None),
        proxy.http_error(500, probability=0.01, times=None),
        proxy.rpc_error(method="eth_call", probability=0.02, times=None),
    ]
    levels = [r.probability for r in noise]

    def set_noise(on: bool) -> None:
        for rule, p in zip(noise, levels, strict=True):
            rule.probability = p if on else 0.0

    set_noise(False)
    # the prover's postClaim is mined, and its answer lost
    proxy.drop_answer("eth_sendTransaction", times=1)
    prover.start()
    phase = {"n": 0}
    state: dict = {}

    def step() -> None:
        f = game.game.functions
        started = [("started" in _names(p)) for p in (prover, watcher)]
        if "noisy" not in state and started[0]:
            set_noise(True)
            state["noisy"] = True
        if watcher.popen is None and f.claimCount().call() > 0:
            set_noise(False)
            watcher.args = ["watch", *common, "--state", str(tmp_path / "w"), "--game",
                            game.game.address, "--key-env", "REFUTE_TEST_FAULT_KEY"]  # fmt: skip
            watcher.start()
        if watcher.popen is not None and "noisy2" not in state and started[1]:
            set_noise(True)
            state["noisy2"] = True
        if phase["n"] == 0 and f.disputeCount().call() > 0:
            # the watcher's next sends are mined and their answers lost, one never reaches the
            # node, receipts go unanswered; the prover's next move is lost the same way
            proxy.drop_answer("eth_sendRawTransaction", times=2)
            proxy.drop("eth_sendRawTransaction", times=1)
            proxy.drop_answer("eth_sendTransaction", times=1)
            proxy.drop_answer("eth_getTransactionReceipt", times=2)
            phase["n"] = 1
        moves = game.dispute(0).moves if f.disputeCount().call() else 0
        if phase["n"] == 1 and moves >= 6:
            proxy.down(OUTAGE)
            state["down"] = time.monotonic()
            phase["n"] = 2
        if phase["n"] == 2 and time.monotonic() - state["down"] > 1.0:
            with requests.open("a") as fh:  # a request arrives while the node is unreachable
                fh.write(json.dumps(LATE) + "\n")
            phase["n"] = 3
        if (
            phase["n"] == 3
            and game.dispute(0).winner
            and f.claimCount().call() == 2
            and any(e["event"] == "claim.checked" and e["claim"] == 1 for e in watcher.events())
        ):
            jump_past_window(node)
            phase["n"] = 4

    try:
        _wait_all([prover, watcher], step, limit=LIMIT)
    finally:
        prover.kill()
        watcher.kill()
    assert phase["n"] == 4
    p_acc, w_acc = _account_of(prover), _account_of(watcher)
    assert w_acc == key.address
    pl, wl = prover.events(), watcher.events()
    for log in (pl, wl):  # each ran once, to the end of its work
        names = [e["event"] for e in log]
        assert names.count("started") == 1 and log[-1]["event"] == "exited"
        assert log[-1]["reason"] == "idle" and log[-1]["errors"] > 0
        assert {"error", "node.unreachable", "node.reachable"} <= set(names)
        (down,) = [e for e in log if e["event"] == "node.unreachable"]
        assert down["seconds"] >= UNREACHABLE_AFTER
    for proc in (prover, watcher):
        assert "Traceback" not in proc.log.with_suffix(".stderr0").read_text()
    # the game: the cheater lost, the late request was served and its claim finalised
    assert posted_by(game, p_acc) == 2 and disputes_by(game, w_acc) == 1
    d = game.dispute(0)
    assert d.winner == CHALLENGE_WON and d.challenger == w_acc
    assert game.claim(0).status == ClaimStatus.OVERTURNED
    assert game.claim(1).status == ClaimStatus.FINALIZED
    late = [e for e in pl if e["event"] == "claim.posted" and e["claim"] == 1]
    assert late and late[0]["id"] == "late"
    order = [(e["event"], e.get("id")) for e in pl]  # accepted while down, posted once back
    assert order.index(("request.accepted", "late")) < order.index(("node.reachable", None))
    assert order.index(("node.reachable", None)) < order.index(("claim.posted", "late"))
    claim_bond, challenge_bond, move_bond = BONDS
    fee = game.params().fee_per_position
    assert withdrawn(game, w_acc) == challenge_bond + d.moves * move_bond + claim_bond // 2
    assert withdrawn(game, p_acc) == claim_bond + fee * (7 + 3)
    assert game.credit(w_acc) == game.credit(p_acc) == 0
    # every send whose answer was dropped: unknown at first, then closed from the chain
    assert proxy.count("eth_sendTransaction", "drop_answer") == 2
    assert proxy.count("eth_sendRawTransaction", "drop_answer") == 2
    assert proxy.count("eth_sendRawTransaction", "drop") == 1
    assert proxy.count(outcome="cut") > 0
    assert min(proxy.count(outcome=o) for o in ("delay", "http_error", "rpc_error")) > 0
    for log in (pl, wl):
        unknown = [e for e in log if e["event"] == "tx.unknown"
                   or (e["event"] == "error" and e["error"] == "TransactionUnknown")]  # fmt: skip
        closed = [e for e in log if e["event"] == "intent.closed"]
        assert unknown and closed
        assert {e["state"] for e in closed} <= {"done", "dropped"}
    dropped = [e for e in wl if e["event"] == "intent.closed" and e["state"] == "dropped"]
    assert dropped  # the send the node never saw: re-sent after its nonce was found unused
    assert os.path.getsize(requests) > 0


@pytest.mark.parametrize("fault", ["rpc_error", "http_error", "drop"])
def test_a_node_failing_at_start_up_is_a_clear_error(
    node: Web3,  # noqa: F811
    proxy: RpcProxy,
    tmp_path: Path,
    fault: str,
) -> None:
    """Before the loop runs (connecting, deploying, registering, resuming), a node error ends the
    process with a message saying so, not a traceback; the state directory stays usable."""
    from click.testing import CliRunner

    from refute.cli import main

    getattr(proxy, fault)(method="eth_accounts", times=None)
    args = ["watch", "--rpc", proxy.url, "--model", "tiny-llama", "--state", str(tmp_path),
            "--rpc-timeout", "2", "--game", "0x" + "11" * 20]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "the node failed while starting" in result.output
    assert "Traceback" not in result.output


def test_a_refused_open_dispute_is_sent_again_before_idle(
    node: Web3,  # noqa: F811
    proxy: RpcProxy,
    tmp_path: Path,
) -> None:
    """A watcher (in-process Service, through the proxy) whose openDispute the node refuses
    (a JSON-RPC error: nothing was sent, the intent is dropped) opens it in a later round: with
    --until-idle it does not take the refused round for "nothing left to do"."""
    import io
    import threading

    from refute.bisection.challenger import Challenger
    from refute.bisection.demo import flip_bit
    from refute.bisection.eventlog import EventLog
    from refute.bisection.service import Service
    from refute.contracts.chain import connect
    from refute.engine.executor import Executor, Request

    model = load_model("tiny-llama")
    acc = node.eth.accounts
    game = GameClient.deploy(w3=node, params=PARAMS, sender=acc[1])
    game.register(model, sender=acc[1])
    cheat = Executor(model, tamper=flip_bit((3, model.program.node_index("layers.0.mlp.down"), 5)))
    (gen,) = cheat.generate([Request((5, 17, 250, 3), 4)])
    cid = game.post_claim(model, gen, sender=acc[1])
    proxy.rpc_error(method="eth_sendTransaction", times=1, message="refused")
    w3 = connect(proxy.url, timeout=5)
    watcher = Challenger(GameClient.at(w3, game.game.address), model, tmp_path / "w", acc[2])
    stream = io.StringIO()
    service = Service(watcher.game, [watcher], EventLog(stream, "watcher"), interval=0.05)
    service.resume()
    service.run(threading.Event(), until_idle=True, max_seconds=6)
    log = events(stream.getvalue())
    assert proxy.count("eth_sendTransaction", "rpc_error") == 1
    (refused,) = [e for e in log if e["event"] == "error"]
    assert refused["error"] == "Web3RPCError" and "refused" in refused["detail"]
    assert len(game.events("DisputeOpened", challenger=acc[2])) == 1
    assert game.claim(cid).open_disputes == 1
    # the dispute waits for the (absent) prover's move: not idle, stopped by the time limit
    assert log[-1]["event"] == "exited" and log[-1]["reason"] == "time limit"


def test_credit_left_by_a_failed_withdraw_is_withdrawn_before_idle(
    node: Web3,  # noqa: F811
    proxy: RpcProxy,
    tmp_path: Path,
) -> None:
    """A watcher (in-process Service, through the proxy) that is owed the claim fees (it is the
    game's fee recipient) and whose withdraw the node refuses: --until-idle does not exit with
    the credit still in the contract; the next round withdraws it."""
    import io
    import threading

    from refute.bisection.challenger import Challenger
    from refute.bisection.eventlog import EventLog
    from refute.bisection.service import Service
    from refute.contracts.chain import connect
    from refute.engine.executor import Executor, Request

    model = load_model("tiny-llama")
    acc = node.eth.accounts
    params = GameParams(**{**PARAMS.__dict__, "fee_recipient": acc[2]})
    game = GameClient.deploy(w3=node, params=params, sender=acc[1])
    game.register(model, sender=acc[1])
    (gen,) = Executor(model).generate([Request((5, 17, 250, 3), 4)])
    game.post_claim(model, gen, sender=acc[1])
    fees = game.params().fee_per_position * 7
    assert game.credit(acc[2]) == fees
    proxy.rpc_error(method="eth_sendTransaction", times=1, message="refused")
    w3 = connect(proxy.url, timeout=5)
    watcher = Challenger(GameClient.at(w3, game.game.address), model, tmp_path / "w", acc[2])
    stream = io.StringIO()
    service = Service(watcher.game, [watcher], EventLog(stream, "watcher"), interval=0.05)
    service.resume()
    service.run(threading.Event(), until_idle=True, max_seconds=30)
    log = events(stream.getvalue())
    (refused,) = [e for e in log if e["event"] == "error"]
    assert refused["error"] == "Web3RPCError" and "refused" in refused["detail"]
    assert [e["wei"] for e in log if e["event"] == "withdrawn"] == [fees]
    assert game.credit(acc[2]) == 0 and withdrawn(game, acc[2]) == fees
    assert log[-1]["event"] == "exited" and log[-1]["reason"] == "idle"
