"""The program IR (docs/ir.md): what one token position computes, node by node.

A node's every output element is a spec function of input elements found by *affine index
maps*: operand element = offset + t_stride * position + token_stride * token + sum(strides[d] *
index[d]). Reshape, transpose, broadcast, slicing, head grouping, RoPE's half rotation and the
embedding gather are all such maps, so they need no nodes of their own. Four kinds of node:

- MAP: out[o] = fn(operand_1[A_1(o)], ...)
- REDUCE: out[o] = reducer over k < K of fn(operand_1[A_1(o, k)], ...), a spec tree (sum, max,
  argmax); a dot product is REDUCE(SUM, MUL).
- CACHE_APPEND: the KV cache. Output at position t has t + 1 rows: rows < t are this node's
  output at t - 1, row t is operand_1[A_1(r)].
- SAMPLE: the next token from logits operand_1[A_1(k)], k < V (greedy or Gumbel-max, spec §6).

A dimension may be `T`, meaning t + 1 at position t (attention over the positions so far). The
executor, the commitments and the one-step verifier all read these same descriptors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import msgpack
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode

from refute.engine import merkle
from refute.errors import ProgramError

T = -1
"""A dimension of size position + 1."""

IR_VERSION = 1


class Op(IntEnum):
    MAP = 0
    REDUCE = 1
    CACHE_APPEND = 2
    SAMPLE = 3


class Fn(IntEnum):
    """Spec functions a node applies (docs/spec.md §3-4); COPY moves a value unchanged."""

    COPY = 0
    ADD = 1
    SUB = 2
    MUL = 3
    DIV = 4
    MAX = 5
    MIN = 6
    NEG = 7
    ABS = 8
    SQRT = 9
    EXP = 10
    LOG = 11
    SIGMOID = 12
    SILU = 13
    TANH = 14
    GELU_TANH = 15
    RECIPROCAL = 16
    RSQRT = 17


BINARY_FNS = frozenset({Fn.ADD, Fn.SUB, Fn.MUL, Fn.DIV, Fn.MAX, Fn.MIN})


def arity(fn: Fn) -> int:
    return 2 if fn in BINARY_FNS else 1


class Reducer(IntEnum):
    NONE = 0
    SUM = 1
    MAX = 2
    ARGMAX = 3


class Src(IntEnum):
    NODE = 0  # output of an earlier node at the same position
    WEIGHT = 1  # a committed weight tensor
    CONST = 2  # a float32 constant; `index` holds its bit pattern


SELECT_SHIFT = 32
"""An operand's encoded `index` is `index + (select_node + 1) << SELECT_SHIFT` when it has a
selector (docs/ir.md): operands without one encode exactly as before."""


@dataclass(frozen=True)
class Operand:
    src: Src
    index: int
    strides: tuple[int, ...] = ()
    offset: int = 0
    t_stride: int = 0
    token_stride: int = 0
    # the value token_stride multiplies: the input token (-1), or the one uint32 element of
    # an earlier index node at the same position (an expert chosen by a router's ARGMAX)
    select_node: int = -1

    @property
    def encoded_index(self) -> int:
        if self.select_node < 0:
            return self.index
        return self.index + ((self.select_node + 1) << SELECT_SHIFT)

    def as_tuple(self) -> tuple:
        return (
            int(self.src),
            self.encoded_index,
            list(self.strides),
            self.offset,
            self.t_stride,
            self.token_stride,
        )


def decode_index(src: int, encoded: int) -> tuple[int, int]:
    """(index, select_node) of an encoded operand index; a constant's pattern is its own."""
    if src == Src.CONST:
        return encoded, -1
    return encoded & ((1 << SELECT_SHIFT) - 1), (encoded >> SELECT_SHIFT) - 1


@dataclass(frozen=True)
class Node:
    name: str
    op: Op
    shape: tuple[int, ...]
    operands: tuple[Operand, ...]
    fn: Fn = Fn.COPY
    reducer: Reducer = Reducer.NONE
    reduce_len: int = 0
    layer: int = -1  # transformer layer, for naming a disputed step in model terms

    @property
    def outputs_index(self) -> bool:
        return self.op == Op.SAMPLE or self.reducer == Reducer.ARGMAX

    @property
    def selector(self) -> int:
        """The index node whose value this node's token_stride operands multiply (-1: the
        input token). Program.validate allows one per node."""
        return next(
            (o.select_node for o in self.operands if o.token_stride and o.select_node >= 0), -1
        )

    def as_tuple(self) -> tuple:
        return (
            self.name,
            int(self.op),
            list(self.shape),
            [o.as_tuple() for o in self.operands],
            int(self.fn),
            int(self.reducer),
            self.reduce_len,
            self.layer,
        )


# abi types of a node: Solidity decodes it with abi.decode(data, (Node)) in the same layout
_OPERAND_ABI = "(uint8,uint256,int64[],int64,int64,int64)"
NODE_ABI = f"(string,uint8,int64[],{_OPERAND_ABI}[],uint8,uint8,int64,int64)"


def node_abi(node: Node) -> bytes:
    return abi_encode([NODE_ABI], [node.as_tuple()])


def node_from_tuple(t: tuple | list) -> Node:
    """Inverse of Node.as_tuple (the field order of both the msgpack and the ABI encoding)."""
    name, op, shape, operands, fn, reducer, reduce_len, layer = t
    return Node(
        name,
        Op(op),
        tuple(shape),
        tuple(_operand(s, i, st, off, ts, tk) for s, i, st, off, ts, tk in operands),
        Fn(fn),
        Reducer(reducer),
        reduce_len,
        layer,
    )


def _operand(src: int, encoded: int, strides, offset: int, t_stride: int, token_stride: int):
    if not 0 <= encoded < 1 << 63:
        raise ProgramError(f"operand index {encoded} outside [0, 2^63)")
    index, select = decode_index(src, encoded)
    return Operand(Src(src), index, tuple(strides), offset, t_stride, token_stride, select)


def node_from_abi(data: bytes) -> Node:
    (t,) = abi_decode([NODE_ABI], data)
    return node_from_tuple(t)


def node_leaf(node: Node) -> bytes:
    """Leaf of the program tree: sha256(0x10 || abi.encode(node))."""
    return merkle.sha256(b"\x10", node_abi(node))


@dataclass(frozen=True)
class WeightSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Program:
    nodes: tuple[Node, ...]
    weights: tuple[WeightSpec, ...]
    max_positions: int
    vocab_size: int
    logits_node: int
    token_node: int
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def weight_index(self, name: str) -> int:
        for i, w in enumerate(self.weights):
            if w.name == name:
                return i
        raise ProgramError(f"no weight named {name!r}")

    def node_index(self, name: str) -> int:
        for i, n in enumerate(self.nodes):
            if n.name == name:
                return i
        raise ProgramError(f"no node named {name!r}")

    def root(self) -> bytes:
        """Merkle root of the node descriptors, in execution order."""
        return merkle.list_root([node_leaf(n) for n in self.nodes])

    def to_msgpack(self) -> bytes:
        """Deterministic serialization (plain lists and ints, no maps with free key order)."""
        return msgpack.packb(
            [
                IR_VERSION,
                [n.as_tuple() for n in self.nodes],
                [[w.name, list(w.shape)] for w in self.weights],
                self.max_positions,
                self.vocab_size,
                self.logits_node,
                self.token_node,
            ],
            use_bin_type=True,
        )

    @classmethod
    def from_msgpack(cls, data: bytes) -> Program:
        try:
            version, nodes, weights, max_pos, vocab, logits, token = msgpack.unpackb(data)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ProgramError(f"not a serialized program: {exc}") from exc
        if version != IR_VERSION:
            raise ProgramError(f"program IR version {version}, expected {IR_VERSION}")
        parsed = tuple(node_from_tuple(n) for n in nodes)
        program = cls(
            parsed,
            tuple(WeightSpec(n, tuple(s)) for n, s in weights),
            max_pos,
            vocab,
            logits,
            token,
        )
        program.validate()
        return program

    def resolve(self, dims: tuple[int, ...], position: int) -> tuple[int, ...]:
        return tuple(position + 1 if d == T else d for d in dims)

    def output_size(self, node_id: int, position: int) -> int:
        return math.prod(self.resolve(self.nodes[node_id].shape, position))

    def source_size(self, operand: Operand, position: int) -> int:
        if operand.src == Src.NODE:
            return self.output_size(operand.index, position)
        if operand.src == Src.WEIGHT:
            return self.weights[operand.index].size
        return 1

    def validate(self) -> None:
        """Check every node reads only earlier nodes, in bounds, at every position and token."""
        if not self.nodes:
            raise ProgramError("a program needs at least one node")
        for i, node in enumerate(self.nodes):
            where = f"node {i} ({node.name})"
            want = 1 if node.op in (Op.CACHE_APPEND, Op.SAMPLE) else arity(node.fn)
            if len(node.operands) != want:
                raise ProgramError(f"{where}: {len(node.operands)} operands, expected {want}")
            if node.op == Op.REDUCE and node.reducer == Reducer.NONE:
                raise ProgramError(f"{where}: a REDUCE node needs a reducer")
            if node.op == Op.CACHE_APPEND and (not node.shape or node.shape[0] != T):
                raise ProgramError(f"{where}: a cache's first dimension must be T")
            reduces = node.op in (Op.REDUCE, Op.SAMPLE)
            index_dims = node.shape[1:] if node.op == Op.CACHE_APPEND else node.shape
            selectors = {o.select_node for o in node.operands if o.token_stride != 0}
            if len(selectors) > 1:
                raise ProgramError(f"{where}: operands multiply different selectors {selectors}")
            for j, operand in enumerate(node.operands):
                self._validate_operand(i, where, j, operand, index_dims, reduces)
        for name, idx, op in (
            ("logits", self.logits_node, None),
            ("token", self.token_node, Op.SAMPLE),
        ):
            if not 0 <= idx < len(self.nodes) or (op is not None and self.nodes[idx].op != op):
                raise ProgramError(f"{name} node {idx} is not a valid {name} node")

    def _validate_operand(
        self,
        i: int,
        where: str,
        j: int,
        operand: Operand,
        index_dims: tuple[int, ...],
        reduces: bool,
    ) -> None:
        if operand.src == Src.CONST:
            if not 0 <= operand.index < 2**32 or operand.select_node >= 0:
                raise ProgramError(f"{where}: operand {j} constant is not a uint32 pattern")
            return
        if not 0 <= operand.index < 1 << SELECT_SHIFT:
            raise ProgramError(f"{where}: operand {j} index {operand.index} is not a uint32")
        values = self.vocab_size  # what token_stride multiplies takes values in [0, values)
        if operand.select_node >= 0:
            values = self.selector_range(operand.select_node, i, f"{where}: operand {j}")
        if operand.src == Src.NODE and not 0 <= operand.index < i:
            raise ProgramError(f"{where}: operand {j} reads node {operand.index}, not earlier")
        if operand.src == Src.NODE and self.nodes[operand.index].outputs_index:
            raise ProgramError(f"{where}: operand {j} reads an index tensor as floats")
        if operand.src == Src.WEIGHT and not 0 <= operand.index < len(self.weights):
            raise ProgramError(f"{where}: operand {j} reads unknown weight {operand.index}")
        dims = index_dims + ((self.nodes[i].reduce_len,) if reduces else ())
        if len(operand.strides) != len(dims):
            raise ProgramError(
                f"{where}: operand {j} has {len(operand.strides)} strides for "
                f"{len(dims)} index dimensions"
            )
        for position in (0, self.max_positions - 1):
            size = self.source_size(operand, position)
            resolved = self.resolve(dims, position)
            if 0 in resolved:
                continue
            for token in (0, values - 1):
                lo, hi = extent(operand, resolved, position, token)
                if lo < 0 or hi >= size:
                    raise ProgramError(
                        f"{where}: operand {j} reads [{lo}, {hi}] of a source of {size} elements "
                        f"at position {position}, token {token}"
                    )

    def selector_range(self, select: int, i: int, where: str = "") -> int:
        """How many values the index node `select` can output (its ARGMAX's reduce_len, or the
        vocabulary for a SAMPLE), after checking that node `i` may select by it: an earlier
        node with a single uint32 output of a fixed range."""
        if not 0 <= select < i:
            raise ProgramError(f"{where} selects by node {select}, not earlier")
        sel = self.nodes[select]
        if not sel.outputs_index or sel.shape != ():
            raise ProgramError(f"{where} selects by {sel.name}, not a one-element index node")
        if sel.op == Op.SAMPLE:
            return self.vocab_size
        if sel.reduce_len < 1:
            raise ProgramError(f"{where} selects by {sel.name}, whose range is not fixed")
        return sel.reduce_len


def extent(operand: Operand, dims: tuple[int, ...], position: int, token: int) -> tuple[int, int]:
    """Lowest and highest flat index an operand reads over an index space of size `dims`."""
    base = operand.offset + operand.t_stride * position + operand.token_stride * token
    lo = base + sum(min(0, s * (n - 1)) for s, n in zip(operand.strides, dims, strict=True))
    hi = base + sum(max(0, s * (n - 1)) for s, n in zip(operand.strides, dims, strict=True))
    return lo, hi


def element_index(operand: Operand, index: tuple[int, ...], position: int, token: int) -> int:
    """The flat source index operand reads for one output (and reduction) index."""
    base = operand.offset + operand.t_stride * position + operand.token_stride * token
    return base + sum(s * i for s, i in zip(operand.strides, index, strict=True))
