"""The prover and challenger clients (refute.bisection) playing whole games on the embedded chain,
driven only by chain state and their state directories; and `refute demo --json`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from web3 import Web3

from refute.bisection.challenger import Challenger
from refute.bisection.demo import flip_bit
from refute.bisection.prover import Prover
from refute.cli import main
from refute.contracts.game import ClaimStatus, GameClient, GameParams, Stage
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request

PARAMS = GameParams(claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15)
REQUEST = Request(prompt=(5, 17, 250, 3), max_new_tokens=4, temperature=0.9, seed=11)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.fixture()
def game(embedded_web3: Web3, model) -> GameClient:
    g = GameClient.deploy(w3=embedded_web3, params=PARAMS)
    g.register(model)
    return g


def run(*clients, limit: int = 300) -> int:
    """Poll every client until none has a dispute left to play; returns the polls made."""
    for k in range(limit):
        for c in clients:
            c.poll()
        if k and not any(c.active() for c in clients):
            return k
    raise AssertionError("the game did not end")


def past_window(game: GameClient, claim_id: int) -> None:
    game.w3.provider.ethereum_tester.time_travel(game.claim(claim_id).deadline + 1)


def test_honest_claim_no_dispute_finalizes(game, model, tmp_path) -> None:
    acc = game.w3.eth.accounts
    prover = Prover(game, model, tmp_path / "p", acc[1])
    watcher = Challenger(game, model, tmp_path / "w", acc[2])
    cid = prover.claim(REQUEST)
    run(prover, watcher)
    assert watcher.verdict(cid) == "match" and not watcher.disputes and not prover.disputes
    assert game.claim(cid).status == ClaimStatus.PENDING
    past_window(game, cid)
    prover.poll()
    assert prover.status(cid) == "finalized" and game.claim(cid).status == ClaimStatus.FINALIZED
    assert prover.collect() == PARAMS.claim_bond


def _weight_model(model):
    """The model with one bit of layer 0's q projection flipped (claimed as the true model)."""
    p = model.program
    w = next(op.index for op in p.nodes[p.node_index("layers.0.attn.q")].operands
             if op.src.name == "WEIGHT")  # fmt: skip
    weights = [np.array(x, copy=True) for x in model.weights]
    weights[w].reshape(-1).view(np.uint32)[3] ^= 1 << 20
    return dataclasses.replace(model, weights=weights, _tensor_roots=None)


@pytest.mark.parametrize("kind", ["intermediate", "weight", "token"])
def test_cheating_prover_overturned(game, model, tmp_path, kind) -> None:
    acc = game.w3.eth.accounts
    p = model.program
    if kind == "intermediate":  # a random record (not the token), a random element
        rng = np.random.default_rng(2026)
        t = int(rng.integers(REQUEST.positions))
        n = int(rng.integers(p.token_node))
        size = int(np.prod(p.resolve(p.nodes[n].shape, t)))
        executor = Executor(model, tamper=flip_bit((t, n, int(rng.integers(size)))))
    elif kind == "weight":
        executor = Executor(_weight_model(model))
    else:  # the sampled token at the second generated position
        executor = Executor(model, tamper=flip_bit((len(REQUEST.prompt), p.token_node, 0)))
    cheater = Prover(game, model, tmp_path / "c", acc[1], executor=executor, consistent_lies=True)
    watcher = Challenger(game, model, tmp_path / "w", acc[2])
    cid = cheater.claim(REQUEST)
    run(cheater, watcher)
    assert watcher.verdict(cid) == "dispute"
    (info,) = watcher.disputes.values()
    assert info["winner"] == "challenge" and cheater.status(cid) == "overturned"
    assert game.claim(cid).status == ClaimStatus.OVERTURNED
    if kind == "intermediate":
        assert (info["end"]["position"], info["end"]["node_id"]) == (t, n)
    moves = game.dispute(int(next(iter(watcher.disputes)))).moves
    assert cheater.collect() == 0
    won = watcher.collect()  # its bond and every move bond; the reward waits for the window
    assert won == PARAMS.challenge_bond + moves * PARAMS.move_bond
    past_window(game, cid)
    assert watcher.collect() == PARAMS.claim_bond // 2  # the whole pool: one challenge


def test_token_only_lie_proved_directly(game, model, tmp_path) -> None:
    acc = game.w3.eth.accounts
    honest_run = Executor(model).generate([REQUEST])[0]
    tokens = list(honest_run.output_tokens)
    tokens[1] = (tokens[1] + 1) % model.program.vocab_size
    liar = Prover(game, model, tmp_path / "c", acc[1])
    watcher = Challenger(game, model, tmp_path / "w", acc[2])
    cid = liar.claim(REQUEST, output_tokens=tokens)
    made = watcher.poll()
    assert watcher.verdict(cid) == "token-mismatch" and made[0]["fn"] == "proveTokenMismatch"
    assert game.claim(cid).status == ClaimStatus.OVERTURNED
    assert [m["fn"] for m in watcher.moves] == ["proveTokenMismatch"]  # (after its commitment)
    assert watcher.collect() == 0  # the share is paid once the claim is settled (after W)
    past_window(game, cid)
    assert watcher.collect() == PARAMS.claim_bond // 2


def test_honest_prover_beats_lying_challenger(game, model, tmp_path) -> None:
    acc = game.w3.eth.accounts
    prover = Prover(game, model, tmp_path / "p", acc[1])
    liar = Challenger(game, model, tmp_path / "l", acc[2], executor=Executor(
        model, tamper=flip_bit((1, 7, 5))), consistent_lies=True)  # fmt: skip
    cid = prover.claim(REQUEST)
    run(prover, liar)
    (info,) = prover.disputes.values()
    assert info["winner"] == "claim" and info["end"]["node"] == "layers.0.attn.q"
    assert [e["claimCorrect"] for e in game.events("StepVerified")] == [True]
    past_window(game, cid)
    prover.poll()
    assert prover.status(cid) == "finalized"
    moves = game.dispute(int(next(iter(prover.disputes)))).moves
    assert prover.collect() == PARAMS.claim_bond + PARAMS.challenge_bond + moves * PARAMS.move_bond
    assert liar.collect() == 0


def test_restart_mid_game(game, model, tmp_path) -> None:
    """Both clients are dropped and recreated from their directories mid-game (watcher in level
    1, prover in level 2); the game ends as if nothing happened."""
    acc = game.w3.eth.accounts
    bad = Executor(model, tamper=flip_bit((2, 85, 300)))
    cheater = Prover(game, model, tmp_path / "c", acc[1], executor=bad, consistent_lies=True)
    watcher = Challenger(game, model, tmp_path / "w", acc[2])
    cid = cheater.claim(REQUEST)
    watcher.poll()
    (did,) = (int(k) for k in watcher.disputes)
    restarted = set()
    for _ in range(200):
        d = game.dispute(did)
        if d.stage == Stage.TRACE and d.height == 5 and "w" not in restarted:
            watcher = Challenger(game, model, tmp_path / "w", acc[2])
            restarted.add("w")
        if d.stage in (Stage.CHUNKS, Stage.CHUNK) and "c" not in restarted:
            cheater = Prover(game, model, tmp_path / "c", acc[1], executor=bad,
                             consistent_lies=True)  # fmt: skip
            restarted.add("c")
        if d.stage == Stage.RESOLVED and not watcher.active() and not cheater.active():
            break
        cheater.poll()
        watcher.poll()
    assert restarted == {"w", "c"}
    assert watcher.disputes[str(did)]["winner"] == "challenge"
    assert game.claim(cid).status == ClaimStatus.OVERTURNED
    assert watcher.disputes[str(did)]["end"]["element"] == 300
    # every move of the game was made once, by the two clients (old and new objects)
    assert len(watcher.moves) + len(cheater.moves) == game.dispute(did).moves + 1  # + the step


def test_demo_json() -> None:
    result = CliRunner().invoke(main, ["demo", "--json", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    statuses = {c["prover"]: c["status"] for c in out["claims"]}
    assert statuses == {"honest": "finalized", "cheating": "overturned"}
    (g,) = out["games"]
    assert g["winner"] == "challenge" and g["step"]["claim_correct"] is False
    assert g["moves"]["claim"] > 0 and g["gas"]["challenge"] > 0
    assert g["disputed"]["node"] == out["claims"][1]["tamper"]["node"]
    moves = g["moves"]["challenge"] + g["moves"]["claim"] - 1  # (the step is no move)
    bonds = out["bonds_wei"]
    assert out["payouts_wei"]["watcher"] == (
        bonds["challenge"] + bonds["claim"] // 2 + moves * bonds["move"]
    )
    assert out["burned_wei"] == bonds["claim"] - bonds["claim"] // 2
    assert out["payouts_wei"]["cheating prover"] == 0


def test_offline_prover_loses_on_time(game, model, tmp_path) -> None:
    """A prover that never answers: the watcher calls the timeout once the claim side's clock
    has run out (and not before)."""
    acc = game.w3.eth.accounts
    cheater = Prover(game, model, tmp_path / "c", acc[1], executor=Executor(
        model, tamper=flip_bit((3, 27, 9))))  # fmt: skip
    watcher = Challenger(game, model, tmp_path / "w", acc[2])
    cid = cheater.claim(REQUEST)
    watcher.poll()
    (did,) = (int(k) for k in watcher.disputes)
    assert watcher.poll() == [] and game.dispute(did).stage == Stage.TRACE
    d = game.dispute(did)
    game.w3.provider.ethereum_tester.time_travel(d.turn_start + d.clock[0] + 2)
    (move,) = watcher.poll()
    assert move["fn"] == "timeout" and game.claim(cid).status == ClaimStatus.OVERTURNED
    watcher.poll()
    assert watcher.disputes[str(did)]["winner"] == "challenge"
