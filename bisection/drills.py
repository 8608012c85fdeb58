"""Drills: stage a dispute against your own processes, on a real node or a test network.

`refute prove --cheat POSITION,NODE,ELEMENT` makes the prover claim a trace in which one element
of one record is wrong (its lowest bit flipped), so that watchers must catch it and win;
`refute watch --lie POSITION,NODE,ELEMENT` makes a watcher re-execute with the same kind of flaw,
so that it disputes honest claims and loses, and the operator sees its honest prover defend.

    drill = parse_cheat("3,layers.1.mlp.down,5", model)   # validated against the program
    Executor(model, tamper=drill)                            # the drill is the tamper hook

POSITION is a token position (0 .. max_positions - 1), NODE a node of the model's program (its
name, e.g. layers.1.mlp.down, or its id), ELEMENT an index into that node's output at that
position. A float32 element gets its lowest mantissa bit flipped; an index output (a sampled
token, an argmax) gets 1 added modulo the number of values it ranges over. A KV-cache node's
output at position t is the whole cache (rows 0..t): only row t is written at t, so only its
elements can be changed by a drill at t.
"""

from __future__ import annotations

import numpy as np

from refute.engine.ir import Op, Program
from refute.engine.model import Model
from refute.errors import RefuteError

FORMAT = "POSITION,NODE,ELEMENT"


class DrillError(RefuteError, ValueError):
    """A drill target (--cheat, --lie) is malformed or outside the model's program."""


class Drill:
    """A tamper hook for `Executor(tamper=...)` changing one element of one record. `applied`
    counts the records it changed (0 after a run: the request never reached the position)."""

    def __init__(self, program: Program, position: int, node_id: int, element: int) -> None:
        self.position = position
        self.node_id = node_id
        self.node = program.nodes[node_id].name
        self.element = element
        node = program.nodes[node_id]
        self._cache_row = 0
        if node.op == Op.CACHE_APPEND:  # the hook sees the row written at `position` only
            self._cache_row = position * _row_size(node.shape)
        self._bound = 0  # an index output ranges over 0 .. bound - 1
        if node.op == Op.SAMPLE:
            self._bound = program.vocab_size
        elif node.outputs_index:
            self._bound = program.resolve((node.reduce_len,), position)[0]
        self.applied = 0

    def __call__(self, position: int, node_id: int, out: np.ndarray) -> np.ndarray:
        if (position, node_id) != (self.position, self.node_id):
            return out
        out = np.array(out, copy=True)
        i = self.element - self._cache_row
        if self._bound:
            flat = out.reshape(-1)
            flat[i] = (int(flat[i]) + 1) % self._bound
        else:
            out.reshape(-1).view(np.uint32)[i] ^= 1
        self.applied += 1
        return out

    def describe(self) -> str:
        return f"element {self.element} of {self.node} (node {self.node_id}) at position " \
            f"{self.position}"  # fmt: skip

    def __repr__(self) -> str:
        return f"Drill({self.position},{self.node},{self.element})"


def _row_size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:], dtype=np.int64))


def split_target(text: str) -> tuple[int, str, int]:
    """The three fields of POSITION,NODE,ELEMENT (syntax only: no model needed yet)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or not all(parts):
        raise DrillError(f"expected {FORMAT} (e.g. 3,layers.1.mlp.down,5), got {text!r}")
    position, node, element = parts
    for name, value in (("POSITION", position), ("ELEMENT", element)):
        if not value.lstrip("-").isdigit():
            raise DrillError(f"{name} must be an integer, got {value!r}")
    return int(position), node, int(element)


def parse_target(text: str, model: Model) -> Drill:
    """Validate POSITION,NODE,ELEMENT against the model's program; DrillError names the fault."""
    position, ref, element = split_target(text)
    p = model.program
    if not 0 <= position < p.max_positions:
        raise DrillError(
            f"position {position} is outside {model.name}'s {p.max_positions} positions "
            f"(0..{p.max_positions - 1})"
        )
    node_id = _node_id(ref, model)
    node = p.nodes[node_id]
    size = p.output_size(node_id, position)
    if not 0 <= element < size:
        raise DrillError(
            f"element {element} is outside {node.name}'s {size} outputs at position {position}"
        )
    if node.op == Op.CACHE_APPEND:
        row = _row_size(node.shape)
        first = position * row
        if element < first:
            raise DrillError(
                f"element {element} of {node.name} at position {position} is cache row "
                f"{element // row}, written at position {element // row}: at position "
                f"{position} only elements {first}..{first + row - 1} are written"
            )
    drill = Drill(p, position, node_id, element)
    if node.outputs_index and drill._bound < 2:
        raise DrillError(
            f"{node.name} at position {position} is an index into {drill._bound} value: "
            "there is no other value to put there"
        )
    return drill


def _node_id(ref: str, model: Model) -> int:
    p = model.program
    last = len(p.nodes) - 1
    if ref.lstrip("-").isdigit():
        node_id = int(ref)
        if not 0 <= node_id <= last:
            raise DrillError(f"node id {node_id} is outside the program of {model.name} "
                             f"(ids 0..{last})")  # fmt: skip
        return node_id
    for i, node in enumerate(p.nodes):
        if node.name == ref:
            return i
    examples = ", ".join(_examples(p))
    raise DrillError(
        f"node {ref!r} is not in the program of {model.name}; nodes are named like {examples} "
        f"({len(p.nodes)} nodes, ids 0..{last})"
    )


def _examples(p: Program) -> list[str]:
    """A few node names that show the naming: the first, one of each layer's, the last two."""
    names = [n.name for n in p.nodes]
    picks = [names[0]]
    picks += [n for n in names if n.endswith(".mlp.down")][:2]
    picks += names[-2:]
    return list(dict.fromkeys(picks))


def parse_cheat(text: str, model: Model) -> Drill:
    """`refute prove --cheat`: the prover's tamper hook (it claims a wrong trace and loses)."""
    return parse_target(text, model)


def parse_lie(text: str, model: Model) -> Drill:
    """`refute watch --lie`: a watcher's tamper hook. It re-executes every claim with this flaw,
    so it disputes honest claims (those long enough to reach POSITION) and loses them."""
    return parse_target(text, model)
