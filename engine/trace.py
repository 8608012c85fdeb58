"""The execution trace: one record (position, node id, output root) per executed node.

Records are ordered position-major, nodes in program order, so every input of a record is the
output of an earlier record (or a committed weight or prompt token). Descending the trace tree
to the leftmost leaf where two traces differ therefore ends on a record whose inputs both sides
agree on. trace root = list_root(record leaves), grown incrementally as positions complete.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from refute.engine import merkle
from refute.errors import CommitmentError

TAG_RECORD = b"\x20"


def record_leaf(position: int, node_id: int, root: bytes) -> bytes:
    """sha256(0x20 || position (8 bytes) || node id (4 bytes) || output root), big-endian."""
    return merkle.sha256(TAG_RECORD, position.to_bytes(8, "big"), node_id.to_bytes(4, "big"), root)


_NODE_IDS: list[bytes] = []  # node id -> its 4 big-endian bytes


def record_leaves(position: int, roots: list[bytes]) -> list[bytes]:
    """`record_leaf(position, n, roots[n])` for every node n, in one loop."""
    while len(_NODE_IDS) < len(roots):
        _NODE_IDS.append(len(_NODE_IDS).to_bytes(4, "big"))
    prefix = TAG_RECORD + position.to_bytes(8, "big")
    sha = hashlib.sha256
    ids = _NODE_IDS[: len(roots)]
    return [sha(prefix + node + root).digest() for node, root in zip(ids, roots, strict=True)]


def prompt_root(tokens: list[int]) -> bytes:
    return merkle.tensor_root(np.asarray(tokens, dtype=np.uint32))


@dataclass
class Trace:
    """Output roots of every record of one generation, and the incremental trace tree."""

    nodes_per_position: int
    roots: list[list[bytes]] = field(default_factory=list)  # roots[position][node]
    _tree: merkle.IncrementalTree = field(default_factory=merkle.IncrementalTree)

    def add_position(self, roots: list[bytes]) -> None:
        if len(roots) != self.nodes_per_position:
            raise CommitmentError(f"{len(roots)} roots for {self.nodes_per_position} nodes")
        position = len(self.roots)
        self.roots.append(list(roots))
        batch = merkle.batch_hasher()
        if batch is None or position >= 2**63:  # (the compiled loop takes signed 64-bit ints)
            self._tree.extend(record_leaves(position, roots))
        else:  # the same leaves and nodes, hashed in one compiled call
            tree = self._tree
            batch.append_records(tree.frontier, tree.count, position, roots, TAG_RECORD[0])
            tree.count += len(roots)

    @property
    def num_records(self) -> int:
        return self._tree.count

    @property
    def positions(self) -> int:
        return len(self.roots)

    def root(self) -> bytes:
        return merkle.sha256(
            merkle.TAG_LIST, self.num_records.to_bytes(8, "big"), self._tree.root()
        )

    def record_index(self, position: int, node_id: int) -> int:
        return position * self.nodes_per_position + node_id

    def leaves(self) -> list[bytes]:
        return [record_leaf(t, n, r) for t, row in enumerate(self.roots) for n, r in enumerate(row)]

    def record_proof(self, position: int, node_id: int) -> list[bytes]:
        """Siblings proving record (position, node) against `root()` (via verify_record)."""
        return merkle.tree_proof(self.leaves(), self.record_index(position, node_id))

    def first_difference(self, other: Trace) -> tuple[int, int] | None:
        """The earliest (position, node) whose roots differ, or where one trace ends first."""
        for t in range(min(self.positions, other.positions)):
            for n, (a, b) in enumerate(zip(self.roots[t], other.roots[t], strict=True)):
                if a != b:
                    return t, n
        if self.positions != other.positions:
            return min(self.positions, other.positions), 0
        return None


def verify_record(
    trace_root: bytes,
    num_records: int,
    nodes_per_position: int,
    position: int,
    node_id: int,
    output_root: bytes,
    proof: list[bytes],
) -> bool:
    """True iff the record (position, node_id, output_root) is in the trace with that root."""
    index = position * nodes_per_position + node_id
    if not 0 <= node_id < nodes_per_position:
        return False
    leaf = record_leaf(position, node_id, output_root)
    return merkle.verify_list_item(trace_root, num_records, index, leaf, proof)
