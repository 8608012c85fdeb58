"""Backends evaluate one node for a batch of rows; the reference backend defines the bits.

A row is one (sequence, position). The executor resolves each operand to a flat source array
(an earlier node's output of that row, a weight, or a constant) and a backend returns each row's
flat output. Any backend must return exactly the reference's bits; faster ones may recognise
patterns (a dot, a norm) and fall back to `ReferenceBackend` for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.lib.stride_tricks import as_strided

from refute.engine.ir import Fn, Node, Op, Operand, Program, Reducer, Src
from refute.engine.weights import is_narrow, widen
from refute.kernels import reference as ref

FUNCTIONS: dict[Fn, Callable[..., np.ndarray]] = {
    Fn.COPY: lambda x: x,
    Fn.ADD: ref.add, Fn.SUB: ref.sub, Fn.MUL: ref.mul, Fn.DIV: ref.div,
    Fn.MAX: ref.maximum, Fn.MIN: ref.minimum, Fn.NEG: ref.neg, Fn.ABS: ref.abs_,
    Fn.SQRT: ref.sqrt, Fn.EXP: ref.exp, Fn.LOG: ref.log, Fn.SIGMOID: ref.sigmoid,
    Fn.SILU: ref.silu, Fn.TANH: ref.tanh, Fn.GELU_TANH: ref.gelu_tanh,
    Fn.RECIPROCAL: ref.reciprocal, Fn.RSQRT: ref.rsqrt,
}  # fmt: skip


@dataclass
class Row:
    """What a backend needs to evaluate a node for one (sequence, position)."""

    position: int
    token: int  # the input token at this position
    sources: list[np.ndarray]  # one flat array per operand (a constant: one element)
    temperature: float = 0.0
    seed: int = 0


class Backend(Protocol):
    name: str

    def evaluate(self, program: Program, node: Node, rows: list[Row]) -> list[np.ndarray]:
        """Each row's flat output of `node` (float32, or uint32 for token/index outputs)."""
        ...


@dataclass
class GroupRow:
    """A row for a fused group of nodes: the row's outputs so far (filled for every node before
    the group) and the flat weights, from which the backend reads the group's inputs."""

    position: int
    token: int
    temperature: float
    seed: int
    outputs: list[np.ndarray]
    weights: list[np.ndarray]


class FusingBackend(Backend, Protocol):
    """A backend that may evaluate runs of consecutive nodes at once (a fused norm, softmax or
    attention kernel), still returning every node's output so that each is committed.

    `groups(program)` partitions the node ids, in order, into tuples of consecutive ids;
    `evaluate_group` returns, for each node of a group, each row's flat output — the same bits
    node-by-node evaluation would give. CACHE_APPEND nodes are never inside a group of two or
    more (their output is the executor's cache). A cheating prover's tamper hook applies after
    the group, so it cannot corrupt a value that a later node of the same group reads."""

    def groups(self, program: Program) -> list[tuple[int, ...]]: ...

    def evaluate_group(
        self, program: Program, node_ids: tuple[int, ...], rows: list[GroupRow]
    ) -> list[list[np.ndarray]]: ...


def index_dims(program: Program, node: Node, position: int) -> tuple[int, ...]:
    """The index space operands are read over: output dims (+ the reduction axis)."""
    dims = node.shape[1:] if node.op == Op.CACHE_APPEND else node.shape
    if node.op in (Op.REDUCE, Op.SAMPLE):
        dims = (*dims, node.reduce_len)
    return program.resolve(dims, position)


def strided(
    source: np.ndarray, operand: Operand, dims: tuple[int, ...], position: int, token: int
) -> np.ndarray:
    """A read-only view of `source` in the operand's index space (no copy).

    Program.validate proved every index in bounds for all positions and tokens, so the view
    never leaves the source even with negative strides."""
    if operand.src == Src.CONST:
        return np.broadcast_to(source[0], dims)
    base = operand.offset + operand.t_stride * position + operand.token_stride * token
    if 0 in dims:
        return np.empty(dims, dtype=source.dtype)
    item = source.itemsize
    view = as_strided(
        source[base:], dims, tuple(s * item for s in operand.strides), writeable=False
    )
    return widen(view) if is_narrow(source) else view  # a bf16/fp16 weight, exactly


def _reduce(reducer: Reducer, term: np.ndarray) -> np.ndarray:
    if reducer == Reducer.SUM:
        return ref.tree_sum(term, axis=-1)
    if reducer == Reducer.MAX:
        return ref.tree_max(term, axis=-1)
    return ref.argmax(term, axis=-1).astype(np.uint32)


_TERM_CHUNK = 1 << 22  # elements of a reduction's terms materialised at once


class ReferenceBackend:
    """The numpy reference: slow, simple, and the definition every other backend matches."""

    name = "reference"

    def evaluate(self, program: Program, node: Node, rows: list[Row]) -> list[np.ndarray]:
        if node.op in (Op.MAP, Op.CACHE_APPEND):
            return self._map(program, node, rows)
        if node.op == Op.SAMPLE:
            return [self._sample(program, node, row) for row in rows]
        if self._batchable(node, rows):
            return self._reduce_batched(program, node, rows)
        return [self._reduce_row(program, node, row) for row in rows]

    def _map(self, program: Program, node: Node, rows: list[Row]) -> list[np.ndarray]:
        """Gather each row's operand values, then apply the function once over all rows."""
        fn = FUNCTIONS[node.fn]
        per_row = [
            [
                strided(src, op, index_dims(program, node, row.position), row.position, row.token)
                for src, op in zip(row.sources, node.operands, strict=True)
            ]
            for row in rows
        ]
        sizes = [math.prod(index_dims(program, node, row.position)) for row in rows]
        args = [
            np.concatenate([np.ravel(views[i]) for views in per_row])
            for i in range(len(node.operands))
        ]
        out = fn(*args)
        return np.split(np.asarray(out, dtype=np.float32), np.cumsum(sizes)[:-1])

    def _reduce_row(self, program: Program, node: Node, row: Row) -> np.ndarray:
        dims = index_dims(program, node, row.position)
        views = [
            strided(src, op, dims, row.position, row.token)
            for src, op in zip(row.sources, node.operands, strict=True)
        ]
        return self._reduce_views(node, views, dims).reshape(-1)

    def _reduce_views(
        self, node: Node, views: list[np.ndarray], dims: tuple[int, ...]
    ) -> np.ndarray:
        """Reduce over the last axis, a slice of the leading axis at a time (bounded memory)."""
        fn = FUNCTIONS[node.fn]
        if len(dims) == 1:
            return np.asarray(_reduce(node.reducer, fn(*views)))
        lead = dims[0]
        step = max(1, _TERM_CHUNK // max(1, math.prod(dims[1:])))
        parts = [
            _reduce(node.reducer, fn(*(v[lo : lo + step] for v in views)))
            for lo in range(0, lead, step)
        ]
        return np.concatenate(parts) if parts else np.empty((0, *dims[1:-1]), np.float32)

    @staticmethod
    def _batchable(node: Node, rows: list[Row]) -> bool:
        """Rows can share one strided view when nothing depends on the position or token."""
        return (
            len(rows) > 1
            and all(d >= 0 for d in node.shape)
            and node.reduce_len >= 0
            and all(op.t_stride == 0 and op.token_stride == 0 for op in node.operands)
        )

    def _reduce_batched(self, program: Program, node: Node, rows: list[Row]) -> list[np.ndarray]:
        dims = index_dims(program, node, 0)
        views = []
        for i, op in enumerate(node.operands):
            if op.src == Src.NODE:
                stacked = np.stack([row.sources[i] for row in rows]).reshape(-1)
                one = strided(stacked, op, dims, 0, 0)
                views.append(
                    as_strided(
                        one,
                        (len(rows), *dims),
                        (rows[0].sources[i].size * stacked.itemsize, *one.strides),
                        writeable=False,
                    )
                )
            else:
                one = strided(rows[0].sources[i], op, dims, 0, 0)
                views.append(np.broadcast_to(one, (len(rows), *dims)))
        out = self._reduce_views(node, views, (len(rows), *dims))
        return list(out.reshape(len(rows), -1))

    def _sample(self, program: Program, node: Node, row: Row) -> np.ndarray:
        dims = index_dims(program, node, row.position)
        logits = np.ascontiguousarray(
            strided(row.sources[0], node.operands[0], dims, row.position, row.token)
        )
        token = ref.sample(logits, row.temperature, row.seed, row.position)
        return np.array([token], dtype=np.uint32)
