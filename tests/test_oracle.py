"""The inference oracle (contracts/sol/InferenceOracle.sol, docs/protocol.md section 9) on one
embedded chain: request -> commit -> claim -> answer -> finalise -> deliver -> callback, with
exact fee accounting after every scenario (O1: balance == escrowed + credits); reverting,
gas-hungry, return-bombing and re-entrant callbacks; the 63/64 gas guard; overturn -> reopen ->
honest re-answer; refunds after the deadline; the attacks (someone else's claim, answering twice,
a copied claim front-running the answer, mismatched claims, missing commitments); and the
prover process side (bisection/oracle_client.py): an ExampleConsumer's request served by an
in-process Service whose cheating prover is overturned by a watcher and re-answered honestly.
The anvil tests (gas, and `refute prove --oracle` processes) are at the end."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from eth_hash.auto import keccak
from web3 import Web3

from refute.bisection.demo import flip_bit
from refute.contracts.chain import deploy, embedded_chain, set_next_timestamp
from refute.contracts.game import (
    ClaimStatus,
    GameClient,
    GameError,
    GameParams,
    encode_tokens,
)
from refute.contracts.onestep import f32_bits
from refute.contracts.oracle import (
    CallbackResult,
    ExampleConsumerClient,
    OracleClient,
    RequestStatus,
)
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.kernels.reference import SPEC_VERSION
from tests.test_incentives import PLANTED, token_proof
from tests.test_incentives import commit as commit_token_proof

PARAMS = GameParams(
    claim_bond=10**18,
    challenge_bond=5 * 10**17,
    move_bond=10**15,
    window=600,
    clock=600,
    extension=60,
    fee_per_position=10**12,
)
REQUEST = Request(prompt=(5, 17, 250, 3), max_new_tokens=4, temperature=0.5, seed=7)
FEE = 3 * 10**16
USER, PROVER, HONEST, WATCHER, COPIER = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def gen(model):
    return Executor(model).generate([REQUEST])[0]


@pytest.fixture()
def chain(embedded_web3: Web3, model):
    """A fresh game and oracle on the module's chain: (game, oracle, accounts)."""
    game = GameClient.deploy(w3=embedded_web3, params=PARAMS)
    game.register(model)
    return game, OracleClient.deploy(game), embedded_web3.eth.accounts


@pytest.fixture(scope="module")
def static_chain(embedded_web3: Web3, model):
    """One game and oracle for the tests that change no state (every transaction reverts)."""
    game = GameClient.deploy(w3=embedded_web3, params=PARAMS)
    game.register(model)
    return game, OracleClient.deploy(game), embedded_web3.eth.accounts


# --- helpers ---------------------------------------------------------------------------------


def expect(name: str, fn, *args, **kwargs) -> GameError:
    with pytest.raises(GameError) as info:
        fn(*args, **kwargs)
    assert info.value.name == name, f"expected {name}, got {info.value.name}"
    return info.value


def travel(w3: Web3, timestamp: int) -> None:
    if int(w3.eth.get_block("pending")["timestamp"]) < timestamp:
        set_next_timestamp(w3, timestamp)


def conserved(oracle: OracleClient, accounts) -> None:
    """O1: the oracle holds exactly the escrowed fees plus every account's credit."""
    credits = sum(oracle.credit(a) for a in accounts)
    assert oracle.balance() == oracle.escrowed() + credits


def ask(oracle: OracleClient, model, sender: str, **kw) -> int:
    kw.setdefault("fee", FEE)
    return oracle.request(
        model.root,
        list(REQUEST.prompt),
        REQUEST.max_new_tokens,
        temperature=REQUEST.temperature,
        seed=REQUEST.seed,
        sender=sender,
        **kw,
    )


def answer_with(game, oracle, model, gen, rid: int, sender: str, tokens=None) -> int:
    """Commit, post the claim (optionally with other tokens) and answer: the prover's order."""
    oracle.commit(oracle.commitment(sender, rid, gen.trace.root()), sender=sender)
    cid = game.post_claim(model, gen, sender=sender, output_tokens=tokens)
    oracle.answer(rid, cid, sender=sender)
    return cid


def finalise(game: GameClient, cid: int) -> None:
    travel(game.w3, game.claim(cid).deadline + 1)
    game.finalize(cid)


def overturn(game: GameClient, model, gen, cid: int, tokens, watcher: str) -> None:
    """Overturn a claim with a planted token by the token-mismatch proof (commit, reveal)."""
    proof = token_proof(model, gen, PLANTED)
    commit_token_proof(game, watcher, cid, proof)
    game.prove_token_mismatch(cid, tokens, PLANTED, *proof, sender=watcher)
    assert game.claim(cid).status == ClaimStatus.OVERTURNED


def planted(model, gen) -> list[int]:
    tokens = list(gen.output_tokens)
    tokens[PLANTED] = (tokens[PLANTED] + 1) % model.program.vocab_size
    return tokens


def one(oracle: OracleClient, name: str, since: int) -> dict:
    (e,) = oracle.events(name, since)
    return e


# --- the happy path ------------------------------------------------------------------------------


def test_request_answer_finalise_deliver_callback(chain, model, gen) -> None:
    game, oracle, acc = chain
    w3 = game.w3
    consumer = ExampleConsumerClient.deploy(oracle, sender=acc[USER])
    start = w3.eth.block_number
    rid = consumer.ask(
        model.root,
        list(REQUEST.prompt),
        REQUEST.max_new_tokens,
        temperature=REQUEST.temperature,
        seed=REQUEST.seed,
        fee=FEE,
        sender=acc[USER],
    )
    r = oracle.get(rid)
    assert (r.status, r.requester, r.callback, r.fee) == (
        RequestStatus.OPEN,
        consumer.address,
        consumer.address,
        FEE,
    )
    assert (r.max_new_tokens, r.temperature, r.seed) == (4, f32_bits(np.float32(0.5)), 7)
    assert oracle.escrowed() == FEE and oracle.balance() == FEE
    req = one(oracle, "Requested", start)
    assert req["prompt"] == list(REQUEST.prompt) and req["fee"] == FEE
    assert (req["callback"], req["callbackGas"]) == (consumer.address, 200_000)

    cid = answer_with(game, oracle, model, gen, rid, acc[PROVER])
    # the oracle computed the prompt root as the game does
    assert r.prompt_root == game.claim(cid).prompt_root
    committed = one(oracle, "Committed", start)
    answered = one(oracle, "Answered", start)
    assert (answered["requestId"], answered["claimId"], answered["prover"]) == (
        rid,
        cid,
        acc[PROVER],
    )
    assert answered["commitBlock"] == committed["blockNumber"] < answered["blockNumber"]
    assert oracle.get(rid).status == RequestStatus.ANSWERED
    expect("ClaimNotFinal", oracle.deliver, rid, gen.output_tokens)
    expect("NotRefundable", oracle.refund, rid)

    finalise(game, cid)
    expect("WrongTokens", oracle.deliver, rid, planted(model, gen))
    result, _ = oracle.deliver(rid, list(gen.output_tokens), sender=acc[WATCHER])  # anyone
    assert result == CallbackResult.SUCCEEDED
    assert consumer.received(rid) and consumer.tokens(rid) == list(gen.output_tokens)
    delivered = one(oracle, "Delivered", start)
    assert (delivered["prover"], delivered["fee"], delivered["callbackResult"]) == (
        acc[PROVER],
        FEE,
        CallbackResult.SUCCEEDED,
    )
    r = oracle.get(rid)
    assert (r.status, r.callback_result, r.claim_id) == (
        RequestStatus.DELIVERED,
        CallbackResult.SUCCEEDED,
        cid,
    )
    assert oracle.credit(acc[PROVER]) == FEE and oracle.escrowed() == 0
    conserved(oracle, acc)
    expect("NotAnswered", oracle.deliver, rid, gen.output_tokens)
    expect("NotRefundable", oracle.refund, rid)

    before = w3.eth.get_balance(acc[PROVER])
    receipt = oracle.withdraw(acc[PROVER])
    gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w3.eth.get_balance(acc[PROVER]) == before + FEE - gas
    assert oracle.balance() == 0 and oracle.credit(acc[PROVER]) == 0
    assert one(oracle, "Withdrawn", start)["amount"] == FEE
    expect("NothingToWithdraw", oracle.withdraw, acc[PROVER])


def test_request_without_callback_and_a_finalised_claim_answers_at_once(chain, model, gen):
    """A claim already final answers and is delivered in the next two transactions; no
    callback: CallbackResult.NONE. A zero fee is allowed (and pays nothing)."""
    game, oracle, acc = chain
    r1 = ask(oracle, model, acc[USER])
    cid = answer_with(game, oracle, model, gen, r1, acc[PROVER])
    finalise(game, cid)
    r2 = ask(oracle, model, acc[USER], fee=0)
    oracle.commit(oracle.commitment(acc[PROVER], r2, gen.trace.root()), sender=acc[PROVER])
    oracle.answer(r2, cid, sender=acc[PROVER])  # the same final claim answers both requests
    for rid in (r1, r2):
        result, _ = oracle.deliver(rid, list(gen.output_tokens))
        assert result == CallbackResult.NONE
    assert oracle.credit(acc[PROVER]) == FEE
    conserved(oracle, acc)


# --- callbacks -----------------------------------------------------------------------------------


def hostile(oracle: OracleClient, acc, mode: int, burn: int = 0):
    c = deploy(oracle.w3, "HostileConsumer", oracle.address, sender=acc[USER])
    oracle.game.transact(c, "configure", mode, burn, sender=acc[USER])
    return c


def hostile_request(oracle, c, model, acc, callback_gas: int) -> int:
    _, receipt = oracle.game.transact(
        c,
        "ask",
        model.root,
        encode_tokens(REQUEST.prompt),
        REQUEST.max_new_tokens,
        callback_gas,
        oracle.now() + 3600,
        sender=acc[USER],
        value=FEE,
    )
    return int(oracle.contract.events.Requested().process_receipt(receipt)[0]["args"]["requestId"])


@pytest.fixture(scope="module")
def greedy(model):
    """A temperature-0, seed-0 generation (what HostileConsumer.ask requests)."""
    return Executor(model).generate([Request(REQUEST.prompt, REQUEST.max_new_tokens)])[0]


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        (0, CallbackResult.FAILED),  # reverts
        (1, CallbackResult.FAILED),  # loops until its gas is gone
        (2, CallbackResult.SUCCEEDED),  # returns 128 KiB: not copied, costs the caller nothing
        (3, CallbackResult.SUCCEEDED),  # re-enters deliver (caught inside: NotAnswered)
        (4, CallbackResult.SUCCEEDED),  # re-enters refund (NotRefundable)
        (5, CallbackResult.SUCCEEDED),  # re-enters withdraw (NothingToWithdraw)
    ],
)
def test_hostile_callbacks_cannot_block_payment(chain, model, greedy, mode, outcome) -> None:
    game, oracle, acc = chain
    c = hostile(oracle, acc, mode)
    rid = hostile_request(oracle, c, model, acc, 300_000)
    cid = answer_with(game, oracle, model, greedy, rid, acc[PROVER])
    finalise(game, cid)
    start = game.w3.eth.block_number
    result, receipt = oracle.deliver(rid, list(greedy.output_tokens), sender=acc[PROVER])
    assert result == outcome
    assert one(oracle, "Delivered", start)["callbackResult"] == outcome
    assert oracle.get(rid).callback_result == outcome
    assert oracle.credit(acc[PROVER]) == FEE and oracle.escrowed() == 0
    conserved(oracle, [*acc, c.address])
    # the callback's gas is capped: the whole delivery costs at most its limit plus a margin
    assert receipt["gasUsed"] < 300_000 + 120_000
    if mode >= 3:
        f = c.functions
        assert not f.reentrySucceeded().call()
        expected = {
            3: "NotAnswered(uint256)",
            4: "NotRefundable(uint256)",
            5: "NothingToWithdraw()",
        }[mode]
        assert f.reentryError().call() == keccak(expected.encode())[:4]


def test_the_callback_always_gets_its_whole_gas_limit(chain, model, greedy) -> None:
    """63/64 rule: a callback that needs about 145,000 of its 160,000 gas (120,000 burned, then
    a new storage slot) succeeds in every delivery that goes through, whatever gas limit the
    caller picks; too little gas reverts the delivery (InsufficientGas) instead of starving the
    callback. One that needs more than its own limit fails at any gas limit (the requester's
    choice)."""
    game, oracle, acc = chain
    c = hostile(oracle, acc, 6, 120_000)
    rid = hostile_request(oracle, c, model, acc, 160_000)
    cid = answer_with(game, oracle, model, greedy, rid, acc[PROVER])
    finalise(game, cid)
    call = oracle.contract.functions.deliver(rid, encode_tokens(greedy.output_tokens))
    outcomes = {}
    for gas in range(100_000, 400_001, 6_000):
        try:
            outcomes[gas] = CallbackResult(
                call.call({"from": acc[PROVER], "gas": gas}, block_identifier="pending")
            )
        except Exception as exc:  # out of gas or InsufficientGas
            outcomes[gas] = type(exc).__name__
    went_through = [g for g, o in outcomes.items() if isinstance(o, CallbackResult)]
    assert went_through and max(outcomes) in went_through
    assert {outcomes[g] for g in went_through} == {CallbackResult.SUCCEEDED}, outcomes
    selector = keccak(b"InsufficientGas(uint256,uint256)")[:4]
    try:
        call.call(
            {"from": acc[PROVER], "gas": min(went_through) - 6_000}, block_identifier="pending"
        )
        raise AssertionError("a delivery with too little gas went through")
    except Exception as exc:
        from refute.contracts.game import revert_data

        assert revert_data(exc)[:4] == selector
    result, _ = oracle.deliver(rid, list(greedy.output_tokens))
    assert result == CallbackResult.SUCCEEDED and c.functions.finished().call()

    greedy_callback = hostile(oracle, acc, 6, 200_000)  # burns more than its 160,000
    rid2 = hostile_request(oracle, greedy_callback, model, acc, 160_000)
    oracle.commit(oracle.commitment(acc[PROVER], rid2, greedy.trace.root()), sender=acc[PROVER])
    oracle.answer(rid2, cid, sender=acc[PROVER])
    result, _ = oracle.deliver(rid2, list(greedy.output_tokens))
    assert result == CallbackResult.FAILED and not greedy_callback.functions.finished().call()
    assert oracle.credit(acc[PROVER]) == 2 * FEE
    conserved(oracle, acc)


# --- overturn, reopen, refund ----------------------------------------------------------------


@pytest.mark.parametrize("explicit_reopen", [True, False])
def test_overturned_answer_reopens_and_the_honest_prover_is_paid(
    chain, model, gen, explicit_reopen
) -> None:
    game, oracle, acc = chain
    consumer = ExampleConsumerClient.deploy(oracle, sender=acc[USER])
    rid = consumer.ask(
        model.root, list(REQUEST.prompt), 4, temperature=0.5, seed=7, fee=FEE, sender=acc[USER]
    )
    bad = planted(model, gen)
    cheat = answer_with(game, oracle, model, gen, rid, acc[PROVER], tokens=bad)
    # the honest prover comes second: the cheater's (pending) answer was committed first
    oracle.commit(oracle.commitment(acc[HONEST], rid, gen.trace.root()), sender=acc[HONEST])
    honest = game.post_claim(model, gen, sender=acc[HONEST])
    expect("AlreadyAnswered", oracle.answer, rid, honest, sender=acc[HONEST])
    expect("AnswerStands", oracle.reopen, rid)
    start = game.w3.eth.block_number
    overturn(game, model, gen, cheat, bad, acc[WATCHER])
    if explicit_reopen:
        oracle.reopen(rid, sender=acc[WATCHER])  # anyone
        assert oracle.get(rid).status == RequestStatus.OPEN
        expect("NotAnswered", oracle.reopen, rid)
        assert one(oracle, "Reopened", start)["claimId"] == cheat
    expect("ClaimIsOverturned", oracle.answer, rid, cheat, sender=acc[PROVER])
    oracle.answer(rid, honest, sender=acc[HONEST])
    if not explicit_reopen:  # answer reopened it
        assert one(oracle, "Reopened", start)["claimId"] == cheat
    assert oracle.get(rid).claim_id == honest
    finalise(game, honest)
    result, _ = oracle.deliver(rid, list(gen.output_tokens))
    assert result == CallbackResult.SUCCEEDED and consumer.tokens(rid) == list(gen.output_tokens)
    assert oracle.credit(acc[HONEST]) == FEE and oracle.credit(acc[PROVER]) == 0
    conserved(oracle, acc)


def test_refunds_after_the_deadline(chain, model, gen) -> None:
    game, oracle, acc = chain
    w3 = game.w3
    deadline = oracle.now() + 100
    unanswered = ask(oracle, model, acc[USER], deadline=deadline)
    pending = ask(oracle, model, acc[USER], deadline=deadline)
    overturned = ask(oracle, model, acc[USER], deadline=deadline)
    final = ask(oracle, model, acc[USER], deadline=deadline)
    expect("DeadlineNotPassed", oracle.refund, unanswered)
    p = answer_with(game, oracle, model, gen, pending, acc[PROVER])
    bad = planted(model, gen)
    o = answer_with(game, oracle, model, gen, overturned, acc[PROVER], tokens=bad)
    overturn(game, model, gen, o, bad, acc[WATCHER])
    oracle.commit(oracle.commitment(acc[PROVER], final, gen.trace.root()), sender=acc[PROVER])
    oracle.answer(final, p, sender=acc[PROVER])
    expect("DeadlineNotPassed", oracle.refund, overturned)
    travel(w3, deadline + 1)
    expect("AnswerTooLate", oracle.answer, overturned, p, sender=acc[PROVER])
    start = w3.eth.block_number
    oracle.refund(unanswered, sender=acc[WATCHER])  # anyone, credited to the requester
    oracle.refund(overturned)
    expect("NotRefundable", oracle.refund, pending)  # a pending answer waits for its outcome
    expect("NotRefundable", oracle.refund, unanswered)
    refunds = oracle.events("Refunded", start)
    assert [(e["requestId"], e["requester"], e["fee"]) for e in refunds] == [
        (unanswered, acc[USER], FEE),
        (overturned, acc[USER], FEE),
    ]
    assert oracle.credit(acc[USER]) == 2 * FEE and oracle.escrowed() == 2 * FEE
    finalise(game, p)  # the answer given in time is delivered after the deadline
    for rid in (pending, final):
        expect("NotRefundable", oracle.refund, rid)
        oracle.deliver(rid, list(gen.output_tokens))
    assert oracle.credit(acc[PROVER]) == 2 * FEE and oracle.escrowed() == 0
    conserved(oracle, acc)


# --- attacks -----------------------------------------------------------------------------------


def raw_claim(
    game,
    model,
    sender,
    *,
    prompt=REQUEST.prompt,
    temperature=0.5,
    seed=7,
    tokens=None,
    root=None,
    model_root=None,
    trace=b"\x11" * 32,
) -> int:
    """A claim posted with any parameters (its trace is never checked unless disputed)."""
    tokens = list(tokens if tokens is not None else [1, 2, 3, 4])
    positions = len(prompt) + len(tokens) - 1
    cid, _ = game.transact(
        game.game,
        "postClaim",
        model_root or model.root,
        encode_tokens(prompt),
        f32_bits(np.float32(temperature)),
        seed,
        encode_tokens(tokens),
        trace,
        positions * len(model.program.nodes),
        sender=sender,
        value=game.claim_value(positions),
    )
    return int(cid)


def test_answers_must_be_the_senders_committed_matching_claims(chain, model, gen) -> None:
    game, oracle, acc = chain
    rid = ask(oracle, model, acc[USER])
    theirs = game.post_claim(model, gen, sender=acc[HONEST])
    oracle.commit(oracle.commitment(acc[PROVER], rid, gen.trace.root()), sender=acc[PROVER])
    expect("NotClaimant", oracle.answer, rid, theirs, sender=acc[PROVER])  # someone else's
    expect("UnknownClaim", oracle.answer, rid, 10**6, sender=acc[PROVER])
    expect("UnknownRequest", oracle.answer, 10**6, theirs, sender=acc[HONEST])
    expect("NotCommitted", oracle.answer, rid, theirs, sender=acc[HONEST])  # no commitment
    # a commitment to another request or another trace root is no commitment to this one
    oracle.commit(oracle.commitment(acc[HONEST], rid + 1, gen.trace.root()), sender=acc[HONEST])
    oracle.commit(oracle.commitment(acc[HONEST], rid, b"\x22" * 32), sender=acc[HONEST])
    expect("NotCommitted", oracle.answer, rid, theirs, sender=acc[HONEST])
    fake_root, _ = game.transact(
        game.registry,
        "register",
        model.weights_root,
        model.program_root,
        b"\x33" * 32,
        SPEC_VERSION,
        len(model.program.nodes),
        model.program.max_positions,
        model.program.vocab_size,
        model.program.logits_node,
        model.program.token_node,
    )
    mismatched = {
        "WrongModel": raw_claim(game, model, acc[PROVER], model_root=bytes(fake_root)),
        "WrongPrompt": raw_claim(game, model, acc[PROVER], prompt=(5, 17, 250, 4)),
        "WrongTemperature": raw_claim(game, model, acc[PROVER], temperature=0.75),
        "WrongSeed": raw_claim(game, model, acc[PROVER], seed=8),
        "WrongOutputLength": raw_claim(game, model, acc[PROVER], tokens=[1, 2, 3]),
    }
    for name, cid in mismatched.items():
        oracle.commit(oracle.commitment(acc[PROVER], rid, b"\x11" * 32), sender=acc[PROVER])
        expect(name, oracle.answer, rid, cid, sender=acc[PROVER])
    mine = answer_with(game, oracle, model, gen, rid, acc[PROVER])
    expect("AlreadyAnswered", oracle.answer, rid, mine, sender=acc[PROVER])  # twice
    conserved(oracle, acc)


def test_a_copied_claim_cannot_take_the_request(chain, model, gen) -> None:
    """The copier reads the honest claim (trace root, tokens) from its postClaim and answers
    first with a copy of it; the honest answer, committed before the trace root was public,
    supersedes it and is paid; the copier can neither take it back nor supersede a final one."""
    game, oracle, acc = chain
    rid = ask(oracle, model, acc[USER])
    oracle.commit(oracle.commitment(acc[HONEST], rid, gen.trace.root()), sender=acc[HONEST])
    honest = game.post_claim(model, gen, sender=acc[HONEST])
    seen = game.claim(honest)  # what the copier learns from the honest postClaim
    copy = raw_claim(
        game,
        model,
        acc[COPIER],
        temperature=0.5,
        seed=7,
        tokens=gen.output_tokens,
        trace=seen.trace_root,
    )
    oracle.commit(oracle.commitment(acc[COPIER], rid, seen.trace_root), sender=acc[COPIER])
    start = game.w3.eth.block_number
    oracle.answer(rid, copy, sender=acc[COPIER])
    oracle.answer(rid, honest, sender=acc[HONEST])
    superseded = one(oracle, "Superseded", start)
    assert (superseded["claimId"], superseded["byClaimId"]) == (copy, honest)
    expect("AlreadyAnswered", oracle.answer, rid, copy, sender=acc[COPIER])
    finalise(game, honest)
    finalise(game, copy)
    oracle.deliver(rid, list(gen.output_tokens))
    assert oracle.credit(acc[HONEST]) == FEE and oracle.credit(acc[COPIER]) == 0
    # a final answer is not superseded, even by an earlier commitment
    rid2 = ask(oracle, model, acc[USER])
    oracle.commit(oracle.commitment(acc[HONEST], rid2, gen.trace.root()), sender=acc[HONEST])
    oracle.commit(oracle.commitment(acc[COPIER], rid2, gen.trace.root()), sender=acc[COPIER])
    oracle.answer(rid2, copy, sender=acc[COPIER])
    expect("AlreadyAnswered", oracle.answer, rid2, honest, sender=acc[HONEST])
    conserved(oracle, acc)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"model_root": b"\x44" * 32}, "ModelNotRegistered"),
        ({"prompt": b"\x01\x00\x00\x00\x02"}, "BadTokenBytes"),
        ({"prompt": b""}, "EmptyPrompt"),
        ({"max_new_tokens": 0}, "NoNewTokens"),
        ({"max_new_tokens": 10**6}, "TooManyPositions"),
        ({"prompt": encode_tokens([5, 320])}, "TokenOutOfRange"),
        ({"temperature": 0x7FC00000}, "BadTemperature"),
        ({"temperature": 0xBF800000}, "BadTemperature"),
        ({"deadline": 1}, "DeadlineInPast"),
        ({"callback_gas": 1_000_001, "callback": "0x" + "12" * 20}, "CallbackGasTooHigh"),
        ({"callback_gas": 5}, "GasWithoutCallback"),
    ],
)
def test_bad_requests_are_named(static_chain, model, change, error) -> None:
    game, oracle, _ = static_chain
    args = {
        "model_root": model.root,
        "prompt": encode_tokens(REQUEST.prompt),
        "max_new_tokens": 4,
        "temperature": 0,
        "seed": 0,
        "callback": "0x" + "00" * 20,
        "callback_gas": 0,
        "deadline": oracle.now() + 60,
    } | change
    expect(error, game.transact, oracle.contract, "request", *args.values(), value=FEE)
    assert oracle.request_count() == 0 and oracle.balance() == 0


# --- the prover process side ---------------------------------------------------------------------


def _log(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def run_fast(service, game: GameClient, watcher, limit: float = 90.0) -> None:
    """Service rounds until idle, the chain's clock jumped to the next claim deadline whenever
    the watcher has checked every claim and no dispute is being played (an embedded chain's
    clock runs ahead of the wall clock by a second per block; W would otherwise be waited for
    in wall time)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        service.step()
        if service.idle():
            return
        count = int(game.game.functions.claimCount().call())
        checked = all(watcher.store["claims"].get(str(c), {}).get("verdict") for c in range(count))
        if not checked or watcher.active():
            continue
        now = int(game.w3.eth.get_block("pending")["timestamp"])
        waiting = [game.claim(c).deadline for c in range(count)]
        later = [d for d in waiting if d > now]
        if later:
            travel(game.w3, min(later) + 1)
    raise AssertionError(f"not idle after {limit} s")


def test_service_serves_a_consumer_cheater_overturned_honest_reanswer(model, tmp_path) -> None:
    """An ExampleConsumer asks; a cheating OracleProver answers first; a watcher disputes and
    wins; the honest OracleProver (which left the request to the standing answer) serves it once
    reopened, the claim finalises, the tokens reach the consumer and the fee the honest prover."""
    from refute.bisection.challenger import Challenger
    from refute.bisection.eventlog import EventLog
    from refute.bisection.oracle_client import OracleProver
    from refute.bisection.service import Service

    params = GameParams(
        claim_bond=10**18,
        challenge_bond=5 * 10**17,
        move_bond=10**15,
        window=60,
        clock=60,
        extension=10,
    )
    w3 = embedded_chain()  # its own: the embedded chain's log queries slow down with its length
    game = GameClient.deploy(w3=w3, params=params)
    game.register(model)
    oracle = OracleClient.deploy(game)
    acc = w3.eth.accounts
    consumer = ExampleConsumerClient.deploy(oracle, sender=acc[USER])
    request = Request((5, 17, 250, 3), 3)
    rid = consumer.ask(
        model.root,
        list(request.prompt),
        3,
        fee=FEE,
        sender=acc[USER],
        deadline=oracle.now() + 3600,
    )
    tamper = flip_bit((3, model.program.node_index("layers.0.attn.residual"), 9))  # a MAP node
    cheater = OracleProver(
        game,
        model,
        tmp_path / "c",
        acc[PROVER],
        oracle=oracle,
        executor=Executor(model, tamper=tamper),
        consistent_lies=True,
    )
    watcher = Challenger(game, model, tmp_path / "w", acc[WATCHER])
    stream = io.StringIO()
    service = Service(game, [cheater, watcher], EventLog(stream, "test"), interval=0.05)
    until = time.monotonic() + 60
    while oracle.get(rid).status != RequestStatus.ANSWERED and time.monotonic() < until:
        service.step()  # the cheater answers first
        time.sleep(0.05)
    cheat = oracle.get(rid).claim_id
    assert game.claim(cheat).claimant == acc[PROVER]
    honest = OracleProver(game, model, tmp_path / "h", acc[HONEST], oracle=oracle)
    service = Service(game, [cheater, watcher, honest], EventLog(stream, "test"), interval=0.05)
    run_fast(service, game, watcher)
    log = _log(stream)
    assert service.errors == 0, [e for e in log if e["event"] == "error"]
    assert game.claim(cheat).status == ClaimStatus.OVERTURNED
    r = oracle.get(rid)
    assert r.status == RequestStatus.DELIVERED and r.callback_result == CallbackResult.SUCCEEDED
    assert game.claim(r.claim_id).claimant == acc[HONEST]
    assert consumer.tokens(rid) == list(Executor(model).generate([request])[0].output_tokens)
    # the honest prover withdrew the fee (with its claim bond); the cheater got no fee
    assert oracle.credit(acc[HONEST]) == oracle.credit(acc[PROVER]) == 0 == oracle.balance()
    honest_events = [
        e for e in log if e.get("client") == "prover" and e["event"].startswith("oracle.")
    ]
    kinds = [e["event"] for e in honest_events]
    assert kinds.count("oracle.delivered") == 1 and kinds.count("oracle.answered") == 2
    txs = [e for e in log if e["event"] == "tx" and e.get("fn") in ("answer", "deliver")]
    assert [e["fn"] for e in txs] == ["answer", "answer", "deliver"]
    assert all(e["gas"] > 0 and e["tx"].startswith("0x") for e in txs)
    withdrawn = [e["wei"] for e in log if e["event"] == "withdrawn"]
    assert params.claim_bond + FEE in withdrawn  # the honest prover: its bond back and the fee


# --- anvil -----------------------------------------------------------------------------------


def test_gas_on_anvil(anvil_web3: Web3, model, gen, capsys) -> None:
    """Gas of request (4- and 252-token prompts, with and without callback), commit, answer and
    deliver (without callback, and with ExampleConsumer storing 4 tokens) on a real node, as
    docs/gas.md reports them."""
    w3 = anvil_web3
    acc = w3.eth.accounts
    game = GameClient.deploy(w3=w3, params=PARAMS)
    game.register(model)
    oracle = OracleClient.deploy(game)
    consumer = ExampleConsumerClient.deploy(oracle, sender=acc[USER])
    gas: dict[str, int] = {}

    def last(name: str) -> None:
        gas[name] = game.gas_used[-1][1]

    plain = ask(oracle, model, acc[USER])
    last("request, 4-token prompt, no callback")
    oracle.request(model.root, [7] * 252, 4, fee=FEE, sender=acc[USER])
    last("request, 252-token prompt, no callback")
    called = consumer.ask(
        model.root, list(REQUEST.prompt), 4, temperature=0.5, seed=7, fee=FEE, sender=acc[USER]
    )
    last("request through ExampleConsumer.ask (callback)")
    oracle.commit(oracle.commitment(acc[PROVER], plain, gen.trace.root()), sender=acc[PROVER])
    last("commit")
    cid = game.post_claim(model, gen, sender=acc[PROVER])
    oracle.answer(plain, cid, sender=acc[PROVER])
    last("answer")
    oracle.commit(oracle.commitment(acc[PROVER], called, gen.trace.root()), sender=acc[PROVER])
    oracle.answer(called, cid, sender=acc[PROVER])
    finalise(game, cid)
    oracle.deliver(plain, list(gen.output_tokens))
    last("deliver, no callback")
    result, _ = oracle.deliver(called, list(gen.output_tokens))
    last("deliver with ExampleConsumer callback (4 tokens stored)")
    assert result == CallbackResult.SUCCEEDED and consumer.tokens(called) == gen.output_tokens
    with capsys.disabled():
        print("\n" + "\n".join(f"| {k} | {v:,} |" for k, v in gas.items()))
    # answer and deliver read the whole claim (getClaim: 18 cold slots, about 40,000 gas)
    assert gas["answer"] < 100_000 and gas["commit"] < 50_000
    assert gas["deliver, no callback"] < 110_000
    assert gas["request, 4-token prompt, no callback"] < 260_000
    conserved(oracle, [*acc, consumer.address])


def _events(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]


def test_consumer_served_by_prove_oracle_processes_on_anvil(anvil_web3: Web3, model, tmp_path):
    """On anvil, an ExampleConsumer asks; `refute prove --oracle --cheat` answers first, `refute
    watch` overturns it, a second (honest) `refute prove --oracle` answers once the request is
    reopened and delivers: the consumer holds the honest tokens, the honest prover the fee."""
    w3 = anvil_web3
    acc = w3.eth.accounts
    params = GameParams(
        claim_bond=10**18,
        challenge_bond=5 * 10**17,
        move_bond=10**15,
        window=12,
        clock=120,
        extension=10,
    )
    game = GameClient.deploy(w3=w3, params=params)
    game.register(model)
    oracle = OracleClient.deploy(game)
    consumer = ExampleConsumerClient.deploy(oracle, sender=acc[USER])
    rid = consumer.ask(
        model.root, [5, 17, 250, 3], 3, fee=FEE, sender=acc[USER], deadline=oracle.now() + 3600
    )
    url = w3.provider.endpoint_uri
    common = [
        "--rpc",
        url,
        "--game",
        game.game.address,
        "--model",
        "tiny-llama",
        "--interval",
        "0.2",
        "--max-seconds",
        "150",
        "--no-metrics",
    ]

    def start(name: str, *args: str) -> subprocess.Popen:
        log = tmp_path / f"{name}.log"
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "refute",
                *args,
                *common,
                "--state",
                str(tmp_path / name),
                "--log-file",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait(proc: subprocess.Popen, done, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            if proc.poll() is not None:
                pytest.fail(f"{what}: process exited {proc.returncode}:\n{proc.stderr.read()}")
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}")

    oracle_args = ["--oracle", oracle.address]
    procs = [
        start(
            "cheater",
            "prove",
            *oracle_args,
            "--account",
            str(PROVER),
            "--cheat",
            "3,layers.0.attn.residual,9",
        )
    ]
    try:
        wait(procs[0], lambda: oracle.get(rid).status == RequestStatus.ANSWERED, "the answer")
        cheat = oracle.get(rid).claim_id
        assert game.claim(cheat).claimant == acc[PROVER]
        procs.append(start("watcher", "watch", "--account", str(WATCHER)))
        procs.append(start("honest", "prove", *oracle_args, "--account", str(HONEST)))
        wait(procs[1], lambda: game.claim(cheat).status == ClaimStatus.OVERTURNED, "overturn")
        wait(procs[2], lambda: oracle.get(rid).status == RequestStatus.DELIVERED, "delivery")
        wait(procs[2], lambda: oracle.credit(acc[HONEST]) == 0, "the withdrawal", 30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    r = oracle.get(rid)
    assert r.callback_result == CallbackResult.SUCCEEDED
    assert game.claim(r.claim_id).claimant == acc[HONEST]
    honest_tokens = Executor(model).generate([Request((5, 17, 250, 3), 3)])[0].output_tokens
    assert consumer.tokens(rid) == list(honest_tokens)
    assert oracle.balance() == oracle.escrowed() == 0
    log = _events(tmp_path / "honest.log")
    kinds = [e["event"] for e in log]
    assert {"oracle.requested", "oracle.committed", "oracle.answered", "oracle.delivered"} <= set(
        kinds
    )
    assert any(e["event"] == "withdrawn" and e["wei"] >= FEE for e in log)
    cheater = [e["event"] for e in _events(tmp_path / "cheater.log")]
    assert "oracle.answered" in cheater and "oracle.delivered" not in cheater


def test_a_restarted_oracle_prover_answers_and_delivers_once(model, tmp_path) -> None:
    """An OracleProver replaced by a new one on the same state directory (a restart) after it
    answered: the new one commits, claims and answers nothing again, and delivers once."""
    from refute.bisection.oracle_client import OracleProver

    w3 = embedded_chain()
    game = GameClient.deploy(w3=w3, params=GameParams(window=30))
    game.register(model)
    oracle = OracleClient.deploy(game)
    acc = w3.eth.accounts
    rid = ask(oracle, model, acc[USER])
    prover = OracleProver(game, model, tmp_path / "p", acc[PROVER], oracle=oracle)
    until = time.monotonic() + 60
    while oracle.get(rid).status != RequestStatus.ANSWERED and time.monotonic() < until:
        prover.poll()
    assert oracle.get(rid).status == RequestStatus.ANSWERED
    prover.store.close()
    again = OracleProver(game, model, tmp_path / "p", acc[PROVER], oracle=oracle)
    again.resume()
    for _ in range(3):
        assert [m["fn"] for m in again.poll()] == []
    finalise(game, oracle.get(rid).claim_id)
    assert [m["fn"] for m in again.poll()] == ["deliver"]
    assert again.poll() == [] and again.collect() == GameParams().claim_bond + FEE  # bond, fee
    counts = {n: len(oracle.events(n)) for n in ("Committed", "Answered", "Delivered")}
    assert counts == {"Committed": 1, "Answered": 1, "Delivered": 1}
    assert len(game.events("ClaimPosted")) == 1
    assert again.requests_seen[str(rid)]["outcome"] == "delivered"
