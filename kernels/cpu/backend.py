"""`CPUBackend`: the watchers' default backend — fused tree dots, the reference for the rest.

A dot against a weight (a `linear`: REDUCE(SUM, MUL) of a node read as x[k] and a weight read as
W[n, k] or W[k, n]) is where nearly all the arithmetic of a transformer is; it runs through the
fused numba kernels of `refute.kernels.cpu.tree_dot` for all rows at once (a GEMV for one row, a
GEMM for a prefill or a batch).

The other nodes are cheap in arithmetic but, at decode, dominated by the reference backend's
per-node overhead (strided views, concatenating and splitting rows: ~0.1 ms a node, hundreds of
nodes a token). Two light paths keep the reference's bits and only change how operands are
gathered: MAP nodes call the spec function on operands taken as slices or constants (exp,
sigmoid and silu in numba, `refute.kernels.cpu.elementwise`), and REDUCE(SUM) nodes of one row
sum the reference's terms with the numba tree of `refute.kernels.cpu.reduce`. Everything else
(max, argmax, sampling, cache appends, sums over a batch of rows) goes to `ReferenceBackend`,
which defines the bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refute.engine.backend import FUNCTIONS, Backend, ReferenceBackend, Row, index_dims, strided
from refute.engine.builder import row_major
from refute.engine.ir import Fn, Node, Op, Operand, Program, Reducer, Src
from refute.kernels.cpu import elementwise
from refute.kernels.cpu.reduce import tree_sum
from refute.kernels.cpu.tree_dot import PackedWeight, matmul, pack


@dataclass(frozen=True)
class DotPlan:
    """How to read a linear node: x = node source[x_offset : x_offset + k], W from a weight."""

    x_operand: int  # index of the node operand (the other one is the weight)
    x_offset: int
    w_offset: int
    k: int
    n: int
    transposed: bool  # W stored [K, N] (strides (1, N)) rather than [N, K] (strides (K, 1))


def _plain(op: Operand) -> bool:
    return op.t_stride == 0 and op.token_stride == 0


def dot_plan(node: Node) -> DotPlan | None:
    """The fused-dot reading of `node`, or None when it is not a dot against a weight."""
    if not (
        node.op == Op.REDUCE
        and node.reducer == Reducer.SUM
        and node.fn == Fn.MUL
        and len(node.shape) == 1
        and node.shape[0] >= 0
        and node.reduce_len >= 0
        and len(node.operands) == 2
    ):
        return None
    n, k = node.shape[0], node.reduce_len
    for xi in (0, 1):  # mul is commutative bit for bit (NaNs are canonicalised)
        x, w = node.operands[xi], node.operands[1 - xi]
        if not (x.src == Src.NODE and w.src == Src.WEIGHT and _plain(x) and _plain(w)):
            continue
        if x.strides != (0, 1):
            continue
        if w.strides == (k, 1):
            return DotPlan(xi, x.offset, w.offset, k, n, transposed=False)
        if w.strides == (1, n):
            return DotPlan(xi, x.offset, w.offset, k, n, transposed=True)
    return None


# spec functions with a numba version (bit-identical; tests/test_cpu_backend.py checks it)
FAST_FUNCTIONS = {
    **FUNCTIONS,
    Fn.EXP: elementwise.exp,
    Fn.SIGMOID: elementwise.sigmoid,
    Fn.SILU: elementwise.silu,
}


class CPUBackend:
    """Fused canonical GEMV/GEMM for linear layers; `fallback` (the reference) for the rest.

    `parallel`: run the kernels on numba's threads (True), serially (False), or by size (None;
    see `tree_dot.PARALLEL_MIN_WORK`). The bits are the same either way."""

    name = "cpu"

    def __init__(self, fallback: Backend | None = None, parallel: bool | None = None) -> None:
        self.fallback = fallback or ReferenceBackend()
        self.parallel = parallel
        self._plans: dict[Node, DotPlan | None] = {}
        # (id(source), offset, transposed, k, n) -> (source kept alive, its packed panels)
        self._packed: dict[tuple[int, int, bool, int, int], tuple[np.ndarray, PackedWeight]] = {}

    def evaluate(self, program: Program, node: Node, rows: list[Row]) -> list[np.ndarray]:
        """Each row's flat output of `node`; dots against weights run fused, all rows at once."""
        plan = self._plans.get(node, False)
        if plan is False:
            plan = self._plans[node] = dot_plan(node)
        if plan is None or not rows:
            if node.op == Op.MAP:
                return [self._map_row(program, node, row) for row in rows]
            if node.op == Op.REDUCE and node.reducer == Reducer.SUM and len(rows) == 1:
                return [self._sum_row(program, node, rows[0])]
            return self.fallback.evaluate(program, node, rows)
        weight = self.packed(rows[0].sources[1 - plan.x_operand], plan)
        lo, hi = plan.x_offset, plan.x_offset + plan.k
        if len(rows) == 1:
            x = rows[0].sources[plan.x_operand][lo:hi][None, :]
        else:
            x = np.stack([row.sources[plan.x_operand][lo:hi] for row in rows])
        return list(matmul(x, weight, parallel=self.parallel))

    @staticmethod
    def _operand(
        source: np.ndarray, op: Operand, dims: tuple[int, ...], size: int, row: Row
    ) -> np.ndarray | np.float32:
        """A MAP operand as a flat slice (contiguous read), a scalar (constant), or a gather."""
        if op.src == Src.CONST:
            return source[0]
        if op.strides == row_major(dims):
            base = op.offset + op.t_stride * row.position + op.token_stride * row.token
            return source[base : base + size]
        return strided(source, op, dims, row.position, row.token).reshape(-1)

    def _map_row(self, program: Program, node: Node, row: Row) -> np.ndarray:
        """The reference's elementwise function on this row's operands, gathered cheaply."""
        dims = index_dims(program, node, row.position)
        size = math.prod(dims)
        args = [
            self._operand(src, op, dims, size, row)
            for src, op in zip(row.sources, node.operands, strict=True)
        ]
        out = np.asarray(FAST_FUNCTIONS[node.fn](*args), dtype=np.float32)
        if out.shape != (size,) or node.fn == Fn.COPY:  # constants broadcast; never alias
            out = np.array(np.broadcast_to(out, (size,)), dtype=np.float32)
        return out

    def _sum_row(self, program: Program, node: Node, row: Row) -> np.ndarray:
        """REDUCE(SUM): the reference's terms (strided views, its function), the numba tree."""
        dims = index_dims(program, node, row.position)
        views = [
            strided(src, op, dims, row.position, row.token)
            for src, op in zip(row.sources, node.operands, strict=True)
        ]
        terms = np.asarray(FUNCTIONS[node.fn](*views), dtype=np.float32)
        return tree_sum(np.broadcast_to(terms, dims)).reshape(-1)

    def packed(self, source: np.ndarray, plan: DotPlan) -> PackedWeight:
        """The weight's panels, packed on first use and kept (weights are immutable)."""
        key = (id(source), plan.w_offset, plan.transposed, plan.k, plan.n)
        hit = self._packed.get(key)
        if hit is not None and hit[0] is source:
            return hit[1]
        flat = source[plan.w_offset : plan.w_offset + plan.k * plan.n]
        shape = (plan.k, plan.n) if plan.transposed else (plan.n, plan.k)
        weight = pack(flat.reshape(shape), transposed=plan.transposed)
        self._packed[key] = (source, weight)
        return weight
