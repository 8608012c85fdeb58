"""Merkle commitments (docs/commitments.md): tensor roots, list roots, proofs, incremental trees.

Everything is sha256 — hashlib is fast in Python and the EVM has it as a precompile — with a
one-byte domain tag in front of every hashed message, so that a leaf can never pass for an inner
node, nor a tensor root for a list root. Trees are complete binary trees over a power-of-two
number of leaves, the missing leaves being the all-zero `EMPTY` hash; the number of real
elements is bound into every root, and a proof's length is fixed by that number, so paths can
neither be truncated nor extended.
"""

from __future__ import annotations

import hashlib
import operator
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from refute.errors import CommitmentError
from refute.kernels.reference import CANONICAL_NAN_BITS

CHUNK_BYTES = 1024
"""Tensor leaves cover 1 KiB of the little-endian encoding (256 float32 values): small enough
that a one-step proof opening two chunks stays cheap in calldata (docs/commitments.md)."""

TAG_LEAF = b"\x00"
TAG_NODE = b"\x01"
TAG_TENSOR = b"\x02"
TAG_LIST = b"\x03"

EMPTY = bytes(32)

DTYPE_F32 = 0
DTYPE_U32 = 1
_DTYPES = {DTYPE_F32: np.dtype("<f4"), DTYPE_U32: np.dtype("<u4")}


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def _zero_hashes(levels: int = 64) -> list[bytes]:
    z = [EMPTY]
    for _ in range(levels):
        z.append(sha256(TAG_NODE, z[-1], z[-1]))
    return z


ZERO = _zero_hashes()
"""ZERO[h]: root of a subtree of height h made only of EMPTY leaves."""


def depth_for(count: int) -> int:
    """Height of the tree holding `count` leaves: ceil(log2(count)), 0 for 0 or 1 leaf."""
    return max(0, (count - 1).bit_length())


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(TAG_NODE + left + right).digest()


def tree_root(leaves: list[bytes]) -> bytes:
    """Root of the complete tree over `leaves`, padded with EMPTY to a power of two."""
    if not leaves:
        return EMPTY
    level = list(leaves)
    height = 0
    sha = hashlib.sha256
    while len(level) > 1:
        if len(level) % 2:
            level.append(ZERO[height])
        # node_hash inlined: this loop is most of the cost of committing weights
        level = [
            sha(TAG_NODE + a + b).digest() for a, b in zip(level[0::2], level[1::2], strict=True)
        ]
        height += 1
    return level[0]


def tree_proof(leaves: list[bytes], index: int) -> list[bytes]:
    """Sibling hashes from the leaf up to (not including) the root, `depth_for(len)` of them."""
    if not 0 <= index < len(leaves):
        raise CommitmentError(f"leaf index {index} outside [0, {len(leaves)})")
    proof = []
    level = list(leaves)
    for height in range(depth_for(len(leaves))):
        if len(level) % 2:
            level.append(ZERO[height])
        proof.append(level[index ^ 1])
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        index //= 2
    return proof


def root_from_proof(leaf: bytes, index: int, proof: list[bytes]) -> bytes:
    """Climb from a leaf: the bits of `index` say, level by level, on which side it sits."""
    h = leaf
    for sibling in proof:
        h = node_hash(sibling, h) if index & 1 else node_hash(h, sibling)
        index >>= 1
    if index:
        raise CommitmentError("index has more bits than the proof has levels")
    return h


# --- lists of 32-byte items (weights, program nodes, trace records) -----------------------------


def list_root(items: list[bytes]) -> bytes:
    """Commitment to a sequence of 32-byte leaves: H(0x03 || count || tree root)."""
    return sha256(TAG_LIST, len(items).to_bytes(8, "big"), tree_root(items))


def verify_list_item(root: bytes, count: int, index: int, item: bytes, proof: list[bytes]) -> bool:
    if not 0 <= index < count or len(proof) != depth_for(count):
        return False
    tree = root_from_proof(item, index, proof)
    return sha256(TAG_LIST, count.to_bytes(8, "big"), tree) == root


# --- tensors --------------------------------------------------------------------------------------


def encode(values: np.ndarray) -> tuple[int, memoryview]:
    """(dtype code, canonical little-endian bytes): float32 with every NaN canonical, or uint32.

    Returns a view of `values` itself when no conversion is needed (no copy for weights)."""
    arr = np.asarray(values)
    if arr.dtype == np.float32:
        flat = np.ascontiguousarray(arr.reshape(-1), dtype="<f4")
        if np.isnan(flat).any():
            bits = flat.view(np.uint32)
            flat = np.where(np.isnan(flat), np.uint32(CANONICAL_NAN_BITS), bits).astype("<u4")
        return DTYPE_F32, memoryview(flat).cast("B")
    if arr.dtype.kind in "ui":
        if arr.size and (arr.min() < 0 or arr.max() >= 2**32):
            raise CommitmentError("integer tensors must hold uint32 values")
        flat = np.ascontiguousarray(arr.reshape(-1), dtype="<u4")
        return DTYPE_U32, memoryview(flat).cast("B")
    raise CommitmentError(f"cannot commit a tensor of dtype {arr.dtype}; use float32 or uint32")


_PARALLEL_BYTES = 8 << 20  # tensors above this hash their chunks on several threads
_POOL: ThreadPoolExecutor | None = None
_WORKERS = os.cpu_count() or 1  # asked once: os.cpu_count() costs ~6 µs a call


def _leaf(piece: memoryview | bytes) -> bytes:
    h = hashlib.sha256(TAG_LEAF)
    h.update(piece)
    if len(piece) < CHUNK_BYTES:
        h.update(bytes(CHUNK_BYTES - len(piece)))
    return h.digest()


def _leaves_serial(view: memoryview, lo: int, hi: int) -> list[bytes]:
    full = lo + (hi - lo) // CHUNK_BYTES * CHUNK_BYTES
    sha = hashlib.sha256
    leaves = [
        sha(TAG_LEAF + view[i : i + CHUNK_BYTES]).digest() for i in range(lo, full, CHUNK_BYTES)
    ]
    if full < hi:
        leaves.append(_leaf(view[full:hi]))
    return leaves


def chunk_leaves(data: bytes | memoryview) -> list[bytes]:
    """sha256(0x00 || chunk) of each CHUNK_BYTES piece, the last one zero-padded.

    hashlib releases the GIL on larger updates, so big tensors (weights) are hashed by one
    thread per core; the leaves are the same either way."""
    global _POOL
    view = memoryview(data)
    n = len(view)
    workers = _WORKERS
    if n < _PARALLEL_BYTES or workers == 1:
        return _leaves_serial(view, 0, n)
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refute-hash")
    step = -(-n // (workers * CHUNK_BYTES)) * CHUNK_BYTES
    parts = _POOL.map(lambda lo: _leaves_serial(view, lo, min(lo + step, n)), range(0, n, step))
    return [leaf for part in parts for leaf in part]


def bind_tensor(dtype: int, length: int, tree: bytes) -> bytes:
    return hashlib.sha256(TAG_TENSOR + bytes([dtype]) + length.to_bytes(8, "big") + tree).digest()


def tensor_root(values: np.ndarray) -> bytes:
    """Root of a tensor: H(0x02 || dtype || element count || tree over its 1 KiB chunks)."""
    dtype, data = encode(values)
    tree = _leaf(data) if 0 < len(data) <= CHUNK_BYTES else tree_root(chunk_leaves(data))
    return bind_tensor(dtype, len(data) // 4, tree)


class BatchHasher(Protocol):
    """Compiled loops hashing a whole batch of the messages below at once, with the same bytes
    (refute.kernels.cpu.sha256, over OpenSSL; installed with `use_batch_hasher`)."""

    def tensor_roots(
        self, words: np.ndarray, counts: np.ndarray, dtype: int, zero: np.ndarray
    ) -> bytes: ...

    def serial_here(self) -> None: ...

    def append_records(
        self, frontier: np.ndarray, count: int, position: int, roots: list[bytes], tag: int
    ) -> None: ...

    def grow(
        self,
        frontier: np.ndarray,
        count: int,
        tail: np.ndarray,
        tail_words: int,
        words: np.ndarray,
        dtype: int,
        length: int,
        zero: np.ndarray,
        root: bool,
    ) -> tuple[int, int, bytes]: ...

    def growing_root(
        self, frontier: np.ndarray, count: int, tail: np.ndarray, tail_words: int, dtype: int,
        length: int, zero: np.ndarray,
    ) -> bytes: ...  # fmt: skip


_batch: BatchHasher | None = None
_ZERO_ROWS = np.frombuffer(b"".join(ZERO), dtype=np.uint8).reshape(-1, 32)


def use_batch_hasher(hasher: BatchHasher | None) -> None:
    """Hash step commitments through `hasher` from now on (None: hashlib, the definition).

    The roots are the same either way (tests/test_sha256_batch.py); the CPU backend installs
    its compiled hasher when it loads its kernels, so a short run pays no compile for it."""
    global _batch
    _batch = hasher


def batch_hasher() -> BatchHasher | None:
    return _batch


CHUNK_VALUES = CHUNK_BYTES // 4
_PARALLEL_VALUES = _PARALLEL_BYTES // 4
_F32 = np.dtype(np.float32)
_U32 = np.dtype(np.uint32)
_size = operator.attrgetter("size")
_ZERO_CHUNK = np.zeros(CHUNK_VALUES, dtype=np.float32)  # +0.0: all-zero bits, the padding
_BIND_PREFIX: dict[int, bytes] = {}  # element count -> 0x02 || float32 || count


def _trees(leaves: list[bytes], counts: list[int]) -> list[bytes]:
    """`tree_root` of each run of `counts[j]` consecutive leaves, every tree a level at a time
    together (one hashing loop per level rather than one call per tensor)."""
    trees = [EMPTY] * len(counts)
    todo: list[tuple[int, int, int]] = []  # (tree, first node, nodes) at this level
    start = 0
    for j, c in enumerate(counts):
        if c == 1:
            trees[j] = leaves[start]
        elif c > 1:
            todo.append((j, start, c))
        start += c
    level, h, sha = leaves, 0, hashlib.sha256
    while todo:
        flat: list[bytes] = []
        above = []
        for j, first, count in todo:
            above.append((j, len(flat) // 2, (count + 1) // 2))
            flat += level[first : first + count]
            if count & 1:
                flat.append(ZERO[h])
        level = [
            sha(TAG_NODE + a + b).digest() for a, b in zip(flat[0::2], flat[1::2], strict=True)
        ]
        h += 1
        todo = []
        for j, first, count in above:
            if count == 1:
                trees[j] = level[first]
            else:
                todo.append((j, first, count))
    return trees


def tensor_roots(tensors: Sequence[np.ndarray]) -> list[bytes]:
    """`tensor_root` of each tensor, computed together: what the executor commits per step.

    Hundreds of small node outputs a position make per-call overhead, not hashing, the cost.
    So the float32 tensors are copied once into one buffer in which each starts on a chunk
    boundary and its last chunk is padded with zero bits (the chunks of the definition, laid
    end to end), NaNs are made canonical in one pass, and every chunk's leaf is hashed in one
    loop. Other dtypes and very large tensors (weights) go through `tensor_root`. With a
    `BatchHasher` installed, all of it is one compiled call."""
    if _batch is not None:
        return _batched_tensor_roots(_batch, tensors)
    roots: list[bytes] = [EMPTY] * len(tensors)
    pieces: list[np.ndarray] = []
    spans: list[tuple[int, int, int]] = []  # (index, elements, chunks)
    per, zero, f32 = CHUNK_VALUES, _ZERO_CHUNK, _F32
    for i, a in enumerate(tensors):
        dt = getattr(a, "dtype", None)
        if (dt is not f32 and dt != f32) or a.size >= _PARALLEL_VALUES:
            roots[i] = tensor_root(a)
            continue
        n = a.size
        c = -(-n // per)
        pieces.append(a.reshape(-1) if a.ndim != 1 else a)
        if c * per != n:
            pieces.append(zero[: c * per - n])
        spans.append((i, n, c))
    if not spans:
        return roots
    buf = np.concatenate(pieces)  # a copy: canonicalising NaNs must not touch the outputs
    nan = np.isnan(buf)
    if nan.any():
        buf.view(np.uint32)[nan] = CANONICAL_NAN_BITS
    view = memoryview(buf).cast("B")
    sha = hashlib.sha256
    leaves = [
        sha(TAG_LEAF + view[o : o + CHUNK_BYTES]).digest() for o in range(0, len(view), CHUNK_BYTES)
    ]
    trees = _trees(leaves, [c for _, _, c in spans])
    prefixes = _BIND_PREFIX
    for (i, n, _), tree in zip(spans, trees, strict=True):
        prefix = prefixes.get(n)
        if prefix is None:
            prefix = prefixes[n] = TAG_TENSOR + bytes([DTYPE_F32]) + n.to_bytes(8, "big")
        roots[i] = sha(prefix + tree).digest()
    return roots


_SCRATCH = threading.local()
SCRATCH_KEEP_WORDS = 1 << 24
"""The largest buffer `_scratch` keeps between calls (64 MiB); larger steps (a long prompt's
prefill) get a buffer of their own, freed with the step, so a long-lived process does not hold
its largest step's copy forever."""


def _scratch(words: int) -> np.ndarray:
    """A uint32 buffer of `words` words, this thread's, reused from step to step: a fresh
    buffer of a prefill step's outputs (~10 MB at 134M parameters) cost a page fault per 4 KiB
    on every step, more than copying into it."""
    if words > SCRATCH_KEEP_WORDS:
        return np.empty(words, np.uint32)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < words:
        grown = 2 * (0 if buf is None else buf.size)
        buf = _SCRATCH.buf = np.empty(min(SCRATCH_KEEP_WORDS, max(words, grown)), np.uint32)
    return buf[:words]


def _batched_tensor_roots(batch: BatchHasher, tensors: Sequence[np.ndarray]) -> list[bytes]:
    """tensor_roots through `batch`: the float32 tensors, then the uint32 ones, each kind in one
    compiled call (`_one_dtype_roots`); anything else through `tensor_root`.

    A list of arrays of one dtype (what the executor commits: a step's float32 outputs, then
    its index outputs) goes in one call with no pass over it in Python: the outputs are cold
    by then (the step's weight streaming evicted them), so every pass over the list costs a
    cache miss per array, and per-array Python work was most of the cost."""
    first = tensors[0] if tensors else None
    if isinstance(first, np.ndarray) and (first.dtype == _F32 or first.dtype == _U32):
        try:
            return _one_dtype_roots(batch, tensors, first.dtype)
        except (TypeError, AttributeError, ValueError):  # not all arrays of one dtype
            pass
    roots = [EMPTY] * len(tensors)
    kinds: tuple[list[int], list[int]] = ([], [])  # indices of the float32, the uint32 tensors
    f32, u32, most = _F32, _U32, _PARALLEL_VALUES
    for i, a in enumerate(tensors):
        dt = getattr(a, "dtype", None)
        if dt is f32 and a.size < most:
            kinds[DTYPE_F32].append(i)
        elif dt is u32 and a.size < most:
            kinds[DTYPE_U32].append(i)
        else:
            roots[i] = tensor_root(a)
    for dtype, picked in zip((f32, u32), kinds, strict=True):
        if picked:
            done = _one_dtype_roots(batch, [tensors[i] for i in picked], dtype)
            for i, root in zip(picked, done, strict=True):
                roots[i] = root
    return roots


def _one_dtype_roots(
    batch: BatchHasher, tensors: Sequence[np.ndarray], dtype: np.dtype
) -> list[bytes]:
    """The roots of arrays all of `dtype` (float32 or uint32), copied end to end by one numpy
    call into this thread's buffer (a copy: NaNs are made canonical in it), which refuses any
    other dtype itself (TypeError, `casting="no"`); the compiled loop pads each last chunk."""
    counts = np.fromiter(map(_size, tensors), dtype=np.int64, count=len(tensors))
    words = _scratch(int(counts.sum()))
    np.concatenate(tensors, axis=None, out=words.view(dtype), casting="no")
    kind = DTYPE_F32 if dtype == _F32 else DTYPE_U32
    raw = batch.tensor_roots(words, counts, kind, _ZERO_ROWS)
    return [raw[k : k + 32] for k in range(0, len(raw), 32)]


@dataclass(frozen=True)
class ElementProof:
    """Opens element `index` of a committed tensor: its whole chunk and the chunk's path."""

    dtype: int
    length: int  # elements in the tensor
    index: int
    chunk: bytes  # CHUNK_BYTES bytes, zero-padded for the last chunk
    siblings: tuple[bytes, ...]

    @property
    def value_bits(self) -> int:
        offset = (self.index * 4) % CHUNK_BYTES
        return int.from_bytes(self.chunk[offset : offset + 4], "little")

    def value(self) -> np.float32 | int:
        bits = np.array([self.value_bits], dtype=np.uint32)
        return bits.view(np.float32)[0] if self.dtype == DTYPE_F32 else int(bits[0])


def prove_element(values: np.ndarray, index: int) -> ElementProof:
    dtype, data = encode(values)
    length = len(data) // 4
    if not 0 <= index < length:
        raise CommitmentError(f"element {index} outside a tensor of {length} elements")
    leaves = chunk_leaves(data)
    c = index * 4 // CHUNK_BYTES
    chunk = bytes(data[c * CHUNK_BYTES : (c + 1) * CHUNK_BYTES])
    chunk += bytes(CHUNK_BYTES - len(chunk))
    return ElementProof(dtype, length, index, chunk, tuple(tree_proof(leaves, c)))


def verify_element(root: bytes, proof: ElementProof) -> bool:
    """True iff `proof` opens element proof.index of the tensor committed by `root`."""
    if not 0 <= proof.index < proof.length or len(proof.chunk) != CHUNK_BYTES:
        return False
    chunks = -(-proof.length * 4 // CHUNK_BYTES)
    if len(proof.siblings) != depth_for(chunks):
        return False
    c = proof.index * 4 // CHUNK_BYTES
    tail = proof.length * 4 - c * CHUNK_BYTES
    if tail < CHUNK_BYTES and any(proof.chunk[tail:]):
        return False  # padding of the last chunk must be zero
    leaf = sha256(TAG_LEAF, proof.chunk)
    tree = root_from_proof(leaf, c, list(proof.siblings))
    return bind_tensor(proof.dtype, proof.length, tree) == root


class IncrementalTree:
    """Append-only tree with O(log n) hashing per appended leaf (the frontier of full subtrees).

    Its root at any size equals `tree_root` of the leaves appended so far. `frontier[h]` (a
    row of 32 bytes) is the full left subtree of height h for each set bit h of `count`; rows
    of clear bits are stale. Rows rather than a list of digests, so that compiled hashing
    (`BatchHasher`) can extend the tree in place."""

    def __init__(self) -> None:
        self.count = 0
        self.frontier = np.zeros((64, 32), dtype=np.uint8)

    def subtree(self, h: int) -> bytes:
        """The full left subtree of height h (bit h of `count` must be set)."""
        return self.frontier[h].tobytes()

    def _set(self, h: int, node: bytes) -> None:
        self.frontier[h] = np.frombuffer(node, dtype=np.uint8)

    def append(self, leaf: bytes) -> None:
        h, node, n = 0, leaf, self.count
        while n & 1:
            node = node_hash(self.subtree(h), node)
            n >>= 1
            h += 1
        self._set(h, node)
        self.count += 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        """`append` each leaf, a level at a time: every new node is hashed once, in one loop per
        level (a position's records go in together)."""
        start = self.count
        self.count += len(leaves)
        level, h = list(leaves), 0
        sha = hashlib.sha256
        while level:
            if (start >> h) & 1:  # the pending left sibling of the first new node
                level.insert(0, self.subtree(h))
            if len(level) % 2:
                self._set(h, level.pop())
            level = [
                sha(TAG_NODE + a + b).digest()
                for a, b in zip(level[0::2], level[1::2], strict=True)
            ]
            h += 1

    def root(self, extra: bytes | None = None) -> bytes:
        """Root of the leaves so far, plus `extra` as one more (not stored) leaf if given."""
        count = self.count + (extra is not None)
        if count == 0:
            return EMPTY
        depth = depth_for(count)
        if extra is None and count == 1 << depth:
            return self.subtree(depth)  # a full tree: one frontier subtree is all of it
        node, n = (extra if extra is not None else EMPTY), self.count
        have_right = extra is not None
        for h in range(depth):
            if n & 1:
                node = node_hash(self.subtree(h), node)
            else:
                node = node_hash(node, ZERO[h]) if have_right else ZERO[h + 1]
            have_right = have_right or bool(n & 1)
            n >>= 1
        return node


class GrowingTensor:
    """A tensor that only grows at its end (a KV cache), committed in O(new bytes + log n).

    Full chunks go into an IncrementalTree; the words of the partial last chunk wait in `tail`
    (its first `tail_words`). With a `BatchHasher` an append, and its new root, is one compiled
    call: a model's caches are appended to every position, so per-call work is their cost.
    """

    def __init__(self, dtype: int = DTYPE_F32) -> None:
        self.dtype = dtype
        self.tree = IncrementalTree()
        self.tail = np.zeros(CHUNK_VALUES, dtype=np.uint32)
        self.tail_words = 0
        self.length = 0

    def extend(self, values: np.ndarray) -> None:
        self._append(values, root=False)

    def extend_root(self, values: np.ndarray) -> bytes:
        """`extend`, then the new `root()`."""
        return self._append(values, root=True)

    def root(self) -> bytes:
        tree = self.tree
        if _batch is not None:
            return _batch.growing_root(tree.frontier, tree.count, self.tail, self.tail_words,
                                       self.dtype, self.length, _ZERO_ROWS)  # fmt: skip
        extra = _leaf(self.tail[: self.tail_words].tobytes()) if self.tail_words else None
        return bind_tensor(self.dtype, self.length, tree.root(extra))

    def _append(self, values: np.ndarray, root: bool) -> bytes:
        arr = np.asarray(values)
        if _batch is not None and (arr.dtype == _F32 or arr.dtype == _U32):
            # the raw bits: the compiled loop makes NaNs canonical as it copies them
            dtype, words = (DTYPE_F32 if arr.dtype == _F32 else DTYPE_U32), arr.reshape(-1)
            words = words.view(np.uint32)
        else:
            dtype, data = encode(arr)
            words = np.frombuffer(data, dtype=np.uint32)
        if dtype != self.dtype:
            raise CommitmentError("a growing tensor keeps one dtype")
        self.length += words.size
        tree = self.tree
        if _batch is not None:
            tree.count, self.tail_words, digest = _batch.grow(
                tree.frontier, tree.count, self.tail, self.tail_words, words, dtype,
                self.length, _ZERO_ROWS, root,
            )  # fmt: skip
            return digest
        data = self.tail[: self.tail_words].tobytes() + words.tobytes()
        full = len(data) - len(data) % CHUNK_BYTES
        for leaf in chunk_leaves(data[:full]):
            tree.append(leaf)
        rest = np.frombuffer(data[full:], dtype=np.uint32)
        self.tail[: rest.size] = rest
        self.tail_words = rest.size
        return self.root() if root else b""
