"""Adversarial tests of the dispute game (docs/protocol.md), played on the embedded chain with
the real clients (Prover, Challenger, and their Side) against the dishonest parties of
tests/adversaries.py.

- Properties (hypothesis): a cheating prover always loses and an honest prover always wins,
  whatever the dishonest party corrupts (one bit of any element of any record, a weight bit,
  the sampled token, a KV-cache row t or an older row, a reduction-tree node, the program, the
  prompt, the trace length) and however it plays (consistent lies down to the leaf, children
  that do not combine, a truthful tree that does not reach its claim, answering at the last
  second of its clock, stopping at some move), at temperature 0 (argmax) and > 0 (Gumbel).
  Each game checks the winner, the claim's status, where the dispute ended (leftmost differing
  record, first differing element), how (step, immediate loss, timeout), the clocks, and the
  payouts (the game keeps no wei).
- A stateful test (hypothesis.stateful) over one claim and several disputes: honest and
  dishonest moves, strangers' garbage and copied reveals, time passing, timeouts, new disputes,
  finalisation attempts; invariants: the honest side never loses, no early or wrong
  finalisation, conservation of ETH, every dispute bounded and ending.
- Named corruptions, one deterministic game each: prompt, program (a constant, a function),
  trace length (extra, fewer, another count), a reduction-tree child (revealed truthfully or
  lied about consistently), the sample at temperature 0 and > 0, a KV-cache row < t and = t.

The attacks known from fault-proof audits and the anvil runs are in tests/test_game_attacks.py.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from web3 import Web3

from refute.bisection.challenger import Challenger
from refute.bisection.player import Side
from refute.bisection.prover import Prover
from refute.contracts.chain import embedded_chain, set_next_timestamp
from refute.contracts.game import CHALLENGE, CLAIM, ClaimStatus, GameError, Stage
from refute.engine import merkle
from refute.engine.executor import Executor, Request
from refute.engine.ir import Op
from refute.engine.model import Model
from refute.errors import RefuteError
from tests.adversaries import (
    B_C,
    B_X,
    B,
    CachedLogsGame,
    Cheat,
    CheatingProver,
    LyingChallenger,
    Outcome,
    Style,
    cache_history,
    check_dispute,
    copy_move,
    disputes,
    expect,
    flip_record,
    new_game,
    pending_time,
    play_out,
    program_change,
    program_targets,
    prompt_change,
    sampled_token,
    settle_everything,
    skip_history,
    tiny_llama,
    trace_length,
    tree_child,
    weight_bit,
)

PROMPT = (5, 17, 250)
NEW_TOKENS = 3
TEMPERATURES = (0.0, 0.7)


def budget(n: int) -> int:
    """`n` examples (each is a whole game, ~3-5 s) unless the `thorough` profile is loaded."""
    return n if settings.default.max_examples <= 100 else 10 * n


GAME_SETTINGS = settings(
    max_examples=budget(7),
    deadline=None,
    # no shrinking: each example is a whole game, and shrinking one takes many minutes; a
    # failure is reported as drawn, with the scenario in its note
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def model() -> Model:
    return tiny_llama()


# --- strategies ----------------------------------------------------------------------------

KINDS = ("record", "weight", "token", "cache_row", "history", "tree", "program", "prompt",
         "length")  # fmt: skip


def _nodes(op: Op) -> list[int]:
    return [i for i, n in enumerate(tiny_llama().program.nodes) if n.op == op]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    return Request(PROMPT, NEW_TOKENS, draw(st.sampled_from(TEMPERATURES)),
                   draw(st.integers(0, 2**64)))  # fmt: skip


@st.composite
def cheats(draw: st.DrawFn, request: Request) -> Cheat:
    """One corruption of the generation of `request`, drawn over every kind."""
    m = tiny_llama()
    p = m.program
    positions = request.positions
    kind = draw(st.sampled_from(KINDS))
    t = draw(st.integers(0, positions - 1))
    bit = draw(st.integers(0, 31))
    if kind == "record":
        n = draw(st.integers(0, len(p.nodes) - 1))
        size = p.output_size(n, 0 if p.nodes[n].op == Op.CACHE_APPEND else t)
        return flip_record(m, t, n, draw(st.integers(0, size - 1)), bit)
    if kind == "weight":
        w = draw(st.integers(0, len(p.weights) - 1))
        shape = p.weights[w].shape
        if p.weights[w].name == "model.embed_tokens.weight":  # only the rows of tokens used
            row = draw(st.sampled_from(PROMPT))
        elif p.weights[w].name.startswith("rope."):  # only the rows of positions run
            row = draw(st.integers(0, positions - 1))
        else:
            row = draw(st.integers(0, shape[0] - 1))
        cols = int(np.prod(shape[1:]))
        return weight_bit(m, w, row * cols + draw(st.integers(0, cols - 1)), bit)
    if kind == "token":
        i = draw(st.integers(0, NEW_TOKENS - 1))
        return sampled_token(m, request, i, draw(st.integers(1, p.vocab_size - 1)))
    if kind in ("cache_row", "history"):
        n = draw(st.sampled_from(_nodes(Op.CACHE_APPEND)))
        e = draw(st.integers(0, p.output_size(n, 0) - 1))
        if kind == "cache_row":
            return flip_record(m, t, n, e, bit)
        t = max(t, 1)
        return cache_history(m, t, n, draw(st.integers(0, t - 1)), e, bit)
    if kind == "tree":
        n = draw(st.sampled_from(_nodes(Op.REDUCE)))
        e = draw(st.integers(0, p.output_size(n, t) - 1))
        k = p.resolve((p.nodes[n].reduce_len,), t)[0]
        depth = merkle.depth_for(k)
        level = draw(st.integers(0, max(depth - 1, 0)))
        index = draw(st.integers(0, (1 << (depth - level)) - 1))
        return tree_child(m, request, t, n, e, level, index, bit)
    if kind == "program":
        n, what = draw(st.sampled_from(program_targets(m)))
        return program_change(m, n, what, bit)
    if kind == "prompt":
        return prompt_change(m, draw(st.integers(0, len(PROMPT) - 1)),
                             draw(st.integers(1, p.vocab_size - 1)))  # fmt: skip
    variant = draw(st.sampled_from(("extra", "fewer", "count")))
    count = len(p.nodes) * positions
    room = (1 << merkle.depth_for(count)) - count
    if variant == "extra":
        k = draw(st.integers(1, room))
    elif variant == "fewer":
        k = draw(st.integers(1, count - (1 << (merkle.depth_for(count) - 1)) - 1))
    else:
        k = draw(st.integers(-count + 1, room).filter(lambda x: x != 0))
    return trace_length(m, variant, k)


styles = st.builds(
    Style,
    level3=st.sampled_from(("consistent", "inconsistent", "truthful")),
    timing=st.sampled_from(("prompt", "last_second")),
    stop_after=st.none() | st.integers(0, 30),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Request, Cheat, Style]:
    request = draw(requests())
    cheat = draw(cheats(request))
    style = draw(styles)
    note(f"{request}; {cheat.kind}: {cheat.note}; {style}")
    return request, cheat, style


# --- games ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Played:
    """A finished game and its players, for further checks."""

    game: CachedLogsGame
    claim_id: int
    honest: Prover | Challenger
    liar: CheatingProver | LyingChallenger
    out: Outcome
    lie: bool
    summary: dict

    def dispute(self) -> Any:
        return self.game.dispute(0)

    def levels(self) -> list[int]:
        return [e["level"] for e in self.game.events("LevelCompleted", disputeId=0)]

    def verified(self) -> list[dict]:
        return self.game.events("StepVerified", disputeId=0)


def cheating_prover_game(w3: Web3, request: Request, cheat: Cheat, style: Style, tmp: Path,
                         start: Callable[[Played], None] | None = None) -> Played:  # fmt: skip
    """A cheating prover against an honest watcher, played to the end (after `start`, which
    may make the first moves itself) and paid out, with the checks of `check_dispute`."""
    m = tiny_llama()
    game = new_game(w3)
    acc = w3.eth.accounts
    cheater = CheatingProver(game, m, tmp / "c", acc[1], cheat, style.level3)
    watcher = Challenger(game, m, tmp / "w", acc[2])
    skip_history(watcher)
    honest_root = Executor(m).generate([request])[0].trace.root()
    cid = cheater.claim_cheat(request)
    played = Played(game, cid, watcher, cheater, Outcome(), False, {})
    played.lie = lie = game.claim(cid).trace_root != honest_root
    if start is not None:
        start(played)
    played.out = out = play_out(game, watcher, cheater, style)
    played.summary = summary = {"lie": lie, "errors": out.adversary_errors}
    if not lie:  # the corruption changed nothing the claim commits to: it is true
        assert watcher.verdict(cid) == "match" and not disputes(game)
        set_next_timestamp(w3, game.claim(cid).deadline)
        cheater.poll()
        assert game.claim(cid).status == ClaimStatus.FINALIZED
        assert settle_everything(game, acc[1:3]) == {acc[1]: B_C, acc[2]: 0}
        return played
    assert watcher.verdict(cid) == "dispute" and disputes(game) == [0]
    summary |= check_dispute(game, 0, honest=watcher, liar=cheater, claim_id=cid, style=style,
                             out=out)  # fmt: skip
    c = game.claim(cid)
    assert c.status == ClaimStatus.OVERTURNED and c.open_disputes == 0
    cheater.poll()  # (a cheater that stopped answering looks at the chain again)
    assert cheater.status(cid) == "overturned"
    expect("ClaimNotPending", game.finalize, cid)
    moves = game.dispute(0).moves
    if pending_time(w3) < c.deadline:  # the reward is paid once the claim is settled (after W)
        set_next_timestamp(w3, c.deadline)
    # its bond, every move bond (the cheater's as the winning opener), the whole pool B_C / 2
    assert watcher.collect() == B_X + B_C // 2 + moves * B
    assert settle_everything(game, acc[1:3]) == {acc[1]: 0, acc[2]: 0}
    return played


def lying_challenger_game(w3: Web3, request: Request, cheat: Cheat, style: Style,
                          tmp: Path) -> Played:  # fmt: skip
    """An honest prover against a lying challenger, played to the end, finalised, paid out."""
    m = tiny_llama()
    game = new_game(w3)
    acc = w3.eth.accounts
    prover = Prover(game, m, tmp / "p", acc[1])
    liar = LyingChallenger(game, m, tmp / "l", acc[2], cheat, style.level3)
    skip_history(liar)
    cid = prover.claim(request)
    out = play_out(game, prover, liar, style)
    played = Played(game, cid, prover, liar, out, liar.verdict(cid) != "match",
                    {"errors": out.adversary_errors})  # fmt: skip
    if not played.lie:  # its corruption changed nothing: no dispute
        assert not disputes(game)
    else:
        assert liar.verdict(cid) == "dispute" and disputes(game) == [0]
        played.summary |= check_dispute(game, 0, honest=prover, liar=liar, claim_id=cid,
                                        style=style, out=out)  # fmt: skip
    c = game.claim(cid)
    assert c.open_disputes == 0 and c.status in (ClaimStatus.PENDING, ClaimStatus.FINALIZED)
    if c.status == ClaimStatus.PENDING:  # (a slow game may have outlasted the window)
        set_next_timestamp(w3, c.deadline)
        prover.poll()
    assert game.claim(cid).status == ClaimStatus.FINALIZED and prover.status(cid) == "finalized"
    moves = game.dispute(0).moves if played.lie else 0
    won = prover.collect()
    got = settle_everything(game, acc[1:3])
    # the liar gets nothing back (draft 4: no step bounty; its bonds go to the claimant)
    assert got == {acc[1]: 0, acc[2]: 0}
    assert won == B_C + (B_X + moves * B if played.lie else 0)
    return played


@GAME_SETTINGS
@given(scenario=scenarios())
def test_cheating_prover_always_loses(
    embedded_web3: Web3, scenario: tuple[Request, Cheat, Style]
) -> None:
    """Whatever it corrupts and however it plays, a false claim is overturned and the watcher
    takes every bond; a corruption that changes nothing the claim commits to is no lie."""
    with tempfile.TemporaryDirectory() as tmp:
        played = cheating_prover_game(embedded_web3, *scenario, Path(tmp))
    note(str(played.summary))


@GAME_SETTINGS
@given(scenario=scenarios())
def test_honest_prover_always_wins(
    embedded_web3: Web3, scenario: tuple[Request, Cheat, Style]
) -> None:
    """Whatever a challenger corrupts in its own re-execution and however it plays, the
    honest claim wins the dispute and finalises; the prover is paid every bond."""
    with tempfile.TemporaryDirectory() as tmp:
        played = lying_challenger_game(embedded_web3, *scenario, Path(tmp))
    note(str(played.summary))


# --- named corruptions ---------------------------------------------------------------------

REQUEST_0 = Request(PROMPT, NEW_TOKENS, 0.0, 7)
REQUEST_T = Request(PROMPT, NEW_TOKENS, 0.7, 11)


def watcher_step(played: Played) -> dict:
    """The honest watcher's step transaction, from its move log."""
    (entry,) = [m for m in played.honest.moves if m["fn"] == "step"]
    return entry


def test_prompt_lie(embedded_web3: Web3, model: Model, tmp_path: Path) -> None:
    """The prover computes on another prompt (token 1 changed) and claims the original: the
    dispute ends at the embedding of position 1, and the step reads the token from the
    claim's prompt root (the cheater's own step, proved against its prompt, reverts)."""
    cheat = prompt_change(model, 1, 7)
    played = cheating_prover_game(embedded_web3, REQUEST_0, cheat, Style(), tmp_path)
    d = played.dispute()
    embed = model.program.node_index("embed")
    assert (d.position, d.node_id) == (1, embed) and played.levels() == [1, 2]
    c = played.game.claim(played.claim_id)
    assert c.prompt_root == merkle.tensor_root(np.array(PROMPT, dtype=np.uint32))
    (v,) = played.verified()
    width = model.program.output_size(embed, 1)
    true = model.weights[model.program.weight_index("model.embed_tokens.weight")]
    assert not v["claimCorrect"] and v["value"] == f32(true.reshape(-1)[PROMPT[1] * width
                                                                         + d.element])  # fmt: skip
    assert watcher_step(played)["step"] == "map"
    assert any("RootMismatch" in e for e in played.out.adversary_errors)


def f32(x: Any) -> int:
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


@pytest.mark.parametrize(("node", "what", "levels"), [
    ("layers.0.attn.scaled", "const", [1, 2]),  # a MAP node's constant (0.25, one bit off)
    ("layers.0.attn.q", "fn", [1, 2, 3]),  # a REDUCE node's term: q = sum(x + w), not x * w
])  # fmt: skip
def test_program_lie(embedded_web3: Web3, model: Model, tmp_path: Path, node: str, what: str,
                     levels: list[int]) -> None:  # fmt: skip
    """The prover runs a modified program while claiming the registered model: the dispute
    ends at the modified node at position 0, and the step (which reads the node from the
    registered program root) proves the claim wrong."""
    n = model.program.node_index(node)
    cheat = program_change(model, n, what, bit=3)
    played = cheating_prover_game(embedded_web3, REQUEST_T, cheat, Style(), tmp_path)
    d = played.dispute()
    assert (d.position, d.node_id) == (0, n) and played.levels() == levels
    assert played.game.claim(played.claim_id).model_root == model.root
    (v,) = played.verified()
    assert not v["claimCorrect"]


def test_trace_length_extra_records(embedded_web3: Web3, model: Model, tmp_path: Path) -> None:
    """A trace root whose tree holds non-EMPTY leaves after the last record (under a list root
    that still says numRecords): every real record agrees, the descent ends past the last
    record, and the claim side loses there at once (its leaf is not EMPTY)."""
    played = cheating_prover_game(embedded_web3, REQUEST_0, trace_length(model, "extra", 3),
                                  Style(), tmp_path)  # fmt: skip
    d = played.dispute()
    count = played.game.claim(played.claim_id).num_records
    depth = merkle.depth_for(count)
    assert d.index == count and d.height == 0 and d.moves == 2 * depth
    assert played.levels() == [] and not played.out.timeouts_forced


def test_trace_length_fewer_records(embedded_web3: Web3, model: Model, tmp_path: Path) -> None:
    """A trace root over the records but the last 5 (numRecords unchanged): the descent ends
    at the first missing record, whose EMPTY leaf the claim side cannot open; it times out."""
    count = len(model.program.nodes) * REQUEST_0.positions
    missing = count - 5
    state: dict = {}

    def start(p: Played) -> None:
        for _ in range(40):
            d = p.game.dispute(0) if disputes(p.game) else None
            if d is not None and d.stage == Stage.RECORD:
                break
            p.liar.poll()
            p.honest.poll()
        t, n = divmod(missing, len(model.program.nodes))
        assert (d.position, d.node_id, d.to_move) == (t, n, CLAIM)
        side = p.liar.side_for(p.claim_id)  # its real record there cannot open an EMPTY leaf
        expect("RecordMismatch", p.game.open_record, 0, *side.record_open(t, n),
               side.prover.node_proof(n), sender=p.liar.account)  # fmt: skip
        state["checked"] = True

    played = cheating_prover_game(embedded_web3, REQUEST_0, trace_length(model, "fewer", 5),
                                  Style(), tmp_path, start)  # fmt: skip
    d = played.dispute()
    assert state["checked"] and played.out.timeouts_forced == 1 and d.to_move == CLAIM
    assert d.position * len(model.program.nodes) + d.node_id == missing


@pytest.mark.parametrize("delta", [1, -1])
def test_trace_length_other_count(embedded_web3: Web3, model: Model, tmp_path: Path,
                                  delta: int) -> None:  # fmt: skip
    """A list root over numRecords + delta records: the claim side cannot open its root (the
    contract checks the first reveal against the list root over numRecords) and times out."""

    def start(p: Played) -> None:
        p.honest.poll()  # the watcher opens the dispute
        tree = p.liar.side_for(p.claim_id).prover.trace_tree
        d = p.game.dispute(0)
        expect("ChildrenMismatch", p.game.reveal_children, 0,
               *Side.children(tree, d.height, d.index), sender=p.liar.account)  # fmt: skip

    played = cheating_prover_game(embedded_web3, REQUEST_0, trace_length(model, "count", delta),
                                  Style(), tmp_path, start)  # fmt: skip
    d = played.dispute()
    assert d.moves == 0 and d.stage == Stage.RESOLVED and played.out.timeouts_forced == 1


@pytest.mark.parametrize("level3", ["truthful", "consistent"])
def test_reduction_tree_child_lie(embedded_web3: Web3, model: Model, tmp_path: Path,
                                  level3: str) -> None:  # fmt: skip
    """The prover corrupts node (3, 1) of the reduction tree of logit 17 at position 2 and
    commits the corrupted tree's root. Revealing its tree as it is, its children fail to
    combine at the corrupted node: it loses there at once. Lying consistently below it, it
    reaches a leaf of that node's subtree and loses at the step."""
    n = model.program.node_index("lm_head")
    t, e, level, index = 2, 17, 3, 1
    cheat = tree_child(model, REQUEST_T, t, n, e, level, index, bit=27)
    played = cheating_prover_game(embedded_web3, REQUEST_T, cheat, Style(level3), tmp_path)
    d = played.dispute()
    assert played.lie and (d.position, d.node_id, d.element) == (t, n, e)
    claim_moves = [m for m in played.game.events("Moved", disputeId=0)
                   if m["side"] == CLAIM and m["level"] == 3]  # fmt: skip
    depth = merkle.depth_for(model.program.nodes[n].reduce_len)
    if level3 == "truthful":
        assert played.levels() == [1, 2] and not played.verified()
        last = played.game.events("Moved", disputeId=0)[-1]
        assert (last["side"], last["level"], last["index"]) == (CLAIM, 3, index)
        assert len(claim_moves) == depth - level + 1
    else:
        assert played.levels() == [1, 2, 3] and len(claim_moves) == depth
        assert d.index >> level == index  # a leaf under the corrupted node
        (v,) = played.verified()
        assert not v["claimCorrect"] and watcher_step(played)["step"] == "reduce_leaf"


@pytest.mark.parametrize(("request_", "level3"), [
    (REQUEST_0, "consistent"), (REQUEST_T, "consistent"), (REQUEST_T, "truthful"),
], ids=["argmax-consistent", "gumbel-consistent", "gumbel-truthful"])  # fmt: skip
def test_sampled_token_lie(embedded_web3: Web3, model: Model, tmp_path: Path,
                           request_: Request, level3: str) -> None:  # fmt: skip
    """The second generated token replaced (its SAMPLE record): level 3 starts from an index
    only (the committed output); a consistent liar is followed down to a leaf and the step
    recomputes its score (logit, or logit / T + Gumbel noise); a truthful one's tree does not
    select its token and it loses at the root."""
    p = model.program
    cheat = sampled_token(model, request_, 1, 5)
    played = cheating_prover_game(embedded_web3, request_, cheat, Style(level3), tmp_path)
    d = played.dispute()
    t = len(PROMPT)
    assert (d.position, d.node_id, d.element) == (t, p.token_node, 0)
    (_record, element, *rest) = played.game.events("LevelCompleted", disputeId=0)
    honest = played.honest.side_for(played.claim_id).gen.tokens[t + 1]
    cheated = played.liar.side_for(played.claim_id).gen.tokens[t + 1]
    assert cheated == (honest + 5) % p.vocab_size
    assert (int.from_bytes(element["claimValue"], "big"),
            int.from_bytes(element["challengeValue"], "big")) == (cheated, honest)  # fmt: skip
    if level3 == "consistent":
        (leaf,) = rest
        assert leaf["where"] == d.index
        (v,) = played.verified()
        assert not v["claimCorrect"] and watcher_step(played)["step"] in ("sample_leaf",
                                                                          "pad_leaf")  # fmt: skip
    else:
        assert rest == [] and not played.verified()
        last = played.game.events("Moved", disputeId=0)[-1]
        assert (last["side"], last["level"], last["index"]) == (CLAIM, 3, 0)


@pytest.mark.parametrize("row", ["t", "older"])
def test_kv_cache_lie(embedded_web3: Web3, model: Model, tmp_path: Path, row: str) -> None:
    """A KV-cache record at position 3 with a bit flipped in its new row t (checked against
    the appended operand, k_rope at t) or in an older row (history rewritten: checked against
    the same element of the record at t - 1)."""
    p = model.program
    n = p.node_index("layers.1.attn.k_cache" if row == "t" else "layers.0.attn.v_cache")
    size = p.output_size(n, 0)
    t, r, e = 3, (3 if row == "t" else 1), 5
    cheat = (flip_record(model, t, n, e, 22) if row == "t"
             else cache_history(model, t, n, r, e, 22))  # fmt: skip
    played = cheating_prover_game(embedded_web3, REQUEST_T, cheat, Style(), tmp_path)
    d = played.dispute()
    assert (d.position, d.node_id, d.element) == (t, n, r * size + e)
    assert played.levels() == [1, 2]
    (v,) = played.verified()
    assert not v["claimCorrect"]
    assert watcher_step(played)["step"] == ("cache_new" if row == "t" else "cache_prev")


# --- stateful ------------------------------------------------------------------------------


@functools.cache
def stateful_chain() -> Web3:
    """A chain of its own for the state machine (it cannot take pytest fixtures)."""
    return embedded_chain()


@functools.cache
def lie(i: int) -> Cheat:
    """The corruptions of the state machine's dishonest parties (REQUEST_T's generation)."""
    m = tiny_llama()
    p = m.program
    return [
        lambda: flip_record(m, 2, p.node_index("lm_head"), 17, 12),  # REDUCE: level 3
        lambda: flip_record(m, 1, p.node_index("layers.0.attn.residual"), 9, 30),  # MAP
        lambda: sampled_token(m, REQUEST_T, 1, 3),  # SAMPLE
        lambda: cache_history(m, 3, p.node_index("layers.0.attn.k_cache"), 1, 3, 25),
        lambda: weight_bit(m, p.weight_index("model.layers.1.mlp.down_proj.weight"), 77, 27),
    ][i]()


LIES = 5
MARGIN = 300  # seconds: how close to its deadline an honest party lets its clock run


def max_moves(model: Model, positions: int) -> int:
    """Moves of a dispute at most (docs/protocol.md section 3): both sides at every level of
    the trace tree, the record openings, every level of the widest chunk tree, the chunks and
    every level of the widest reduction tree."""
    p = model.program
    trace = merkle.depth_for(len(p.nodes) * positions)
    chunks = tree = 0
    for t in range(positions):
        for n, node in enumerate(p.nodes):
            chunks = max(chunks, merkle.depth_for(-(-p.output_size(n, t) // 256)))
            if node.op in (Op.REDUCE, Op.SAMPLE):
                width = p.resolve((node.reduce_len,), t)[0]
                tree = max(tree, merkle.depth_for(width))
    return 2 * (trace + 1) + 2 * (chunks + 1) + 2 * tree


class DisputeMachine(RuleBasedStateMachine):
    """One claim (honest, or a lie), disputes against it (a lie against an honest claim; an
    honest watcher, or another lie, against a false one), and everything anyone may do."""

    def __init__(self) -> None:
        super().__init__()
        self.w3 = stateful_chain()
        self.acc = self.w3.eth.accounts
        self.strangers = self.acc[7:10]
        self.game = new_game(self.w3)
        self.tmp = Path(tempfile.mkdtemp(prefix="refute-machine-"))
        self.model = tiny_llama()
        self.claim_id: int | None = None
        self.claim_block = 0
        self.challengers: list[Challenger] = []
        self.honest_side: list[int | None] = []  # per dispute: the honest side, if any
        self.used: set[int] = set()
        self.bound = max_moves(self.model, REQUEST_T.positions)
        self._cache: tuple[int, list[Any]] = (-1, [])

    # --- helpers ---------------------------------------------------------------------------

    def _dispute(self, i: int) -> tuple[int, Any]:
        did = i % len(self.challengers)
        return did, self.game.dispute(did)

    def _states(self) -> list[Any]:
        """Every dispute's state, read once per block (getDispute is a slow call here)."""
        block = self.w3.eth.block_number
        if self._cache[0] != block or len(self._cache[1]) != len(self.challengers):
            self._cache = (block, [self.game.dispute(i) for i in range(len(self.challengers))])
        return self._cache[1]

    def _honest(self, did: int, side: int) -> bool:
        return self.honest_side[did] == side

    def _player(self, did: int, side: int) -> Prover | Challenger:
        return self.claimant if side == CLAIM else self.challengers[did]

    def _open(self, lie_index: int | None) -> None:
        k = len(self.challengers)
        directory, account = self.tmp / f"challenger{k}", self.acc[2 + k]
        if lie_index is None:
            ch = Challenger(self.game, self.model, directory, account)
        else:
            ch = LyingChallenger(self.game, self.model, directory, account, lie(lie_index))
            self.used.add(lie_index)
        ch.store["cursor"] = self.claim_block
        ch.poll()  # re-executes the claim, opens a dispute
        assert ch.verdict(self.claim_id) == "dispute", ch.verdict(self.claim_id)
        (did,) = (int(k) for k in ch.disputes)
        assert did == len(self.challengers)
        self.challengers.append(ch)
        if self.honest_claim:
            self.honest_side.append(CLAIM)
        else:
            self.honest_side.append(CHALLENGE if lie_index is None else None)

    def _honest_deadline(self) -> float:
        """The latest time the chain may reach: the honest side answers within its clock."""
        limit = float("inf")
        for did, d in enumerate(self._states()):
            to_move = CLAIM if d.stage == Stage.STEP else d.to_move
            if d.stage != Stage.RESOLVED and self._honest(did, to_move):
                limit = min(limit, d.turn_start + d.clock[d.to_move])
        return limit

    def _travel(self, target: float) -> None:
        target = min(target, self._honest_deadline() - MARGIN)
        if target > pending_time(self.w3):
            set_next_timestamp(self.w3, int(target))

    def _honest_on_time(self) -> None:
        """The honest parties are online: one whose clock is within MARGIN of running out
        moves now (every rule starts with this; a rule sends far fewer than MARGIN blocks,
        one second each, and time jumps stop MARGIN short of an honest deadline)."""
        now = pending_time(self.w3)
        for did, d in enumerate(self._states()):
            side = CLAIM if d.stage == Stage.STEP else d.to_move
            if d.stage != Stage.RESOLVED and self._honest(did, side):
                if d.turn_start + d.clock[d.to_move] - now < MARGIN:
                    self._move(did, side)

    def _move(self, did: int, side: int) -> None:
        """The side's own client makes its move (a dishonest client's reverts are its own)."""
        player = self._player(did, side)
        try:
            if side == CLAIM:
                player.poll()
            else:
                player.play(did)
        except RefuteError:
            if self._honest(did, side):
                raise

    # --- rules -----------------------------------------------------------------------------

    @initialize(honest_claim=st.booleans(), first=st.integers(0, LIES - 1),
                advance=st.integers(0, 40))  # fmt: skip
    def post_claim(self, honest_claim: bool, first: int, advance: int) -> None:
        """Post the claim, open the first dispute, and let both sides play `advance` moves
        (so that the rules start at any stage of the game)."""
        self.honest_claim = honest_claim
        self.claim_block = self.w3.eth.block_number
        if honest_claim:
            self.claimant = Prover(self.game, self.model, self.tmp / "claimant", self.acc[1])
            self.claim_id = self.claimant.claim(REQUEST_T)
        else:
            self.claimant = CheatingProver(self.game, self.model, self.tmp / "claimant",
                                           self.acc[1], lie(first))  # fmt: skip
            self.claim_id = self.claimant.claim_cheat(REQUEST_T)
            self.used.add(first)
        self._open(first if honest_claim else None)
        while self.game.dispute(0).moves < advance:
            d = self.game.dispute(0)
            if d.stage in (Stage.STEP, Stage.RESOLVED):
                break
            self._move(0, d.to_move)
            assert self.game.dispute(0) != d, "a client did not move"

    @rule(i=st.integers(0, 3), side=st.sampled_from((CLAIM, CHALLENGE)))
    def side_moves(self, i: int, side: int) -> None:
        """One side's client moves (honestly, or lying consistently)."""
        self._honest_on_time()
        did, _ = self._dispute(i)
        self._move(did, side)

    @rule(i=st.integers(0, 3), rounds=st.integers(1, 8))
    def both_play(self, i: int, rounds: int) -> None:
        """Both clients of a dispute play some rounds (to reach the deeper levels)."""
        self._honest_on_time()
        did, _ = self._dispute(i)
        for _ in range(rounds):
            self._move(did, CLAIM)
            self._move(did, CHALLENGE)

    @rule(i=st.integers(0, 3), data=st.binary(min_size=64, max_size=64))
    def garbage(self, i: int, data: bytes) -> None:
        """The dishonest side's owner, or a stranger for either side, sends garbage: at levels
        1 and 2 it reverts and changes nothing; at level 3 a stranger is refused, and the
        owner's children that do not combine lose the dispute at once."""
        self._honest_on_time()
        did, d = self._dispute(i)
        if d.stage in (Stage.RESOLVED, Stage.STEP):
            return
        side = d.to_move
        owner = self.acc[1] if side == CLAIM else self.challengers[did].account
        sender = self.strangers[data[0] % 3] if self._honest(did, side) or data[1] & 1 else owner
        g = self.game
        before, balance = d, self.w3.eth.get_balance(g.game.address)
        late = pending_time(self.w3) - d.turn_start > d.clock[side]
        try:
            if d.stage in (Stage.TRACE, Stage.CHUNKS):
                g.reveal_children(did, data[:32], data[32:], sender=sender)
            elif d.stage == Stage.RECORD:
                g.open_record(did, data[0] & 1, int.from_bytes(data[1:4]), data[32:], None,
                              sender=sender)  # fmt: skip
            elif d.stage == Stage.CHUNK:
                g.reveal_chunk(did, data * 16, data * 16, sender=sender)
            else:
                lv, rv = int.from_bytes(data[:4]), int.from_bytes(data[4:8])
                g.reveal_reduction(did, lv, 0, rv, 0, sender=sender)
        except GameError as exc:
            expected = {
                Stage.TRACE: "ChildrenMismatch", Stage.CHUNKS: "ChildrenMismatch",
                Stage.RECORD: "RecordMismatch", Stage.CHUNK: "ChunkMismatch",
                Stage.REDUCTION: "NotSideOwner" if sender != owner else None,
            }[d.stage]  # fmt: skip
            assert exc.name == ("ClockExpired" if late else expected), exc.name
            event(f"garbage at {d.stage.name}: {exc.name}")
            assert g.dispute(did) == before and self.w3.eth.get_balance(g.game.address) == balance
            return
        assert d.stage == Stage.REDUCTION and sender == owner and not late
        after = g.dispute(did)
        if after.stage == Stage.RESOLVED:
            assert after.winner == 2 - side
            event("garbage at REDUCTION by the owner: it loses at once")
        else:  # (by a fluke, children that combine: a move like any other)
            assert after.moves == d.moves + 1

    @rule(i=st.integers(0, 3), stranger=st.integers(0, 2))
    def stranger_copies(self, i: int, stranger: int) -> None:
        """A stranger sends the correct reveal of the side to move: at levels 1 and 2 it is
        that side's move (the stranger is its mover); at level 3 it is refused; the step is
        open to anyone."""
        self._honest_on_time()
        did, d = self._dispute(i)
        if d.stage == Stage.RESOLVED:
            return
        sender = self.strangers[stranger]
        side = CLAIM if d.stage == Stage.STEP else d.to_move
        owner_side = self._player(did, side).side_for(self.claim_id)
        late = pending_time(self.w3) - d.turn_start > d.clock[d.to_move]
        if d.stage == Stage.STEP:
            honest = next((s for s in (CLAIM, CHALLENGE) if self._honest(did, s)), None)
            if honest is None:
                return
            player = self._player(did, honest)
            call = player.side_for(self.claim_id).step_call(
                self.game, did, d, honest, self.claim_block)  # fmt: skip
            if late:
                expect("ClockExpired", self.game.step, did, call, len(self.model.weights),
                       sender=sender)  # fmt: skip
                return
            self.game.step(did, call, len(self.model.weights), sender=sender)
            assert self.game.dispute(did).winner == honest + 1
            event("a stranger calls the step")
            return
        if d.stage == Stage.REDUCTION or late:
            expect("ClockExpired" if late else "NotSideOwner", copy_move, self.game, did,
                   owner_side, sender)  # fmt: skip
            assert self.game.dispute(did) == d
            event(f"copy at {d.stage.name}: refused")
            return
        copy_move(self.game, did, owner_side, sender)
        event(f"copy at {d.stage.name}: {'honest' if self._honest(did, side) else 'dishonest'}")
        after = self.game.dispute(did)
        assert after.moves == d.moves + 1
        last = self.game.events("Moved", self.game.w3.eth.block_number, disputeId=did)[-1]
        assert (last["mover"], last["side"]) == (sender, side)

    @rule(i=st.integers(0, 3), fraction=st.floats(0, 1), beyond=st.booleans(),
          extra=st.integers(1, 4000))  # fmt: skip
    def time_passes(self, i: int, fraction: float, beyond: bool, extra: int) -> None:
        """Time passes: within the clock of the side to move, or beyond it (never beyond the
        honest side's: it answers in time)."""
        self._honest_on_time()
        _, d = self._dispute(i)
        now = pending_time(self.w3)
        if d.stage != Stage.RESOLVED and beyond:
            self._travel(d.turn_start + d.clock[d.to_move] + extra)
        elif d.stage != Stage.RESOLVED:
            self._travel(now + fraction * max(0, d.turn_start + d.clock[d.to_move] - now))
        else:
            self._travel(now + extra)

    @rule(i=st.integers(0, 3), caller=st.integers(0, 9))
    def call_timeout(self, i: int, caller: int) -> None:
        """Anyone calls timeout: it resolves against the side to move iff its clock ran out."""
        self._honest_on_time()
        did, d = self._dispute(i)
        if d.stage == Stage.RESOLVED:
            expect("DisputeNotActive", self.game.timeout, did, sender=self.acc[caller])
            return
        expired = pending_time(self.w3) - d.turn_start > d.clock[d.to_move]
        if not expired:
            expect("ClockNotExpired", self.game.timeout, did, sender=self.acc[caller])
            assert self.game.dispute(did) == d
            return
        self.game.timeout(did, sender=self.acc[caller])
        assert self.game.dispute(did).winner == 2 - d.to_move
        event("timeout resolves")

    @rule(lie_index=st.integers(0, LIES - 1), watcher=st.booleans())
    def open_another(self, lie_index: int, watcher: bool) -> None:
        """Another challenger: a lie (another wrong root) against an honest claim; an honest
        watcher or a lie against a false one. Only within the window, while pending."""
        self._honest_on_time()
        if len(self.challengers) >= 4 or lie_index in self.used:
            return
        honest_watcher = watcher and not self.honest_claim
        c = self.game.claim(self.claim_id)
        if c.status != ClaimStatus.PENDING or pending_time(self.w3) >= c.deadline:
            gen = lie(lie_index).generate(REQUEST_T)
            error = "ClaimNotPending" if c.status != ClaimStatus.PENDING else "WindowClosed"
            expect(error, self.game.open_dispute, self.claim_id, gen.trace.root(),
                   sender=self.acc[2 + len(self.challengers)])  # fmt: skip
            event(f"open: {error}")
            return
        self._open(None if honest_watcher else lie_index)
        event("open another dispute")

    @rule(caller=st.integers(0, 9))
    def try_finalize(self, caller: int) -> None:
        """Finalisation: only when pending, after the window, with no dispute open."""
        self._honest_on_time()
        c = self.game.claim(self.claim_id)
        now = pending_time(self.w3)
        if c.status != ClaimStatus.PENDING:
            error = "ClaimNotPending"
        elif now < c.deadline:
            error = "WindowOpen"
        elif c.open_disputes:
            error = "DisputesOpen"
        else:
            self.game.finalize(self.claim_id, sender=self.acc[caller])
            assert self.honest_claim
            event("finalize")
            return
        expect(error, self.game.finalize, self.claim_id, sender=self.acc[caller])
        event(f"finalize: {error}")

    @rule(i=st.integers(0, 3), account=st.integers(0, 9))
    def settle(self, i: int, account: int) -> None:
        """Move bonds are credited only once a dispute has resolved."""
        self._honest_on_time()
        did, d = self._dispute(i)
        if d.stage != Stage.RESOLVED:
            assert self.game.owed(did, self.acc[account]) == 0
            expect("NotResolved", self.game.settle, did, self.acc[account])
        else:
            self.game.settle(did, self.acc[account])
            assert self.game.owed(did, self.acc[account]) == 0

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def honest_side_never_loses(self) -> None:
        for did, (honest, d) in enumerate(zip(self.honest_side, self._states(), strict=True)):
            assert d.moves <= self.bound
            if d.stage == Stage.RESOLVED and honest is not None:
                assert d.winner == honest + 1, f"dispute {did}: the honest side lost"

    @invariant()
    def claim_is_right(self) -> None:
        if self.claim_id is None:
            return
        c = self.game.claim(self.claim_id)
        unresolved = sum(d.stage != Stage.RESOLVED for d in self._states())
        assert c.open_disputes == unresolved
        if self.honest_claim:
            assert c.status != ClaimStatus.OVERTURNED
        else:
            assert c.status != ClaimStatus.FINALIZED
        if c.status == ClaimStatus.FINALIZED:
            (event,) = self.game.events("ClaimFinalized")
            when = self.w3.eth.get_block(event["blockNumber"])["timestamp"]
            assert when >= c.deadline and c.open_disputes == 0

    @invariant()
    def conservation(self) -> None:
        """The game holds exactly the outstanding bonds, the credits, the unpaid rewards and
        what was burned (G5)."""
        if self.claim_id is None:
            return
        g = self.game
        held = sum(g.credit(a) for a in self.acc) + g.burned()  # (accounts[0]: the fees)
        c = g.claim(self.claim_id)
        if c.status == ClaimStatus.PENDING:
            held += B_C
        elif c.status == ClaimStatus.OVERTURNED:  # the reward pool, or what is left of it
            unit = (B_C // 2) // c.wins
            shares = sum(g.reward_shares(self.claim_id, a) for a in self.acc)
            held += shares * unit if c.dust_burned else B_C // 2
        for did, d in enumerate(self._states()):
            if d.stage != Stage.RESOLVED:
                held += B_X + d.moves * B
            else:
                movers = {m["mover"] for m in g.events("Moved", disputeId=did)}
                held += sum(g.owed(did, a) for a in movers)
        assert self.w3.eth.get_balance(g.game.address) == held

    def teardown(self) -> None:
        """Every dispute ends: the honest sides play on, the dishonest ones stop and time out;
        then the claim resolves the right way and the game pays out everything."""
        try:
            if self.claim_id is not None:
                self._play_to_the_end()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _play_to_the_end(self) -> None:
        g = self.game
        for _ in range(4 * self.bound):
            active = [did for did in range(len(self.challengers))
                      if g.dispute(did).stage != Stage.RESOLVED]  # fmt: skip
            if not active:
                break
            for did in active:
                for side in (CLAIM, CHALLENGE):
                    if self._honest(did, side):
                        self._move(did, side)
            for did in active:
                d = g.dispute(did)
                if d.stage == Stage.RESOLVED:
                    continue
                self._travel(d.turn_start + d.clock[d.to_move] + 1)
                if pending_time(self.w3) - d.turn_start > d.clock[d.to_move]:
                    g.timeout(did, sender=self.strangers[0])
        else:
            raise AssertionError("the disputes did not end")
        self.honest_side_never_loses()
        c = g.claim(self.claim_id)
        if c.status == ClaimStatus.PENDING:
            self._travel(c.deadline)
            g.finalize(self.claim_id, sender=self.strangers[0])
        final = g.claim(self.claim_id).status
        assert final == (ClaimStatus.FINALIZED if self.honest_claim else ClaimStatus.OVERTURNED)
        settle_everything(g, list(self.acc[1:]))


DisputeMachine.TestCase.settings = settings(
    max_examples=budget(5),
    stateful_step_count=12,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestDisputeMachine = DisputeMachine.TestCase
