"""One compiled loop for the nodes that are not dots: a MAP, a REDUCE (SUM, MAX or ARGMAX), a
cache append or a greedy SAMPLE of one row, read through the IR's affine maps directly.

At decode a transformer's non-dot nodes (norms, RoPE, attention scores, softmax, SwiGLU's
gating, residual adds, cache appends) are hundreds of tiny tensors a token. Evaluating each
through numpy (strided views, a spec function of ~2-25 array passes, a tree of one call per
level) costs 20-100 us a node, mostly call overhead; this loop costs a few. It computes what
`ReferenceBackend` defines, element for element (docs/spec.md §4 functions with every result
rounded to binary32 and NaNs canonical; §5 trees padded to a power of two), and
tests/test_cpu_backend.py checks it against the reference on random nodes and whole programs.

The index space is normalised to four output axes and one reduction axis (leading axes of
length 1, stride 0), so one signature serves every node; operands are float32 arrays (a
constant is a one-element array read with stride 0).

The loop inlines helpers from elementwise.py, reduce.py and tree_dot.py. numba's disk cache
is keyed by this file alone, so after editing one of those, clear kernels/cpu/__pycache__ (or
set NUMBA_CACHE_DIR) before testing; an install or a fresh checkout always compiles anew.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit

from refute.engine.backend import Row
from refute.engine.ir import Fn, Node, Op, Reducer, Src, T
from refute.kernels import reference as ref
from refute.kernels.cpu.elementwise import _C, _POW2, _exp, _sigmoid
from refute.kernels.cpu.reduce import padded_tree_sum
from refute.kernels.cpu.tree_dot import _f32_from_bits

AXES = 5
"""Index axes of the normalised space: four output axes, then the reduction axis."""

SUPPORTED = frozenset({
    Fn.COPY, Fn.ADD, Fn.SUB, Fn.MUL, Fn.DIV, Fn.MAX, Fn.MIN, Fn.NEG, Fn.ABS, Fn.SQRT,
    Fn.EXP, Fn.SIGMOID, Fn.SILU, Fn.RECIPROCAL, Fn.RSQRT,
})  # fmt: skip
"""The spec functions this loop evaluates (the rest stay on the reference's numpy path)."""

_MAP, _SUM, _MAX, _ARGMAX = 0, 1, 2, 3
KIND = {(Op.MAP, Reducer.NONE): _MAP, (Op.CACHE_APPEND, Reducer.NONE): _MAP,
        (Op.REDUCE, Reducer.SUM): _SUM, (Op.REDUCE, Reducer.MAX): _MAX,
        (Op.REDUCE, Reducer.ARGMAX): _ARGMAX, (Op.SAMPLE, Reducer.NONE): _ARGMAX}  # fmt: skip
"""(op, reducer) -> the loop's kind, for the node shapes it evaluates (a SAMPLE only when
greedy: temperature 0 makes it the argmax of its logits)."""

_NAN = np.array([ref.NAN], dtype=np.float32)  # the canonical NaN, loaded as bits
_JIT = {"fastmath": False, "cache": True, "nogil": True, "error_model": "numpy"}


@njit(inline="always", **_JIT)
def _fn(fn, a, b, nan):  # pragma: no cover - compiled
    """The spec function `fn` (an `Fn` value) of one element (b unused for unary functions)."""
    one = np.float32(1.0)
    if fn == 0:  # COPY: bits unchanged, NaN payloads included
        return a
    if fn == 1:
        y = a + b
    elif fn == 2:
        y = a - b
    elif fn == 3:
        y = a * b
    elif fn == 4:
        y = a / b
    elif fn == 5 or fn == 6:  # MAX, MIN: NaN if either is; of -0 and +0, +0 (max) / -0 (min)
        if a != a or b != b:
            return nan
        if a == b:
            pick_a = np.signbit(a) == (fn == 6)
            return a if pick_a else b
        return a if (a > b) == (fn == 5) else b
    elif fn == 7:
        y = -a
    elif fn == 8:
        y = abs(a)
    elif fn == 9:
        y = np.sqrt(a)
    elif fn == 10:
        y = _exp(a, _C, _POW2)
    elif fn == 12:
        y = _sigmoid(a, _C, _POW2)
    elif fn == 13:  # SILU: x * sigmoid(x), silu(-inf) = -0
        if a == -np.inf:
            return np.float32(-0.0)
        y = a * _sigmoid(a, _C, _POW2)
    elif fn == 16:
        y = one / a
    else:  # 17, RSQRT: two roundings
        y = one / np.sqrt(a)
    return nan if y != y else y


@njit(inline="always", **_JIT)
def _line(fn, a, pa, sa, b, pb, sb, dst, o, n, nan):  # pragma: no cover - compiled
    """dst[o + i] = fn(a[pa + i·sa], b[pb + i·sb]) for i < n. The copy and the four
    arithmetic operations get a loop each (the function a constant in it: a straight loop that
    LLVM vectorises); the other functions share one loop that branches per element."""
    if fn == 0:
        for i in range(n):
            dst[o + i] = a[pa + i * sa]
    elif fn == 1:
        for i in range(n):
            dst[o + i] = _fn(1, a[pa + i * sa], b[pb + i * sb], nan)
    elif fn == 2:
        for i in range(n):
            dst[o + i] = _fn(2, a[pa + i * sa], b[pb + i * sb], nan)
    elif fn == 3:
        for i in range(n):
            dst[o + i] = _fn(3, a[pa + i * sa], b[pb + i * sb], nan)
    elif fn == 4:
        for i in range(n):
            dst[o + i] = _fn(4, a[pa + i * sa], b[pb + i * sb], nan)
    else:
        for i in range(n):
            dst[o + i] = _fn(fn, a[pa + i * sa], b[pb + i * sb], nan)


@njit(inline="always", **_JIT)
def _first_max(terms, k):  # pragma: no cover - compiled
    """`reference.argmax` of terms[:k]. Its tree keeps the left child unless the right is
    strictly greater or NaN against a non-NaN: a total preorder (NaN above all, -0 equal to +0,
    the -inf padding after every real element), so the tree's winner is the first element of
    the top class, found in one scan."""
    best, at = terms[0], 0
    for r in range(1, k):
        v = terms[r]
        if v > best or (v != v and best == best):
            best, at = v, r
    return at


@njit(**_JIT)
def _evaluate(kind, fn, dims, a, a_base, b, b_base, strides, out):  # pragma: no cover - compiled
    """out (row-major over dims[:4]) = the node: fn of the operands at base + index · strides
    (MAP), or per output element the spec tree over the reduction axis of those terms (SUM:
    padded with +0 to a power of two; MAX and ARGMAX: scans, which equal their trees; an
    argmax's index is stored as the bits of `out`, a view of a uint32 array). The constant
    tables are globals, frozen into the compiled code."""
    nan = _NAN[0]
    sa, sb = strides[0], strides[1]
    k = dims[4]
    width = 1
    while width < k:
        width *= 2
    buf = np.empty(width, dtype=np.float32)
    zero = np.float32(0.0)
    o = 0
    for i0 in range(dims[0]):
        for i1 in range(dims[1]):
            for i2 in range(dims[2]):
                pa = a_base + i0 * sa[0] + i1 * sa[1] + i2 * sa[2]
                pb = b_base + i0 * sb[0] + i1 * sb[1] + i2 * sb[2]
                if kind == 0:
                    _line(fn, a, pa, sa[3], b, pb, sb[3], out, o, dims[3], nan)
                    o += dims[3]
                    continue
                for i3 in range(dims[3]):
                    qa, qb = pa + i3 * sa[3], pb + i3 * sb[3]
                    if k == 0:  # (no argmax of nothing gets here: `run` declines it)
                        out[o] = zero if kind == 1 else np.float32(-np.inf)
                    elif k == 1 and kind != 3:  # a tree of one leaf performs no operation
                        out[o] = _fn(fn, a[qa], b[qb], nan)
                    elif kind == 1:
                        _line(fn, a, qa, sa[4], b, qb, sb[4], buf, 0, k, nan)
                        v = padded_tree_sum(buf, k, width)
                        out[o] = nan if v != v else v
                    elif kind == 3:  # ARGMAX: the index's bits in out (a uint32 array)
                        _line(fn, a, qa, sa[4], b, qb, sb[4], buf, 0, k, nan)
                        out[o] = _f32_from_bits(np.uint32(_first_max(buf, k)))
                    else:  # MAX: NaN if any term is; else the largest, +0 over -0
                        _line(fn, a, qa, sa[4], b, qb, sb[4], buf, 0, k, nan)
                        best = np.float32(-np.inf)
                        seen_nan = False
                        for r in range(k):
                            v = buf[r]
                            if v != v:
                                seen_nan = True
                            elif v > best or (v == best and v == 0.0 and np.signbit(best)):
                                best = v
                        out[o] = nan if seen_nan else best
                    o += 1


@dataclass(frozen=True)
class NodeCall:
    """A node in the loop's normalised index space (what does not change from row to row)."""

    kind: int
    fn: int
    dims: tuple[int, ...]  # AXES entries; T where the axis is the position count
    fixed: np.ndarray | None  # dims as int64, when no axis depends on the position
    strides: np.ndarray  # int64 [2, AXES]; a unary node's operand twice
    bases: tuple[tuple[int, int, int] | None, ...]  # (offset, t_stride, token_stride) or None
    size: int  # output elements when `fixed` (else -1)
    operands: tuple[int, int]  # which of the row's sources each loop operand reads
    greedy: bool  # a SAMPLE: evaluated here only at temperature 0 (else the reference samples)


def plan(node: Node) -> NodeCall | None:
    """The loop's reading of `node`, or None when the loop does not evaluate it (a function
    it lacks, more than four output axes)."""
    kind = KIND.get((node.op, node.reducer))
    if kind is None or node.fn not in SUPPORTED or not 1 <= len(node.operands) <= 2:
        return None
    if node.op == Op.SAMPLE and len(node.operands) != 1:
        return None
    out = tuple(node.shape[1:] if node.op == Op.CACHE_APPEND else node.shape)
    if len(out) > AXES - 1:
        return None
    lead = AXES - 1 - len(out)
    reduce = node.op in (Op.REDUCE, Op.SAMPLE)
    dims = (1,) * lead + out + ((node.reduce_len,) if reduce else (1,))
    strides, bases = [], []
    for op in node.operands:
        if op.src == Src.CONST:
            strides.append((0,) * AXES)
            bases.append(None)
            continue
        s = tuple(op.strides)
        strides.append((0,) * lead + s[: len(out)] + ((s[len(out)],) if reduce else (0,)))
        bases.append((op.offset, op.t_stride, op.token_stride))
    pick = (0, 1) if len(node.operands) == 2 else (0, 0)
    fixed = None if T in dims else np.array(dims, dtype=np.int64)
    return NodeCall(
        kind, int(node.fn), dims, fixed, np.array([strides[i] for i in pick], dtype=np.int64),
        tuple(bases[i] for i in pick), -1 if fixed is None else math.prod(dims[:-1]), pick,
        node.op == Op.SAMPLE,
    )  # fmt: skip


def run(
    call: NodeCall, row: Row, float32: Callable[[np.ndarray], np.ndarray | None]
) -> np.ndarray | None:
    """One row's flat output of the planned node (uint32 for an argmax or a sample), or None
    when the loop declines the row: a source not float32 that `float32(source)` (the backend's
    exact widening of a narrow weight) does not widen, a sample at a temperature, an argmax of
    an empty axis (the reference's path says what is wrong with it)."""
    if call.greedy and row.temperature != 0:
        return None
    sources = []
    for i in call.operands:
        src = row.sources[i]
        if src.dtype != np.float32:
            src = float32(src)
            if src is None:
                return None
        sources.append(src)
    dims, size, t = call.fixed, call.size, row.position
    if dims is None:
        resolved = [t + 1 if d == T else d for d in call.dims]
        dims, size = np.array(resolved, dtype=np.int64), math.prod(resolved[:-1])
    if call.kind == _ARGMAX and dims[AXES - 1] == 0:
        return None
    a, b = call.bases
    index = call.kind == _ARGMAX
    out = np.empty(size, dtype=np.uint32 if index else np.float32)
    _evaluate(
        call.kind, call.fn, dims,
        sources[0], 0 if a is None else a[0] + a[1] * t + a[2] * row.token,
        sources[1], 0 if b is None else b[0] + b[1] * t + b[2] * row.token,
        call.strides, out.view(np.float32) if index else out,
    )  # fmt: skip
    return out
