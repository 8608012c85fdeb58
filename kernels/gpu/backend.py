"""`TritonBackend`: the engine's nodes on the Triton kernels of this package.

Dots against weights run as GEMV (one row) or GEMM (a prefill or a batch); MAP nodes run the
elementwise spec kernels; REDUCE nodes compute their terms with the elementwise kernels and
reduce them with the tree kernels. Operands are gathered by the IR's index maps on the host
(data movement, exact), so every node's output is produced and committed bit-identically to the
reference. SAMPLE (keccak noise) and CACHE_APPEND (a copy) stay on the reference backend.

This backend moves each node's operands to the device and back: it is the proof that the kernels
compute the traced values, not yet a device-resident executor.
"""

from __future__ import annotations

import numpy as np

from refute.engine.backend import Backend, ReferenceBackend, Row, index_dims, strided
from refute.engine.ir import Fn, Node, Op, Program, Reducer
from refute.kernels import gpu
from refute.kernels.cpu.backend import dot_plan

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

    def __init__(self, fallback: Backend | None = None) -> None:
        gpu.require()
        self.fallback = fallback or ReferenceBackend()

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
