"""MerkleProofs.sol and OneStepVerifier.sol against refute.engine, on real chains.

- MerkleProofs (through ProofHarness, on the embedded py-evm chain): proofs that
  `refute.engine.merkle` / `Trace` / `Model` produce are accepted (hypothesis and fixed cases),
  tampered ones (wrong index or count, swapped siblings, truncated or extended paths, leaf/node
  confusion, non-zero padding) revert with the named custom error.
- OneStepVerifier on real traces of tiny-llama and tiny-gpt2, greedy and sampled: hundreds of
  random steps of every node and step kind (on anvil, many steps per eth_call through
  ProofHarness.multicall) — the contract's value equals `refute.engine.steps` and the executor's
  tensors, the true value is accepted, a value (or index) off by one bit is rejected. A few steps
  of each kind also run on the embedded chain. Every custom error of the verifier is provoked.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
from eth_abi import encode as abi_encode
from eth_hash.auto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3

from refute.contracts.artifacts import load
from refute.contracts.chain import deploy
from refute.contracts.onestep import (
    EMPTY_SOURCE,
    KIND_ELEMENT,
    KIND_LEAF,
    KIND_TREE,
    ListTree,
    OneStepClient,
    StepCall,
    StepProver,
)
from refute.engine import ir, merkle
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.engine.ir import Op, Reducer
from refute.engine.model import weight_leaf

ERRORS = {
    keccak((e["name"] + "(" + ",".join(i["type"] for i in e["inputs"]) + ")").encode())[:4]: e[
        "name"
    ]
    for name in ("OneStepVerifier", "ProofHarness")
    for e in load(name).abi
    if e["type"] == "error"
}


def error_name(data: bytes) -> str:
    return ERRORS.get(bytes(data[:4]), f"<unknown revert {bytes(data[:4]).hex()}>")


# --- a harness on each chain ---------------------------------------------------------------


@dataclasses.dataclass
class Chain:
    w3: Web3
    harness: object  # ProofHarness contract
    client: OneStepClient

    def run(self, target: str, calls: list[bytes]) -> list[tuple[bool, bytes]]:
        ok, data, _ = self.harness.functions.multicall(target, calls).call({"gas": 10**10})
        return list(zip(ok, [bytes(d) for d in data], strict=True))

    def merkle(self, fn: str, *args) -> tuple[bool, bytes]:
        data = Web3.to_bytes(hexstr=self.harness.encode_abi(fn, args=args))
        return self.run(self.harness.address, [data])[0]


@pytest.fixture(scope="module")
def embedded(embedded_web3: Web3) -> Chain:
    return Chain(
        embedded_web3, deploy(embedded_web3, "ProofHarness"), OneStepClient(w3=embedded_web3)
    )


@pytest.fixture(scope="module")
def anvil(anvil_web3: Web3) -> Chain:
    return Chain(anvil_web3, deploy(anvil_web3, "ProofHarness"), OneStepClient(w3=anvil_web3))


def expect_error(result: tuple[bool, bytes], name: str) -> None:
    ok, data = result
    assert not ok, f"expected {name}, the call succeeded"
    assert error_name(data) == name, f"expected {name}, got {error_name(data)}"


# --- MerkleProofs ----------------------------------------------------------------------------


def _leaves(n: int, salt: int = 0) -> list[bytes]:
    return [merkle.sha256(b"leaf", salt.to_bytes(4, "big"), i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=40)
@given(count=st.integers(1, 70), data=st.data())
def test_list_items_match_engine(embedded: Chain, count: int, data: st.DataObject) -> None:
    leaves = _leaves(count, count)
    index = data.draw(st.integers(0, count - 1))
    root = merkle.list_root(leaves)
    proof = merkle.tree_proof(leaves, index)
    assert merkle.verify_list_item(root, count, index, leaves[index], proof)
    assert embedded.merkle("verifyListItem", root, count, index, leaves[index], proof)[0]
    if count > 1:  # the same leaf and path at another index
        other = (index + 1) % count
        bad = embedded.merkle("verifyListItem", root, count, other, leaves[index], proof)
        expect_error(bad, "RootMismatch")


@settings(max_examples=25)
@given(
    length=st.integers(1, 3100),
    dtype=st.sampled_from([merkle.DTYPE_F32, merkle.DTYPE_U32]),
    data=st.data(),
)
def test_elements_match_engine(embedded: Chain, length: int, dtype: int, data) -> None:
    rng = np.random.default_rng(length)
    bits = rng.integers(0, 1 << 32, length, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32) if dtype == merkle.DTYPE_F32 else bits
    if dtype == merkle.DTYPE_F32:
        values = np.where(np.isnan(values), np.float32(1.5), values).astype(np.float32)
    index = data.draw(st.integers(0, length - 1))
    root = merkle.tensor_root(values)
    p = merkle.prove_element(values, index)
    assert merkle.verify_element(root, p)
    ok, out = embedded.merkle(
        "verifyElement", root, dtype, length, index, p.chunk, list(p.siblings)
    )
    assert ok and int.from_bytes(out, "big") == p.value_bits
    # the same chunk and path claimed for an element of another chunk
    per_chunk = merkle.CHUNK_BYTES // 4
    if length > per_chunk:
        other = (index + per_chunk) % length
        if other // per_chunk != index // per_chunk:
            ok, out = embedded.merkle(
                "verifyElement", root, dtype, length, other, p.chunk, list(p.siblings)
            )
            assert not ok and error_name(out) in ("RootMismatch", "NonZeroPadding")
    # the other dtype, or another length with the same chunk count
    bad = embedded.merkle(
        "verifyElement", root, 1 - dtype, length, index, p.chunk, list(p.siblings)
    )
    expect_error(bad, "RootMismatch")
    if length % per_chunk:
        bad = embedded.merkle(
            "verifyElement", root, dtype, length + 1, index, p.chunk, list(p.siblings)
        )
        expect_error(bad, "RootMismatch")


def test_list_tampering_fixed_cases(embedded: Chain) -> None:
    leaves = _leaves(13)
    root = merkle.list_root(leaves)
    i = 6
    proof = merkle.tree_proof(leaves, i)
    assert len(proof) == 4
    m = embedded.merkle
    assert m("verifyListItem", root, 13, i, leaves[i], proof)[0]
    expect_error(m("verifyListItem", root, 13, 13, leaves[i], proof), "IndexOutOfRange")
    expect_error(m("verifyListItem", root, 14, i, leaves[i], proof), "RootMismatch")
    expect_error(m("verifyListItem", root, 12, i, leaves[i], proof), "RootMismatch")
    expect_error(m("verifyListItem", root, 17, i, leaves[i], proof), "WrongPathLength")
    swapped = [proof[1], proof[0], *proof[2:]]
    expect_error(m("verifyListItem", root, 13, i, leaves[i], swapped), "RootMismatch")
    expect_error(m("verifyListItem", root, 13, i, leaves[i], proof[:-1]), "WrongPathLength")
    expect_error(
        m("verifyListItem", root, 13, i, leaves[i], [*proof, merkle.EMPTY]), "WrongPathLength"
    )
    expect_error(m("verifyListItem", root, 13, i, leaves[i + 1], proof), "RootMismatch")
    # leaf/node confusion: an inner node presented as a leaf of a shorter tree
    inner = merkle.node_hash(leaves[6], leaves[7])
    expect_error(m("verifyListItem", root, 13, 3, inner, proof[1:]), "WrongPathLength")
    expect_error(m("verifyListItem", root, 7, 3, inner, proof[1:]), "RootMismatch")
    # a list root is not a tensor root and vice versa
    tree = merkle.tree_root(leaves)
    expect_error(m("verifyListItem", tree, 13, i, leaves[i], proof), "RootMismatch")
    expect_error(m("verifyListItem", root, 2**64, i, leaves[i], proof), "CountTooLarge")
    one = merkle.list_root(leaves[:1])
    assert m("verifyListItem", one, 1, 0, leaves[0], [])[0]
    expect_error(m("verifyListItem", one, 1, 0, leaves[0], [merkle.EMPTY]), "WrongPathLength")
    expect_error(
        m("verifyListItem", merkle.list_root([]), 0, 0, merkle.EMPTY, []), "IndexOutOfRange"
    )


def test_element_tampering_fixed_cases(embedded: Chain) -> None:
    values = (np.arange(2500, dtype=np.float32) * np.float32(0.25)).astype(np.float32)
    root = merkle.tensor_root(values)
    m = embedded.merkle
    per_chunk = merkle.CHUNK_BYTES // 4
    last = 2500 // per_chunk  # the last, partial chunk
    used = 2500 - last * per_chunk  # values in it
    i = last * per_chunk + 5
    p = merkle.prove_element(values, i)
    sib = list(p.siblings)
    ok, out = m("verifyElement", root, 0, 2500, i, p.chunk, sib)
    assert ok and int.from_bytes(out, "big") == p.value_bits
    expect_error(m("verifyElement", root, 0, 2500, 2500, p.chunk, sib), "IndexOutOfRange")
    expect_error(m("verifyElement", root, 0, 2500, i, p.chunk[:-4], sib), "BadChunkLength")
    expect_error(m("verifyElement", root, 0, 2500, i, p.chunk + bytes(4), sib), "BadChunkLength")
    expect_error(m("verifyElement", root, 0, 2500, i, p.chunk, sib[:-1]), "WrongPathLength")
    expect_error(
        m("verifyElement", root, 0, 2500, i, p.chunk, [*sib, merkle.EMPTY]), "WrongPathLength"
    )
    expect_error(m("verifyElement", root, 0, 2500, i, p.chunk, sib[::-1]), "RootMismatch")
    expect_error(m("verifyElement", root, 2, 2500, i, p.chunk, sib), "BadDtype")
    expect_error(m("verifyElement", root, 0, 2**64, i, p.chunk, sib), "CountTooLarge")
    # a chunk whose padding is not zero, even under a root that commits to it
    bad_chunk = bytearray(p.chunk)
    bad_chunk[-1] = 1
    bad_root = merkle.bind_tensor(
        0, 2500, merkle.root_from_proof(merkle.sha256(b"\x00", bytes(bad_chunk)), last, sib)
    )
    expect_error(m("verifyElement", bad_root, 0, 2500, i, bytes(bad_chunk), sib), "NonZeroPadding")
    bad_chunk[-1], bad_chunk[used * 4] = 0, 7  # first padding byte
    bad_root = merkle.bind_tensor(
        0, 2500, merkle.root_from_proof(merkle.sha256(b"\x00", bytes(bad_chunk)), last, sib)
    )
    expect_error(m("verifyElement", bad_root, 0, 2500, i, bytes(bad_chunk), sib), "NonZeroPadding")
    # a chunk leaf presented as the tree (single-chunk tensor): tags differ
    q = merkle.prove_element(values[:10], 3)
    r10 = merkle.tensor_root(values[:10])
    assert m("verifyElement", r10, 0, 10, 3, q.chunk, [])[0]
    expect_error(
        m("verifyElement", merkle.sha256(b"\x00", q.chunk), 0, 10, 3, q.chunk, []), "RootMismatch"
    )


@pytest.fixture(scope="module")
def llama_run():
    model = load_model("tiny-llama")
    ex = Executor(model)
    gen = ex.generate(
        [Request(prompt=(5, 17, 250, 3), max_new_tokens=4, temperature=0.9, seed=11)]
    )[0]
    return model, ex, gen


def test_records_weights_nodes(embedded: Chain, llama_run) -> None:
    model, _, gen = llama_run
    tr = gen.trace
    m = embedded.merkle
    npp, count, root = tr.nodes_per_position, tr.num_records, tr.root()
    for t, n in [(0, 0), (3, 17), (tr.positions - 1, npp - 1), (2, 50)]:
        out = tr.roots[t][n]
        proof = tr.record_proof(t, n)
        assert m("verifyRecord", root, count, npp, t, n, out, proof)[0]
        expect_error(
            m("verifyRecord", root, count, npp, t, (n + 1) % npp, out, proof), "RootMismatch"
        )
        expect_error(m("verifyRecord", root, count, npp, t, n, merkle.EMPTY, proof), "RootMismatch")
    expect_error(
        m("verifyRecord", root, count, npp, 0, npp, tr.roots[0][0], tr.record_proof(0, 0)),
        "RecordNodeOutOfRange",
    )
    expect_error(
        m("verifyRecord", root, count, npp, tr.positions, 0, tr.roots[0][0], tr.record_proof(0, 0)),
        "IndexOutOfRange",
    )
    leaves = model.weight_leaves
    for w in (0, 5, len(leaves) - 1):
        spec = model.program.weights[w]
        proof = merkle.tree_proof(leaves, w)
        args = (
            model.weights_root,
            len(leaves),
            w,
            spec.name,
            list(spec.shape),
            model.tensor_roots[w],
            proof,
        )
        assert m("verifyWeight", *args)[0]
        bad_shape = (*args[:4], [*spec.shape, 1], *args[5:])
        expect_error(m("verifyWeight", *bad_shape), "RootMismatch")
        expect_error(m("verifyWeight", *args[:3], spec.name + "x", *args[4:]), "RootMismatch")
    nodes = [ir.node_abi(n) for n in model.program.nodes]
    node_leaves = [ir.node_leaf(n) for n in model.program.nodes]
    for i in (0, 18, len(nodes) - 1):
        proof = merkle.tree_proof(node_leaves, i)
        assert m("verifyNode", model.program_root, len(nodes), i, nodes[i], proof)[0]
        expect_error(
            m("verifyNode", model.program_root, len(nodes), i, nodes[i] + b"\x00", proof),
            "RootMismatch",
        )
    assert weight_leaf(spec.name, spec.shape, model.tensor_roots[w]) == leaves[w]


# --- OneStepVerifier: real traces --------------------------------------------------------------

RUNS = {
    "llama-greedy": ("tiny-llama", Request(prompt=(5, 17, 250, 3), max_new_tokens=4)),
    "llama-sampled": (
        "tiny-llama",
        Request(prompt=(9, 1, 77), max_new_tokens=5, temperature=0.7, seed=2**255 + 12345),
    ),
    "gpt2-greedy": ("tiny-gpt2", Request(prompt=(300, 2, 40, 8), max_new_tokens=4)),
    "gpt2-sampled": (
        "tiny-gpt2",
        Request(prompt=(4, 100, 31), max_new_tokens=5, temperature=1.3, seed=99),
    ),
}
RANDOM_STEPS_PER_RUN = 150


@pytest.fixture(scope="module")
def provers() -> dict[str, StepProver]:
    models = {name: load_model(name) for name in ("tiny-llama", "tiny-gpt2")}
    out = {}
    for key, (name, request) in RUNS.items():
        ex = Executor(models[name])
        gen = ex.generate([request])[0]
        out[key] = StepProver(models[name], ex, gen)
    return out


def random_step(p: StepProver, rng: np.random.Generator) -> StepCall:
    prog = p.program
    t = int(rng.integers(0, p.gen.trace.positions))
    op = list(Op)[int(rng.integers(0, len(Op)))]  # each node kind equally often
    of_kind = [i for i, node in enumerate(prog.nodes) if node.op == op]
    return step_for(p, t, of_kind[int(rng.integers(0, len(of_kind)))], rng)


def step_for(
    p: StepProver, t: int, n: int, rng: np.random.Generator, mode: str = "any"
) -> StepCall:
    node = p.program.nodes[n]
    size = p.outputs(t)[n].size
    if node.op == Op.CACHE_APPEND:
        row = size // (t + 1)
        if mode == "prev" or (mode == "any" and t > 0 and rng.random() < 0.5):
            return p.step(t, n, int(rng.integers(0, t * row)))
        return p.step(t, n, int(t * row + rng.integers(0, row)))
    element = int(rng.integers(0, size))
    if node.op == Op.MAP:
        return p.step(t, n, element)
    k = p.program.resolve((node.reduce_len,), t)[0]
    width = 1 if k <= 1 else 1 << (k - 1).bit_length()
    depth = width.bit_length() - 1
    if mode == "leaf" or (mode == "any" and (depth == 0 or rng.random() < 0.5)):
        leaf = int(rng.integers(0, width)) if mode != "pad" else width - 1
        return p.step(t, n, element, leaf=leaf)
    if mode == "pad":
        return p.step(t, n, element, leaf=width - 1)
    level = int(rng.integers(1, depth + 1)) if mode != "root" else depth
    return p.step(t, n, element, level=level, index=int(rng.integers(0, width >> level)))


def forced_steps(p: StepProver, rng: np.random.Generator) -> list[StepCall]:
    """Steps every run must cover: gathers with prompt and sampled tokens, caches before and at
    t, padding leaves, SUM / MAX / ARGMAX tree nodes, sample leaves and the sample root."""
    prog, last = p.program, p.gen.trace.positions - 1
    plen = len(p.gen.request.prompt)
    names = {n.name: i for i, n in enumerate(prog.nodes)}
    caches = [i for i, n in enumerate(prog.nodes) if n.op == Op.CACHE_APPEND]
    t_reduces = [i for i, n in enumerate(prog.nodes) if n.op == Op.REDUCE and n.reduce_len == ir.T]
    maxes = [i for i, n in enumerate(prog.nodes) if n.op == Op.REDUCE and n.reducer == Reducer.MAX]
    out = [
        p.step(0, names["embed"], 7),
        p.step(plen - 1, names["embed"], 63),
        p.step(plen, names["embed"], 5),
        p.step(last, names["embed"], int(rng.integers(0, 64))),
        step_for(p, last, caches[0], rng, "prev"),
        step_for(p, last, caches[1], rng, "new"),
        step_for(p, 0, caches[0], rng, "new"),
        p.step(2, t_reduces[0], 0, leaf=3),  # K = 3, width 4: padding leaves (MAX, SUM, SUM)
        p.step(2, t_reduces[1], 1, leaf=3),
        p.step(2, t_reduces[2], 5, leaf=3),
        step_for(p, last, maxes[0], rng, "tree"),
        step_for(p, last, maxes[0], rng, "root"),
        p.step(last, prog.token_node, 0, leaf=int(rng.integers(0, prog.vocab_size))),
        p.step(last, prog.token_node, 0, leaf=prog.vocab_size + 5),  # padding (-inf, k)
        step_for(p, last, prog.token_node, rng, "root"),
        step_for(p, plen - 1, prog.token_node, rng, "tree"),
        step_for(p, last, prog.logits_node, rng, "leaf"),
        step_for(p, last, prog.logits_node, rng, "root"),
    ]
    return out


def check_against_executor(p: StepProver, call: StepCall) -> None:
    """The expected value itself agrees with the executor's tensors (and the trace)."""
    node = p.program.nodes[call.node]
    out = p.outputs(call.position)[call.node]
    assert merkle.tensor_root(out) == p.gen.trace.roots[call.position][call.node]
    if call.kind == KIND_ELEMENT:
        assert call.value == int(np.asarray(out, np.float32).view(np.uint32)[call.element])
        return
    levels, _ = p.tree_levels(call.position, call.node, call.element)
    root = levels[-1][0]
    if node.op == Op.SAMPLE:
        assert int(out[0]) == root[1]
        if call.position + 1 < len(p.gen.tokens):
            assert p.gen.tokens[call.position + 1] == root[1] or call.position + 1 < len(
                p.gen.request.prompt
            )
    elif node.reducer == Reducer.ARGMAX:
        assert int(out[call.element]) == root[1]
    else:
        assert int(np.asarray(out, np.float32).view(np.uint32)[call.element]) == int(
            np.float32(root).view(np.uint32)
        )
    if call.kind == KIND_TREE and call.level == len(levels) - 1:  # the root is the output
        if node.op == Op.SAMPLE or node.reducer == Reducer.ARGMAX:
            assert call.index == root[1]
        else:
            assert call.value == int(np.float32(root).view(np.uint32))


def run_steps(chain: Chain, calls: list[StepCall], batch: int = 40) -> None:
    """compute == expected, verify(true) is true, verify(value ^ 1) (and index ^ 1) is false."""
    client = chain.client
    for lo in range(0, len(calls), batch):
        group = calls[lo : lo + batch]
        data, plan = [], []
        for c in group:
            data.append(client.encode_compute(c))
            data.append(client.encode_verify(c, c.value, c.index))
            data.append(client.encode_verify(c, c.value ^ 1, c.index))
            n = 3
            if c.index or (c.kind != KIND_ELEMENT and c.label.startswith(("sample", "pad"))):
                data.append(client.encode_verify(c, c.value, c.index ^ 1))
                n += 1
            plan.append(n)
        results = chain.run(client.verifier.address, data)
        i = 0
        for c, n in zip(group, plan, strict=True):
            where = f"{c.label} t={c.position} n={c.node} e={c.element} leaf={c.leaf} lvl={c.level}"
            ok, out = results[i]
            assert ok, f"{where}: reverted with {error_name(out)}"
            got = (int.from_bytes(out[:32], "big"), int.from_bytes(out[32:64], "big"))
            assert got == (c.value, c.index), (
                f"{where}: contract {got}, engine {(c.value, c.index)}"
            )
            assert results[i + 1] == (True, (1).to_bytes(32, "big")), where
            assert results[i + 2] == (True, bytes(32)), where
            if n == 4:
                assert results[i + 3] == (True, bytes(32)), where
            i += n


def test_real_steps_anvil(anvil: Chain, provers: dict[str, StepProver]) -> None:
    rng = np.random.default_rng(2026)
    kinds: Counter = Counter()
    ops: Counter = Counter()
    total = 0
    for p in provers.values():
        calls = forced_steps(p, rng) + [random_step(p, rng) for _ in range(RANDOM_STEPS_PER_RUN)]
        for c in calls:
            check_against_executor(p, c)
            kinds[c.label] += 1
            ops[p.program.nodes[c.node].op.name] += 1
        gather = [c for c in calls if p.program.nodes[c.node].name == "embed"]
        plen = len(p.gen.request.prompt)
        assert any(c.position < plen for c in gather) and any(c.position >= plen for c in gather)
        run_steps(anvil, calls)
        total += len(calls)
    assert total >= 400
    for label in ("map", "cache_prev", "cache_new", "reduce_leaf", "pad_leaf", "tree_sum",
                  "tree_max", "sample_leaf", "sample_node"):  # fmt: skip
        assert kinds[label] > 0, f"no {label} step ran: {kinds}"
    assert set(ops) == {"MAP", "REDUCE", "CACHE_APPEND", "SAMPLE"}
    print(f"\n{total} steps: {dict(kinds)}")


def test_real_steps_embedded(embedded: Chain, provers: dict[str, StepProver]) -> None:
    """One step of each kind per model on py-evm, through the client's own calls."""
    rng = np.random.default_rng(5)
    for key in ("llama-sampled", "gpt2-greedy"):
        p = provers[key]
        calls = forced_steps(p, rng)
        for c in calls[2:3] + calls[4:8] + calls[9:11] + calls[12:13]:
            assert embedded.client.compute(c) == (c.value, c.index)
            assert embedded.client.verify(c)
            assert not embedded.client.verify(c, value=c.value ^ 1)


def test_argmax_reduce_node(embedded: Chain) -> None:
    """A REDUCE(ARGMAX) node (no built-in model has one): leaves, padding, tree nodes, ties."""
    from refute.engine.ir import Fn, Node, Operand, Program, Src
    from refute.engine.model import Model

    model = load_model("tiny-llama")
    prog = model.program
    logits = prog.logits_node
    extra = Node(
        "argmax",
        Op.REDUCE,
        (),
        (Operand(Src.NODE, logits, (1,)),),
        Fn.COPY,
        Reducer.ARGMAX,
        prog.vocab_size,
    )
    nodes = (*prog.nodes, extra)
    program = Program(
        nodes, prog.weights, prog.max_positions, prog.vocab_size, logits, prog.token_node
    )
    program.validate()
    m2 = Model(model.name, model.config, program, model.weights)
    ex = Executor(m2)
    gen = ex.generate([Request(prompt=(1, 2), max_new_tokens=2)])[0]
    p = StepProver(m2, ex, gen)
    n = len(nodes) - 1
    calls = [p.step(1, n, 0, leaf=3), p.step(1, n, 0, leaf=400), p.step(1, n, 0, level=9, index=0),
             p.step(2, n, 0, level=3, index=5)]  # fmt: skip
    root = calls[2]
    assert root.index == int(p.outputs(1)[n][0]) == int(p.outputs(1)[prog.token_node][0])
    run_steps(embedded, calls)
    # ties keep the left; NaN beats numbers; equal NaNs keep the left
    c = p.step(1, n, 0, level=1, index=0)
    pairs = [(0x3F800000, 0x3F800000, 0), (0x80000000, 0, 0), (0x3F800000, 0x7FC00000, 1),
             (0x7FC00000, 0x7FC00000, 0), (0x3F800000, 0x40000000, 1)]  # fmt: skip
    for lv, rv, want in pairs:
        s = list(c.args[2])
        s[5], s[6], s[7], s[8] = lv, 10, rv, 11
        args = (*c.args[:2], tuple(s), *c.args[3:])
        got = embedded.client.verifier.functions.computeStep(*args).call()
        assert tuple(got) == ((lv, 10) if want == 0 else (rv, 11))


# --- OneStepVerifier: every custom error -------------------------------------------------------


def _with(call: StepCall, *, ctx=None, node=None, step=None, sources=None, token=None) -> tuple:
    a = list(call.args)
    for i, v in enumerate((ctx, node, step, sources, token)):
        if v is not None:
            a[i] = v
    return tuple(a)


def _patched_program(p: StepProver, n: int, **changes) -> tuple[tuple, tuple, bytes]:
    """Replace node n's descriptor fields (as raw ABI values) and re-commit the program:
    (ctx with the new program root, node proof, descriptor)."""
    tup = list(p.program.nodes[n].as_tuple())
    fields = ["name", "op", "shape", "operands", "fn", "reducer", "reduce_len", "layer"]
    for k, v in changes.items():
        tup[fields.index(k)] = v
    desc = abi_encode([ir.NODE_ABI], [tuple(tup)])
    leaves = [ir.node_leaf(x) for x in p.program.nodes]
    leaves[n] = merkle.sha256(b"\x10", desc)
    tree = ListTree(leaves)
    return tree.root(), (n, desc, tree.proof(n)), desc


def test_every_custom_error(embedded: Chain, provers: dict[str, StepProver]) -> None:
    p = provers["llama-sampled"]
    prog = p.program
    names = {n.name: i for i, n in enumerate(prog.nodes)}
    last = p.gen.trace.positions - 1
    cl = embedded.client
    cases: list[tuple[str, tuple]] = []

    def add(name: str, args: tuple) -> None:
        cases.append((name, args))

    def ctx_with(call: StepCall, **kw) -> tuple:
        fields = ["programRoot", "nodesPerPosition", "weightsRoot", "weightCount", "traceRoot",
                  "recordCount", "promptRoot", "promptLength", "temperature", "seed", "tokenNode",
                  "position"]  # fmt: skip
        c = list(call.args[0])
        for k, v in kw.items():
            c[fields.index(k)] = v
        return tuple(c)

    def patched(call: StepCall, **changes) -> tuple:
        root, nproof, _ = _patched_program(p, call.node, **changes)
        return _with(call, ctx=ctx_with(call, programRoot=root), node=nproof)

    q = names["layers.0.attn.q"]  # REDUCE(SUM, MUL) with a weight
    mp = names["layers.0.mlp.silu"]  # MAP
    scaled = names["layers.0.attn.scaled"]  # MAP with a CONST
    leaf = p.step(2, q, 3, leaf=5)
    mapc = p.step(2, mp, 7)
    tree = p.step(2, q, 3, level=2, index=1)
    sample = p.step(last, prog.token_node, 0, leaf=7)
    embed = p.step(0, names["embed"], 3)
    cache = p.step(2, names["layers.0.attn.k_cache"], 5)
    const = p.step(2, scaled, 1)
    q_ops = prog.nodes[q].as_tuple()[3]

    add("UnknownOp", patched(leaf, op=7))
    add("UnknownFn", patched(mapc, fn=18))
    add("UnknownReducer", patched(leaf, reducer=0))
    add("UnknownReducer", patched(leaf, reducer=4))
    add("UnknownSource", patched(leaf, operands=[(3, *q_ops[0][1:]), q_ops[1]]))
    add("WrongOperandCount", patched(leaf, operands=[q_ops[0]]))
    add("WrongStrideCount", patched(leaf, operands=[(0, 6, [0, 1, 1], 0, 0, 0), q_ops[1]]))
    add("NegativeIndex", patched(leaf, operands=[(0, 6, [0, 1], -100, 0, 0), q_ops[1]]))
    add("SourceNotEarlier", patched(leaf, operands=[(0, q, [0, 1], 0, 0, 0), q_ops[1]]))
    add(
        "BadConstant",
        patched(
            const, operands=[prog.nodes[scaled].as_tuple()[3][0], (2, 2**32, [0, 0, 0], 0, 0, 0)]
        ),
    )
    add(
        "NonCanonicalNaN",
        patched(
            const,
            operands=[prog.nodes[scaled].as_tuple()[3][0], (2, 0x7FC00001, [0, 0, 0], 0, 0, 0)],
        ),
    )
    add("BadShape", patched(mapc, shape=[-3]))
    add("BadShape", patched(cache, shape=[2, 2, 16]))
    add("ReductionTooWide", patched(leaf, reduce_len=2**32 + 1))
    s = list(leaf.args[2])
    add("WrongStepKind", _with(leaf, step=(KIND_ELEMENT, *s[1:])))
    add("WrongStepKind", _with(leaf, step=(3, *s[1:])))
    add("WrongStepKind", _with(mapc, step=(KIND_LEAF, *list(mapc.args[2])[1:])))
    add("WrongSourceCount", _with(leaf, sources=leaf.args[3][:1]))
    add("WrongSourceCount", _with(tree, sources=leaf.args[3]))
    add("WrongSourceCount", _with(p.step(2, q, 3, leaf=5), sources=[*leaf.args[3], EMPTY_SOURCE]))
    add("ElementOutOfRange", _with(leaf, step=(KIND_LEAF, 64, *s[2:])))
    add("LeafOutOfRange", _with(leaf, step=(KIND_LEAF, 3, 64, *s[3:])))
    ts = list(tree.args[2])
    add("TreeNodeOutOfRange", _with(tree, step=(KIND_TREE, 3, 0, 0, 0, *ts[5:])))
    add("TreeNodeOutOfRange", _with(tree, step=(KIND_TREE, 3, 0, 7, 0, *ts[5:])))
    add("TreeNodeOutOfRange", _with(tree, step=(KIND_TREE, 3, 0, 2, 16, *ts[5:])))
    add("NonCanonicalNaN", _with(tree, step=(KIND_TREE, 3, 0, 2, 1, 0xFFC00000, 0, 0, 0)))
    add("RecordOutOfRange", _with(leaf, ctx=ctx_with(leaf, position=last + 1)))
    src = list(leaf.args[3][1])
    src[4] += 1
    add("WeightLengthMismatch", _with(leaf, sources=[leaf.args[3][0], tuple(src)]))
    add("BadTemperature", _with(sample, ctx=ctx_with(sample, temperature=0x7F800000)))
    add("BadTemperature", _with(sample, ctx=ctx_with(sample, temperature=0xBF800000)))
    add("BadTemperature", _with(sample, ctx=ctx_with(sample, temperature=0x7FC00000)))
    add("NoInputToken", _with(embed, ctx=ctx_with(embed, promptLength=0)))
    # proofs
    src0 = list(leaf.args[3][0])
    add("RootMismatch", _with(leaf, sources=[tuple([merkle.EMPTY, *src0[1:]]), leaf.args[3][1]]))
    add(
        "WrongPathLength",
        _with(leaf, sources=[tuple([*src0[:1], src0[1][:-1], *src0[2:]]), leaf.args[3][1]]),
    )
    bad_chunk = bytearray(src0[5])
    bad_chunk[0] ^= 1
    add(
        "RootMismatch",
        _with(leaf, sources=[tuple([*src0[:5], bytes(bad_chunk), src0[6]]), leaf.args[3][1]]),
    )
    add(
        "BadChunkLength",
        _with(leaf, sources=[tuple([*src0[:5], bytes(src0[5][:100]), src0[6]]), leaf.args[3][1]]),
    )
    add("RootMismatch", _with(leaf, node=(q, p.node_abi[q + 1], leaf.args[1][2])))
    add("RootMismatch", _with(leaf, ctx=ctx_with(leaf, weightsRoot=merkle.EMPTY)))
    add("RootMismatch", _with(leaf, ctx=ctx_with(leaf, traceRoot=merkle.EMPTY)))
    add("IndexOutOfRange", _with(leaf, node=(len(prog.nodes), *leaf.args[1][1:])))
    tchunk = embed.args[4][5]
    add(
        "RootMismatch",
        _with(
            embed, token=(*embed.args[4][:5], bytes([tchunk[0] ^ 1]) + tchunk[1:], embed.args[4][6])
        ),
    )
    tok = p.step(last, names["embed"], 3)
    add("RecordNodeOutOfRange", _with(tok, ctx=ctx_with(tok, tokenNode=len(prog.nodes))))
    add("RootMismatch", _with(tok, ctx=ctx_with(tok, tokenNode=prog.token_node - 1)))
    prev = p.step(2, names["layers.0.attn.k_cache"], 5)
    add("WrongSourceCount", _with(prev, sources=[]))

    data = [Web3.to_bytes(hexstr=cl.verifier.encode_abi("computeStep", args=a)) for _, a in cases]
    results = embedded.run(cl.verifier.address, data)
    got = [error_name(d) if not ok else "ok" for ok, d in results]
    want = [name for name, _ in cases]
    assert got == want
    verifier_errors = {e["name"] for e in load("OneStepVerifier").abi if e["type"] == "error"}
    merkle_only = {"BadDtype", "CountTooLarge", "NonZeroPadding"}  # covered by the Merkle tests
    assert verifier_errors - set(want) - merkle_only == set()
    # the controls are accepted
    for c in (leaf, mapc, tree, sample, embed, cache, const, tok, prev):
        assert cl.verify(c)
    assert KIND_LEAF == 1 and KIND_TREE == 2
