"""Which runs of a program's nodes the fused kernels compute, recognised by structure.

engine.builder spells RMSNorm, LayerNorm and attention as fixed node sequences. A run of nodes
is fused only if every node has the op, fn, reducer, shape and operand maps the builder gives it:
each node inside the run reads the previous ones exactly as the builder's index maps say, and
the run's inputs (x, the weights, q and the caches) come from before the run. Names are never
trusted. Anything else is evaluated node by node, as before.

Each match returns a `Fused` (kind, first node id, node count); `FusedPlan` fields say where its
inputs are. The host gathers those inputs through the IR's index maps (exact data movement),
so any affine input map works; only the internal structure is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

from refute.engine.ir import Fn, Node, Op, Operand, Program, Reducer, Src, T
from refute.kernels.gpu.rmsnorm_kernel import MAX_WIDTH

SIZES = {"attention": 8, "softmax": 6, "layernorm": 10, "rmsnorm": 6}
"""Nodes per fused group, by kind."""


@dataclass(frozen=True)
class Fused:
    """A fused group: `size` consecutive nodes from `start`, computed by one `kind` kernel."""

    kind: str
    start: int
    size: int

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.start + self.size))


def _reads(op: Operand, node_id: int, strides: tuple[int, ...]) -> bool:
    """op reads node `node_id` of the same position with exactly these strides, no offset."""
    return (
        op.src == Src.NODE
        and op.index == node_id
        and op.strides == strides
        and op.offset == 0
        and op.t_stride == 0
        and op.token_stride == 0
    )


def _external(op: Operand, start: int) -> bool:
    """op reads nothing computed inside a group beginning at `start`."""
    return op.src != Src.NODE or op.index < start


def _is(node: Node, op: Op, fn: Fn, shape: tuple[int, ...], reducer: Reducer = Reducer.NONE,
        reduce_len: int | None = None) -> bool:  # fmt: skip
    return (
        node.op == op
        and node.fn == fn
        and node.shape == shape
        and node.reducer == reducer
        and (reduce_len is None or node.reduce_len == reduce_len)
    )


def _scalar_step(node: Node, fn: Fn, prev: int, with_const: bool) -> bool:
    """A () MAP of the previous scalar node (and a CONST second operand if with_const)."""
    if not _is(node, Op.MAP, fn, ()) or not _reads(node.operands[0], prev, ()):
        return False
    return not with_const or node.operands[1].src == Src.CONST


def _norm_width(program: Program, i: int) -> int | None:
    """D of a REDUCE SUM over a plain (D,) input at node i, if it can be fused."""
    d = program.nodes[i].reduce_len
    return d if 1 <= d <= MAX_WIDTH else None


def match_rmsnorm(program: Program, i: int) -> bool:
    """sumsq, mean, eps, rsqrt, scale, weight (engine.builder.rmsnorm)."""
    nodes = program.nodes[i : i + 6]
    if len(nodes) < 6 or not _is(nodes[0], Op.REDUCE, Fn.MUL, (), Reducer.SUM):
        return False
    d = _norm_width(program, i)
    x = nodes[0].operands[0]
    if d is None or nodes[0].operands[1] != x or len(x.strides) != 1 or not _external(x, i):
        return False
    _, mean, eps, rsqrt, scale, weight = nodes
    return (
        _scalar_step(mean, Fn.DIV, i, True)
        and _scalar_step(eps, Fn.ADD, i + 1, True)
        and _scalar_step(rsqrt, Fn.RSQRT, i + 2, False)
        and _is(scale, Op.MAP, Fn.MUL, (d,))
        and scale.operands[0] == x
        and _reads(scale.operands[1], i + 3, (0,))
        and _is(weight, Op.MAP, Fn.MUL, (d,))
        and _reads(weight.operands[0], i + 4, (1,))
        and _external(weight.operands[1], i)
    )


def match_layernorm(program: Program, i: int) -> bool:
    """sum, mean, center, sumsq, var, eps, rsqrt, scale, weight, bias (builder.layernorm)."""
    nodes = program.nodes[i : i + 10]
    if len(nodes) < 10 or not _is(nodes[0], Op.REDUCE, Fn.COPY, (), Reducer.SUM):
        return False
    d = _norm_width(program, i)
    x = nodes[0].operands[0]
    if d is None or len(x.strides) != 1 or not _external(x, i):
        return False
    _, mean, center, sumsq, var, eps, rsqrt, scale, weight, bias = nodes
    return (
        _scalar_step(mean, Fn.DIV, i, True)
        and _is(center, Op.MAP, Fn.SUB, (d,))
        and center.operands[0] == x
        and _reads(center.operands[1], i + 1, (0,))
        and _is(sumsq, Op.REDUCE, Fn.MUL, (), Reducer.SUM, d)
        and all(_reads(op, i + 2, (1,)) for op in sumsq.operands)
        and _scalar_step(var, Fn.DIV, i + 3, True)
        and _scalar_step(eps, Fn.ADD, i + 4, True)
        and _scalar_step(rsqrt, Fn.RSQRT, i + 5, False)
        and _is(scale, Op.MAP, Fn.MUL, (d,))
        and _reads(scale.operands[0], i + 2, (1,))
        and _reads(scale.operands[1], i + 6, (0,))
        and _is(weight, Op.MAP, Fn.MUL, (d,))
        and _reads(weight.operands[0], i + 7, (1,))
        and _external(weight.operands[1], i)
        and _is(bias, Op.MAP, Fn.ADD, (d,))
        and _reads(bias.operands[0], i + 8, (1,))
        and _external(bias.operands[1], i)
    )


def _softmax_chain(program: Program, i: int, g: int, rep: int) -> bool:
    """Nodes i..i+5 are scaled, max, shift, exp, sum, probs over [T, g, rep] (scaled's first
    operand, the scores, is checked by the caller)."""
    nodes = program.nodes[i : i + 6]
    if len(nodes) < 6:
        return False
    scaled, mx, shift, ex, total, probs = nodes
    s = (T, g, rep)
    whole, by_row, per_head = (g * rep, rep, 1), (rep, 1, g * rep), (0, rep, 1)
    return (
        scaled.op == Op.MAP
        and scaled.fn in (Fn.MUL, Fn.DIV)
        and scaled.shape == s
        and scaled.operands[1].src == Src.CONST
        and _is(mx, Op.REDUCE, Fn.COPY, (g, rep), Reducer.MAX, T)
        and _reads(mx.operands[0], i, by_row)
        and _is(shift, Op.MAP, Fn.SUB, s)
        and _reads(shift.operands[0], i, whole)
        and _reads(shift.operands[1], i + 1, per_head)
        and _is(ex, Op.MAP, Fn.EXP, s)
        and _reads(ex.operands[0], i + 2, whole)
        and _is(total, Op.REDUCE, Fn.COPY, (g, rep), Reducer.SUM, T)
        and _reads(total.operands[0], i + 3, by_row)
        and _is(probs, Op.MAP, Fn.DIV, s)
        and _reads(probs.operands[0], i + 3, whole)
        and _reads(probs.operands[1], i + 4, per_head)
    )


def _score_dims(node: Node) -> tuple[int, int] | None:
    """(G, REP) of a [T, G, REP] node."""
    if len(node.shape) != 3 or node.shape[0] != T or min(node.shape[1:]) < 1:
        return None
    return node.shape[1], node.shape[2]


def match_softmax(program: Program, i: int) -> bool:
    """scaled, max, shift, exp, sum, probs of engine.builder.attention, scores from before."""
    dims = _score_dims(program.nodes[i])
    if dims is None or not _softmax_chain(program, i, *dims):
        return False
    scores = program.nodes[i].operands[0]
    return len(scores.strides) == 3 and _external(scores, i)


def match_attention(program: Program, i: int) -> bool:
    """scores, the softmax chain, out (engine.builder.attention)."""
    nodes = program.nodes[i : i + 8]
    if len(nodes) < 8:
        return False
    scores, out = nodes[0], nodes[7]
    dims = _score_dims(scores)
    if dims is None or not _is(scores, Op.REDUCE, Fn.MUL, scores.shape, Reducer.SUM):
        return False
    g, rep = dims
    hd = scores.reduce_len
    q, k = scores.operands
    if hd < 1 or not (_external(q, i) and _external(k, i)) or q.strides[0] != 0 or k.strides[2]:
        return False  # q must not depend on j, k not on r
    if not _reads(nodes[1].operands[0], i, (g * rep, rep, 1)):
        return False
    if not _softmax_chain(program, i + 1, g, rep):
        return False
    if not _is(out, Op.REDUCE, Fn.MUL, (g, rep, hd), Reducer.SUM, T):
        return False
    p, v = out.operands
    return _reads(p, i + 6, (rep, 1, 0, g * rep)) and _external(v, i) and v.strides[1] == 0


MATCHERS = (
    ("attention", match_attention),
    ("softmax", match_softmax),
    ("layernorm", match_layernorm),
    ("rmsnorm", match_rmsnorm),
)


def find(program: Program) -> list[Fused]:
    """Every fused group of the program, left to right, non-overlapping."""
    out, i = [], 0
    while i < len(program.nodes):
        for kind, match in MATCHERS:
            if match(program, i):
                out.append(Fused(kind, i, SIZES[kind]))
                i += SIZES[kind]
                break
        else:
            i += 1
    return out


def partition(program: Program, fused: list[Fused]) -> list[tuple[int, ...]]:
    """All node ids in order: the fused groups, and every other node alone."""
    starts = {f.start: f for f in fused}
    out, i = [], 0
    while i < len(program.nodes):
        if i in starts:
            out.append(starts[i].ids)
            i += starts[i].size
        else:
            out.append((i,))
            i += 1
    return out
