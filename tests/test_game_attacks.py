"""The attacks known from fault-proof audits (docs/protocol.md sections 4-6), one test each,
played with the real clients (Prover, Challenger) on the embedded chain; and the main
adversarial scenarios again on a real anvil node.

- Resolving early: no timeout before a clock runs out, no finalisation before the window or
  while a dispute is open (however late), no step before the step stage, no payout before
  resolution, no move after one's clock ran out.
- Winning at the last second against a party with time left: a move at the last second never
  shortens the opponent's clock, and a party whose clock is nearly spent still gets the
  extension E to answer; the slow honest party wins.
- Front-running an honest move to take its bond: the copied reveal is the same data, the
  honest transaction reverts with its bond untouched, the front-runner only gets its own bond
  back (draft 4: the losing side's bonds go to the winning side's opener), and is refused at
  level 3.
- Unbounded sub-games: eight disputes on one claim cost no more per finalisation, timeout,
  move or step than one; moves in one dispute leave the others untouched; the gas of a move
  does not grow with the moves played.
- anvil: a cheating prover overturned, an honest prover finalised against a lying challenger,
  an offline prover timed out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from web3 import Web3

from refute.bisection.challenger import Challenger
from refute.bisection.prover import Prover
from refute.contracts.chain import set_next_timestamp
from refute.contracts.game import CHALLENGE, CLAIM, ClaimStatus, GameClient, Stage
from refute.engine.executor import Request
from refute.engine.model import Model
from refute.errors import RefuteError
from tests.adversaries import (
    B_C,
    B_X,
    PARAMS,
    B,
    CheatingProver,
    LyingChallenger,
    Style,
    check_dispute,
    copy_move,
    disputes,
    expect,
    flip_record,
    last_second,
    new_game,
    pending_move,
    pending_time,
    play_out,
    settle_everything,
    skip_history,
    tiny_llama,
)

REQUEST = Request((5, 17, 250), 3, 0.7, 11)
E = PARAMS.extension


@pytest.fixture(scope="module")
def model() -> Model:
    return tiny_llama()


def logits_lie(model: Model) -> object:
    """Logit 17 at position 2 one bit off (a REDUCE record: the game reaches level 3)."""
    return flip_record(model, 2, model.program.node_index("lm_head"), 17, 12)


def poll(player: Prover | Challenger) -> list:
    """A dishonest client's poll: its reverts are its own business."""
    try:
        return player.poll()
    except RefuteError:
        return []


def gas_of(game: GameClient, fn: str, since: int = 0) -> list[int]:
    """Gas of every `fn` transaction sent through `game` (after the first `since`)."""
    return [g for f, g in game.gas_used[since:] if f == fn]


def move_gas(game: GameClient, did: int) -> list[tuple[object, int]]:
    """((side, level), gas) of every move of a dispute, then ("step", gas): one transaction
    per block on the embedded chain, so a block's gas is its move's."""
    w3 = game.w3
    out: list[tuple[object, int]] = [
        ((m["side"], m["level"]), w3.eth.get_block(m["blockNumber"])["gasUsed"])
        for m in game.events("Moved", disputeId=did)
    ]
    for v in game.events("StepVerified", disputeId=did):
        out.append(("step", w3.eth.get_block(v["blockNumber"])["gasUsed"]))
    return out


def test_resolving_early_is_impossible(embedded_web3: Web3, model: Model, tmp_path: Path) -> None:
    """Nothing resolves before its time: no finalisation before the window or while a dispute
    is open (however late), no level before its stage, no payout before resolution, no
    timeout before a clock runs out, no move after; only the timeout ends a stalled dispute."""
    w3 = embedded_web3
    acc = w3.eth.accounts
    game = new_game(w3)
    cheater = CheatingProver(game, model, tmp_path / "c", acc[1], logits_lie(model))
    watcher = Challenger(game, model, tmp_path / "w", acc[2])
    skip_history(watcher)
    cid = cheater.claim_cheat(REQUEST)
    deadline = game.claim(cid).deadline
    expect("WindowOpen", game.finalize, cid)  # before the window
    watcher.poll()
    d = game.dispute(0)
    side = watcher.side_for(cid)
    early_step = side.prover.step(0, 1, 0, leaf=0)
    for stage_move in (
        lambda: game.step(0, early_step, len(model.weights), sender=acc[3]),
        lambda: game.open_record(0, 0, 1, bytes(32), None, sender=acc[3]),
        lambda: game.reveal_chunk(0, bytes(1024), bytes(1024), sender=acc[3]),
        lambda: game.reveal_reduction(0, 0, 0, 0, 0, sender=acc[1]),
    ):
        expect("WrongStage", stage_move)  # every level only in its own stage
    expect("NotResolved", game.settle, 0, acc[2])  # no payout before resolution
    assert game.owed(0, acc[2]) == 0 and game.credit(acc[2]) == 0
    expect("ClockNotExpired", game.timeout, 0)  # the claim side has its whole clock
    set_next_timestamp(w3, d.turn_start + d.clock[CLAIM])  # ... up to its very last second
    expect("ClockNotExpired", game.timeout, 0)
    # play into level 3, then stop with the claim side to move
    for _ in range(60):
        d = game.dispute(0)
        if d.stage == Stage.REDUCTION and d.to_move == CLAIM:
            break
        poll(cheater)
        watcher.poll()
    assert d.stage == Stage.REDUCTION
    # a month after the window, both clocks long spent: the open dispute still blocks
    # finalisation, nobody can open another one, and the late move is refused
    set_next_timestamp(w3, deadline + 30 * 86400)
    expect("DisputesOpen", game.finalize, cid)
    expect("WindowClosed", game.open_dispute, cid, bytes(32), sender=acc[3])
    late = pending_move(game, 0, cheater.side_for(cid), acc[1])
    expect("ClockExpired", late)
    assert game.claim(cid).status == ClaimStatus.PENDING and game.claim(cid).open_disputes == 1
    # only the timeout resolves it, against the side to move
    (move,) = watcher.poll()
    assert move["fn"] == "timeout" and game.dispute(0).winner == CHALLENGE + 1
    assert game.claim(cid).status == ClaimStatus.OVERTURNED
    expect("ClaimNotPending", game.finalize, cid)
    expect("DisputeNotActive", game.timeout, 0)
    moves = game.dispute(0).moves
    watcher.poll()  # (it records the outcome)
    # long past W and no dispute open: the claim is settled, the reward (the whole pool,
    # B_C / 2: one successful challenge) is collected with the bonds
    assert watcher.collect() == B_X + B_C // 2 + moves * B
    settle_everything(game, acc[1:4])


def test_last_second_move_cannot_beat_party_with_time_left(
    embedded_web3: Web3, model: Model, tmp_path: Path
) -> None:
    """Each side's budget is its own: a last-second move leaves the opponent its time (and at
    least the extension E), so it cannot win by the clock."""
    w3 = embedded_web3
    acc = w3.eth.accounts
    # 1. A cheating prover moves at the last second of its clock every time; the watcher
    #    answers at once. The watcher's clock never shrinks by the cheater's delays, so no
    #    timeout can be called against it; the cheater's move one second late is refused.
    game = new_game(w3)
    cheater = CheatingProver(game, model, tmp_path / "c", acc[1], logits_lie(model))
    watcher = Challenger(game, model, tmp_path / "w", acc[2])
    skip_history(watcher)
    cid = cheater.claim_cheat(REQUEST)
    watcher.poll()
    turns = 0
    while turns < 8:
        d = game.dispute(0)
        assert d.to_move == CLAIM and d.stage not in (Stage.STEP, Stage.RESOLVED)
        set_next_timestamp(w3, d.turn_start + d.clock[CLAIM])  # its last allowed second
        (move,) = cheater.poll()
        after = game.dispute(0)
        assert after.clock[CLAIM] == 0 and after.clock[CHALLENGE] == d.clock[CHALLENGE]
        expect("ClockNotExpired", game.timeout, 0)  # the watcher has all its time
        watcher.poll()
        turns += 1
    d = game.dispute(0)
    assert d.clock[CLAIM] == E  # raised to the extension at its turn
    assert d.clock[CHALLENGE] > PARAMS.clock - 30
    set_next_timestamp(w3, d.turn_start + d.clock[CLAIM] + 1)  # one second late
    expect("ClockExpired", pending_move(game, 0, cheater.side_for(cid), acc[1]))
    (move,) = watcher.poll()
    assert move["fn"] == "timeout" and game.claim(cid).status == ClaimStatus.OVERTURNED

    # 2. An honest but slow prover (it too answers at the last second of its clock) against
    #    a liar that always moves at the last second: each time the prover's turn begins its
    #    clock is at least E, so it can always answer, and it wins.
    game = new_game(w3)
    prover = Prover(game, model, tmp_path / "p", acc[3])
    liar = LyingChallenger(game, model, tmp_path / "l", acc[4], logits_lie(model))
    skip_history(liar)
    cid = prover.claim(REQUEST)
    for _ in range(120):
        for player in (liar, prover):
            last_second(game, player)
            if player is liar:
                poll(liar)
            else:
                before = game.dispute(0) if disputes(game) else None
                prover.poll()
                if before is not None and before.to_move == CLAIM and before.stage in (
                    Stage.TRACE, Stage.RECORD, Stage.CHUNKS, Stage.CHUNK, Stage.REDUCTION,
                ):  # fmt: skip
                    assert before.clock[CLAIM] >= E
        if disputes(game) and game.dispute(0).stage == Stage.RESOLVED and not prover.active():
            break
    d = game.dispute(0)
    assert d.winner == CLAIM + 1 and game.events("StepVerified")[0]["claimCorrect"]
    moved = game.events("Moved", disputeId=0)
    assert all(m["clockRemaining"] == 0 for m in moved)  # both used every second they had
    assert pending_time(w3) > game.claim(cid).deadline  # the game outlasted the window ...
    assert game.claim(cid).status == ClaimStatus.FINALIZED  # ... and the prover finalised
    assert prover.collect() == B_C + B_X + d.moves * B


def test_front_running_cannot_take_honest_bond(
    embedded_web3: Web3, model: Model, tmp_path: Path
) -> None:
    """A front-runner copies the watcher's pending moves (levels 1-2: accepted as the
    challenge side's moves; level 3: refused) and its step: the watcher's transactions revert
    without touching its bonds, and the runner gets back only its own bonds."""
    w3 = embedded_web3
    acc = w3.eth.accounts
    runner = acc[5]
    game = new_game(w3)
    cheater = CheatingProver(game, model, tmp_path / "c", acc[1], logits_lie(model))
    watcher = Challenger(game, model, tmp_path / "w", acc[2])
    skip_history(watcher)
    cid = cheater.claim_cheat(REQUEST)
    watcher.poll()
    side = watcher.side_for(cid)
    copied, refused = [], []
    for _ in range(60):
        poll(cheater)
        d = game.dispute(0)
        if d.stage == Stage.RESOLVED:
            break
        front_run = d.stage in (Stage.RECORD, Stage.CHUNK, Stage.REDUCTION) or d.moves % 4 == 1
        if d.to_move == CHALLENGE and d.stage != Stage.STEP and front_run:
            # the watcher's transaction is pending; the runner copies it and lands first
            honest_tx = pending_move(game, 0, side, acc[2])
            if d.stage == Stage.REDUCTION:  # level 3 is its owner's alone
                expect("NotSideOwner", copy_move, game, 0, side, runner)
                refused.append(d.stage.name)
            else:
                balance = w3.eth.get_balance(game.game.address)
                copy_move(game, 0, side, runner)
                assert game.events("Moved", disputeId=0)[-1]["mover"] == runner
                assert w3.eth.get_balance(game.game.address) == balance + B
                # within a descent the claim side is now to move at a new node; else the
                # dispute has gone on to the next stage
                error = "ChildrenMismatch" if game.dispute(0).stage == d.stage else "WrongStage"
                expect(error, honest_tx)  # the honest transaction reverts: its bond stays
                assert w3.eth.get_balance(game.game.address) == balance + B
                copied.append(d.stage.name)
        if d.stage == Stage.STEP:  # the runner front-runs the watcher's step too
            call = side.step_call(game, 0, d, CHALLENGE, watcher.disputes["0"]["block"])
            game.step(0, call, len(model.weights), sender=runner)
        watcher.poll()
    d = game.dispute(0)
    assert d.winner == CHALLENGE + 1 and game.claim(cid).status == ClaimStatus.OVERTURNED
    assert {"TRACE", "RECORD", "CHUNK"} <= set(copied) and set(refused) == {"REDUCTION"}
    assert game.events("StepVerified")[0]["claimCorrect"] is False
    # the runner gets its own bond back for each copied move and nothing for the step; the
    # watcher (the winning opener) every claim-side bond, its own back, and the whole pool
    got = settle_everything(game, [acc[1], acc[2], runner])
    assert got[runner] == len(copied) * B
    assert got[acc[2]] == B_X + B_C // 2 + (d.moves - len(copied)) * B and got[acc[1]] == 0


def test_multiple_challengers_on_one_claim(
    embedded_web3: Web3, model: Model, tmp_path: Path
) -> None:
    """Two honest watchers dispute the same false claim in parallel: the first dispute to
    resolve overturns it; the other goes on to its end; both are successful challenges and
    share the reward pool B_C / 2 once the claim is settled; the cheater loses both."""
    w3 = embedded_web3
    acc = w3.eth.accounts
    game = new_game(w3)
    cheater = CheatingProver(game, model, tmp_path / "c", acc[1], logits_lie(model))
    watchers = [Challenger(game, model, tmp_path / f"w{k}", acc[2 + k]) for k in range(2)]
    for watcher in watchers:
        skip_history(watcher)
    cid = cheater.claim_cheat(REQUEST)
    for _ in range(80):
        poll(cheater)
        for watcher in watchers:
            watcher.poll()
        if not any(watcher.active() for watcher in watchers):
            break
    assert disputes(game) == [0, 1] and game.claim(cid).open_disputes == 0
    resolved = game.events("DisputeResolved")
    assert [e["winner"] for e in resolved] == [CHALLENGE + 1] * 2
    (overturned,) = game.events("ClaimOverturned")
    first = resolved[0]["disputeId"]
    assert overturned["disputeId"] == first and game.claim(cid).status == ClaimStatus.OVERTURNED
    if pending_time(w3) < game.claim(cid).deadline:
        set_next_timestamp(w3, game.claim(cid).deadline)  # settled: W over, no dispute open
    got = [watcher.collect() for watcher in watchers]
    for k, watcher in enumerate(watchers):
        did = int(next(iter(watcher.disputes)))
        assert got[k] == B_X + game.dispute(did).moves * B + B_C // 4
    assert settle_everything(game, acc[1:4]) == {a: 0 for a in acc[1:4]}


def test_unbounded_sub_games(embedded_web3: Web3, model: Model, tmp_path: Path) -> None:
    """Claim A has one dispute, claim B eight (the same liar's, and seven others): every entry
    point costs the same gas for B as for A, within one storage refund."""
    w3 = embedded_web3
    acc = w3.eth.accounts
    game = new_game(w3)
    prover = Prover(game, model, tmp_path / "p", acc[1])
    lie = logits_lie(model)
    liars = [LyingChallenger(game, model, tmp_path / f"l{k}", acc[2 + k], lie)
             for k in range(8)]  # fmt: skip
    # an earlier claim, finalised: the prover's credit is not zero, so that its first credit
    # (a new storage slot) does not make the first resolution below look dearer
    z = prover.claim(REQUEST)
    set_next_timestamp(w3, game.claim(z).deadline)
    game.finalize(z)
    for liar in liars:
        skip_history(liar)
    a = prover.claim(REQUEST)
    liars[0].poll()  # one dispute on A
    for liar in liars[1:]:
        skip_history(liar)
    b = prover.claim(REQUEST)
    for liar in liars:
        liar.poll()  # eight disputes on B
    did_a = 0
    did_b = [int(k) for liar in liars for k, v in liar.disputes.items() if v["claim"] == b]
    assert len(did_b) == 8 and game.claim(a).open_disputes == 1
    assert game.claim(b).open_disputes == 8
    opened = gas_of(game, "openDispute")  # A's (the game's first), then B's eight
    assert len(set(opened[1:])) == 1  # with 0, 1, ..., 7 disputes open on B: the same gas
    # the prover's first move in each of the nine disputes: the same gas (to the calldata
    # bytes of the dispute id)
    first = len(game.gas_used)
    prover.poll()
    gas = gas_of(game, "revealChildren", first)
    assert len(gas) == 9 and max(gas) - min(gas) <= 100, gas
    # one liar's move touches its own dispute only
    others = {k: game.dispute(k) for k in did_b[1:]}
    liars[0].play(did_b[0])
    assert {k: game.dispute(k) for k in did_b[1:]} == others
    assert game.claim(b).open_disputes == 8
    # the same liar plays A and B to the end (B with seven disputes open): each move costs
    # the same, and the gas of a move does not grow with the moves played
    for _ in range(60):
        if all(game.dispute(k).stage == Stage.RESOLVED for k in (did_a, did_b[0])):
            break
        poll(liars[0])
        prover.poll()
    game_a, game_b = move_gas(game, did_a), move_gas(game, did_b[0])
    assert [k for k, _ in game_a] == [k for k, _ in game_b] and game_a[-1][0] == "step"
    for (kind, ga), (_, gb) in zip(game_a, game_b, strict=True):
        assert abs(ga - gb) <= 5_000, (kind, ga, gb)  # (one SSTORE refund: 1 -> 0 open)
    for kind in ((CLAIM, 1), (CHALLENGE, 1), (CLAIM, 3), (CHALLENGE, 3)):
        gas = [g for k, g in game_a if k == kind][2:-2]  # (first writes; level ends)
        assert gas and max(gas) - min(gas) <= 5_000, (kind, gas)
    # the seven others time out: the same gas each, 7 open disputes or 1
    expired = max(game.dispute(k).turn_start + PARAMS.clock + 1 for k in did_b[1:])
    set_next_timestamp(w3, expired)
    first = len(game.gas_used)
    for did in did_b[1:]:
        game.timeout(did, sender=acc[0])
    timeouts = gas_of(game, "timeout", first)
    assert len(set(timeouts[:-1])) == 1 and abs(timeouts[-1] - timeouts[0]) <= 5_000
    # finalisation: O(1), the same for B (eight disputes) as for A (one)
    set_next_timestamp(w3, game.claim(b).deadline)
    first = len(game.gas_used)
    game.finalize(a)
    game.finalize(b)
    fa, fb = gas_of(game, "finalize", first)
    assert fa == fb
    # settling: O(1) per account, whatever the moves it made
    first = len(game.gas_used)
    for did in (did_a, did_b[0], did_b[1]):
        game.settle(did, acc[1])
    sa, sb, sc = gas_of(game, "settle", first)
    assert abs(sa - sb) <= 5_000 and abs(sb - sc) <= 5_000
    got = settle_everything(game, acc[1:10])
    moves = sum(game.dispute(k).moves for k in disputes(game))
    # the honest claimant: its three bonds, the nine failed challenge bonds, every move bond
    # (its own back, the liars' as the winning opener); the liars nothing
    assert got[acc[1]] == 3 * B_C + 9 * B_X + moves * B
    assert all(got[a] == 0 for a in acc[2:10])


# --- anvil --------------------------------------------------------------------------------


@pytest.fixture()
def anvil_game(anvil_web3: Web3, model: Model) -> GameClient:
    """A fresh deployment on the anvil node (the plain GameClient: logs from the node)."""
    game = GameClient.deploy(w3=anvil_web3, params=PARAMS)
    game.register(model)
    return game


def test_anvil_cheating_prover_overturned(anvil_game: GameClient, model: Model,
                                          tmp_path: Path) -> None:  # fmt: skip
    w3 = anvil_game.w3
    acc = w3.eth.accounts
    cheater = CheatingProver(anvil_game, model, tmp_path / "c", acc[1], logits_lie(model))
    watcher = Challenger(anvil_game, model, tmp_path / "w", acc[2])
    skip_history(watcher)
    cid = cheater.claim_cheat(REQUEST)
    out = play_out(anvil_game, watcher, cheater, Style())
    (did,) = (int(k) for k in watcher.disputes)
    check_dispute(anvil_game, did, honest=watcher, liar=cheater, claim_id=cid, style=Style(),
                  out=out)  # fmt: skip
    d = anvil_game.dispute(did)
    assert (d.position, d.node_id, d.element) == (2, model.program.node_index("lm_head"), 17)
    assert anvil_game.claim(cid).status == ClaimStatus.OVERTURNED
    assert watcher.collect() == B_X + d.moves * B and cheater.collect() == 0
    set_next_timestamp(w3, anvil_game.claim(cid).deadline)  # the reward, once W is over
    assert watcher.collect() == B_C // 2 and anvil_game.burned() == B_C - B_C // 2
    settle_everything(anvil_game, acc[1:3])


def test_anvil_honest_prover_finalised(anvil_game: GameClient, model: Model,
                                       tmp_path: Path) -> None:  # fmt: skip
    w3 = anvil_game.w3
    acc = w3.eth.accounts
    prover = Prover(anvil_game, model, tmp_path / "p", acc[3])
    liar = LyingChallenger(anvil_game, model, tmp_path / "l", acc[4], logits_lie(model))
    skip_history(liar)
    cid = prover.claim(REQUEST)
    out = play_out(anvil_game, prover, liar, Style(timing="last_second"))
    (did,) = (int(k) for k in liar.disputes)
    check_dispute(anvil_game, did, honest=prover, liar=liar, claim_id=cid,
                  style=Style(timing="last_second"), out=out)  # fmt: skip
    c = anvil_game.claim(cid)
    if c.status == ClaimStatus.PENDING:
        set_next_timestamp(w3, c.deadline)
        prover.poll()
    assert anvil_game.claim(cid).status == ClaimStatus.FINALIZED
    d = anvil_game.dispute(did)
    assert prover.collect() == B_C + B_X + d.moves * B
    settle_everything(anvil_game, acc[3:5])


def test_anvil_offline_prover_times_out(anvil_game: GameClient, model: Model,
                                        tmp_path: Path) -> None:  # fmt: skip
    w3 = anvil_game.w3
    acc = w3.eth.accounts
    cheater = CheatingProver(anvil_game, model, tmp_path / "c", acc[5], logits_lie(model))
    watcher = Challenger(anvil_game, model, tmp_path / "w", acc[6])
    skip_history(watcher)
    cid = cheater.claim_cheat(REQUEST)
    watcher.poll()
    (did,) = (int(k) for k in watcher.disputes)
    d = anvil_game.dispute(did)
    expect("ClockNotExpired", anvil_game.timeout, did)
    set_next_timestamp(w3, d.turn_start + d.clock[CLAIM])
    assert watcher.poll() == []  # its last second: not yet
    set_next_timestamp(w3, d.turn_start + d.clock[CLAIM] + 1)
    (move,) = watcher.poll()
    assert move["fn"] == "timeout" and anvil_game.dispute(did).winner == CHALLENGE + 1
    assert anvil_game.claim(cid).status == ClaimStatus.OVERTURNED
    watcher.poll()
    assert watcher.disputes[str(did)]["winner"] == "challenge"
    assert watcher.collect() == B_X
    set_next_timestamp(w3, anvil_game.claim(cid).deadline)
    assert watcher.collect() == B_C // 2
    settle_everything(anvil_game, acc[5:7])
