"""Calldata for OneStepVerifier (contracts/sol/OneStepVerifier.sol), built from a real generation.

`StepProver` takes a model, an `Executor` and one of its `Generation`s, and builds, for any step
of any record (position t, node n) — an element of a MAP or CACHE_APPEND output, a leaf of a
REDUCE or SAMPLE reduction tree, or an inner node of that tree — the verifier's arguments with
real proofs (program node, trace records, weights, tensor chunks, the input token), together
with the value the step must have (from `refute.engine.steps`). `OneStepClient` deploys the
verifier on a chain (embedded py-evm by default, or any JSON-RPC URL) and calls it.

    prover = StepProver(model, executor, gen)
    call = prover.step(t, n, element, leaf=k)            # or level=, index= for a tree node
    client = OneStepClient()                             # embedded chain
    value, index = client.compute(call)                  # == call.value, call.index
    assert client.verify(call)

Step kinds (the verifier's `Step.kind`): ELEMENT 0, LEAF 1, TREE 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from web3 import Web3

from refute.contracts.chain import connect, deploy
from refute.engine import ir, merkle, steps
from refute.engine.executor import Executor, Generation
from refute.engine.ir import Op, Reducer, Src
from refute.engine.model import Model
from refute.engine.weights import widen
from refute.errors import RefuteError

KIND_ELEMENT, KIND_LEAF, KIND_TREE = 0, 1, 2
NO_K = None

EMPTY_SOURCE: tuple = (merkle.EMPTY, [], "", [], 0, b"", [])
"""A SourceProof with nothing in it: for CONST operands and unused token proofs."""


def f32_bits(x: Any) -> int:
    """uint32 bit pattern of a float32 (NaN canonical)."""
    v = np.float32(x)
    if np.isnan(v):
        return 0x7FC00000
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0])


class StepError(RefuteError, ValueError):
    """A step that does not exist (element, leaf or tree node out of range, wrong kind)."""


class ListTree:
    """All levels of a list's Merkle tree, so that each proof costs O(log n) (merkle.tree_proof
    rebuilds the whole tree per proof)."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.count = len(leaves)
        self.levels = [list(leaves)]
        level = list(leaves)
        for height in range(merkle.depth_for(len(leaves))):
            if len(level) % 2:
                level.append(merkle.ZERO[height])
            level = [merkle.node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
            self.levels.append(level)

    def proof(self, index: int) -> list[bytes]:
        if not 0 <= index < self.count:
            raise StepError(f"leaf {index} outside a list of {self.count}")
        out = []
        for height in range(len(self.levels) - 1):
            level = self.levels[height]
            sib = index ^ 1
            out.append(level[sib] if sib < len(level) else merkle.ZERO[height])
            index //= 2
        return out

    def root(self) -> bytes:
        tree = self.levels[-1][0] if self.count else merkle.EMPTY
        return merkle.sha256(merkle.TAG_LIST, self.count.to_bytes(8, "big"), tree)


@dataclass
class StepCall:
    """The verifier's arguments for one step, and the result it must return."""

    position: int
    node: int
    kind: int
    element: int
    leaf: int | None
    level: int | None
    index_in_level: int | None
    args: tuple  # (ctx, nodeProof, step, sources, token)
    value: int  # expected float32 bits
    index: int  # expected index (ARGMAX / SAMPLE steps), else 0
    label: str = ""
    meta: dict = field(default_factory=dict)


class StepProver:
    """Builds OneStepVerifier calldata for the steps of one generation."""

    def __init__(self, model: Model, executor: Executor, gen: Generation) -> None:
        self.model = model
        self.program = model.program
        self.executor = executor
        self.gen = gen
        self.request = gen.request
        self.program_tree = ListTree([ir.node_leaf(n) for n in self.program.nodes])
        self.weight_tree = ListTree(list(model.weight_leaves))
        self.trace_tree = ListTree(gen.trace.leaves())
        self.node_abi = [ir.node_abi(n) for n in self.program.nodes]
        self._outputs: dict[int, list[np.ndarray]] = {}
        # at their stored width; a bf16/fp16 weight is widened (exactly) where it is opened
        self._flat_weights = [w.reshape(-1) for w in model.weights]
        self.prompt = np.asarray(self.request.prompt, dtype=np.uint32)
        if self.program_tree.root() != model.program_root:
            raise StepError("program tree does not match the model's program root")
        if self.trace_tree.root() != gen.trace.root():
            raise StepError("trace tree does not match the generation's trace root")

    # --- data -------------------------------------------------------------------------------

    def outputs(self, t: int) -> list[np.ndarray]:
        """Every node's flat output at position t (recomputed once, then cached)."""
        if t not in self._outputs:
            self._outputs[t] = [
                np.asarray(o).reshape(-1) for o in self.executor.recompute(self.gen, t)
            ]
        return self._outputs[t]

    @property
    def temperature_bits(self) -> int:
        return f32_bits(np.float32(self.request.temperature))

    def context(self, t: int) -> tuple:
        p = self.program
        return (
            self.model.program_root,
            len(p.nodes),
            self.model.weights_root,
            len(p.weights),
            self.gen.trace.root(),
            self.gen.trace.num_records,
            merkle.tensor_root(self.prompt),
            len(self.prompt),
            self.temperature_bits,
            self.request.seed,
            p.token_node,
            t,
        )

    def node_proof(self, n: int) -> tuple:
        return (n, self.node_abi[n], self.program_tree.proof(n))

    # --- source proofs ------------------------------------------------------------------------

    def record_source(self, t: int, node: int, values: np.ndarray, flat: int) -> tuple:
        """Record (t, node)'s output root with its trace path, and element `flat` of it."""
        root = self.gen.trace.roots[t][node]
        ep = merkle.prove_element(values, flat)
        path = self.trace_tree.proof(self.gen.trace.record_index(t, node))
        return (root, path, "", [], ep.length, ep.chunk, list(ep.siblings))

    def weight_source(self, w: int, flat: int) -> tuple:
        spec = self.program.weights[w]
        ep = merkle.prove_element(widen(self._flat_weights[w]), flat)
        return (
            self.model.tensor_roots[w],
            self.weight_tree.proof(w),
            spec.name,
            list(spec.shape),
            ep.length,
            ep.chunk,
            list(ep.siblings),
        )

    def selected(self, t: int, n: int) -> int:
        """What node n's token_stride multiplies at t: the input token, or the value of its
        selector (an expert index record at t)."""
        select = self.program.nodes[n].selector
        if select < 0:
            return self.gen.tokens[t]
        return int(self.outputs(t)[select][0])

    def token_source(self, t: int, n: int | None = None) -> tuple:
        """The input token at t: prompt element t, or record (t - 1, token node); for a node
        with a selector, the selector's record (t, select) and its one element."""
        select = -1 if n is None else self.program.nodes[n].selector
        if select >= 0:
            return self.record_source(t, select, self.outputs(t)[select], 0)
        if t < len(self.prompt):
            ep = merkle.prove_element(self.prompt, t)
            return (merkle.EMPTY, [], "", [], ep.length, ep.chunk, list(ep.siblings))
        tok = np.array([self.gen.tokens[t]], dtype=np.uint32)
        return self.record_source(t - 1, self.program.token_node, tok, 0)

    def operand_sources(self, t: int, n: int, term: tuple[int, ...]) -> list[tuple]:
        node = self.program.nodes[n]
        out = []
        for op, flat in zip(node.operands, term, strict=True):
            if op.src == Src.CONST:
                out.append(EMPTY_SOURCE)
            elif op.src == Src.WEIGHT:
                out.append(self.weight_source(op.index, flat))
            else:
                out.append(self.record_source(t, op.index, self.outputs(t)[op.index], flat))
        return out

    def _needs_token(self, n: int) -> bool:
        return any(op.token_stride != 0 for op in self.program.nodes[n].operands)

    # --- expected values ------------------------------------------------------------------------

    def _read(self, t: int, n: int):
        node = self.program.nodes[n]

        def read(i: int, flat: int) -> np.float32:
            op = node.operands[i]
            if op.src == Src.CONST:
                return np.array([op.index], dtype=np.uint32).view(np.float32)[0]
            if op.src == Src.WEIGHT:
                return widen(self._flat_weights[op.index][flat : flat + 1])[0]
            return self.outputs(t)[op.index][flat]

        return read

    def tree_levels(self, t: int, n: int, element: int) -> tuple[list[list], steps.ElementReads]:
        """Every level of the reduction tree of (t, n, element): values or (value, index)."""
        node = self.program.nodes[n]
        reads = steps.element_reads(self.program, n, element, t, self.selected(t, n))
        read = self._read(t, n)
        if node.op == Op.SAMPLE:
            logits = [read(0, term[0]) for term in reads.reads]
            leaves = steps.sample_scores(
                logits, float(np.float32(self.request.temperature)), self.request.seed, t
            )
            return steps.reduction_tree(Reducer.ARGMAX, leaves), reads
        if node.op != Op.REDUCE:
            raise StepError(f"node {node.name} has no reduction tree")
        return steps.reduction_tree(node.reducer, steps.terms(reads, read)), reads

    # --- steps ------------------------------------------------------------------------------------

    def step(
        self,
        t: int,
        n: int,
        element: int = 0,
        *,
        leaf: int | None = None,
        level: int | None = None,
        index: int | None = None,
    ) -> StepCall:
        """Calldata and expected result of one step: ELEMENT (MAP / CACHE_APPEND), LEAF k, or
        TREE node (level >= 1, index) of element `element` of record (t, n)."""
        node = self.program.nodes[n]
        token_proof = self.token_source(t, n) if self._needs_token(n) else EMPTY_SOURCE
        ctx, nproof = self.context(t), self.node_proof(n)
        out = self.outputs(t)[n]
        if not 0 <= element < out.size:
            raise StepError(f"element {element} outside node {node.name} ({out.size} at t={t})")
        zero_step = [0, element, 0, 0, 0, 0, 0, 0, 0]
        if node.op in (Op.MAP, Op.CACHE_APPEND):
            reads = steps.element_reads(self.program, n, element, t, self.selected(t, n))
            # the value the verifier will compute, from the operands (all agreed by both sides
            # of a dispute), not this trace's own output at (t, n), which may be the wrong one
            if reads.from_previous:
                prev = self.outputs(t - 1)[n]
                sources = [self.record_source(t - 1, n, prev, element)]
                label = "cache_prev"
                value = f32_bits(prev[element])
            else:
                sources = self.operand_sources(t, n, reads.reads[0])
                label = "cache_new" if node.op == Op.CACHE_APPEND else "map"
                value = f32_bits(steps.terms(reads, self._read(t, n))[0])
            args = (ctx, nproof, tuple(zero_step), sources, token_proof)
            return StepCall(t, n, KIND_ELEMENT, element, None, None, None, args, value, 0, label)
        levels, reads = self.tree_levels(t, n, element)
        is_index = node.op == Op.SAMPLE or node.reducer == Reducer.ARGMAX
        if leaf is not None:
            width = len(levels[0])
            if not 0 <= leaf < width:
                raise StepError(f"leaf {leaf} outside a tree of width {width}")
            entry = levels[0][leaf]
            if leaf < len(reads.reads):
                sources = self.operand_sources(t, n, reads.reads[leaf])
                label = "sample_leaf" if node.op == Op.SAMPLE else "reduce_leaf"
            else:
                sources, label = [], "pad_leaf"
                token_proof = EMPTY_SOURCE
            step = list(zero_step)
            step[0], step[2] = KIND_LEAF, leaf
            value, idx = (f32_bits(entry[0]), int(entry[1])) if is_index else (f32_bits(entry), 0)
            args = (ctx, nproof, tuple(step), sources, token_proof)
            return StepCall(t, n, KIND_LEAF, element, leaf, None, None, args, value, idx, label)
        if level is None or index is None:
            raise StepError("a reduction step needs leaf=k, or level= and index=")
        if not 1 <= level < len(levels) or not 0 <= index < len(levels[level]):
            raise StepError(f"tree node ({level}, {index}) outside the tree")
        left, right = levels[level - 1][2 * index], levels[level - 1][2 * index + 1]
        entry = levels[level][index]
        if is_index:
            children = (f32_bits(left[0]), int(left[1]), f32_bits(right[0]), int(right[1]))
            value, idx = f32_bits(entry[0]), int(entry[1])
        else:
            children = (f32_bits(left), 0, f32_bits(right), 0)
            value, idx = f32_bits(entry), 0
        step = (KIND_TREE, element, 0, level, index, *children)
        label = "sample_node" if node.op == Op.SAMPLE else f"tree_{node.reducer.name.lower()}"
        args = (ctx, nproof, step, [], EMPTY_SOURCE)
        return StepCall(t, n, KIND_TREE, element, None, level, index, args, value, idx, label)


class OneStepClient:
    """OneStepVerifier deployed on a chain (embedded py-evm unless `url` or `w3` is given)."""

    def __init__(self, url: str | None = None, *, w3: Web3 | None = None) -> None:
        self.w3 = w3 if w3 is not None else connect(url)
        self.verifier = deploy(self.w3, "OneStepVerifier")
        self._harness = None

    @property
    def harness(self):
        if self._harness is None:
            self._harness = deploy(self.w3, "ProofHarness")
        return self._harness

    def compute(self, call: StepCall, gas: int = 30_000_000) -> tuple[int, int]:
        """(value bits, index) the contract computes for the step."""
        value, index = self.verifier.functions.computeStep(*call.args).call({"gas": gas})
        return int(value), int(index)

    def verify(
        self,
        call: StepCall,
        value: int | None = None,
        index: int | None = None,
        gas: int = 30_000_000,
    ) -> bool:
        """Whether the contract accepts (value, index) for the step (default: the expected)."""
        v = call.value if value is None else value
        i = call.index if index is None else index
        return bool(self.verifier.functions.verifyStep(*call.args, v, i).call({"gas": gas}))

    def encode_verify(self, call: StepCall, value: int, index: int) -> bytes:
        data = self.verifier.encode_abi("verifyStep", args=(*call.args, value, index))
        return Web3.to_bytes(hexstr=data)

    def encode_compute(self, call: StepCall) -> bytes:
        data = self.verifier.encode_abi("computeStep", args=call.args)
        return Web3.to_bytes(hexstr=data)

    def multicall(self, calldata: list[bytes], gas: int = 10**10) -> list[tuple[bool, bytes, int]]:
        """Static-call the verifier with each encoded call in one eth_call (through
        ProofHarness.multicall): (ok, return or revert data, gas) per call."""
        ok, results, used = self.harness.functions.multicall(self.verifier.address, calldata).call(
            {"gas": gas}
        )
        return list(zip(ok, results, used, strict=True))
