"""Dishonest parties for the adversarial tests of the dispute game (tests/test_adversarial.py,
tests/test_game_attacks.py): what they corrupt, how they play, and a driver that plays a whole
game between one honest client and one adversary.

- `Cheat`: what a dishonest party computes and commits to. Builders: `flip_record` (one bit of
  one element of one record, any node kind; a new token for SAMPLE records), `weight_bit`,
  `sampled_token`, `cache_history` (a KV-cache record whose row r < t is rewritten),
  `tree_child` (one node of an element's reduction tree, the output being the corrupted tree's
  root), `program_change` (a node's function or constant), `prompt_change` (computes on another
  prompt), `trace_length` (a trace root over extra, fewer, or another count of records).
- `LyingSide`: a `refute.bisection.player.Side` whose level-3 reveals are its own tree
  ("truthful"), fabricated to combine to its committed value ("consistent": for SUM through
  `Side`'s own fabrication, for MAX, ARGMAX and SAMPLE here) or made not to combine
  ("inconsistent").
- `CheatingProver` / `LyingChallenger`: the real clients (`Prover`, `Challenger`) with such a
  side and a cheating executor.
- `Style` and `play_out`: the adversary answers at once or at the last second of its clock,
  and may stop answering after some moves; the honest client plays normally; a round without
  progress lets the stalling side's clock run out (never the honest side's: that fails).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from web3 import Web3

from refute.bisection.challenger import Challenger
from refute.bisection.player import Player, Side, request_to_json
from refute.bisection.prover import Prover
from refute.contracts.chain import set_next_timestamp
from refute.contracts.game import (
    CHALLENGE,
    CLAIM,
    ClaimStatus,
    GameClient,
    GameError,
    GameParams,
    Stage,
)
from refute.contracts.onestep import ListTree, StepProver, f32_bits
from refute.engine import merkle, steps
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Generation, Request
from refute.engine.ir import Fn, Op, Reducer, Src
from refute.engine.model import Model
from refute.engine.trace import Trace
from refute.errors import RefuteError

PARAMS = GameParams(
    claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15, window=3600, clock=1800,
    extension=120,
)  # fmt: skip
B_C, B_X, B = PARAMS.claim_bond, PARAMS.challenge_bond, PARAMS.move_bond
NEG_INF = 0xFF800000
MAX_FINITE = 0x7F7FFFFF
CANONICAL_NAN = 0x7FC00000


@functools.cache
def tiny_llama() -> Model:
    """The test model, loaded once per process (hypothesis tests cannot take fixtures)."""
    return load_model("tiny-llama")


def expect(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> GameError:
    """Call `fn` and check that it reverts with the custom error `name`."""
    with pytest.raises(GameError) as info:
        fn(*args, **kwargs)
    assert info.value.name == name, f"expected {name}, got {info.value.name}"
    return info.value


def pending_time(w3: Web3) -> int:
    """The timestamp the next transaction runs at."""
    return int(w3.eth.get_block("pending")["timestamp"])


def bits(x: Any) -> int:
    """float32 bits without canonicalising NaN (unlike `f32_bits`)."""
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def from_bits(b: int) -> np.float32:
    """The float32 with bits `b`."""
    return np.array([b], dtype=np.uint32).view(np.float32)[0]


# --- a faster game client for the embedded chain ---------------------------------------------


class CachedLogsGame(GameClient):
    """A GameClient whose `events` reads each mined block's logs once. eth-tester's eth_getLogs
    re-reads every receipt of the range on each call and the clients poll from their claim's
    block, so a game costs O(blocks^2) receipt reads; mined blocks never change, so caching
    them changes nothing but the time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first = self.w3.eth.block_number
        self._logs: dict[str, tuple[int, list[dict]]] = {}

    def events(self, name: str, from_block: int = 0, **filters: Any) -> list[dict]:
        latest = self.w3.eth.block_number
        upto, logs = self._logs.get(name, (self._first - 1, []))
        if latest > upto:  # (single-threaded: no block is mined during the call)
            logs = logs + super().events(name, upto + 1)
            self._logs[name] = (latest, logs)
        return [
            e
            for e in logs
            if e["blockNumber"] >= from_block and all(e[k] == v for k, v in filters.items())
        ]


def new_game(w3: Web3) -> CachedLogsGame:
    """A fresh deployment (PARAMS) with tiny-llama registered: one per game, so that its ETH
    balance can be checked to the wei."""
    game = CachedLogsGame.deploy(w3=w3, params=PARAMS)
    game.register(tiny_llama())
    return game


# --- corruptions ---------------------------------------------------------------------------------


class ForgedTrace(Trace):
    """A trace whose committed root is not the list root of its records: `tree` holds the
    leaves the forger descends (its records with some added or dropped) and `root()` the root
    it posts. Records (`roots`) and `num_records` stay the real ones."""

    def __init__(self, real: Trace, tree: ListTree, root: bytes) -> None:
        super().__init__(real.nodes_per_position, real.roots, real._tree)
        self.real = real
        self.tree = tree
        self.forged_root = root

    def root(self) -> bytes:
        return self.forged_root


@dataclass
class Cheat:
    """What a dishonest party computes and commits to instead of the honest generation."""

    kind: str
    executor: Executor
    remap: Callable[[Request], Request] = lambda r: r  # the request it actually computes
    forge: Callable[[Generation], None] | None = None  # replaces the trace it commits to
    trees: dict[tuple[int, int, int], Callable[[list], list]] = field(default_factory=dict)
    note: str = ""

    def generate(self, request: Request) -> Generation:
        (gen,) = self.executor.generate([self.remap(request)])
        if self.forge is not None:
            self.forge(gen)
        return gen


def _flip(value: np.ndarray, flat: int, bit: int) -> np.ndarray:
    out = np.array(value, copy=True)
    out.reshape(-1).view(np.uint32)[flat] ^= np.uint32(1 << bit)
    return out


def flip_record(model: Model, t: int, n: int, element: int, bit: int) -> Cheat:
    """One bit of element `element` of record (t, n)'s output. For a CACHE_APPEND node the
    element is one of row t (the appended row); for the SAMPLE node the token is moved by
    1 + element (mod vocabulary) instead, so that it stays a token."""
    p = model.program
    vocab = p.vocab_size

    def tamper(pos: int, node: int, out: np.ndarray) -> np.ndarray:
        if (pos, node) != (t, n):
            return out
        if p.nodes[n].op == Op.SAMPLE:
            return (np.asarray(out, dtype=np.uint32) + 1 + element) % vocab
        return _flip(out, element, bit)

    note = f"record ({t}, {n}) e{element} b{bit}"
    return Cheat("record", Executor(model, tamper=tamper), note=note)


def sampled_token(model: Model, request: Request, i: int, delta: int) -> Cheat:
    """Output token i moved by `delta` (its SAMPLE record's output)."""
    t = len(request.prompt) - 1 + i
    cheat = flip_record(model, t, model.program.token_node, delta - 1, 0)
    return dataclasses.replace(cheat, kind="token", note=f"token {i} +{delta}")


def weight_bit(model: Model, w: int, element: int, bit: int) -> Cheat:
    """The prover runs weights with one bit flipped and claims the registered model."""
    weights = [np.array(x, copy=True) for x in model.weights]
    weights[w] = _flip(weights[w], element, bit)
    bad = dataclasses.replace(model, weights=weights, _tensor_roots=None)
    return Cheat("weight", Executor(bad), note=f"weight {w} e{element} b{bit}")


class HistoryRewriter(Executor):
    """An executor whose KV-cache record (t0, n0) rewrites one bit of an older row: the
    appended row and later positions are untouched, only that record's output (its whole
    cache, committed and used downstream at t0) has row < t0 changed."""

    def __init__(self, model: Model, t0: int, n0: int, flat: int, bit: int) -> None:
        super().__init__(model)
        self.target = (t0, n0, flat, bit)

    def _store(
        self,
        node_id: int,
        rows: list[tuple[Generation, int]],
        results: list[np.ndarray],
        outs: list[list[np.ndarray]],
        appends: list[tuple[int, int, merkle.GrowingTensor, np.ndarray]] | None,
    ) -> None:
        super()._store(node_id, rows, results, outs, appends)
        t0, n0, flat, bit = self.target
        if node_id != n0:
            return
        for i, (_gen, t) in enumerate(rows):
            if t == t0:
                outs[i][node_id] = _flip(outs[i][node_id], flat, bit)
                if appends is not None:  # the record commits the rewritten cache
                    k = next(k for k, a in enumerate(appends) if a[:2] == (i, node_id))
                    _, _, commitment, row = appends[k]
                    root = merkle.tensor_root(outs[i][node_id])
                    appends[k] = (i, node_id, _RootedAs(commitment, root), row)


class _RootedAs:
    """A cache commitment that grows honestly but reports `root` for this one append."""

    def __init__(self, commitment: merkle.GrowingTensor, root: bytes) -> None:
        self.commitment, self.root = commitment, root

    def extend_root(self, row: np.ndarray) -> bytes:
        self.commitment.extend_root(row)
        return self.root


def cache_history(model: Model, t: int, n: int, row: int, element: int, bit: int) -> Cheat:
    """Record (t, n) of a CACHE_APPEND node with row `row` < t rewritten."""
    assert model.program.nodes[n].op == Op.CACHE_APPEND and 0 <= row < t
    size = model.program.output_size(n, 0)
    flat = row * size + element
    return Cheat("history", HistoryRewriter(model, t, n, flat, bit),
                 note=f"cache ({t}, {n}) row {row} e{element} b{bit}")  # fmt: skip


def corrupt_levels(reducer: Reducer, levels: list, level: int, index: int, bit: int) -> list:
    """The levels of a reduction tree with node (level, index) flipped at `bit` of its value
    and every ancestor recomputed with the reducer's combine step."""
    out = [list(lv) for lv in levels]
    argmax = reducer == Reducer.ARGMAX
    v = out[level][index]
    if argmax:
        out[level][index] = (from_bits(bits(v[0]) ^ (1 << bit)), v[1])
    else:
        out[level][index] = from_bits(bits(v) ^ (1 << bit))
    for h in range(level + 1, len(out)):
        i = index >> (h - level)
        out[h][i] = steps.combine(reducer, out[h - 1][2 * i], out[h - 1][2 * i + 1])
    return out


def tree_child(
    model: Model, request: Request, t: int, n: int, element: int, level: int, index: int, bit: int
) -> Cheat:
    """Node (level, index) of element `element`'s reduction tree of record (t, n) corrupted
    (level 0: a leaf term); the committed element is the corrupted tree's root."""
    node = model.program.nodes[n]
    assert node.op == Op.REDUCE
    ex = Executor(model)
    (gen,) = ex.generate([request])
    levels, _ = StepProver(model, ex, gen).tree_levels(t, n, element)
    bad = corrupt_levels(node.reducer, levels, level, index, bit)
    root = bad[-1][0]

    def tamper(pos: int, node_id: int, out: np.ndarray) -> np.ndarray:
        if (pos, node_id) != (t, n):
            return out
        out = np.array(out, dtype=np.float32, copy=True)
        out.reshape(-1)[element] = root
        return out

    def corrupt(true_levels: list) -> list:
        return corrupt_levels(node.reducer, true_levels, level, index, bit)

    return Cheat("tree", Executor(model, tamper=tamper), trees={(t, n, element): corrupt},
                 note=f"tree ({t}, {n}) e{element} node ({level}, {index}) b{bit}")  # fmt: skip


OTHER_FN = {
    Fn.COPY: Fn.NEG, Fn.ADD: Fn.SUB, Fn.SUB: Fn.ADD, Fn.MUL: Fn.ADD, Fn.DIV: Fn.MUL,
    Fn.SILU: Fn.SIGMOID, Fn.RSQRT: Fn.SQRT, Fn.EXP: Fn.TANH,
}  # fmt: skip


def program_targets(model: Model) -> list[tuple[int, str]]:
    """(node, "fn" | "const") changes a cheating program can make (MAP and REDUCE nodes)."""
    out = []
    for i, node in enumerate(model.program.nodes):
        if node.op not in (Op.MAP, Op.REDUCE):
            continue
        if node.fn in OTHER_FN:
            out.append((i, "fn"))
        if any(o.src == Src.CONST for o in node.operands):
            out.append((i, "const"))
    return out


def program_change(model: Model, n: int, what: str, bit: int = 0) -> Cheat:
    """The prover runs a program whose node n has another function (`what` = "fn") or a
    constant with one bit flipped ("const"), and claims the registered model."""
    p = model.program
    node = p.nodes[n]
    if what == "fn":
        changed = dataclasses.replace(node, fn=OTHER_FN[node.fn])
    else:
        ops = tuple(
            dataclasses.replace(o, index=o.index ^ (1 << bit)) if o.src == Src.CONST else o
            for o in node.operands
        )
        changed = dataclasses.replace(node, operands=ops)
    program = dataclasses.replace(p, nodes=(*p.nodes[:n], changed, *p.nodes[n + 1 :]))
    bad = dataclasses.replace(model, program=program)
    return Cheat("program", Executor(bad), note=f"program node {n} {what} b{bit}")


def prompt_change(model: Model, position: int, delta: int) -> Cheat:
    """Computes on a prompt whose token `position` is moved by `delta` (claims the original)."""
    vocab = model.program.vocab_size

    def remap(r: Request) -> Request:
        prompt = list(r.prompt)
        prompt[position] = (prompt[position] + delta) % vocab
        return dataclasses.replace(r, prompt=tuple(prompt))

    return Cheat("prompt", Executor(model), remap=remap, note=f"prompt[{position}] +{delta}")


def trace_length(model: Model, variant: str, k: int) -> Cheat:
    """A trace root over other records than numRecords: "extra" adds k non-EMPTY leaves after
    the last record under a list root that still says numRecords, "fewer" drops the last k
    records, "count" is the list root of the real records under the count numRecords + k."""

    def forge(gen: Generation) -> None:
        real = gen.trace
        leaves = real.leaves()
        count = real.num_records
        if variant == "extra":
            extra = [merkle.sha256(b"extra", i.to_bytes(8, "big")) for i in range(k)]
            tree = ListTree(leaves + extra)
        elif variant == "fewer":
            tree = ListTree(leaves[: count - k])
        else:
            tree = ListTree(leaves)
        if variant != "count":
            assert len(tree.levels) == merkle.depth_for(count) + 1, "the tree's depth changed"
        root = merkle.sha256(merkle.TAG_LIST, (count + (k if variant == "count" else 0))
                             .to_bytes(8, "big"), tree.levels[-1][0])  # fmt: skip
        gen.trace = ForgedTrace(real, tree, root)

    return Cheat("length", Executor(model), forge=forge, note=f"trace {variant} {k}")


# --- level-3 play ------------------------------------------------------------------------------


Pair = tuple[int, int, int, int]
"""Revealed children: (left value bits, left index, right value bits, right index)."""


def _combined(reducer: Reducer, argmax: bool, pair: Pair) -> tuple[bool, int, int]:
    """The contract's combine step on revealed children: (ok, value bits, index)."""
    lv, li, rv, ri = pair
    for v in (lv, rv):
        if np.isnan(from_bits(v)) and v != CANONICAL_NAN:
            return False, 0, 0
    if argmax:
        v, i = steps.combine(Reducer.ARGMAX, (from_bits(lv), li), (from_bits(rv), ri))
        return True, f32_bits(v), int(i)
    return True, f32_bits(steps.combine(reducer, from_bits(lv), from_bits(rv))), 0


def combines(d: Any, side: int, reducer: Reducer, argmax: bool, pair: Pair) -> bool:
    """Whether the contract accepts `pair` as the children of `side`'s current node."""
    ok, v, i = _combined(reducer, argmax, pair)
    if not ok:
        return False
    if not argmax:
        return v == d.value[side]
    return i == d.value_index[side] and (not d.value_known or v == d.value[side])


class LyingSide(Side):
    """A Side whose level-3 reveals follow `level3`: "truthful" (its own tree, which may not
    reach its committed value), "consistent" (fabricated to combine to it, down to a leaf) or
    "inconsistent" (children that do not combine: it loses at once). `trees` replaces the
    reduction trees of some elements (a corrupted tree child)."""

    def __init__(
        self,
        model: Model,
        executor: Executor,
        gen: Generation,
        level3: str = "consistent",
        trees: dict[tuple[int, int, int], Callable[[list], list]] | None = None,
    ) -> None:
        super().__init__(model, executor, gen, consistent_lies=level3 == "consistent")
        self.level3 = level3
        if trees:
            true_levels = self.prover.tree_levels

            def tree_levels(t: int, n: int, element: int) -> tuple[list[list], Any]:
                levels, reads = true_levels(t, n, element)
                fix = trees.get((t, n, element))
                return (fix(levels) if fix else levels), reads

            self.prover.tree_levels = tree_levels  # type: ignore[method-assign]

    def reduction(self, d: Any, side: int) -> Pair:
        node = self.prover.program.nodes[d.node_id]
        argmax = node.op == Op.SAMPLE or node.reducer == Reducer.ARGMAX
        self.consistent_lies = False
        truth = super().reduction(d, side)
        self.consistent_lies = self.level3 == "consistent"
        if self.level3 == "truthful" or (
            self.level3 == "consistent" and combines(d, side, node.reducer, argmax, truth)
        ):
            return truth
        if self.level3 == "inconsistent":
            return _not_combining(d, side, node.reducer, argmax, truth)
        if argmax:
            return _fabricate_argmax(d, side, truth)
        if node.reducer == Reducer.MAX:
            return _fabricate_max(d.value[side], truth)
        return super().reduction(d, side)  # SUM: Side's own fabrication


def _fabricate_max(parent: int, truth: Pair) -> Pair:
    """Children whose max is `parent`: one of them is it, the other kept true if it can be
    (`Side`'s own fabrication keeps the right child even when it is larger)."""
    lv, _, rv, _ = truth
    for pair in ((parent, 0, rv, 0), (lv, 0, parent, 0), (parent, 0, parent, 0)):
        if _combined(Reducer.MAX, False, pair)[1:] == (parent, 0):
            return pair
    return parent, 0, parent, 0


def _fabricate_argmax(d: Any, side: int, truth: Pair) -> Pair:
    """Children (value, index) that select the committed index (and value, if known): the
    child on the index's side carries it, the other one loses to it (its true value, or -inf
    at the first index of its half)."""
    j = d.value_index[side]
    val = d.value[side] if d.value_known else MAX_FINITE
    lo = d.index << d.height
    mid = lo + (1 << (d.height - 1))
    lv, li, rv, ri = truth
    if j < mid:
        candidates = [(val, j, rv, ri), (val, j, NEG_INF, mid)]
    else:
        candidates = [(lv, li, val, j), (NEG_INF, lo, val, j)]
    for pair in candidates:
        if combines(d, side, Reducer.ARGMAX, True, pair):
            return pair
    return candidates[-1]


def _not_combining(d: Any, side: int, reducer: Reducer, argmax: bool, truth: Pair) -> Pair:
    """Well-formed children that do not combine to the side's value (a non-canonical NaN if
    no flip of the true children will do)."""
    lv, _, rv, _ = truth
    if argmax:
        wrong = (d.value_index[side] + 1) % (2**32)
        return lv, wrong, rv, wrong
    for b in (30, 23, 31, 0, 10, 22):
        pair = (lv ^ (1 << b), 0, rv, 0)
        if not combines(d, side, reducer, argmax, pair):
            return pair
    return 0x7F800001, 0, rv, 0


def make_side(model: Model, executor: Executor, gen: Generation, cheat: Cheat | None,
              level3: str) -> LyingSide:  # fmt: skip
    """A LyingSide for a (possibly forged) generation: built on the real trace (StepProver
    checks it), then descending the forged tree."""
    forged = gen.trace if isinstance(gen.trace, ForgedTrace) else None
    if forged is not None:
        gen.trace = forged.real
    side = LyingSide(model, executor, gen, level3, cheat.trees if cheat else None)
    if forged is not None:
        gen.trace = forged
        side.prover.trace_tree = forged.tree
    return side


# --- dishonest clients -----------------------------------------------------------------------


class CheatingProver(Prover):
    """The prover client claiming a cheat's generation (with the original prompt, for a
    prompt cheat) and defending it with a LyingSide."""

    def __init__(self, game: GameClient, model: Model, directory: str | os.PathLike[str],
                 account: str, cheat: Cheat, level3: str = "consistent") -> None:  # fmt: skip
        super().__init__(game, model, directory, account, executor=cheat.executor)
        self.cheat = cheat
        self.level3 = level3

    def _side(self, claim_id: int, gen: Generation) -> Side:
        side = make_side(self.model, self.executor, gen, self.cheat, self.level3)
        self._sides[claim_id] = side
        return side

    def claim_cheat(self, request: Request) -> int:
        """Post the claim of `request` computed the cheat's way."""
        gen = self.cheat.generate(request)
        side = make_side(self.model, self.executor, gen, self.cheat, self.level3)
        block = self.game.w3.eth.block_number
        claim_id = self.game.post_claim(self.model, gen, sender=self.account,
                                        prompt=list(request.prompt))  # fmt: skip
        self.store["claims"][str(claim_id)] = {
            "request": request_to_json(request), "block": block, "status": "pending",
            "tokens": list(gen.output_tokens),
        }  # fmt: skip
        self.store.save()
        self._sides[claim_id] = side
        return claim_id


@dataclass(frozen=True)
class CheatJob:
    """A model job generating the cheat's way (the workers run jobs, not closures)."""

    cheat: Cheat
    request: Request

    def run(self, executor: Any, on_position: Any = None) -> Generation:
        return self.cheat.generate(self.request)


class LyingChallenger(Challenger):
    """The challenger client re-executing claims the cheat's way, disputing with that root
    and playing with a LyingSide."""

    def __init__(self, game: GameClient, model: Model, directory: str | os.PathLike[str],
                 account: str, cheat: Cheat, level3: str = "consistent") -> None:  # fmt: skip
        super().__init__(game, model, directory, account, executor=cheat.executor)
        self.cheat = cheat
        self.level3 = level3

    def _generate(self, request: Request) -> Generation:
        return self.cheat.generate(request)

    def _job(self, request: Request) -> CheatJob:
        return CheatJob(self.cheat, request)

    def _side(self, claim_id: int, gen: Generation) -> Side:
        side = make_side(self.model, self.executor, gen, self.cheat, self.level3)
        self._sides[claim_id] = side
        return side


def skip_history(client: Challenger) -> None:
    """Start a watcher's event cursor at the current block (a new watcher on a long-lived
    chain would otherwise re-execute every claim ever posted)."""
    client.store["cursor"] = client.game.w3.eth.block_number
    client.store.save()


# --- playing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """How an adversary plays: level-3 reveals, timing, and when it stops answering."""

    level3: str = "consistent"  # truthful | consistent | inconsistent
    timing: str = "prompt"  # prompt | last_second
    stop_after: int | None = None  # it stops answering after this many of its moves

    def __str__(self) -> str:
        stop = "" if self.stop_after is None else f", stops after {self.stop_after}"
        return f"{self.level3}, {self.timing}{stop}"


def disputes(game: GameClient) -> list[int]:
    """Ids of every dispute of the game."""
    return list(range(game.game.functions.disputeCount().call()))


def snapshot(game: GameClient) -> list[tuple]:
    """What a move changes: every dispute's stage and move count, every claim's status."""
    claims = game.game.functions.claimCount().call()
    return [(d.stage, d.moves) for d in map(game.dispute, disputes(game))] + [
        (game.claim(c).status,) for c in range(claims)
    ]


def last_second(game: GameClient, mover: Player) -> None:
    """Jump to the last second of `mover`'s clock in the disputes where it is to move."""
    for did in disputes(game):
        d = game.dispute(did)
        if d.stage in (Stage.RESOLVED, Stage.STEP) or d.to_move != mover.SIDE:
            continue
        owner = game.claim(d.claim_id).claimant if mover.SIDE == CLAIM else d.challenger
        if owner != mover.account:
            continue
        deadline = d.turn_start + d.clock[d.to_move]
        if deadline > pending_time(game.w3):
            set_next_timestamp(game.w3, deadline)


@dataclass
class Outcome:
    """How `play_out` went: rounds, the adversary's reverted attempts, forced timeouts."""

    rounds: int = 0
    adversary_errors: list[str] = field(default_factory=list)
    timeouts_forced: int = 0


def play_out(game: GameClient, honest: Player, adversary: Player, style: Style,
             limit: int = 200) -> Outcome:  # fmt: skip
    """Poll the adversary (per `style`) and the honest client until every dispute of the
    game is resolved and the honest client has seen it. The adversary's own reverts are its
    problem (recorded); the honest client must never raise. When a round changes nothing,
    the side to move is stalling: time runs past its clock (it must not be the honest side)."""
    out = Outcome()
    for k in range(limit):
        out.rounds = k
        before = snapshot(game)
        # (its first poll always runs: a challenger opens its dispute there)
        if k == 0 or style.stop_after is None or len(adversary.moves) < style.stop_after:
            if style.timing == "last_second":
                last_second(game, adversary)
            try:
                adversary.poll()
            except RefuteError as exc:
                out.adversary_errors.append(f"{type(exc).__name__}: {exc}")
        honest.poll()
        open_ = [did for did in disputes(game) if game.dispute(did).stage != Stage.RESOLVED]
        if k and not open_ and not honest.active():
            return out
        if open_ and snapshot(game) == before:
            for did in open_:
                d = game.dispute(did)
                stalling = CLAIM if d.stage == Stage.STEP else d.to_move
                assert stalling != honest.SIDE or str(did) not in honest.disputes, (
                    f"the honest side stalls in dispute {did} at {d.stage.name}"
                )
                set_next_timestamp(game.w3, d.turn_start + d.clock[d.to_move] + 1)
                out.timeouts_forced += 1
    raise AssertionError(f"the game did not end in {limit} rounds")


def settle_everything(game: GameClient, accounts: list[str]) -> dict[str, int]:
    """Settle every dispute for every account, collect every overturned claim's rewards once
    it is settled (the clock is moved past the last window), withdraw every credit (and the
    fee recipient's); return the amounts (fees not included unless the fee recipient is one of
    `accounts`). The game must be left holding exactly what was burned (G5: every wei received
    is credited or burned exactly once)."""
    for did in disputes(game):
        for a in accounts:
            if game.owed(did, a):  # (settling an account owed nothing credits nothing)
                game.settle(did, a)
    claims = [game.claim(cid) for cid in range(game.game.functions.claimCount().call())]
    overturned = [cid for cid, c in enumerate(claims) if c.status == ClaimStatus.OVERTURNED]
    if overturned:
        deadline = max(claims[cid].deadline for cid in overturned)
        if pending_time(game.w3) < deadline:
            set_next_timestamp(game.w3, deadline)
    for cid in overturned:
        for a in accounts:
            if game.reward_shares(cid, a):
                game.collect_reward(cid, a)
    got = {}
    for a in accounts:
        got[a] = game.credit(a)
        if got[a]:
            game.withdraw(a)
    recipient = game.game.functions.feeRecipient().call()
    if game.credit(recipient):
        game.withdraw(recipient)
    assert game.w3.eth.get_balance(game.game.address) == game.burned()
    return got


def first_element(x: np.ndarray, y: np.ndarray) -> int:
    """Index of the first element whose bits differ (-1 if none; lengths may differ)."""
    xb = np.asarray(x).reshape(-1).view(np.uint32)
    yb = np.asarray(y).reshape(-1).view(np.uint32)
    m = min(len(xb), len(yb))
    diff = np.flatnonzero(xb[:m] != yb[:m])
    if len(diff):
        return int(diff[0])
    return m if len(xb) != len(yb) else -1


def pending_move(game: GameClient, did: int, side: Side, sender: str) -> Callable[[], Any]:
    """The move due now in dispute `did`, computed from `side`'s data, as a transaction to
    send later (from `sender`): a pending transaction that others can see and copy."""
    d = game.dispute(did)
    if d.stage in (Stage.TRACE, Stage.CHUNKS):
        tree = (side.prover.trace_tree if d.stage == Stage.TRACE
                else side.tensor(d.position, d.node_id)[2])  # fmt: skip
        left, right = Side.children(tree, d.height, d.index)
        return lambda: game.reveal_children(did, left, right, sender=sender)
    if d.stage == Stage.RECORD:
        proof = side.prover.node_proof(d.node_id) if d.to_move == CLAIM else None
        opening = side.record_open(d.position, d.node_id)
        return lambda: game.open_record(did, *opening, proof, sender=sender)
    if d.stage == Stage.CHUNK:
        other = b""
        if d.to_move == CHALLENGE:
            other = bytes(
                [m for m in game.events("Moved", disputeId=did) if m["side"] == CLAIM][-1]["data"]
            )
        chunk = side.chunk(d.position, d.node_id, d.index)
        return lambda: game.reveal_chunk(did, chunk, other, sender=sender)
    if d.stage == Stage.REDUCTION:
        values = side.reduction(d, d.to_move)
        return lambda: game.reveal_reduction(did, *values, sender=sender)
    raise AssertionError(f"no move at stage {d.stage.name}")


def copy_move(game: GameClient, did: int, side: Side, sender: str) -> Any:
    """`sender` makes the move due in dispute `did` with `side`'s data (a stranger copying a
    party's reveal)."""
    return pending_move(game, did, side, sender)()


def real_trace(gen: Generation) -> Trace:
    """The trace a generation really computed (under a forged one, if any)."""
    return gen.trace.real if isinstance(gen.trace, ForgedTrace) else gen.trace


def expected_end(a: Side, b: Side) -> tuple[int, int, int] | None:
    """(t, n, element) the bisection must end on between two sides: the leftmost differing
    record of their (real) traces and the first differing element of its outputs."""
    where = real_trace(a.gen).first_difference(real_trace(b.gen))
    if where is None:
        return None
    t, n = where
    x, y = (np.frombuffer(s.tensor(t, n)[1], dtype="<u4") for s in (a, b))
    return t, n, first_element(x, y)


def check_dispute(game: GameClient, did: int, *, honest: Player, liar: Player, claim_id: int,
                  style: Style, out: Outcome) -> dict[str, Any]:  # fmt: skip
    """The checks every adversarial game ends with: the honest side won; the dispute ended on
    the leftmost differing record and its first differing element (if it got that far), by
    the step (the claim side's value wrong iff the claim side lied), by an immediate loss at
    level 3 (an inconsistent liar), or by the liar's timeout; a last-second liar used all of
    its clock and none of the honest side's. Returns a summary."""
    d = game.dispute(did)
    assert d.stage == Stage.RESOLVED and d.winner == honest.SIDE + 1, (d.stage, d.winner)
    levels = {e["level"]: e for e in game.events("LevelCompleted", disputeId=did)}
    verified = game.events("StepVerified", disputeId=did)
    moved = game.events("Moved", disputeId=did)
    assert len(moved) == d.moves
    end = expected_end(honest.side_for(claim_id), liar.side_for(claim_id))
    nodes = len(honest.model.program.nodes)
    if end is not None:
        t, n, e = end
        if 1 in levels:
            assert levels[1]["where"] == t * nodes + n and (d.position, d.node_id) == (t, n)
        if 2 in levels:
            assert levels[2]["where"] == e == d.element
    for v in verified:
        assert v["claimCorrect"] == (honest.SIDE == CLAIM)
    liar_moves = [m for m in moved if m["mover"] == liar.account]
    if style.level3 == "inconsistent" and any(m["level"] == 3 for m in liar_moves):
        assert not verified and 3 not in levels and moved[-1]["mover"] == liar.account
    if style.timing == "last_second":
        assert all(m["clockRemaining"] == 0 for m in liar_moves)
    clock = game.params().clock
    assert all(m["clockRemaining"] >= clock - 120 for m in moved if m["mover"] == honest.account)
    if out.timeouts_forced:  # resolved by the timeout of the side to move
        assert not verified and d.to_move == liar.SIDE
    return {"end": end, "levels": sorted(levels), "step": bool(verified), "moves": d.moves}
