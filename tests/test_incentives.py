"""The economic attacks on the dispute game's payouts (issue 10, item 4; docs/protocol.md
section 5, draft 4), each with exact balances in every ordering, on one embedded chain:

- an accomplice overturns the cheater's claim first, by a token mismatch planted in it (before
  or after the honest proof is committed, or committed before the claim is even posted);
- an accomplice's dispute that the cheater loses fast while it stalls the honest one (and the
  one where the honest watcher comes too late to open a dispute at all);
- a copy of an honest token-mismatch proof's calldata from another address, and a commitment
  slipped into the block of the honest proof;
- the losing side sending the winner's moves itself at levels 1 and 2;
- sybil challengers (disputes and token proofs) diluting the reward pool;
- a front-runner copying an honest move;
- a flood of honest claims paying the fee to the watchers' fund.

After every scenario the game's balance is checked against G5 (sum of credits + outstanding
bonds + unpaid rewards + burned), and the two guarantees are asserted: a cheater's coalition
loses at least B_c - B_c/2 + fee * positions + the move bonds it lost in disputes opened by
others; the first honest challenger gets at least (B_c/2) / m, m the claim's successful
challenges.
"""

from __future__ import annotations

import numpy as np
import pytest
from eth_abi import decode as abi_decode
from web3 import Web3

from refute.bisection.demo import flip_bit
from refute.contracts.game import (
    CHALLENGE,
    CLAIM,
    TX_GAS,
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
from tests.test_game_evm import Party, do_step, play_one

FUND = 9  # the watchers' fund (fee recipient) is accounts[9]
PARAMS = GameParams(
    claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15, window=3600, clock=1800,
    extension=120, fee_per_position=10**12,
)  # fmt: skip
B_C, B_X, B, FEE = (
    PARAMS.claim_bond,
    PARAMS.challenge_bond,
    PARAMS.move_bond,
    PARAMS.fee_per_position,
)
POOL = B_C // 2  # the reward pool of an overturned claim; B_C - POOL is burned
REQUEST = Request(prompt=(5, 17, 250, 3), max_new_tokens=4, temperature=0.9, seed=11)
POSITIONS = len(REQUEST.prompt) + REQUEST.max_new_tokens - 1
TAMPER = (2, 85, 300)  # logits at t = 2 (REDUCE SUM): the dispute reaches level 3
PLANTED = 2  # the output index whose token a cheater changes in a token-mismatch claim
CHEATER, ACCOMPLICE, HONEST = 1, 2, 3


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def runs(model):
    """(executor, generation) of the honest run and of the tampered one."""
    out = {}
    for name, tamper in (("honest", None), ("cheat", flip_bit(TAMPER))):
        ex = Executor(model, tamper=tamper)
        out[name] = (ex, ex.generate([REQUEST])[0])
    return out


@pytest.fixture()
def game(embedded_web3: Web3, model) -> GameClient:
    acc = embedded_web3.eth.accounts
    params = GameParams(**{**PARAMS.__dict__, "fee_recipient": acc[FUND]})
    g = GameClient.deploy(w3=embedded_web3, params=params)
    g.register(model)
    return g


# --- helpers ---------------------------------------------------------------------------------


def expect(name: str, fn, *args, **kwargs) -> GameError:
    with pytest.raises(GameError) as info:
        fn(*args, **kwargs)
    assert info.value.name == name, f"expected {name}, got {info.value.name}"
    return info.value


def travel(w3: Web3, timestamp: int) -> None:
    """The next transaction's block gets `timestamp` (never backwards)."""
    if int(w3.eth.get_block("pending")["timestamp"]) < timestamp:
        w3.provider.ethereum_tester.time_travel(timestamp)


def sent(game: GameClient, account: str, since: int) -> int:
    """Wei `account` sent to the game in blocks since `since` (bonds and fees; not gas)."""
    w3, total = game.w3, 0
    for n in range(since, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(n, full_transactions=True)["transactions"]:
            if tx["from"] == account and tx["to"] == game.game.address:
                total += int(tx["value"])
    return total


def net(game: GameClient, account: str, since: int) -> int:
    """What `account` gained from the game since block `since`: its credit (everything it was
    owed collected first) minus what it sent."""
    return game.credit(account) - sent(game, account, since)


def token_proof(model, gen, i: int) -> tuple:
    """(recordRoot, recordPath, chunk, chunkPath) of output i's sample record in `gen`."""
    p = model.program
    t = len(gen.request.prompt) - 1 + i
    tree = ListTree(gen.trace.leaves())
    ep = merkle.prove_element(np.array([gen.tokens[t + 1]], dtype=np.uint32), 0)
    return (gen.trace.roots[t][p.token_node], tree.proof(gen.trace.record_index(t, p.token_node)),
            ep.chunk, list(ep.siblings))  # fmt: skip


def planted_tokens(model, gen) -> list[int]:
    """The honest output with token PLANTED changed (a token mismatch with the honest trace)."""
    tokens = list(gen.output_tokens)
    tokens[PLANTED] = (tokens[PLANTED] + 1) % model.program.vocab_size
    return tokens


def planted_claim(game: GameClient, model, gen, sender: str) -> tuple[int, list[int]]:
    """A claim of the honest trace with a planted token mismatch; (claim id, its tokens)."""
    tokens = planted_tokens(model, gen)
    return game.post_claim(model, gen, sender=sender, output_tokens=tokens), tokens


def commit(game: GameClient, account: str, cid: int, proof: tuple) -> int:
    """Commit `account` to the token proof; returns the commitment's block."""
    c = game.token_commitment(account, cid, PLANTED, proof[0])
    return int(game.commit_token_proof(c, sender=account)["blockNumber"])


def reveal(game: GameClient, account: str, cid: int, tokens, proof: tuple):
    """The proof from `account` (GameClient commits first if `account` has not)."""
    return game.prove_token_mismatch(cid, tokens, PLANTED, *proof, sender=account)


def copied(game: GameClient, account: str, cid: int, tokens, proof: tuple):
    """The proof's exact calldata sent from `account` (no commitment of its own)."""
    return game.transact(game.game, "proveTokenMismatch", cid, encode_tokens(tokens), PLANTED,
                         *proof, sender=account)  # fmt: skip


def collect_all(game: GameClient, cid: int) -> None:
    """Past W (the claim is settled once no dispute is open): every account's reward and every
    resolved dispute's winning move bonds."""
    acc = game.w3.eth.accounts
    travel(game.w3, game.claim(cid).deadline)
    for did in range(game.game.functions.disputeCount().call()):
        for a in acc:
            if game.owed(did, a):
                game.settle(did, a)
    if game.claim(cid).status == ClaimStatus.OVERTURNED:
        for a in acc:
            if game.reward_shares(cid, a):
                game.collect_reward(cid, a)


def check_conservation(game: GameClient) -> None:
    """G5: the game holds exactly the credits, the outstanding bonds (pending claims, active
    disputes, winning move bonds not yet settled), the unpaid rewards and what was burned."""
    acc = game.w3.eth.accounts
    f = game.game.functions
    held = sum(game.credit(a) for a in acc) + game.burned()
    for cid in range(f.claimCount().call()):
        c = game.claim(cid)
        if c.status == ClaimStatus.PENDING:
            held += B_C
        elif c.status == ClaimStatus.OVERTURNED:
            unit = POOL // c.wins
            held += sum(game.reward_shares(cid, a) for a in acc) * unit if c.dust_burned else POOL
    for did in range(f.disputeCount().call()):
        d = game.dispute(did)
        if d.stage == Stage.RESOLVED:
            held += sum(game.owed(did, a) for a in acc)
        else:
            held += B_X + d.moves * B
    assert game.w3.eth.get_balance(game.game.address) == held


def assert_guarantees(game: GameClient, cid: int, coalition_net: int, honest_reward: int | None,
                      outside_losing_bonds: int = 0) -> None:  # fmt: skip
    """The two guarantees of docs/protocol.md section 5: the coalition lost at least
    B_c - B_c/2 + fee * positions + its losing move bonds in disputes opened by others; the
    honest challenger (if it counted) got at least pool / m."""
    assert coalition_net <= -(B_C - POOL + FEE * POSITIONS + outside_losing_bonds)
    if honest_reward is not None:
        assert honest_reward >= POOL // game.claim(cid).wins


def resolve_by_timeout(game: GameClient, dids: list[int]) -> None:
    """Every dispute in `dids` (claim side to move) times out against the claim side."""
    latest = max(game.dispute(did).turn_start + game.dispute(did).clock[CLAIM] for did in dids)
    travel(game.w3, latest + 1)
    for did in dids:
        game.timeout(did)
        assert game.dispute(did).winner == CHALLENGE + 1


def play_until(game: GameClient, did: int, parties: list[Party], stage: Stage,
               mover_for: dict[int, str] | None = None) -> None:  # fmt: skip
    """Play (each side from its own data) until the dispute reaches `stage`; `mover_for`
    names who sends a side's moves instead of its party (moves for the other side)."""
    while game.dispute(did).stage not in (stage, Stage.RESOLVED):
        side = game.dispute(did).to_move
        play_one(game, did, parties, (mover_for or {}).get(side))


# --- (a) the accomplice's token mismatch -------------------------------------------------------


def test_accomplice_token_mismatch_first_honest_committed_before(game, model, runs) -> None:
    """The accomplice proves the planted mismatch first; the honest watcher had committed
    before the overturn block and reveals after it: they share the pool. A third prover that
    commits after the overturn gets nothing; a second proof by one account is refused."""
    acc = game.w3.eth.accounts
    _, gen = runs["honest"]
    start = game.w3.eth.block_number
    cid, tokens = planted_claim(game, model, gen, acc[CHEATER])
    assert game.credit(acc[FUND]) == FEE * POSITIONS  # the fee, at once
    proof = token_proof(model, gen, PLANTED)
    commit(game, acc[HONEST], cid, proof)
    commit(game, acc[ACCOMPLICE], cid, proof)
    reveal(game, acc[ACCOMPLICE], cid, tokens, proof)  # overturns
    c = game.claim(cid)
    assert c.status == ClaimStatus.OVERTURNED and c.wins == 1
    assert c.overturn_block == game.w3.eth.block_number
    check_conservation(game)
    reveal(game, acc[HONEST], cid, tokens, proof)  # committed before the overturn: counts
    late = acc[4]
    made = commit(game, late, cid, proof)
    e = expect("CommittedTooLate", reveal, game, late, cid, tokens, proof)
    assert abi_decode(["uint256", "uint256"], e.data[4:]) == (made, c.overturn_block)
    expect("AlreadyProved", reveal, game, acc[ACCOMPLICE], cid, tokens, proof)
    assert game.claim(cid).wins == 2
    expect("WindowOpen", game.collect_reward, cid, acc[HONEST])  # not before W
    check_conservation(game)
    collect_all(game, cid)
    check_conservation(game)
    assert game.credit(acc[HONEST]) == POOL // 2 and game.credit(acc[ACCOMPLICE]) == POOL // 2
    assert game.credit(late) == 0 and game.burned() == B_C - POOL
    coalition = net(game, acc[CHEATER], start) + net(game, acc[ACCOMPLICE], start)
    assert coalition == -(B_C - POOL // 2 + FEE * POSITIONS)
    assert_guarantees(game, cid, coalition, game.credit(acc[HONEST]))


def test_honest_token_proof_first_sybil_proofs_dilute(game, model, runs) -> None:
    """The honest watcher proves first; the coalition commits two sybil proofs before the
    overturn block and reveals them after: m = 3, the honest share is exactly pool // 3 and the
    rounding dust (pool mod 3) is burned once. The sybils cost only gas."""
    acc = game.w3.eth.accounts
    _, gen = runs["honest"]
    start = game.w3.eth.block_number
    cid, tokens = planted_claim(game, model, gen, acc[CHEATER])
    proof = token_proof(model, gen, PLANTED)
    sybils = [acc[ACCOMPLICE], acc[4]]
    commit(game, acc[HONEST], cid, proof)
    for s in sybils:
        commit(game, s, cid, proof)
    reveal(game, acc[HONEST], cid, tokens, proof)  # overturns
    for s in sybils:
        reveal(game, s, cid, tokens, proof)
    c = game.claim(cid)
    assert c.wins == 3 and not c.dust_burned
    collect_all(game, cid)
    check_conservation(game)
    unit = POOL // 3
    assert game.credit(acc[HONEST]) == unit == POOL // game.claim(cid).wins
    assert all(game.credit(s) == unit for s in sybils)
    assert game.claim(cid).dust_burned and game.burned() == B_C - POOL + (POOL - 3 * unit)
    coalition = sum(net(game, a, start) for a in (acc[CHEATER], *sybils))
    assert coalition == -(B_C - 2 * unit + FEE * POSITIONS)
    assert_guarantees(game, cid, coalition, game.credit(acc[HONEST]))


def test_accomplice_commits_before_the_claim_exists(game, model, runs) -> None:
    """The coalition knows its claim's id and content in advance: the accomplice commits before
    the claim is posted and proves it in the next block. No honest commitment can be earlier
    than the overturn, so the coalition keeps the whole pool; it still loses exactly
    B_c - B_c/2 + fee * positions (the minimum loss is tight)."""
    acc = game.w3.eth.accounts
    _, gen = runs["honest"]
    start = game.w3.eth.block_number
    proof = token_proof(model, gen, PLANTED)
    cid = game.game.functions.claimCount().call()  # the next claim's id
    commit(game, acc[ACCOMPLICE], cid, proof)
    assert planted_claim(game, model, gen, acc[CHEATER]) == (cid, planted_tokens(model, gen))
    tokens = planted_tokens(model, gen)
    reveal(game, acc[ACCOMPLICE], cid, tokens, proof)
    commit(game, acc[HONEST], cid, proof)
    expect("CommittedTooLate", reveal, game, acc[HONEST], cid, tokens, proof)
    collect_all(game, cid)
    check_conservation(game)
    assert game.credit(acc[ACCOMPLICE]) == POOL and game.credit(acc[HONEST]) == 0
    coalition = net(game, acc[CHEATER], start) + net(game, acc[ACCOMPLICE], start)
    assert coalition == -(B_C - POOL + FEE * POSITIONS)
    assert_guarantees(game, cid, coalition, None)


# --- (a) the accomplice's dispute ----------------------------------------------------------------


def test_accomplice_dispute_lost_fast_while_honest_stalled(game, model, runs) -> None:
    """The cheater stalls the honest dispute (never moves in it: its clock runs) and loses the
    accomplice's dispute at once by playing it to the step. The accomplice's win overturns the
    claim; the honest dispute still counts (opened while pending) and resolves by timeout:
    both share the pool; the accomplice recaptures the cheater's move bonds of its own dispute,
    the honest watcher gets its bond back and half the pool."""
    acc = game.w3.eth.accounts
    ex_ok, gen_ok = runs["honest"]
    ex_bad, gen_bad = runs["cheat"]
    start = game.w3.eth.block_number
    cid = game.post_claim(model, gen_bad, sender=acc[CHEATER])
    d_h = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[HONEST])
    d_a = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[ACCOMPLICE])
    parties = [Party(model, ex_bad, gen_bad, acc[CHEATER]),
               Party(model, ex_ok, gen_ok, acc[ACCOMPLICE])]  # fmt: skip
    play_until(game, d_a, parties, Stage.STEP)
    do_step(game, d_a, parties[1], CHALLENGE)
    d = game.dispute(d_a)
    assert d.winner == CHALLENGE + 1 and game.claim(cid).status == ClaimStatus.OVERTURNED
    expect("ClaimNotPending", game.open_dispute, cid, gen_ok.trace.root(), sender=acc[4])
    check_conservation(game)
    resolve_by_timeout(game, [d_h])  # the stalled honest dispute
    assert game.claim(cid).wins == 2
    collect_all(game, cid)
    check_conservation(game)
    assert game.credit(acc[HONEST]) == B_X + POOL // 2
    assert game.credit(acc[ACCOMPLICE]) == B_X + d.moves * B + POOL // 2
    assert game.credit(acc[CHEATER]) == 0
    coalition = net(game, acc[CHEATER], start) + net(game, acc[ACCOMPLICE], start)
    assert coalition == -(B_C - POOL // 2 + FEE * POSITIONS)
    assert_guarantees(game, cid, coalition, POOL // 2)


def test_accomplice_dispute_before_honest_watcher_arrives(game, model, runs) -> None:
    """The accomplice's dispute overturns the claim (the cheater times out) before the honest
    watcher opens one: the honest watcher can no longer open a dispute (nothing of its is
    locked), the coalition keeps the whole pool and loses exactly B_c - B_c/2 + the fee."""
    acc = game.w3.eth.accounts
    _, gen_ok = runs["honest"]
    _, gen_bad = runs["cheat"]
    start = game.w3.eth.block_number
    cid = game.post_claim(model, gen_bad, sender=acc[CHEATER])
    d_a = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[ACCOMPLICE])
    resolve_by_timeout(game, [d_a])
    expect("ClaimNotPending", game.open_dispute, cid, gen_ok.trace.root(), sender=acc[HONEST])
    collect_all(game, cid)
    check_conservation(game)
    assert game.credit(acc[ACCOMPLICE]) == B_X + POOL
    coalition = net(game, acc[CHEATER], start) + net(game, acc[ACCOMPLICE], start)
    assert coalition == -(B_C - POOL + FEE * POSITIONS)
    assert_guarantees(game, cid, coalition, None)


def test_sybil_disputes_dilute(game, model, runs) -> None:
    """The honest dispute and m - 1 = 2 sybil disputes of the coalition, all won (the cheater
    times out in each): the honest share is exactly pool // 3; the sybils each get their bond
    back and pool // 3; the dust is burned."""
    acc = game.w3.eth.accounts
    _, gen_ok = runs["honest"]
    _, gen_bad = runs["cheat"]
    start = game.w3.eth.block_number
    cid = game.post_claim(model, gen_bad, sender=acc[CHEATER])
    sybils = [acc[ACCOMPLICE], acc[4]]
    dids = [game.open_dispute(cid, gen_ok.trace.root(), sender=a) for a in (acc[HONEST], *sybils)]
    resolve_by_timeout(game, dids)
    check_conservation(game)
    collect_all(game, cid)
    check_conservation(game)
    unit = POOL // 3
    assert game.credit(acc[HONEST]) == B_X + unit and unit == POOL // game.claim(cid).wins
    assert all(game.credit(s) == B_X + unit for s in sybils)
    assert game.burned() == B_C - POOL + POOL % 3
    coalition = sum(net(game, a, start) for a in (acc[CHEATER], *sybils))
    assert coalition == -(B_C - 2 * unit + FEE * POSITIONS)
    assert_guarantees(game, cid, coalition, unit)


# --- (b) copied token-mismatch calldata ----------------------------------------------------------


def test_copied_token_proof_calldata(game, model, runs) -> None:
    """A copier front-runs the honest proof with the same calldata from its own address: it
    reverts (NotCommitted) and the honest proof lands. A copier that sees the proof in the
    mempool and gets its own commitment into the same block is too late (the overturn block
    itself does not count)."""
    w3 = game.w3
    acc = w3.eth.accounts
    _, gen = runs["honest"]
    start = w3.eth.block_number
    cid, tokens = planted_claim(game, model, gen, acc[CHEATER])
    proof = token_proof(model, gen, PLANTED)
    copier = acc[8]
    commit(game, acc[HONEST], cid, proof)
    e = expect("NotCommitted", copied, game, copier, cid, tokens, proof)  # lands first
    own = game.token_commitment(copier, cid, PLANTED, proof[0])
    assert e.data[4:] == own  # (the commitment it would have needed: its own address's)
    # the honest proof and the copier's commitment, mined in one block
    tester = w3.provider.ethereum_tester
    tester.disable_auto_mine_transactions()
    try:
        f = game.game.functions
        honest_tx = f.proveTokenMismatch(cid, encode_tokens(tokens), PLANTED, *proof).transact(
            {"from": acc[HONEST], "gas": TX_GAS}
        )
        c = game.token_commitment(copier, cid, PLANTED, proof[0])
        copy_tx = f.commitTokenProof(c).transact({"from": copier, "gas": TX_GAS})
        tester.mine_blocks(1)
    finally:
        tester.enable_auto_mine_transactions()
    r1, r2 = (w3.eth.get_transaction_receipt(h) for h in (honest_tx, copy_tx))
    assert r1["status"] == r2["status"] == 1 and r1["blockNumber"] == r2["blockNumber"]
    assert game.claim(cid).overturn_block == r1["blockNumber"]
    expect("CommittedTooLate", reveal, game, copier, cid, tokens, proof)
    collect_all(game, cid)
    check_conservation(game)
    assert game.credit(acc[HONEST]) == POOL and game.credit(copier) == 0
    assert_guarantees(game, cid, net(game, acc[CHEATER], start), POOL)


# --- (c) the loser moving for the winner -------------------------------------------------------


def test_loser_moves_for_winner_at_levels_1_and_2(game, model, runs) -> None:
    """The cheater sends every challenge-side move itself at levels 1 and 2 (the honest
    watcher's own move then reverts); at level 3 it must stop (the opener's alone) and times
    out. It gets back exactly the bonds it paid on the winning side and loses every bond it
    paid on its own; the honest opener takes those and its bond back."""
    acc = game.w3.eth.accounts
    ex_ok, gen_ok = runs["honest"]
    ex_bad, gen_bad = runs["cheat"]
    start = game.w3.eth.block_number
    cid = game.post_claim(model, gen_bad, sender=acc[CHEATER])
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[HONEST])
    parties = [Party(model, ex_bad, gen_bad, acc[CHEATER]),
               Party(model, ex_ok, gen_ok, acc[HONEST])]  # fmt: skip
    play_one(game, did, parties)  # the claim side's first move
    d = game.dispute(did)
    left, right = Party.children(parties[1].prover.trace_tree, d.height, d.index)
    play_one(game, did, parties, acc[CHEATER])  # the honest reply, sent by the cheater
    expect("ChildrenMismatch", game.reveal_children, did, left, right, sender=acc[HONEST])
    play_until(game, did, parties, Stage.REDUCTION, mover_for={CHALLENGE: acc[CHEATER]})
    d = game.dispute(did)
    assert d.stage == Stage.REDUCTION and d.to_move == CLAIM
    levels = {m["level"] for m in game.events("Moved", disputeId=did) if m["side"] == CHALLENGE}
    assert levels == {1, 2}
    assert all(m["mover"] == acc[CHEATER] for m in game.events("Moved", disputeId=did))
    claim_moves, challenge_moves = (d.moves + 1) // 2, d.moves // 2
    assert claim_moves == challenge_moves
    resolve_by_timeout(game, [did])
    collect_all(game, cid)
    check_conservation(game)
    assert game.credit(acc[CHEATER]) == challenge_moves * B  # its winning-side bonds, no more
    assert game.credit(acc[HONEST]) == B_X + claim_moves * B + POOL
    loss = net(game, acc[CHEATER], start)
    assert loss == -(B_C + FEE * POSITIONS + claim_moves * B)
    assert_guarantees(game, cid, loss, POOL, outside_losing_bonds=claim_moves * B)


def test_front_runner_gets_only_its_bond_back(game, model, runs) -> None:
    """A third party copies one honest level-1 move: it gets back its bond and nothing more;
    the honest opener still takes every losing bond."""
    acc = game.w3.eth.accounts
    ex_ok, gen_ok = runs["honest"]
    ex_bad, gen_bad = runs["cheat"]
    runner = acc[8]
    cid = game.post_claim(model, gen_bad, sender=acc[CHEATER])
    did = game.open_dispute(cid, gen_ok.trace.root(), sender=acc[HONEST])
    parties = [Party(model, ex_bad, gen_bad, acc[CHEATER]),
               Party(model, ex_ok, gen_ok, acc[HONEST])]  # fmt: skip
    play_one(game, did, parties)
    d = game.dispute(did)
    left, right = Party.children(parties[1].prover.trace_tree, d.height, d.index)
    game.reveal_children(did, left, right, sender=runner)  # the copy lands first
    expect("ChildrenMismatch", game.reveal_children, did, left, right, sender=acc[HONEST])
    for _ in range(4):
        play_one(game, did, parties)
    d = game.dispute(did)
    assert d.to_move == CLAIM
    resolve_by_timeout(game, [did])
    collect_all(game, cid)
    check_conservation(game)
    assert game.credit(runner) == B
    assert game.credit(acc[HONEST]) == B_X + (d.moves - 1) * B + POOL  # (moves - 1: not the copy)


# --- (d) flooding --------------------------------------------------------------------------------


def test_flood_pays_the_fee_to_the_watchers_fund(game, model, runs) -> None:
    """N honest claims: each is finalised and its bond returned, but the fee stays with the
    watchers' fund; a claim without the fee is refused with the sum required."""
    acc = game.w3.eth.accounts
    _, gen = runs["honest"]
    flooder = acc[6]
    start = game.w3.eth.block_number
    e = expect("WrongBond", game.transact, game.game, "postClaim", model.root,
               encode_tokens(REQUEST.prompt), f32_bits(REQUEST.temperature), REQUEST.seed,
               encode_tokens(gen.output_tokens), gen.trace.root(),
               gen.trace.num_records, sender=flooder, value=B_C)  # fmt: skip
    assert abi_decode(["uint256", "uint256"], e.data[4:]) == (B_C, B_C + FEE * POSITIONS)
    n = 5
    cids = [game.post_claim(model, gen, sender=flooder) for _ in range(n)]
    assert game.credit(acc[FUND]) == n * FEE * POSITIONS
    check_conservation(game)
    travel(game.w3, game.claim(cids[-1]).deadline)
    for cid in cids:
        game.finalize(cid)
    check_conservation(game)
    assert net(game, flooder, start) == -n * FEE * POSITIONS  # every bond back, no fee
    game.withdraw(acc[FUND])
    assert game.w3.eth.get_balance(game.game.address) == n * B_C  # the flooder's credit
