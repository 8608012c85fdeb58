"""`TritonBackend`: the engine's nodes on the Triton kernels of this package.

Dots against weights run as GEMV (one row) or GEMM (a prefill or a batch); MAP nodes run the
elementwise spec kernels; REDUCE nodes compute their terms with the elementwise kernels and
reduce them with the tree kernels. Operands are gathered by the IR's index maps on the host
(data movement, exact), so every node's output is produced and committed bit-identically to the
reference. SAMPLE (keccak noise) and CACHE_APPEND (a copy) stay on the reference backend.

Runs of nodes that engine.builder spells for RMSNorm, LayerNorm and attention (kernels/gpu/
fusion.py recognises them by structure) are fused: `groups` hands them to the executor as one
group and `evaluate_group` computes all of their nodes with one kernel launch (rmsnorm_kernel,
layernorm_kernel, attention_kernel, softmax_kernel), returning every node's output as node-by-node
evaluation would. A group whose launch would not fit one program's block (very wide rows, very
long attention) is evaluated node by node instead.

This backend moves each node's operands to the device and back: it is the proof that the kernels
compute the traced values, not yet a device-resident executor.
"""

from __future__ import annotations

import numpy as np

from refute.engine.backend import Backend, GroupRow, ReferenceBackend, Row, index_dims, strided
from refute.engine.ir import Fn, Node, Op, Operand, Program, Reducer, Src
from refute.engine.weights import widen
from refute.kernels import gpu
from refute.kernels.cpu.backend import dot_plan
from refute.kernels.gpu import (
    attention_kernel,
    fusion,
    layernorm_kernel,
    rmsnorm_kernel,
    softmax_kernel,
)

UNARY = {
    Fn.NEG: "neg", Fn.ABS: "abs", Fn.SQRT: "sqrt", Fn.EXP: "exp", Fn.LOG: "log",
    Fn.SIGMOID: "sigmoid", Fn.SILU: "silu", Fn.TANH: "tanh", Fn.GELU_TANH: "gelu_tanh",
    Fn.RECIPROCAL: "reciprocal", Fn.RSQRT: "rsqrt",
}  # fmt: skip
BINARY = {
    Fn.ADD: "add", Fn.SUB: "sub", Fn.MUL: "mul", Fn.DIV: "div", Fn.MAX: "maximum",
    Fn.MIN: "minimum",
}  # fmt: skip


def _apply(fn: Fn, args: list[np.ndarray]) -> np.ndarray:
    """The spec function on the Triton kernels (COPY is data movement: no kernel)."""
    if fn == Fn.COPY:
        return args[0]
    if fn in UNARY:
        return np.asarray(gpu.unary(UNARY[fn], args[0]))
    return np.asarray(gpu.binary(BINARY[fn], args[0], args[1]))


class TritonBackend:
    """Every MAP, REDUCE and linear node on Triton kernels; sampling and cache copies on the
    reference (`fallback`)."""

    name = "triton"

    def __init__(self, fallback: Backend | None = None, fuse: bool = True) -> None:
        gpu.require()
        self.fallback = fallback or ReferenceBackend()
        self.fuse = fuse
        self._plans: dict[int, tuple[Program, dict[int, fusion.Fused]]] = {}
        self.launches: dict[str, int] = {}  # fused launches by kind (rows evaluated), for tests

    # --- fused groups ----------------------------------------------------------------------------

    def fused(self, program: Program) -> dict[int, fusion.Fused]:
        """The program's fused groups by first node id (recognised once per program)."""
        cached = self._plans.get(id(program))
        if cached is None or cached[0] is not program:
            found = fusion.find(program) if self.fuse else []
            cached = (program, {f.start: f for f in found})
            self._plans[id(program)] = cached
        return cached[1]

    def groups(self, program: Program) -> list[tuple[int, ...]]:
        return fusion.partition(program, list(self.fused(program).values()))

    def evaluate_group(
        self, program: Program, node_ids: tuple[int, ...], rows: list[GroupRow]
    ) -> list[list[np.ndarray]]:
        f = self.fused(program).get(node_ids[0])
        if f is None or f.ids != tuple(node_ids):
            return self._by_nodes(program, node_ids, rows)
        if f.kind == "attention":
            t_max = max(r.position for r in rows) + 1
            node = program.nodes[f.start]
            if not attention_kernel.fits(t_max, node.shape[2], node.reduce_len):
                return self._by_nodes(program, node_ids, rows)
        self.launches[f.kind] = self.launches.get(f.kind, 0) + len(rows)
        return getattr(self, f"_{f.kind}")(program, f.start, rows)

    def _by_nodes(
        self, program: Program, node_ids: tuple[int, ...], rows: list[GroupRow]
    ) -> list[list[np.ndarray]]:
        """The group node by node (each node's inputs from the rows and the group so far)."""
        local = [list(r.outputs) for r in rows]
        per_node = []
        for nid in node_ids:
            node = program.nodes[nid]
            inputs = [Row(r.position, r.token, [_source(r, op, outs) for op in node.operands],
                          r.temperature, r.seed)
                      for r, outs in zip(rows, local, strict=True)]  # fmt: skip
            results = self.evaluate(program, node, inputs)
            for outs, res in zip(local, results, strict=True):
                outs[nid] = res
            per_node.append(results)
        return per_node

    def _rmsnorm(self, program: Program, i: int, rows: list[GroupRow]) -> list[list[np.ndarray]]:
        nodes = program.nodes[i : i + 6]
        x = _gathered(program, nodes[0], nodes[0].operands[0], rows)
        w = _gathered(program, nodes[5], nodes[5].operands[1], rows)
        outs = rmsnorm_kernel.rmsnorm(
            x, w, _const(nodes[1].operands[1]), _const(nodes[2].operands[1])
        )
        return [_split(np.asarray(o), len(rows)) for o in outs]

    def _layernorm(self, program: Program, i: int, rows: list[GroupRow]) -> list[list[np.ndarray]]:
        nodes = program.nodes[i : i + 10]
        x = _gathered(program, nodes[0], nodes[0].operands[0], rows)
        w = _gathered(program, nodes[8], nodes[8].operands[1], rows)
        b = _gathered(program, nodes[9], nodes[9].operands[1], rows)
        outs = layernorm_kernel.layernorm(
            x, w, b, *(_const(nodes[k].operands[1]) for k in (1, 4, 5))
        )
        return [_split(np.asarray(o), len(rows)) for o in outs]

    def _softmax(self, program: Program, i: int, rows: list[GroupRow]) -> list[list[np.ndarray]]:
        scaled = program.nodes[i]
        _, g, rep = scaled.shape
        lengths = [r.position + 1 for r in rows]
        scores = np.zeros((len(rows), max(lengths), g, rep), np.float32)
        for n, r in enumerate(rows):
            scores[n, : lengths[n]] = _gather(program, scaled, scaled.operands[0], r)
        outs = softmax_kernel.softmax(
            scores, _const(scaled.operands[1]), scaled.fn == Fn.DIV, lengths
        )
        return _per_row(outs, softmax_kernel.NODES, lengths)

    def _attention(self, program: Program, i: int, rows: list[GroupRow]) -> list[list[np.ndarray]]:
        scores, scaled, out = program.nodes[i], program.nodes[i + 1], program.nodes[i + 7]
        _, g, rep = scores.shape
        hd = scores.reduce_len
        lengths = [r.position + 1 for r in rows]
        q = np.empty((len(rows), g, rep, hd), np.float32)
        k = np.zeros((len(rows), max(lengths), g, hd), np.float32)
        v = np.zeros_like(k)
        for n, r in enumerate(rows):
            t = lengths[n]
            q[n] = _gather(program, scores, scores.operands[0], r)[0]  # [G, REP, HD] (j = 0)
            k[n, :t] = _gather(program, scores, scores.operands[1], r)[:, :, 0]  # [T, G, HD]
            vv = _gather(program, out, out.operands[1], r)[:, 0]  # [G, HD, T]
            v[n, :t] = np.moveaxis(vv, -1, 0)
        outs = attention_kernel.attention(
            q, k, v, _const(scaled.operands[1]), scaled.fn == Fn.DIV, lengths
        )
        return _per_row(outs, attention_kernel.NODES, lengths)

    # --- node by node ----------------------------------------------------------------------------

    def evaluate(self, program: Program, node: Node, rows: list[Row]) -> list[np.ndarray]:
        if node.op in (Op.SAMPLE, Op.CACHE_APPEND):
            return self.fallback.evaluate(program, node, rows)
        plan = dot_plan(node)
        if plan is not None:
            return self._dot(program, node, plan, rows)
        return [self._row(program, node, row) for row in rows]

    def _dot(self, program: Program, node: Node, plan, rows: list[Row]) -> list[np.ndarray]:
        k, n = plan.k, plan.n
        x = np.stack([row.sources[plan.x_operand][plan.x_offset : plan.x_offset + k]
                      for row in rows])  # fmt: skip
        flat = rows[0].sources[1 - plan.x_operand][plan.w_offset : plan.w_offset + k * n]
        flat = widen(flat)  # a bf16/fp16 weight, exactly (docs/spec.md from_bf16, from_fp16)
        w = flat.reshape(k, n) if plan.transposed else flat.reshape(n, k).T  # [K, N] view
        out = np.asarray(gpu.gemv(x[0], w) if len(rows) == 1 else gpu.gemm(x, w))
        return list(out.reshape(len(rows), n))

    def _row(self, program: Program, node: Node, row: Row) -> np.ndarray:
        dims = index_dims(program, node, row.position)
        views = [np.ascontiguousarray(strided(src, op, dims, row.position, row.token),
                                      dtype=np.float32)
                 for src, op in zip(row.sources, node.operands, strict=True)]  # fmt: skip
        values = _apply(node.fn, views)
        if node.op == Op.MAP:
            return np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        terms = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, dims[-1])
        if node.reducer == Reducer.SUM:
            out = gpu.tree_sum(terms)
        elif node.reducer == Reducer.MAX:
            out = gpu.tree_max(terms)
        else:
            return np.asarray(gpu.argmax(terms)).astype(np.uint32).reshape(-1)
        return np.asarray(out, dtype=np.float32).reshape(-1)


def _source(row: GroupRow, op: Operand, outputs: list[np.ndarray]) -> np.ndarray:
    """The flat array an operand reads for a row (a constant: its one element)."""
    if op.src == Src.NODE:
        return outputs[op.index]
    if op.src == Src.WEIGHT:
        return row.weights[op.index]
    return np.array([op.index], dtype=np.uint32).view(np.float32)


def _const(op: Operand) -> np.float32:
    return np.array([op.index], dtype=np.uint32).view(np.float32)[0]


def _gather(program: Program, node: Node, op: Operand, row: GroupRow) -> np.ndarray:
    """An operand's values over the node's index space at a row (exact data movement)."""
    dims = index_dims(program, node, row.position)
    view = strided(_source(row, op, row.outputs), op, dims, row.position, row.token)
    return np.ascontiguousarray(view, dtype=np.float32)


def _gathered(program: Program, node: Node, op: Operand, rows: list[GroupRow]) -> np.ndarray:
    """[D] once when the operand is the same for every row (a weight, a constant), else
    [rows, D]."""
    if op.src != Src.NODE and op.t_stride == 0 and op.token_stride == 0:
        return _gather(program, node, op, rows[0])
    return np.stack([_gather(program, node, op, r) for r in rows])


def _split(out: np.ndarray, n_rows: int) -> list[np.ndarray]:
    """Per-row flat outputs of a [rows] or [rows, D] result."""
    return list(out.reshape(n_rows, -1))


def _per_row(outs: tuple, names: tuple[str, ...], lengths: list[int]) -> list[list[np.ndarray]]:
    """Per node, per row flat outputs of padded [R, T_MAX, ...] / [R, ...] kernel results."""
    per_node = []
    for name, out in zip(names, outs, strict=True):
        out = np.asarray(out)
        if name in ("max", "sum", "out"):
            per_node.append([out[n].reshape(-1) for n in range(len(lengths))])
        else:
            per_node.append([out[n, :t].reshape(-1) for n, t in enumerate(lengths)])
    return per_node
