"""Whole disputes: moves, gas per side, worst transaction and wall time, for tiny-llama games
played by the real clients on anvil, and for a Llama-2-7B claim of 512 generated tokens.

    python bench/dispute.py [--rpc-url URL] [--markdown docs/dispute.md] [--plot PNG]

Starts a private anvil (refute.contracts.anvil) unless --rpc-url names a node; the gas figures
are those of a Prague chain (EIP-7623 calldata floor included).

tiny-llama: complete disputes between `Prover` and `Challenger` (refute.bisection), one side
lying by one flipped bit (`Executor(model, tamper=...)`, `consistent_lies=True`), timed from
the openDispute transaction to the one that resolves the dispute.

7B: the real program of a Llama-2-7B-shaped model (bench/gas.py's `llama_7b_program`, 1257
nodes per position) sizes every level exactly: the trace depth from the record count, and for
every node at the last position the chunk depth of its output and the depth of its reduction
tree. The disputes over the nodes that need the most moves are then played on the chain move by
move with synthetic but valid commitments of the real sizes (sparse Merkle trees as in
bench/gas.py: the real node descriptors and program proof, real 1 KiB chunks, real reduction
trees), up to the final step; the step itself is bench/gas.py's largest 7B one-step
transaction plus the game's own overhead around the verifier, measured in the tiny games.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gas as gasbench

from refute.bisection.challenger import Challenger
from refute.bisection.prover import Prover
from refute.contracts.anvil import anvil_version, find_anvil, start_anvil
from refute.contracts.chain import connect, deploy
from refute.contracts.game import CHALLENGE, CLAIM, GameClient, GameParams, Stage, encode_tokens
from refute.contracts.onestep import StepCall, f32_bits
from refute.engine import ir, merkle, steps
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.engine.ir import Op, Reducer
from refute.engine.model import Model
from refute.engine.trace import record_leaf
from refute.kernels.reference import SPEC_VERSION

TX_TARGET = 1_000_000
MOVES_TARGET = 64
HONEST_TARGET = 8_000_000
PARAMS = GameParams(claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15)
TINY_REQUEST = Request(prompt=(5, 17, 250, 3), max_new_tokens=8, temperature=0.9, seed=11)
GENERATED = 512
PROMPT_LENGTH = 512
"""The 7B claim modelled: 512 tokens generated after a 512-token prompt (1023 positions)."""
FULL_CONTEXT_PROMPT = 4096 - GENERATED + 1
"""The longest prompt with 512 generated tokens in Llama-2's 4096 positions."""
BONDED = ("revealChildren", "openRecord", "revealChunk", "revealReduction")
SIDES = ("claim", "challenge")


# --- transactions, timed ------------------------------------------------------------------------


@dataclass
class Tx:
    """One transaction sent through the game client."""

    fn: str
    sender: str
    gas: int
    block: int
    start: float
    end: float


class TimedGame(GameClient):
    """A GameClient that logs every transaction (gas, block, wall time) and keeps the step calls
    it sends, so the game's overhead around the verifier can be measured.

    Each transaction runs BLOCK_SECONDS after the previous one (anvil's evm_increaseTime), as in
    separate mainnet blocks: a move made in the same second as the one before it leaves the
    mover's clock unchanged, which makes its SSTORE cheaper than any real move's."""

    BLOCK_SECONDS = 12

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.txs: list[Tx] = []
        self.step_calls: list[StepCall] = []
        self.spaced = True  # False once the node refuses evm_increaseTime (not a dev node)

    def transact(self, contract, fn: str, *args: Any, sender=None, value: int = 0):
        if self.spaced:
            reply = self.w3.provider.make_request("evm_increaseTime", [self.BLOCK_SECONDS])
            self.spaced = "error" not in reply
        start = time.perf_counter()
        result, receipt = super().transact(contract, fn, *args, sender=sender, value=value)
        self.txs.append(Tx(fn, self._sender(sender), int(receipt["gasUsed"]),
                           int(receipt["blockNumber"]), start, time.perf_counter()))  # fmt: skip
        return result, receipt

    def step(self, dispute_id: int, call: StepCall, weight_count: int, sender=None):
        self.step_calls.append(call)
        return super().step(dispute_id, call, weight_count, sender=sender)


@dataclass
class SideStats:
    """What one side of a dispute sent."""

    moves: int  # bonded moves (levels 1-3)
    levels: dict[int, int]  # moves per level
    txs: list[Tx]  # every transaction, moves and others (openDispute, step, timeout)

    @property
    def gas(self) -> int:
        return sum(t.gas for t in self.txs)

    @property
    def worst(self) -> Tx | None:
        return max(self.txs, key=lambda t: t.gas, default=None)

    @property
    def others(self) -> list[str]:
        return [t.fn for t in self.txs if t.fn not in BONDED]


def side_stats(game: GameClient, txs: list[Tx], accounts: tuple[str, str], did: int,
               from_block: int) -> list[SideStats]:  # fmt: skip
    """Split a dispute's transactions by side (by sender) and count its moves by level (from
    the Moved events)."""
    levels: list[Counter] = [Counter(), Counter()]
    for m in game.events("Moved", from_block, disputeId=did):
        levels[m["side"]][m["level"]] += 1
    return [
        SideStats(sum(levels[s].values()), dict(sorted(levels[s].items())),
                  [t for t in txs if t.sender == accounts[s]])
        for s in (CLAIM, CHALLENGE)
    ]  # fmt: skip


# --- tiny-llama: whole games by the real clients -----------------------------------------------


def flip(target: tuple[int, int, int]) -> Callable[[int, int, np.ndarray], np.ndarray]:
    """Tamper hook: flip the lowest bit of one element of one record (float32 or uint32)."""
    t0, n0, e0 = target

    def tamper(t: int, n: int, out: np.ndarray) -> np.ndarray:
        if (t, n) != (t0, n0):
            return out
        out = np.array(out, copy=True)
        out.reshape(-1).view(np.uint32)[e0] ^= 1
        return out

    return tamper


@dataclass(frozen=True)
class TinyCase:
    label: str
    liar: int  # the lying side, CLAIM or CHALLENGE
    node: str  # the last node whose name ends with this
    position: str  # "second-to-last" or "first generated"
    element: int


TINY_CASES = (
    TinyCase("cheating prover vs honest watcher, REDUCE (last mlp.down)", CLAIM, "mlp.down",
             "second-to-last", 7),
    TinyCase("honest prover vs lying watcher, REDUCE (last mlp.down)", CHALLENGE, "mlp.down",
             "second-to-last", 7),
    TinyCase("cheating prover vs honest watcher, MAP (last mlp.silu)", CLAIM, "mlp.silu",
             "second-to-last", 7),
    TinyCase("cheating prover vs honest watcher, SAMPLE (2nd generated token)", CLAIM, "sample",
             "first generated", 0),
)  # fmt: skip


@dataclass
class TinyRun:
    """The outcome of one tiny-llama dispute."""

    case: TinyCase
    accounts: tuple[str, str]  # the claim side's and the challenge side's
    sides: list[SideStats]
    winner: str
    resolved_by: Tx  # the transaction that resolved the dispute
    wall: float  # openDispute sent -> resolving transaction mined
    reexec: float  # the watcher's re-execution of the claim, before openDispute
    disputed: dict[str, Any]
    step_overhead: int | None  # game.step gas - verifyStep transaction gas, same proofs
    payout_gas: list[int]  # settle + withdraw afterwards, per side
    txs: list[Tx] = field(repr=False, default_factory=list)

    @property
    def expected(self) -> str:
        return SIDES[1 - self.case.liar]

    def side_of(self, tx: Tx) -> str:
        return SIDES[self.accounts.index(tx.sender)]


def verify_step_gas(game: GameClient, call: StepCall, trace_root: bytes) -> int:
    """Gas of a transaction calling the verifier's verifyStep with the same proofs, in the
    context the game builds (the claim's trace root, whoever built the call)."""
    v = game.verifier
    ctx, *rest = call.args
    ctx = (*ctx[:4], trace_root, *ctx[5:])
    data = v.encode_abi("verifyStep", args=(ctx, *rest, call.value, call.index))
    return int(game.w3.eth.estimate_gas({"to": v.address, "data": data,
                                         "from": game.w3.eth.accounts[0]}))  # fmt: skip


def play_tiny(url: str, model: Model, case: TinyCase) -> TinyRun:
    """One complete dispute on a fresh deployment, played by the real clients."""
    game = TimedGame.deploy(url, params=PARAMS)
    game.register(model)
    p = model.program
    acc = game.w3.eth.accounts
    accounts = (acc[1], acc[2])
    n = max(i for i, x in enumerate(p.nodes) if x.name.endswith(case.node))
    t = TINY_REQUEST.positions - 2 if case.position == "second-to-last" else len(
        TINY_REQUEST.prompt)  # fmt: skip
    bad = Executor(model, tamper=flip((t, n, case.element)))
    with tempfile.TemporaryDirectory(prefix="refute-bench-") as tmp:
        prover = Prover(game, model, f"{tmp}/prover", accounts[0],
                        executor=bad if case.liar == CLAIM else None,
                        consistent_lies=case.liar == CLAIM)  # fmt: skip
        watcher = Challenger(game, model, f"{tmp}/watcher", accounts[1],
                             executor=bad if case.liar == CHALLENGE else None,
                             consistent_lies=case.liar == CHALLENGE)  # fmt: skip
        prover.claim(TINY_REQUEST)
        reexec = None
        for k in range(1000):
            prover.poll()
            began = time.perf_counter()
            watcher.poll()
            if reexec is None and watcher.disputes:
                opened = next(x for x in game.txs if x.fn == "openDispute")
                reexec = opened.start - began
            if k and not prover.active() and not watcher.active():
                break
        else:
            raise RuntimeError(f"{case.label}: the game did not end")
        if reexec is None:
            raise RuntimeError(f"{case.label}: the watcher opened no dispute")
        (did,) = (int(x) for x in watcher.disputes)
        opened = next(x for x in game.txs if x.fn == "openDispute")
        (resolved,) = game.events("DisputeResolved", opened.block, disputeId=did)
        end_tx = next(x for x in game.txs if x.block == resolved["blockNumber"])
        txs = [x for x in game.txs if opened.block <= x.block <= end_tx.block]
        sides = side_stats(game, txs, accounts, did, opened.block)
        overhead = None
        if game.step_calls:
            step_tx = next(x for x in txs if x.fn == "step")
            root = game.claim(game.dispute(did).claim_id).trace_root
            overhead = step_tx.gas - verify_step_gas(game, game.step_calls[-1], root)
        before = len(game.txs)
        prover.collect()
        watcher.collect()
        payout = [sum(x.gas for x in game.txs[before:] if x.sender == a) for a in accounts]
        return TinyRun(case, accounts, sides, SIDES[resolved["winner"] - 1], end_tx,
                       end_tx.end - opened.start, reexec, watcher.disputes[str(did)]["end"] or {},
                       overhead, payout, txs)  # fmt: skip


# --- 7B: sizes from the real program -------------------------------------------------------------


@dataclass(frozen=True)
class NodeMoves:
    """Moves per side of a dispute ending on node n at the last position."""

    node: int
    name: str
    op: str
    length: int  # output elements
    chunk_depth: int  # level 2: revealChildren moves
    width_depth: int  # level 3: revealReduction moves
    descriptor: int  # bytes of the ABI node descriptor (the claim side's openRecord)

    @property
    def level23(self) -> int:
        return self.chunk_depth + 1 + self.width_depth


@dataclass
class Plan7B:
    prompt: int
    positions: int
    records: int
    trace_depth: int
    nodes: list[NodeMoves]

    def moves(self, nm: NodeMoves) -> int:
        """Bonded moves per side: level 1 (descent + openRecord), level 2, level 3."""
        return self.trace_depth + 1 + nm.level23

    @property
    def worst(self) -> NodeMoves:
        return max(self.nodes, key=lambda nm: (nm.level23, nm.node))


def reduce_width(program: ir.Program, n: int, t: int) -> int:
    """K of a REDUCE / SAMPLE node at position t (0 for the others)."""
    node = program.nodes[n]
    if node.op not in (Op.REDUCE, Op.SAMPLE):
        return 0
    return t + 1 if node.reduce_len == ir.T else node.reduce_len


def plan_7b(program: ir.Program, prompt: int) -> Plan7B:
    """Exact level depths of a dispute over a claim of GENERATED tokens after `prompt` tokens:
    every node at the last position (where the T-sized tensors and reductions are largest)."""
    positions = prompt + GENERATED - 1
    records = len(program.nodes) * positions
    t = positions - 1
    nodes = []
    for n, node in enumerate(program.nodes):
        length = program.output_size(n, t)
        kind = node.op.name + (f" {node.reducer.name}" if node.op == Op.REDUCE else "")
        nodes.append(NodeMoves(n, node.name, kind, length,
                               merkle.depth_for(-(-length // gasbench.VALUES)),
                               merkle.depth_for(max(reduce_width(program, n, t), 1)),
                               len(ir.node_abi(node))))  # fmt: skip
    return Plan7B(prompt, positions, records, merkle.depth_for(records), nodes)


# --- 7B: the levels played on the chain with synthetic commitments of the real sizes -----------


def _reduction(node: ir.Node, k: int, rng: np.random.Generator) -> tuple[list, list]:
    """Two reduction trees over the same K terms but one (claim, challenge), the challenge's
    changed so that its root differs."""
    argmax = node.op == Op.SAMPLE or node.reducer == Reducer.ARGMAX
    reducer = Reducer.ARGMAX if argmax else node.reducer
    terms = (rng.standard_normal(k) * (3.0 if argmax else 0.5)).astype(np.float32)
    other = terms.copy()
    if reducer == Reducer.SUM:
        other[-1] += np.float32(4.0)
    else:
        other[-1] = terms.max() + np.float32(1.0)
    trees = [steps.reduction_tree(reducer, list(x)) for x in (terms, other)]
    assert trees[0][-1][0] != trees[1][-1][0], "the synthetic roots do not differ"
    return trees[0], trees[1]


class Synthetic7B:
    """Disputes over a 7B claim, played on the chain from synthetic commitments of the real sizes
    (the real program, node descriptors and program proofs; sparse trace and chunk trees)."""

    def __init__(self, game: TimedGame, program: ir.Program, prompt: int) -> None:
        self.game, self.program, self.prompt = game, program, prompt
        self.plan = plan_7b(program, prompt)
        self.rng = np.random.default_rng(512)
        claim7b = gasbench.Claim7B(program)
        self.program_tree = claim7b.program_tree
        acc = game.w3.eth.accounts
        self.accounts = (acc[3], acc[4])
        self.model_root, _ = game.transact(
            game.registry, "register", merkle.sha256(b"7b weights"), claim7b.program_root,
            merkle.sha256(b"7b config"), SPEC_VERSION, len(program.nodes), program.max_positions,
            program.vocab_size, program.logits_node, program.token_node,
        )  # fmt: skip
        self.post_claim_gas: dict[int, int] = {}  # prompt length -> gas of postClaim

    def _post_claim(self, trace_root: bytes, prompt: int | None = None, send: bool = True) -> int:
        """A claim of GENERATED tokens after `prompt` tokens: sent (returns the claim id; its
        gas is estimated first, a 1,023-token claim needs more than the client's fixed limit) or
        only estimated (returns the gas)."""
        prompt = self.prompt if prompt is None else prompt
        records = len(self.program.nodes) * (prompt + GENERATED - 1)
        f = self.game.game.functions.postClaim(
            self.model_root, encode_tokens(self.rng.integers(0, 32000, prompt)),
            f32_bits(np.float32(gasbench.TEMPERATURE)), gasbench.SEED,
            encode_tokens(self.rng.integers(0, 32000, GENERATED)), trace_root, records,
        )  # fmt: skip
        tx = {"from": self.accounts[CLAIM], "value": self.game.claim_value(prompt + GENERATED - 1)}
        estimate = int(f.estimate_gas(tx))
        if not send:
            return estimate
        claim_id = f.call(tx)
        receipt = self.game.w3.eth.wait_for_transaction_receipt(
            f.transact({**tx, "gas": estimate * 2})
        )
        assert receipt["status"] == 1
        self.post_claim_gas[prompt] = int(receipt["gasUsed"])
        return int(claim_id)

    def claim_gas(self, prompt: int) -> int:
        """Gas of posting a claim of GENERATED tokens after `prompt` tokens (sent for the prompt
        played, else estimated)."""
        if prompt not in self.post_claim_gas:
            self.post_claim_gas[prompt] = self._post_claim(bytes(32), prompt, send=False)
        return self.post_claim_gas[prompt]

    def play(self, n: int) -> tuple[list[SideStats], list[Tx]]:
        """The dispute over record (last position, n), from openDispute to the final step (not
        sent: its gas is modelled)."""
        g, p, plan = self.game, self.program, self.plan
        node = p.nodes[n]
        t = plan.positions - 1
        r = t * len(p.nodes) + n
        argmax = node.outputs_index
        dtype = merkle.DTYPE_U32 if argmax else merkle.DTYPE_F32
        length = p.output_size(n, t)
        k = reduce_width(p, n, t)
        trees = _reduction(node, k, self.rng) if k > 1 else None
        e = length - 1
        c, j = divmod(e, gasbench.VALUES)
        used = min(gasbench.VALUES, length - c * gasbench.VALUES)
        words = np.zeros(gasbench.VALUES, np.uint32)
        if argmax:
            words[:used] = self.rng.integers(0, p.vocab_size, used)
        else:
            words[:used] = (self.rng.standard_normal(used) * 0.5).astype(np.float32).view(np.uint32)
        chunks = []
        for side in (CLAIM, CHALLENGE):
            w = words.copy()
            if trees is None:
                w[j] ^= side  # MAP / CACHE_APPEND: one flipped bit
            else:
                root = trees[side][-1][0]
                w[j] = root[1] if argmax else f32_bits(np.float32(root))
            chunks.append(w.tobytes())
        nchunks = -(-length // gasbench.VALUES)
        ctrees = [gasbench.SparseTree(merkle.depth_for(nchunks), {c: merkle.chunk_leaves(ch)[0]},
                                      b"chunks") for ch in chunks]  # fmt: skip
        outputs = [merkle.bind_tensor(dtype, length, ct.root()) for ct in ctrees]
        ttrees = [gasbench.SparseTree(plan.trace_depth, {r: record_leaf(t, n, out)}, b"trace")
                  for out in outputs]  # fmt: skip
        roots = [merkle.sha256(merkle.TAG_LIST, plan.records.to_bytes(8, "big"), tt.root())
                 for tt in ttrees]  # fmt: skip
        claim_id = self._post_claim(roots[CLAIM])
        first = len(g.txs)
        did = g.open_dispute(claim_id, roots[CHALLENGE], sender=self.accounts[CHALLENGE])
        from_block = g.txs[first].block
        node_proof = (n, ir.node_abi(node), self.program_tree.proof(n))
        while True:
            d = g.dispute(did)
            side = d.to_move
            who = self.accounts[side]
            if d.stage in (Stage.TRACE, Stage.CHUNKS):
                tree = (ttrees if d.stage == Stage.TRACE else ctrees)[side]
                left, right = (tree.node(d.height - 1, 2 * d.index + b) for b in (0, 1))
                g.reveal_children(did, left, right, sender=who)
            elif d.stage == Stage.RECORD:
                g.open_record(did, dtype, length, ctrees[side].root(),
                              node_proof if side == CLAIM else None, sender=who)  # fmt: skip
            elif d.stage == Stage.CHUNK:
                other = chunks[CLAIM] if side == CHALLENGE else b""
                g.reveal_chunk(did, chunks[side], other, sender=who)
            elif d.stage == Stage.REDUCTION:
                assert trees is not None
                pair = trees[side][d.height - 1][2 * d.index : 2 * d.index + 2]
                if argmax:
                    (lv, li), (rv, ri) = pair
                    g.reveal_reduction(did, f32_bits(lv), li, f32_bits(rv), ri, sender=who)
                else:
                    g.reveal_reduction(did, f32_bits(pair[0]), 0, f32_bits(pair[1]), 0,
                                       sender=who)  # fmt: skip
            else:
                break
        if d.stage != Stage.STEP:
            raise RuntimeError(f"the synthetic dispute over {node.name} ended at {d.stage.name}")
        txs = g.txs[first:]
        return side_stats(g, txs, self.accounts, did, from_block), txs


def synthetic_nodes(plan: Plan7B) -> list[NodeMoves]:
    """The nodes worth playing: most moves at levels 2-3, widest reduction, largest tensor,
    largest descriptor (the claim side's openRecord)."""
    picks = [
        plan.worst,
        max(plan.nodes, key=lambda nm: (nm.width_depth, nm.level23, nm.node)),
        max(plan.nodes, key=lambda nm: (nm.chunk_depth, nm.level23, nm.node)),
        max(plan.nodes, key=lambda nm: (nm.descriptor, nm.node)),
    ]
    return list({nm.node: nm for nm in picks}.values())


# --- 7B: totals -------------------------------------------------------------------------------


@dataclass
class Step7B:
    """The modelled gas of the game's step at 7B sizes."""

    verify_tx: int  # the largest 7B verifyStep transaction of bench/gas.py
    label: str
    overhead: int  # the game's step() around it (tiny games)

    @property
    def gas(self) -> int:
        return self.verify_tx + self.overhead


def move_maxima(runs: list[tuple[NodeMoves, list[SideStats], list[Tx]]]) -> dict:
    """(side, fn) -> the largest gas measured for that kind of transaction at 7B sizes."""
    out: dict[tuple[int, str], int] = defaultdict(int)
    for _, sides, _ in runs:
        for s, stats in enumerate(sides):
            for tx in stats.txs:
                out[(s, tx.fn)] = max(out[(s, tx.fn)], tx.gas)
    return dict(out)


def side_bound(plan: Plan7B, nm: NodeMoves, side: int, maxima: dict, step: int) -> int:
    """Gas of one side over a dispute ending on nm, every transaction at the largest gas measured
    for its kind; with openDispute for the challenge side and the step (the honest side)."""
    m = lambda fn: maxima[(side, fn)]  # noqa: E731
    total = (plan.trace_depth + nm.chunk_depth) * m("revealChildren") + m("openRecord")
    total += m("revealChunk") + nm.width_depth * (m("revealReduction") if nm.width_depth else 0)
    if side == CHALLENGE:
        total += m("openDispute")
    return total + step


# --- report ------------------------------------------------------------------------------------


def _f(x: int) -> str:
    return f"{x:,}"


def _range(xs: list[int]) -> str:
    return _f(min(xs)) if min(xs) == max(xs) else f"{_f(min(xs))}-{_f(max(xs))}"


def _ok(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def machine() -> str:
    """Cores, architecture and CPU model, for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {platform.machine()} ({cpu}), no GPU used"


def markdown(tiny: list[TinyRun], tiny_model: Model, plans: list[Plan7B], played: list,
             step: Step7B, synth: Synthetic7B, chain: str, version: str, plot: str | None,
             seconds: dict[str, float]) -> str:  # fmt: skip
    """The report: tiny disputes, the 7B sizes, per-move gas and the targets."""
    plan = plans[0]
    maxima = move_maxima(played)
    tiny_nodes = len(tiny_model.program.nodes)
    spacing = (
        f"Every transaction is mined {TimedGame.BLOCK_SECONDS} s after the previous one "
        "(evm_increaseTime), as in separate mainnet blocks: a move in the same second as the "
        "previous one would leave the mover's clock unchanged and cost about 5,600 gas less."
        if synth.game.spaced
        else "The node refused evm_increaseTime: moves mined in the same second as the previous "
        "one cost about 5,600 gas less than on a real chain."
    )
    out = ["# A whole dispute: moves, gas and time", "",
           f"Measured by `python bench/dispute.py` on {chain} ({version}, hardfork prague: "
           f"EIP-7623 calldata floor included), {datetime.date.today().isoformat()}, on a "
           f"{machine()}; the machine is shared, so wall times are indicative. Regenerate with "
           "`python bench/dispute.py --markdown docs/dispute.md --plot docs/dispute_gas.png` "
           "(needs `bash scripts/install_anvil.sh`). Gas of a side: every transaction its "
           "account sent in the dispute, i.e. its bonded moves (levels 1-3) plus, where it sent "
           "them, `openDispute` (challenge side) and `step` or `timeout` (any sender, no bond); "
           "posting the claim and collecting payouts (`settle`, `withdraw`) are not part of the "
           "dispute and are listed apart. " + spacing + " Targets (issue 6): every transaction "
           "<= 1M gas; a complete 7B dispute <= 64 moves per side; honest-party total for a "
           "whole 7B dispute <= 8M gas.", ""]  # fmt: skip
    # tiny
    out += [f"## {tiny_model.name}: complete disputes on anvil", "",
            f"Request: prompt {list(TINY_REQUEST.prompt)}, {TINY_REQUEST.max_new_tokens} new "
            f"tokens, temperature {TINY_REQUEST.temperature}, seed {TINY_REQUEST.seed} "
            f"({TINY_REQUEST.positions} positions x {tiny_nodes} nodes = "
            f"{TINY_REQUEST.positions * tiny_nodes} records). Each "
            "dispute is played by `Prover` and `Challenger` on a fresh deployment; the liar "
            "flips the lowest bit of one element of one record and lies consistently "
            "(`consistent_lies=True`). Wall time: from sending `openDispute` to the receipt of "
            "the transaction that resolved the dispute, the clients' recomputation of tensors "
            "and proofs included; the watcher's re-execution of the claim, before "
            "`openDispute`, is the last column. Gas of a side: in brackets, what it sent "
            "besides its moves.", "",
            "| dispute | ends on | winner | resolved by | moves claim / challenge (L1+L2+L3) "
            "| gas claim side | gas challenge side | worst transaction | wall time "
            "| re-execution |",
            "|---|---|:-:|---|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for r in tiny:
        d = r.disputed
        where = f"t={d.get('position')}, {d.get('node')}, element {d.get('element')}"
        if "leaf" in d:
            where += f", leaf {d['leaf']}"
        mv = " / ".join(f"{s.moves} ({'+'.join(str(s.levels.get(lv, 0)) for lv in (1, 2, 3))})"
                        for s in r.sides)  # fmt: skip
        gas = [f"{_f(s.gas)} ({', '.join(s.others) or 'moves only'})" for s in r.sides]
        by = r.resolved_by
        worst = max((s.worst for s in r.sides if s.worst), key=lambda x: x.gas)
        check = "" if r.winner == r.expected else " (**unexpected**)"
        out.append(f"| {r.case.label} | {where} | {r.winner}{check} | {by.fn} ({r.side_of(by)} "
                   f"side) | {mv} | {gas[0]} | "
                   f"{gas[1]} | {worst.fn} {_f(worst.gas)} | {r.wall:.1f} s | "
                   f"{r.reexec:.1f} s |")  # fmt: skip
    tiny_worst = max((x for r in tiny for x in r.txs), key=lambda x: x.gas)
    for r in tiny:
        by = r.resolved_by
        if by.fn == "step" and r.side_of(by) != r.winner:
            out += ["", f"In \"{r.case.label}\" the losing side's client sent the step itself "
                    "(its own recomputation, with its tampered data, said it would win), so the "
                    "honest side paid no step there."]  # fmt: skip
    over = [r.step_overhead for r in tiny if r.step_overhead is not None]
    out += ["", f"Largest transaction of the tiny disputes: {tiny_worst.fn}, "
            f"{_f(tiny_worst.gas)} gas ({_ok(tiny_worst.gas <= TX_TARGET)} <= 1M). "
            "After resolution, collecting the payouts (`settle`, then `withdraw` if credited) "
            f"cost the winner {_range([r.payout_gas[SIDES.index(r.winner)] for r in tiny])} "
            f"gas and the loser {_range([r.payout_gas[1 - SIDES.index(r.winner)] for r in tiny])}"
            " (`settle` only). "
            f"The game's `step` costs {', '.join(_f(x) for x in over)} gas more than a "
            "`verifyStep` transaction with the same proofs (context and node read from "
            "storage, resolution and credits): this overhead is added to the 7B step below.",
            ""]  # fmt: skip
    # 7B
    worst = plan.worst
    out += [f"## Llama-2-7B, {GENERATED} generated tokens (modelled from the real program)", "",
            f"Claim: {GENERATED} tokens generated after a {plan.prompt}-token prompt, so "
            f"{plan.positions:,} positions (prompt + {GENERATED} - 1) x "
            f"{len(plan.nodes):,} nodes per position = {plan.records:,} records. Level 1: "
            f"ceil(log2 {plan.records:,}) = {plan.trace_depth} `revealChildren` + 1 `openRecord` "
            "per side. Levels 2 and 3 depend on the record the descent ends on: for every node "
            f"at the last position (t = {plan.positions - 1}, where the T-sized tensors and "
            "reductions are largest), level 2 = ceil(log2 chunks) `revealChildren` + 1 "
            "`revealChunk` and level 3 = ceil(log2 K) `revealReduction` (REDUCE and SAMPLE "
            "nodes only). Then one `step`.", "",
            "| node (per-layer nodes: the last layer) | op | output elements | L2 chunk depth + 1 "
            "| L3 reduction depth | L2 + L3 |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    seen = {}
    for nm in plan.nodes:
        key = nm.name.split(".", 2)[-1] if nm.name.startswith("layers.") else nm.name
        seen[key] = nm
    shown = sorted(seen.values(), key=lambda x: (-x.level23, x.node))[:8]
    shown += [nm for nm, _, _ in played if nm not in shown]
    for nm in sorted(shown, key=lambda x: (-x.level23, x.node)):
        out.append(f"| {nm.name} | {nm.op} | {_f(nm.length)} | {nm.chunk_depth} + 1 | "
                   f"{nm.width_depth} | {nm.level23} |")  # fmt: skip
    out += [
        "",
        f"The longest dispute ends on **{worst.name}**: {plan.trace_depth} + 1 + "
        f"{worst.chunk_depth} + 1 + {worst.width_depth} = **{plan.moves(worst)} moves per "
        "side** (both sides move equally often), plus `openDispute` and the `step`.",
        "",
    ]
    # per-move gas
    out += ["### Gas per transaction at 7B sizes, measured on the chain", "",
            "The disputes over the nodes below were played on the chain up to the final step: "
            "the real node descriptor and its program proof (depth "
            f"{merkle.depth_for(len(plan.nodes))}), trace and chunk trees of the real depths "
            "(sparse Merkle trees whose other subtrees are pseudo-random hashes, as in "
            "bench/gas.py), real 1 KiB chunks and real reduction trees of the real widths. The "
            "step is modelled: the largest 7B one-step transaction measured by bench/gas.py in "
            f"this run ({step.label}: {_f(step.verify_tx)} gas, at position 4095 of a "
            "5.1M-record trace, slightly more than here) plus the largest game overhead "
            f"measured above ({_f(step.overhead)}): **{_f(step.gas)} gas**. That is an "
            "over-estimate: the verifyStep figure is the EIP-7623 floor of its calldata, which "
            "already covers part of what the overhead adds.", "",
            "| dispute over | moves per side (L1+L2+L3) | claim side | challenge side (with "
            "openDispute) | worst transaction | + step: honest claim side | + step: honest "
            "challenge side |", "|---|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for nm, sides, txs in played:
        w = max(txs, key=lambda x: x.gas)
        mv = " / ".join(f"{s.moves} ({'+'.join(str(s.levels.get(lv, 0)) for lv in (1, 2, 3))})"
                        for s in sides)  # fmt: skip
        out.append(f"| {nm.name} | {mv} | {_f(sides[0].gas)} | {_f(sides[1].gas)} | "
                   f"{w.fn} ({SIDES[0] if w.sender == synth.accounts[0] else SIDES[1]}) "
                   f"{_f(w.gas)} | {_f(sides[0].gas + step.gas)} | "
                   f"{_f(sides[1].gas + step.gas)} |")  # fmt: skip
    out += ["", "| transaction | claim side: largest | challenge side: largest |",
            "|---|---:|---:|"]  # fmt: skip
    for fn in ("openDispute", *BONDED):
        cells = [_f(maxima[(s, fn)]) if (s, fn) in maxima else "-" for s in (CLAIM, CHALLENGE)]
        out.append(f"| {fn} | {cells[0]} | {cells[1]} |")
    out.append(f"| step (modelled, any sender) | {_f(step.gas)} | {_f(step.gas)} |")
    out += [
        "",
        f"The on-chain part of the synthetic disputes took {seconds['synthetic']:.0f} s "
        "(no model computation).",
        "",
    ]
    # targets
    out += ["### Targets", "",
            "Honest-side totals are upper bounds over every node of the program: the exact "
            "number of moves of a dispute ending on that node, each move at the largest gas "
            "measured above for its kind and side (so every claim-side `revealChildren` counts "
            f"{_f(maxima[(CLAIM, 'revealChildren')])}, the first one's, which initialises "
            "storage; every `openRecord` that of the largest node descriptor), plus the step "
            "(sent by the honest side: it is the one the step proves right) and, on the "
            "challenge side, `openDispute`. The largest transaction is over everything "
            "measured in this run, tiny and 7B, with the modelled 7B step.", "",
            "| claim | records | worst node (moves) | moves per side | largest transaction "
            "| honest claim side | honest challenge side | <= 1M per tx | <= 64 moves | "
            "honest <= 8M |", "|---|---:|---|---:|---|---:|---:|:-:|:-:|:-:|"]  # fmt: skip
    all_7b = max((x for _, _, txs in played for x in txs), key=lambda x: x.gas)
    for pl in plans:
        nm_moves = max(pl.nodes, key=lambda nm: (pl.moves(nm), nm.node))
        bounds = [max(side_bound(pl, nm, s, maxima, step.gas) for nm in pl.nodes)
                  for s in (CLAIM, CHALLENGE)]  # fmt: skip
        big = max(all_7b.gas, step.gas, tiny_worst.gas)
        big_fn = "step" if big == step.gas else all_7b.fn if big == all_7b.gas else tiny_worst.fn
        moves = pl.moves(nm_moves)
        out.append(f"| {pl.prompt} + {GENERATED} tokens | {pl.records:,} | {nm_moves.name} | "
                   f"{moves} | {big_fn} {_f(big)} | {_f(bounds[0])} | {_f(bounds[1])} | "
                   f"{_ok(big <= TX_TARGET)} | {_ok(moves <= MOVES_TARGET)} | "
                   f"{_ok(max(bounds) <= HONEST_TARGET)} |")  # fmt: skip
    out += ["", "Posting the claim is not part of a dispute, but it is a transaction of the "
            "protocol the claimant always pays: `postClaim` carries the prompt and the output "
            "tokens as packed 4-byte words (the uint32 tensor data the prompt root hashes) and "
            "logs them in `ClaimPosted`.",
            "", "| claim | postClaim gas | <= 1M |", "|---|---:|:-:|"]  # fmt: skip
    for pl in plans:
        g = synth.claim_gas(pl.prompt)
        how = "sent" if pl.prompt == synth.prompt else "eth_estimateGas"
        out.append(f"| {pl.prompt} + {GENERATED} tokens ({how}) | {_f(g)} | "
                   f"{_ok(g <= TX_TARGET)} |")  # fmt: skip
    out += [
        "",
        f"The {FULL_CONTEXT_PROMPT}-token prompt fills Llama-2's 4096 positions: the "
        "longest claim of 512 generated tokens (its per-move gas is taken from the "
        f"{plan.prompt}-token disputes played above: only the number of moves changes).",
    ]
    if plot:
        out += [
            "",
            f"![gas of every transaction along two disputes]({Path(plot).name})",
            "",
            f"Gas of every transaction along the first {tiny_model.name} dispute above and along "
            f"the synthetic 7B dispute over {worst.name} (its step modelled, hatched).",
        ]
    return "\n".join(out) + "\n"


def save_plot(path: str, tiny: TinyRun, played: tuple, step: Step7B, accounts7b: tuple) -> None:
    """Gas per transaction along one tiny dispute and along the longest 7B dispute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"claim": "tab:blue", "challenge": "tab:orange"}
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.5))
    nm, _, txs = played
    rows = [
        (axes[0], f"tiny-llama: {tiny.case.label}",
         [(x, tiny.side_of(x)) for x in tiny.txs], None),
        (axes[1], f"Llama-2-7B, {GENERATED} tokens: dispute over {nm.name} (synthetic "
         "commitments)", [(x, SIDES[0] if x.sender == accounts7b[0] else SIDES[1]) for x in txs],
         step),
    ]  # fmt: skip
    for ax, title, seq, st in rows:
        xs = range(1, len(seq) + 1)
        ax.bar(xs, [x.gas for x, _ in seq], color=[colors[s] for _, s in seq], width=0.8)
        if st is not None:
            ax.bar([len(seq) + 1], [st.gas], color="white", edgecolor="gray", hatch="//",
                   width=0.8)  # fmt: skip
        for k, (x, _) in enumerate(seq, 1):
            if x.fn not in ("revealChildren", "revealReduction"):
                ax.annotate(x.fn, (k, x.gas), rotation=90, fontsize=7, ha="center",
                            va="bottom", xytext=(0, 2), textcoords="offset points")  # fmt: skip
        if st is not None:
            ax.annotate(
                "step (modelled)",
                (len(seq) + 1, st.gas),
                rotation=90,
                fontsize=7,
                ha="center",
                va="bottom",
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("gas")
        ax.set_ylim(0, max([x.gas for x, _ in seq] + [st.gas if st else 0]) * 1.45)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        handles = [matplotlib.patches.Patch(color=c, label=f"{s} side") for s, c in
                   colors.items()]  # fmt: skip
        ax.legend(handles=handles, fontsize=8, loc="upper left")
    axes[1].set_xlabel("transaction along the dispute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(url: str, chain: str, version: str, args: argparse.Namespace) -> str:
    seconds: dict[str, float] = {}
    model = load_model("tiny-llama")
    start = time.perf_counter()
    tiny = []
    for case in TINY_CASES:
        print(f"tiny-llama: {case.label} ...", file=sys.stderr, flush=True)
        tiny.append(play_tiny(url, model, case))
    seconds["tiny"] = time.perf_counter() - start
    program = gasbench.llama_7b_program()
    plans = [plan_7b(program, PROMPT_LENGTH), plan_7b(program, 1),
             plan_7b(program, FULL_CONTEXT_PROMPT)]  # fmt: skip
    w3 = connect(url)
    start = time.perf_counter()
    game = TimedGame.deploy(w3=w3, params=PARAMS)
    synth = Synthetic7B(game, program, PROMPT_LENGTH)
    played = []
    for nm in synthetic_nodes(plans[0]):
        print(f"7B: synthetic dispute over {nm.name} ...", file=sys.stderr, flush=True)
        played.append((nm, *synth.play(nm.node)))
    seconds["synthetic"] = time.perf_counter() - start
    print("7B: one-step verification gas (bench/gas.py) ...", file=sys.stderr, flush=True)
    rows = gasbench.onestep_rows(w3, deploy(w3, "ProofHarness"))
    label, _, _, tx, _, _ = max(rows, key=lambda row: row[3])
    overheads = [r.step_overhead for r in tiny if r.step_overhead is not None]
    step = Step7B(tx, label, max(overheads))
    for pl in plans:
        synth.claim_gas(pl.prompt)
    text = markdown(tiny, model, plans, played, step, synth, chain, version, args.plot,
                    seconds)  # fmt: skip
    if args.plot:
        worst = next(x for x in played if x[0].node == plans[0].worst.node)
        save_plot(args.plot, tiny[0], worst, step, synth.accounts)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpc-url", default=None, help="a Prague node (default: a private anvil)")
    parser.add_argument("--markdown", default=None, help="also write the report to this file")
    parser.add_argument("--plot", default=None, help="write the gas-per-move plot (PNG) here")
    args = parser.parse_args()
    start = time.time()
    if args.rpc_url:
        version = connect(args.rpc_url).client_version
        text = run(args.rpc_url, f"the node at {args.rpc_url}", version, args)
    else:
        version = anvil_version(find_anvil())
        with start_anvil() as url:
            text = run(url, "a private anvil node", version, args)
    print(text)
    print(f"({time.time() - start:.0f} s)", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
