"""Gas of the on-chain verification: soft-float functions, Merkle proofs by depth, and whole
one-step verifications of a Llama-2-7B-sized trace.

    python bench/gas.py [--rpc-url URL] [--cases 100] [--markdown docs/gas.md]

Runs on the embedded py-evm chain unless --rpc-url names a node (anvil: same gas rules).

The one-step figures use the real program of a Llama-2-7B-shaped model (32 layers, d = 4096,
ffn 11008, 32 heads, vocab 32000, 4096 positions: 1257 nodes, 293 weights; built from the
descriptors only, no weights) and synthetic but valid commitments of the real sizes: every
tensor root, the weights list and the trace (4096 positions x 1257 nodes = 5.1M records) are
sparse Merkle trees whose opened chunks hold random float32 data and whose other subtrees are
pseudo-random hashes — the verifier only ever sees one chunk and one path per value, so its gas
is that of a real 7B trace at position t = 4095.

Columns: `exec` is the gas used inside the verifier call (ABI decoding of the calldata, proofs,
arithmetic; measured by ProofHarness.multicall around a static call); `calldata` the bytes of
the `verifyStep` call; `tx (chain)` the total of a transaction sending that call
(eth_estimateGas on the chain: 21,000 + calldata + execution; anvil applies the EIP-7623
calldata floor of Prague, py-evm does not);
`tx pre-7623` = 21,000 + 4/16 gas per zero/non-zero calldata byte + exec; `tx with 7623 floor`
= max(that, 21,000 + 10 * (zero bytes + 4 * non-zero bytes)), what Prague (EIP-7623) charges.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from web3 import Web3

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gas_softfloat

from refute.contracts.chain import connect, deploy
from refute.contracts.onestep import ListTree
from refute.engine import builder as _builder
from refute.engine import ir, merkle, steps
from refute.engine import models as _models
from refute.engine.ir import Src, WeightSpec
from refute.engine.model import weight_leaf
from refute.engine.trace import record_leaf

TARGET = 300_000
VALUES = merkle.CHUNK_BYTES // 4  # float32 values per chunk
LLAMA_7B = _models.LlamaConfig(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    head_dim=128,
    max_positions=4096,
)
POSITION = 4095
PROMPT_LENGTH = 16
TEMPERATURE = 0.7
SEED = 1234


# --- sparse Merkle trees: real paths, pseudo-random subtrees elsewhere -----------------------


def _filler(height: int, index: int, salt: bytes) -> bytes:
    return merkle.sha256(b"filler", salt, height.to_bytes(1, "big"), index.to_bytes(8, "big"))


class SparseTree:
    """A tree of the given height whose leaves at `leaves` are given and whose every other
    subtree is a pseudo-random hash (a valid commitment to data nobody needs to open)."""

    def __init__(self, depth: int, leaves: dict[int, bytes], salt: bytes) -> None:
        self.depth, self.leaves, self.salt = depth, leaves, salt
        self.known = {(h, i >> h) for i in leaves for h in range(depth + 1)}
        self.memo: dict[tuple[int, int], bytes] = {}

    def node(self, h: int, i: int) -> bytes:
        if (h, i) not in self.known:
            return _filler(h, i, self.salt)
        if h == 0:
            return self.leaves[i]
        if (h, i) not in self.memo:
            self.memo[(h, i)] = merkle.node_hash(
                self.node(h - 1, 2 * i), self.node(h - 1, 2 * i + 1)
            )
        return self.memo[(h, i)]

    def root(self) -> bytes:
        return self.node(self.depth, 0)

    def proof(self, index: int) -> list[bytes]:
        return [self.node(h, (index >> h) ^ 1) for h in range(self.depth)]


class SynthTensor:
    """A committed tensor of `length` elements of which only the chunks holding `indices` exist."""

    def __init__(
        self,
        length: int,
        indices: list[int],
        rng: np.random.Generator,
        dtype: int = merkle.DTYPE_F32,
        values: dict[int, int] | None = None,
    ) -> None:
        self.length, self.dtype = length, dtype
        self.chunks: dict[int, bytes] = {}
        for idx in indices:
            c = idx // VALUES
            if c in self.chunks:
                continue
            n = min(VALUES, length - c * VALUES)
            if dtype == merkle.DTYPE_F32:
                words = (rng.standard_normal(n) * 0.5).astype("<f4").view("<u4")
            else:
                words = rng.integers(0, 32000, n).astype("<u4")
            words = words.copy()
            for i, v in (values or {}).items():
                if i // VALUES == c:
                    words[i % VALUES] = v
            self.chunks[c] = words.tobytes() + bytes(merkle.CHUNK_BYTES - 4 * n)
        nchunks = -(-length // VALUES)
        leaves = {c: merkle.sha256(b"\x00", b) for c, b in self.chunks.items()}
        self.tree = SparseTree(
            merkle.depth_for(nchunks), leaves, b"tensor" + length.to_bytes(8, "big")
        )
        self.root = merkle.bind_tensor(dtype, length, self.tree.root())

    def prove(self, index: int) -> tuple[int, bytes, list[bytes]]:
        c = index // VALUES
        return self.length, self.chunks[c], self.tree.proof(c)


# --- the 7B program ------------------------------------------------------------------------------


def llama_7b_program() -> ir.Program:
    """The real program of a Llama-2-7B-shaped model, built without materialising weights."""

    def spec_only(self, name: str, value: np.ndarray):
        self.weight_specs.append(WeightSpec(name, tuple(value.shape)))
        self.weight_values.append(None)
        return _builder.Ref(Src.WEIGHT, len(self.weight_specs) - 1, tuple(value.shape))

    saved_weight, saved_need = _builder.ProgramBuilder.weight, _models._need
    _builder.ProgramBuilder.weight = spec_only
    _models._need = lambda w, name, shape: np.broadcast_to(np.zeros((), np.float32), shape)
    try:
        program, _ = _models.build_llama(LLAMA_7B, {})
    finally:
        _builder.ProgramBuilder.weight, _models._need = saved_weight, saved_need
    return program


@dataclass
class Claim7B:
    """Commitments of a 7B generation at POSITION, opened only where one step needs them."""

    program: ir.Program
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    def __post_init__(self) -> None:
        self.node_leaves = [ir.node_leaf(n) for n in self.program.nodes]
        self.program_tree = ListTree(self.node_leaves)
        self.program_root = self.program_tree.root()
        assert self.program_root == merkle.list_root(self.node_leaves)
        self.npp = len(self.program.nodes)
        self.records = (POSITION + 1) * self.npp
        self.token = 1234

    def step(self, n: int, element: int, *, leaf: int | None = None,
             level: int | None = None, index: int | None = None) -> tuple:  # fmt: skip
        """Verifier arguments (ctx, node proof, step, sources, token) for one step."""
        p, t = self.program, POSITION
        node = p.nodes[n]
        reads = steps.element_reads(p, n, element, t, self.token)
        records: dict[tuple[int, int], SynthTensor] = {}
        weights: dict[int, SynthTensor] = {}
        sources_plan: list[tuple] = []
        if level is not None:
            kind, term = 2, None
        elif leaf is not None:
            kind, term = 1, (reads.reads[leaf] if leaf < len(reads.reads) else None)
        else:
            kind, term = 0, reads.reads[0]
        opened: dict[tuple, list[int]] = {}  # ("record", t, node) / ("weight", w) -> indices
        if reads.from_previous:
            opened.setdefault(("record", t - 1, n), []).append(element)
            sources_plan.append(("record", (t - 1, n), element))
        elif term is not None:
            for op, flat in zip(node.operands, term, strict=True):
                if op.src == Src.CONST:
                    sources_plan.append(("const",))
                elif op.src == Src.WEIGHT:
                    opened.setdefault(("weight", op.index), []).append(flat)
                    sources_plan.append(("weight", op.index, flat))
                else:
                    opened.setdefault(("record", t, op.index), []).append(flat)
                    sources_plan.append(("record", (t, op.index), flat))
        for key, indices in opened.items():
            if key[0] == "weight":
                weights[key[1]] = SynthTensor(p.weights[key[1]].size, indices, self.rng)
            else:
                size = p.output_size(key[2], key[1])
                records[(key[1], key[2])] = SynthTensor(size, indices, self.rng)
        needs_token = term is not None and any(op.token_stride for op in node.operands)
        if needs_token:
            tok = SynthTensor(1, [0], self.rng, merkle.DTYPE_U32, {0: self.token})
            records[(t - 1, p.token_node)] = tok
        # weights list: real names and shapes, synthetic tensor roots
        wleaves = []
        for i, spec in enumerate(p.weights):
            root = weights[i].root if i in weights else _filler(0, i, b"weight-root")
            wleaves.append(weight_leaf(spec.name, spec.shape, root))
        wtree = SparseTree(merkle.depth_for(len(wleaves)), dict(enumerate(wleaves)), b"weights")
        weights_root = merkle.sha256(merkle.TAG_LIST, len(wleaves).to_bytes(8, "big"), wtree.root())
        # trace: the records this step opens, pseudo-random subtrees elsewhere
        rleaves = {
            pos * self.npp + nid: record_leaf(pos, nid, ten.root)
            for (pos, nid), ten in records.items()
        }
        ttree = SparseTree(merkle.depth_for(self.records), rleaves, b"trace")
        trace_root = merkle.sha256(merkle.TAG_LIST, self.records.to_bytes(8, "big"), ttree.root())
        prompt_root = _filler(0, 0, b"prompt")
        empty = (merkle.EMPTY, [], "", [], 0, b"", [])
        sources = []
        for plan in sources_plan:
            if plan[0] == "const":
                sources.append(empty)
            elif plan[0] == "weight":
                _, w, flat = plan
                length, chunk, sib = weights[w].prove(flat)
                spec = p.weights[w]
                sources.append(
                    (
                        weights[w].root,
                        wtree.proof(w),
                        spec.name,
                        list(spec.shape),
                        length,
                        chunk,
                        sib,
                    )
                )
            else:
                _, (pos, nid), flat = plan
                length, chunk, sib = records[(pos, nid)].prove(flat)
                sources.append(
                    (
                        records[(pos, nid)].root,
                        ttree.proof(pos * self.npp + nid),
                        "",
                        [],
                        length,
                        chunk,
                        sib,
                    )
                )
        token = empty
        if needs_token:
            length, chunk, sib = tok.prove(0)
            token = (
                tok.root,
                ttree.proof((t - 1) * self.npp + p.token_node),
                "",
                [],
                length,
                chunk,
                sib,
            )
        temp = int(np.array([TEMPERATURE], np.float32).view(np.uint32)[0])
        ctx = (self.program_root, self.npp, weights_root, len(wleaves), trace_root, self.records,
               prompt_root, PROMPT_LENGTH, temp, SEED, p.token_node, t)  # fmt: skip
        nproof = (n, ir.node_abi(node), self.program_tree.proof(n))
        step = (kind, element, leaf or 0, level or 0, index or 0, 0x3F800000, 3, 0x40000000, 9)
        return ctx, nproof, step, sources, token


# --- measurements ----------------------------------------------------------------------------


def calldata_gas(data: bytes) -> tuple[int, int]:
    """(pre-7623 calldata gas, EIP-7623 floor of the whole transaction)."""
    zeros = data.count(0)
    nonzero = len(data) - zeros
    return 4 * zeros + 16 * nonzero, 21_000 + 10 * (zeros + 4 * nonzero)


def softfloat_rows(w3: Web3, cases: int) -> list[tuple[str, int, int, int]]:
    harness = deploy(w3, "FloatHarness").functions
    a, b = gas_softfloat.inputs(np.random.default_rng(0), cases)
    a_list, b_list = [int(v) for v in a], [int(v) for v in b]
    cap = {"gas": 25_000_000}
    baseline = min(harness.gasOf(0, a_list[:10], b_list[:10]).call(cap)[0])
    rows = []
    for name, op in gas_softfloat.OPS.items():
        used = np.array(harness.gasOf(op, a_list, b_list).call(cap)[0]) - baseline
        rows.append((name, int(used.min()), int(np.median(used)), int(used.max())))
    return rows


def merkle_rows(w3: Web3, harness) -> list[tuple[int, int, int]]:
    """(depth, list item gas, tensor element gas) for depths 1..32."""
    rng = np.random.default_rng(3)
    rows = []
    for depth in range(1, 33):
        count = (1 << (depth - 1)) + 1  # smallest count of that depth
        index = count - 1
        leaf = merkle.sha256(b"item")
        sib = [rng.bytes(32) for _ in range(depth)]
        root = merkle.sha256(
            merkle.TAG_LIST, count.to_bytes(8, "big"), merkle.root_from_proof(leaf, index, sib)
        )
        g_list = harness.functions.gasOfListItem(root, count, index, leaf, sib).call()
        length = count * VALUES  # chunks = count -> same depth
        chunk = (rng.standard_normal(VALUES) * 0.5).astype("<f4").tobytes()
        eindex = length - 1
        tree = merkle.root_from_proof(merkle.sha256(b"\x00", chunk), index, sib)
        eroot = merkle.bind_tensor(0, length, tree)
        g_el = harness.functions.gasOfElement(eroot, 0, length, eindex, chunk, sib).call()
        rows.append((depth, int(g_list), int(g_el)))
    return rows


STEPS_7B = [
    # (label, node name, kwargs); layer-0 names, the shapes are the same in every layer
    ("dot leaf, mlp.gate (w [11008, 4096])", "layers.0.mlp.gate", dict(element=5000, leaf=1234)),
    ("dot leaf, mlp.down (w [4096, 11008])", "layers.0.mlp.down", dict(element=77, leaf=9000)),
    ("dot leaf, lm_head (w [32000, 4096])", "lm_head", dict(element=31999, leaf=4095)),
    (
        "dot tree node, mlp.gate (level 12 = root)",
        "layers.0.mlp.gate",
        dict(element=5000, level=12, index=0),
    ),
    ("attention score leaf (q . k_cache)", "layers.0.attn.scores", dict(element=1000, leaf=100)),
    ("exp (attn.exp, T x 32)", "layers.0.attn.exp", dict(element=131000)),
    ("softmax sum leaf (attn.sum, K = T)", "layers.0.attn.sum", dict(element=31, leaf=4000)),
    (
        "softmax sum tree node (attn.sum, level 6)",
        "layers.0.attn.sum",
        dict(element=31, level=6, index=40),
    ),
    ("softmax divide (attn.probs)", "layers.0.attn.probs", dict(element=1234)),
    ("rsqrt (rmsnorm)", "layers.0.input_norm.rsqrt", dict(element=0)),
    ("silu (mlp.silu)", "layers.0.mlp.silu", dict(element=11000)),
    ("cache row t (k_cache <- k_rope)", "layers.0.attn.k_cache", dict(element=POSITION * 4096 + 7)),
    (
        "cache row < t (k_cache at t - 1, 16.7M values)",
        "layers.0.attn.k_cache",
        dict(element=123_456),
    ),
    ("embedding gather, token = output of t - 1", "embed", dict(element=4000)),
    ("sample leaf, vocab 32000, T = 0.7", "sample", dict(element=0, leaf=31000)),
    ("sample padding leaf (k >= 32000)", "sample", dict(element=0, leaf=32767)),
    ("sample argmax tree node", "sample", dict(element=0, level=15, index=0)),
]


def onestep_rows(w3: Web3, harness) -> list[tuple[str, int, int, int, int]]:
    program = llama_7b_program()
    claim = Claim7B(program)
    verifier = deploy(w3, "OneStepVerifier")
    names = {n.name: i for i, n in enumerate(program.nodes)}
    rows = []
    for label, name, kw in STEPS_7B:
        args = claim.step(names[name], **kw)
        value, index = verifier.functions.computeStep(*args).call({"gas": 30_000_000})
        data = Web3.to_bytes(hexstr=verifier.encode_abi("verifyStep", args=(*args, value, index)))
        ok, out, used = harness.functions.multicall(verifier.address, [data]).call(
            {"gas": 30_000_000}
        )
        assert ok[0] and int.from_bytes(out[0], "big") == 1, label
        tx = w3.eth.estimate_gas({"to": verifier.address, "data": data, "from": w3.eth.accounts[0]})
        standard, floor = calldata_gas(data)
        pre = 21_000 + standard + int(used[0])
        rows.append((label, int(used[0]), len(data), int(tx), pre, max(pre, floor)))
    return rows


def markdown(sf, mk, os_rows, chain: str) -> str:
    out = ["# Gas of on-chain verification", "",
           f"Measured by `python bench/gas.py` on {chain} (solc 0.8.37, optimizer 200 runs, "
           "EVM prague). Regenerate with `python bench/gas.py --markdown docs/gas.md`.",
           ""]  # fmt: skip
    out += ["## One-step verification, Llama-2-7B sizes (position 4095 of 4096)", "",
            "Real 7B program (1257 nodes, 293 weights); synthetic but valid commitments of the "
            "real sizes (trace of 5.1M records: depth 23; weight [11008, 4096]: 44,032 chunks, "
            "depth 16; "
            "[32000, 4096]: depth 17; logits 32000: depth 5). `exec`: gas inside the verifier call "
            "(calldata decoding, proofs, arithmetic; measured around a static call, so it "
            "includes a few hundred gas of call overhead). `tx (chain)`: eth_estimateGas of a "
            "transaction calling `verifyStep` on the chain measured (anvil applies EIP-7623; "
            "py-evm does not). `tx pre-7623`: 21,000 + 4/16 per zero/non-zero calldata byte + "
            "exec. `tx with 7623 floor`: max(tx pre-7623, 21,000 + 10 per zero + 40 per non-zero "
            "calldata byte), what a Prague chain charges. Every opened value costs a 1 KiB "
            "chunk of calldata (docs/commitments.md), so steps with two chunk-proven operands "
            f"pay the floor. Target: <= {TARGET:,} gas.", "",
            "| step | exec | calldata bytes | tx (chain) | tx pre-7623 | tx with 7623 floor "
            "| exec <= 300k | tx pre-7623 <= 300k | tx with floor <= 300k |",
            "|---|---:|---:|---:|---:|---:|:-:|:-:|:-:|"]  # fmt: skip
    ok = lambda g: "yes" if g <= TARGET else "**no**"  # noqa: E731
    for label, ex, nbytes, tx, pre, floor in os_rows:
        out.append(f"| {label} | {ex:,} | {nbytes:,} | {tx:,} | {pre:,} | {floor:,} | "
                   f"{ok(ex)} | {ok(pre)} | {ok(floor)} |")  # fmt: skip
    out += ["", "## Merkle proofs by depth", "",
            "Library call only (ProofHarness.gasOf*: gasleft() around the call; calldata and its "
            "decoding excluded). A list item hashes the path plus the list root; an element also "
            "copies and hashes its 1 KiB chunk and checks the zero padding.", "",
            "| depth | list item | tensor element |", "|---:|---:|---:|"]  # fmt: skip
    for d, gl, ge in mk:
        out.append(f"| {d} | {gl:,} | {ge:,} |")
    out += ["", "## Soft-float functions", "",
            "FloatHarness.gasOf over a mix of inputs (bench/gas_softfloat.py), internal call "
            "only.", "",
            "| function | min | median | max |", "|---|---:|---:|---:|"]  # fmt: skip
    for name, lo, med, hi in sf:
        out.append(f"| {name} | {lo:,} | {med:,} | {hi:,} |")
    out += ["", "## A whole dispute", "",
            "Moves, gas per side, the worst transaction and the wall time of complete disputes "
            "(tiny-llama games played by the clients on anvil, and a Llama-2-7B claim of 512 "
            "generated tokens measured move by move at its real sizes), against the targets of "
            "issue 6: [dispute.md](dispute.md), measured by `python bench/dispute.py --markdown "
            "docs/dispute.md --plot docs/dispute_gas.png`."]  # fmt: skip
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpc-url", default=None, help="JSON-RPC node (default: embedded)")
    parser.add_argument("--cases", type=int, default=120, help="soft-float inputs per function")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = parser.parse_args()
    w3 = connect(args.rpc_url)
    chain = f"the node at {args.rpc_url}" if args.rpc_url else "the embedded py-evm chain"
    harness = deploy(w3, "ProofHarness")
    start = time.time()
    os_rows = onestep_rows(w3, harness)
    mk = merkle_rows(w3, harness)
    sf = softfloat_rows(w3, args.cases)
    text = markdown(sf, mk, os_rows, chain)
    print(text)
    print(f"({time.time() - start:.0f} s)", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
