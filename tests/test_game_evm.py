"""ModelRegistry + DisputeGame (docs/protocol.md) on the embedded py-evm chain, with real data.

A tiny-llama generation is claimed; traces are tampered with `Executor(model, tamper=...)`
(one bit of one intermediate), and disputes are played to the end by a small in-test driver that
sends each move from the side's own data (`bisection.player.Side`, what the clients use) while
the test controls who sends what and when; the other side's data comes from the chain's events,
as it would for a real client. tests/test_bisection.py plays whole games with the clients.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from web3 import Web3

from refute.bisection.demo import flip_bit
from refute.bisection.player import Side
from refute.contracts.game import (
    CHALLENGE,
    CLAIM,
    ClaimStatus,
    GameClient,
    GameError,
    GameParams,
    Stage,
    encode_tokens,
)
from refute.contracts.onestep import ListTree, f32_bits
from refute.engine import merkle
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request

PARAMS = GameParams(
    claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15, window=3600, clock=1800,
    extension=120,
)  # fmt: skip
REQUEST = Request(prompt=(5, 17, 250, 3), max_new_tokens=4, temperature=0.9, seed=11)
LOGITS_TAMPER = (2, 85, 300)  # (t, node, element): logits, REDUCE SUM, chunk 1 of 2
Q_TAMPER = (1, 7, 5)  # attn.q of layer 0, REDUCE SUM
MAP_TAMPER = (3, 27, 9)  # attn.residual of layer 0, MAP


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def runs(model):
    """name -> (executor, generation): the honest run and tampered ones."""
    out = {}
    for name, tamper in [
        ("honest", None),
        ("logits", flip_bit(LOGITS_TAMPER)),
        ("q", flip_bit(Q_TAMPER)),
        ("map", flip_bit(MAP_TAMPER)),
    ]:
        ex = Executor(model, tamper=tamper)
        out[name] = (ex, ex.generate([REQUEST])[0])
    return out


@pytest.fixture()
def game(embedded_web3: Web3, model) -> GameClient:
    g = GameClient.deploy(w3=embedded_web3, params=PARAMS)
    g.register(model)
    return g


def now(w3: Web3) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def travel(w3: Web3, timestamp: int) -> None:
    """The next transaction's block gets `timestamp` (the tester mines one block before)."""
    w3.provider.ethereum_tester.time_travel(timestamp)


def expect(name: str, fn, *args, **kwargs):
    with pytest.raises(GameError) as info:
        fn(*args, **kwargs)
    assert info.value.name == name, f"expected {name}, got {info.value.name}"


# --- the driver --------------------------------------------------------------------------------


class Party(Side):
    """One side's knowledge (the clients' `Side`: its own generation, lying consistently at
    level 3 when its data is wrong) and the account it moves from."""

    def __init__(self, model, executor, gen, account: str) -> None:
        super().__init__(model, executor, gen, consistent_lies=True)
        self.account = account


def play_one(game: GameClient, did: int, parties: list[Party], mover: str | None = None):
    """Make the move of the side to move (from that side's own data); returns the receipt."""
    d = game.dispute(did)
    side = d.to_move
    party = parties[side]
    sender = mover if mover is not None else party.account
    if d.stage == Stage.TRACE:
        left, right = Party.children(party.prover.trace_tree, d.height, d.index)
        return game.reveal_children(did, left, right, sender=sender)
    if d.stage == Stage.RECORD:
        dtype, length, tree = party.record_open(d.position, d.node_id)
        proof = party.prover.node_proof(d.node_id) if side == CLAIM else None
        return game.open_record(did, dtype, length, tree, proof, sender=sender)
    if d.stage == Stage.CHUNKS:
        tree = party.tensor(d.position, d.node_id)[2]
        left, right = Party.children(tree, d.height, d.index)
        return game.reveal_children(did, left, right, sender=sender)
    if d.stage == Stage.CHUNK:
        chunk = party.chunk(d.position, d.node_id, d.index)
        claim_chunk = b""
        if side == CHALLENGE:  # the claim side's chunk, from its Moved event
            latest = game.w3.eth.block_number  # the claim side's chunk move, just before
            claim_chunk = bytes(game.events("Moved", latest, disputeId=did)[-1]["data"])
        return game.reveal_chunk(did, chunk, claim_chunk, sender=sender)
    if d.stage == Stage.REDUCTION:
        return game.reveal_reduction(did, *party.reduction(d, side), sender=sender)
    raise AssertionError(f"no move at stage {d.stage!r}")


def do_step(game: GameClient, did: int, party: Party, own_side: int, sender: str | None = None):
    """Level 4 by `party` (proofs against the claim's trace root, see ForeignPaths)."""
    call = party.step_call(game, did, game.dispute(did), own_side, since=0)
    return game.step(did, call, len(party.prover.program.weights), sender=sender or party.account)


def play(game: GameClient, did: int, parties: list[Party], honest: int) -> Counter:
    """Play to the end; the honest side calls the step. Returns moves per stage."""
    stages: Counter = Counter()
    while True:
        d = game.dispute(did)
        if d.stage == Stage.RESOLVED:
            return stages
        if d.stage == Stage.STEP:
            do_step(game, did, parties[honest], honest)
            stages["STEP"] += 1
            continue
        stages[d.stage.name] += 1
        play_one(game, did, parties, None)


def balance_of_game(game: GameClient) -> int:
    return game.w3.eth.get_balance(game.game.address)


# --- tests ---------------------------------------------------------------------------------------


def test_registry_computes_model_root(game: GameClient, model) -> None:
    p = model.program
    assert game.registry.functions.isRegistered(model.root).call()
    m = game.registry.functions.model(model.root).call()
    assert m[0] == model.weights_root and m[1] == model.program_root and m[4] == len(p.nodes)
    args = [model.weights_root, model.program_root, model.config_hash, 1, len(p.nodes),
            p.max_positions, p.vocab_size, p.logits_node, p.token_node]  # fmt: skip
    expect("AlreadyRegistered", game.transact, game.registry, "register", *args)
    other = list(args)
    other[5] += 1  # another header is another model
    root, _ = game.transact(game.registry, "register", *other)
    assert bytes(root) != model.root
    other[8] = len(p.nodes)  # token node out of range
    expect("BadHeader", game.transact, game.registry, "register", *other)
    (event,) = game.events("ModelRegistered", modelRoot=model.root)
    assert event["nodesPerPosition"] == len(p.nodes) and event["tokenNode"] == p.token_node


def test_honest_claim_finalizes_after_window(game: GameClient, model, runs) -> None:
    w3 = game.w3
    _, gen = runs["honest"]
    prover = w3.eth.accounts[1]
    cid = game.post_claim(model, gen, sender=prover)
    c = game.claim(cid)
    assert c.prompt_root == merkle.tensor_root(np.array(REQUEST.prompt, dtype=np.uint32))
    assert c.status == ClaimStatus.PENDING and c.num_records == gen.trace.num_records
    (posted,) = game.events("ClaimPosted", claimId=cid)
    assert list(posted["prompt"]) == list(REQUEST.prompt)
    assert list(posted["outputTokens"]) == gen.output_tokens
    expect("WindowOpen", game.finalize, cid)
    travel(w3, c.deadline - 1)
    expect("WindowOpen", game.finalize, cid)  # the call runs at deadline - 1 ... still open
    travel(w3, c.deadline + 1)
    game.finalize(cid)
    assert game.claim(cid).status == ClaimStatus.FINALIZED
    assert game.credit(prover) == PARAMS.claim_bond
    expect("ClaimNotPending", game.finalize, cid)
    before = w3.eth.get_balance(prover)
    receipt = game.withdraw(prover)
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w3.eth.get_balance(prover) == before + PARAMS.claim_bond - fee
    expect("NothingToWithdraw", game.withdraw, prover)


def test_claim_checks(game: GameClient, model, runs) -> None:
    _, gen = runs["honest"]
    positions = len(REQUEST.prompt) + len(gen.output_tokens) - 1
    bond = game.claim_value(positions)  # B_c + the fee
    assert bond == PARAMS.claim_bond + PARAMS.fee_per_position * positions
    base = [model.root, encode_tokens(REQUEST.prompt), f32_bits(0.9), 11,
            encode_tokens(gen.output_tokens), gen.trace.root(), gen.trace.num_records]  # fmt: skip
    t = game.transact
    expect("WrongBond", t, game.game, "postClaim", *base, value=bond - 1)
    expect("WrongBond", t, game.game, "postClaim", *base, value=PARAMS.claim_bond)  # no fee
    bad = list(base)
    bad[6] += 1
    expect("WrongRecordCount", t, game.game, "postClaim", *bad, value=bond)
    bad = list(base)
    bad[4] = encode_tokens([*gen.output_tokens[:-1], model.program.vocab_size])
    expect("TokenOutOfRange", t, game.game, "postClaim", *bad, value=bond)
    bad[4] = encode_tokens(gen.output_tokens)[:-1]  # not whole 4-byte tokens
    expect("BadTokenBytes", t, game.game, "postClaim", *bad, value=bond)
    bad = list(base)
    bad[2] = 0x7F800000
    expect("BadTemperature", t, game.game, "postClaim", *bad, value=bond)
    bad = list(base)
    bad[4] = b""
    expect("EmptyTokens", t, game.game, "postClaim", *bad, value=bond)
    bad = list(base)
    bad[0] = bytes(32)
    expect("UnknownModel", t, game.game, "postClaim", *bad, value=bond)
    cid = game.post_claim(model, gen)
    expect("SameRoot", game.open_dispute, cid, gen.trace.root())


def test_tampered_prover_loses_full_dispute(game: GameClient, model, runs) -> None:
    w3 = game.w3
    acc = w3.eth.accounts
    prover, watcher = acc[1], acc[2]
    ex_bad, gen_bad = runs["logits"]
    ex_ok, gen_ok = runs["honest"]
    start_balance = balance_of_game(game)
    cid = game.post_claim(model, gen_bad, sender=prover)
    fee = game.credit(acc[0])  # the deployer is the fee recipient (GameParams' default)
    assert fee == PARAMS.fee_per_position * (len(REQUEST.prompt) + len(gen_bad.output_tokens) - 1)
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=watcher)
    parties = [Party(model, ex_bad, gen_bad, prover), Party(model, ex_ok, gen_ok, watcher)]
    first = len(game.gas_used)
    stages = play(game, did, parties, honest=CHALLENGE)
    d = game.dispute(did)
    t, n, e = LOGITS_TAMPER
    assert (d.position, d.node_id, d.element) == (t, n, e)
    assert d.winner == 2 and game.claim(cid).status == ClaimStatus.OVERTURNED
    depth = merkle.depth_for(gen_ok.trace.num_records)
    assert stages == Counter(TRACE=2 * depth, RECORD=2, CHUNKS=2, CHUNK=2, REDUCTION=12, STEP=1)
    levels = [e["level"] for e in game.events("LevelCompleted", disputeId=did)]
    assert levels == [1, 2, 3]
    (step,) = game.events("StepVerified", disputeId=did)
    assert not step["claimCorrect"]
    # credits: B_x back and every move bond of the dispute (the claim side's to the winning
    # opener at resolution, its own by settle); B_c / 2 burned, B_c / 2 its reward once settled
    moves = d.moves
    game.settle(did, watcher)
    game.settle(did, prover)
    assert game.credit(prover) == 0
    assert game.credit(watcher) == PARAMS.challenge_bond + moves * PARAMS.move_bond
    assert game.burned() == PARAMS.claim_bond // 2
    travel(w3, game.claim(cid).deadline)
    game.collect_reward(cid, watcher)
    assert (
        game.credit(watcher)
        == PARAMS.challenge_bond + PARAMS.claim_bond // 2 + moves * PARAMS.move_bond
    )
    assert balance_of_game(game) - start_balance == game.credit(watcher) + fee + game.burned()
    game.withdraw(watcher)
    assert balance_of_game(game) == start_balance + fee + game.burned()
    gas = Counter()
    for fn, used in game.gas_used[first:]:
        gas[fn] = max(gas[fn], used)
    assert max(gas.values()) < 1_000_000, gas
    print("\nmax gas per move type:", dict(gas))
    print("total gas per side:", _gas_per_side(game, did))


def _gas_per_side(game: GameClient, did: int) -> dict[str, int]:
    """Gas of every move of the dispute by side (one transaction per block on this chain)."""
    totals: Counter = Counter()
    for m in game.events("Moved", disputeId=did):
        totals[("claim", "challenge")[m["side"]]] += game.w3.eth.get_block(m["blockNumber"])[
            "gasUsed"
        ]
    for e in game.events("StepVerified", disputeId=did):
        totals["step"] += game.w3.eth.get_block(e["blockNumber"])["gasUsed"]
    return dict(totals)


def test_honest_prover_beats_lying_challenger(game: GameClient, model, runs) -> None:
    acc = game.w3.eth.accounts
    prover, liar = acc[1], acc[3]
    ex_ok, gen_ok = runs["honest"]
    ex_bad, gen_bad = runs["q"]
    cid = game.post_claim(model, gen_ok, sender=prover)
    did = game.open_dispute(cid, gen_bad.trace.root(), sender=liar)
    parties = [Party(model, ex_ok, gen_ok, prover), Party(model, ex_bad, gen_bad, liar)]
    stages = play(game, did, parties, honest=CLAIM)
    d = game.dispute(did)
    assert (d.position, d.node_id, d.element) == (*Q_TAMPER[:2], Q_TAMPER[2])
    assert stages["REDUCTION"] == 12 and stages["STEP"] == 1
    assert d.winner == 1
    (step,) = game.events("StepVerified", disputeId=did)
    assert step["claimCorrect"]
    c = game.claim(cid)
    assert c.status == ClaimStatus.PENDING and c.open_disputes == 0
    game.settle(did, prover)
    game.settle(did, liar)
    # B_x and the liar's move bonds to the claimant (the winning opener), its own by settle
    assert game.credit(prover) == PARAMS.challenge_bond + d.moves * PARAMS.move_bond
    assert game.credit(liar) == 0
    travel(game.w3, c.deadline + 1)
    game.finalize(cid)
    assert (
        game.credit(prover)
        == PARAMS.challenge_bond + PARAMS.claim_bond + d.moves * PARAMS.move_bond
    )


def test_map_node_skips_level_three(game: GameClient, model, runs) -> None:
    acc = game.w3.eth.accounts
    ex_bad, gen_bad = runs["map"]
    ex_ok, gen_ok = runs["honest"]
    cid = game.post_claim(model, gen_bad, sender=acc[1])
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[2])
    parties = [Party(model, ex_bad, gen_bad, acc[1]), Party(model, ex_ok, gen_ok, acc[2])]
    stages = play(game, did, parties, honest=CHALLENGE)
    d = game.dispute(did)
    assert (d.position, d.node_id, d.element) == MAP_TAMPER
    assert "REDUCTION" not in stages and d.winner == 2


def test_timeouts_and_clocks(game: GameClient, model, runs) -> None:
    w3 = game.w3
    acc = w3.eth.accounts
    ex_ok, gen_ok = runs["honest"]
    ex_bad, gen_bad = runs["q"]
    parties = [Party(model, ex_bad, gen_bad, acc[1]), Party(model, ex_ok, gen_ok, acc[2])]
    # 1. the claim side never moves: no timeout before its clock runs out, then it loses
    cid = game.post_claim(model, gen_bad, sender=acc[1])
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[2])
    d = game.dispute(did)
    expect("ClockNotExpired", game.timeout, did)
    travel(w3, d.turn_start + PARAMS.clock)
    expect("ClockNotExpired", game.timeout, did)  # elapsed == C: still its time
    travel(w3, d.turn_start + PARAMS.clock + 1)
    expect("ClockExpired", play_one, game, did, parties)  # too late to move
    game.timeout(did)
    assert game.dispute(did).winner == 2
    assert game.claim(cid).status == ClaimStatus.OVERTURNED
    expect("DisputeNotActive", game.timeout, did)
    # 2. a move at the last second keeps the opponent's whole clock
    cid = game.post_claim(model, gen_bad, sender=acc[1])
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[2])
    d = game.dispute(did)
    travel(w3, d.turn_start + PARAMS.clock)
    play_one(game, did, parties)  # claim side, with 0 s left
    d = game.dispute(did)
    assert d.clock == [0, PARAMS.clock] and d.to_move == CHALLENGE
    expect("ClockNotExpired", game.timeout, did)
    play_one(game, did, parties)  # challenge side answers at once
    d = game.dispute(did)
    assert d.clock[CLAIM] == PARAMS.extension  # raised to E when its turn began
    travel(w3, d.turn_start + PARAMS.extension)
    play_one(game, did, parties)  # the claim side again, within its extension
    d = game.dispute(did)
    travel(w3, d.turn_start + d.clock[CHALLENGE] + 1)
    game.timeout(did)  # now the challenge side ran out
    assert game.dispute(did).winner == 1


def test_front_running_keeps_honest_bond(game: GameClient, model, runs) -> None:
    acc = game.w3.eth.accounts
    ex_ok, gen_ok = runs["honest"]
    ex_bad, gen_bad = runs["logits"]
    watcher, runner = acc[2], acc[4]
    parties = [Party(model, ex_bad, gen_bad, acc[1]), Party(model, ex_ok, gen_ok, watcher)]
    cid = game.post_claim(model, gen_bad, sender=acc[1])
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=watcher)
    play_one(game, did, parties)  # claim side
    d = game.dispute(did)
    left, right = Party.children(parties[1].prover.trace_tree, d.height, d.index)
    before = balance_of_game(game)
    game.reveal_children(did, left, right, sender=runner)  # the front-runner's copy lands first
    # the honest transaction, now out of turn, reverts and takes nothing
    expect("ChildrenMismatch", game.reveal_children, did, left, right, sender=watcher)
    assert balance_of_game(game) == before + PARAMS.move_bond
    stages = play(game, did, parties, honest=CHALLENGE)
    assert stages["STEP"] == 1 and game.dispute(did).winner == 2
    game.settle(did, runner)
    game.settle(did, watcher)
    # the runner made one winning move: its bond back, nothing more (draft 4: no bounty for
    # countering); the opener takes every claim-side bond and its own back
    assert game.credit(runner) == PARAMS.move_bond
    d = game.dispute(did)
    watcher_moves = sum(1 for m in game.events("Moved", disputeId=did) if m["mover"] == watcher)
    assert watcher_moves == d.moves // 2 - 1
    assert game.credit(watcher) == (
        PARAMS.challenge_bond + (watcher_moves + (d.moves + 1) // 2) * PARAMS.move_bond
    )


def test_multiple_challengers(game: GameClient, model, runs) -> None:
    w3 = game.w3
    acc = w3.eth.accounts
    ex_ok, gen_ok = runs["honest"]
    _, gen_q = runs["q"]
    _, gen_l = runs["logits"]
    parties = [Party(model, ex_ok, gen_ok, acc[1]), None]
    cid = game.post_claim(model, gen_ok, sender=acc[1])
    d1 = game.open_dispute(cid, gen_q.trace.root(), sender=acc[3])
    d2 = game.open_dispute(cid, gen_l.trace.root(), sender=acc[5])
    assert game.claim(cid).open_disputes == 2
    play_one(game, d1, parties)  # the prover answers both; the liars never answer
    play_one(game, d2, parties)
    travel(w3, game.dispute(d2).turn_start + PARAMS.clock + 1)
    game.timeout(d1)
    assert game.claim(cid).open_disputes == 1
    c = game.claim(cid)
    travel(w3, c.deadline + 1)
    expect("WindowClosed", game.open_dispute, cid, gen_l.trace.root(), sender=acc[6])
    expect("DisputesOpen", game.finalize, cid)
    game.timeout(d2)
    c = game.claim(cid)
    assert c.open_disputes == 0 and c.status == ClaimStatus.PENDING
    game.finalize(cid)
    assert game.claim(cid).status == ClaimStatus.FINALIZED
    # the claimant collects B_c and both failed challenge bonds, plus its two moves' bonds
    for did in (d1, d2):
        game.settle(did, acc[1])
    assert game.credit(acc[1]) == (
        PARAMS.claim_bond + 2 * PARAMS.challenge_bond + 2 * PARAMS.move_bond
    )


def test_output_token_mismatch(game: GameClient, model, runs) -> None:
    acc = game.w3.eth.accounts
    _ex, gen = runs["honest"]
    tokens = list(gen.output_tokens)
    tokens[2] = (tokens[2] + 1) % model.program.vocab_size
    cid = game.post_claim(model, gen, sender=acc[1], output_tokens=tokens)
    tree = ListTree(gen.trace.leaves())
    p = model.program
    pos = len(REQUEST.prompt) - 1
    args = []
    for i in (1, 2):
        t = pos + i
        root = gen.trace.roots[t][p.token_node]
        ep = merkle.prove_element(np.array([gen.tokens[t + 1]], dtype=np.uint32), 0)
        args.append(
            (root, tree.proof(gen.trace.record_index(t, p.token_node)), ep.chunk, list(ep.siblings))
        )
    expect("NoMismatch", game.prove_token_mismatch, cid, tokens, 1, *args[0])
    expect("WrongTokens", game.prove_token_mismatch, cid, gen.output_tokens, 2, *args[1])
    expect("RootMismatch", game.prove_token_mismatch, cid, tokens, 2, *args[0])
    game.prove_token_mismatch(cid, tokens, 2, *args[1], sender=acc[7])
    assert game.claim(cid).status == ClaimStatus.OVERTURNED
    # one share of the pool B_c / 2, paid once the claim is settled (W passed)
    assert game.reward_shares(cid, acc[7]) == 1 and game.reward(cid, acc[7]) == 0
    expect("WindowOpen", game.collect_reward, cid, acc[7])
    travel(game.w3, game.claim(cid).deadline)
    assert game.reward(cid, acc[7]) == PARAMS.claim_bond // 2
    game.collect_reward(cid, acc[7])
    assert game.credit(acc[7]) == PARAMS.claim_bond // 2
    assert game.burned() == PARAMS.claim_bond - PARAMS.claim_bond // 2
    expect("ClaimNotPending", game.finalize, cid)


def test_inconsistent_reveals(game: GameClient, model, runs) -> None:
    acc = game.w3.eth.accounts
    ex_ok, gen_ok = runs["honest"]
    ex_bad, gen_bad = runs["logits"]
    parties = [Party(model, ex_bad, gen_bad, acc[1]), Party(model, ex_ok, gen_ok, acc[2])]
    cid = game.post_claim(model, gen_bad, sender=acc[1])
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[2])
    d = game.dispute(did)
    left, right = Party.children(parties[0].prover.trace_tree, d.height, d.index)
    # children that do not hash to the side's node: rejected, nothing changes (anyone may move,
    # so a stranger's garbage must not sink the side)
    expect("ChildrenMismatch", game.reveal_children, did, right, left, sender=acc[6])
    expect("WrongBond", game.transact, game.game, "revealChildren", did, left, right, value=1)
    assert game.dispute(did).moves == 0
    # play to level 3; a stranger may not reveal reduction values
    while game.dispute(did).stage != Stage.REDUCTION:
        play_one(game, did, parties)
    d = game.dispute(did)
    assert d.to_move == CLAIM
    lv, li, rv, ri = parties[0].reduction(d, CLAIM)
    expect("NotSideOwner", game.reveal_reduction, did, lv, li, rv, ri, sender=acc[6])
    # the owner's children that do not combine to its value: the side loses on the spot
    game.reveal_reduction(did, lv ^ 1, li, rv, ri, sender=acc[1])
    d = game.dispute(did)
    assert d.stage == Stage.RESOLVED and d.winner == 2
    # a wrong length for a record's opening cannot hash to the side's leaf: rejected
    cid = game.post_claim(model, gen_bad, sender=acc[1])
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[2])
    while game.dispute(did).stage != Stage.RECORD:
        play_one(game, did, parties)
    d = game.dispute(did)
    dtype, length, tree = parties[0].record_open(d.position, d.node_id)
    proof = parties[0].prover.node_proof(d.node_id)
    expect("RecordMismatch", game.open_record, did, dtype, length + 1, tree, proof, sender=acc[1])
    bad_proof = (proof[0], proof[1] + b"\x00", proof[2])
    expect("RootMismatch", game.open_record, did, dtype, length, tree, bad_proof, sender=acc[1])


class WrongShapeParty(Party):
    """A prover whose trace commits record (t, n) to a tensor of the wrong length."""

    def __init__(self, model, executor, gen, account, t: int, n: int) -> None:
        super().__init__(model, executor, gen, account)
        self.bad = (t, n)
        values = np.zeros(model.program.vocab_size + 1, dtype=np.float32)
        dtype, data = merkle.encode(values)
        self._tensors[self.bad] = (dtype, bytes(data), ListTree(merkle.chunk_leaves(data)))
        roots = [list(row) for row in gen.trace.roots]
        roots[t][n] = merkle.tensor_root(values)
        from refute.engine.trace import record_leaf

        leaves = [record_leaf(p, k, r) for p, row in enumerate(roots) for k, r in enumerate(row)]
        self.prover.trace_tree = ListTree(leaves)
        self.root = self.prover.trace_tree.root()


def test_wrong_shape_loses_at_once(game: GameClient, model, runs) -> None:
    acc = game.w3.eth.accounts
    ex_ok, gen_ok = runs["honest"]
    t, n, _ = LOGITS_TAMPER
    liar = WrongShapeParty(model, ex_ok, gen_ok, acc[1], t, n)
    cid = game.post_claim(model, gen_ok, sender=acc[1], trace_root=liar.root)
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[2])
    parties = [liar, Party(model, ex_ok, gen_ok, acc[2])]
    while game.dispute(did).stage != Stage.RESOLVED:
        play_one(game, did, parties)
    d = game.dispute(did)
    assert (d.position, d.node_id) == (t, n) and d.winner == 2
    assert d.length == model.program.vocab_size  # the shape read from the node descriptor
    assert game.claim(cid).status == ClaimStatus.OVERTURNED
