"""A step's commitments hashed in one call: numba loops over OpenSSL's sha256, on arrays.

The executor commits hundreds of small node outputs a position. Through `hashlib` every hash
is a Python call (~0.4-0.8 µs, more than hashing a 65-byte node costs), so at small models the
calls, not sha256, were most of the commitment time (docs/performance.md). Here the same
messages of docs/commitments.md — chunk leaves, tensor trees, tensor binds, trace record leaves
and the trace tree's new nodes — are hashed in compiled loops that call libcrypto's
`SHA256_Init/Update/Final` directly (the library `hashlib` itself is built on, SHA-NI where the
CPU has it), and the digests stay in arrays until the step is done.

The bytes hashed are the definition's; `engine/merkle.py` is the definition and the fallback
(tests/test_sha256_batch.py checks these loops against it). `UNAVAILABLE` says why these
cannot run where the library or its symbols are missing; the CPU backend then keeps hashlib.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

import numpy as np
from llvmlite import binding
from numba import njit, types

from refute.kernels.reference import CANONICAL_NAN_BITS

_SYMBOLS = ("SHA256_Init", "SHA256_Update", "SHA256_Final")


def _libcrypto() -> str | None:
    """The libcrypto `hashlib` runs on (from this process's maps), else the system's."""
    try:
        import _hashlib  # noqa: F401  (maps the library into the process)

        with open("/proc/self/maps") as fh:
            for line in fh:
                found = re.search(r"(/\S*libcrypto\S*\.so\S*)", line)
                if found:
                    return found.group(1)
    except (ImportError, OSError):
        pass
    return ctypes.util.find_library("crypto")


def _find() -> str:
    """Make libcrypto's sha256 symbols visible to compiled code, or say why they are not."""
    path = _libcrypto()
    if path is None:
        return "no libcrypto found"
    try:
        lib = ctypes.CDLL(path)
        for name in _SYMBOLS:
            getattr(lib, name)
        binding.load_library_permanently(path)
    except (OSError, AttributeError) as exc:
        return f"{path} lacks the sha256 functions ({exc})"
    return ""


UNAVAILABLE = _find()
"""Why the loops cannot run here ("" when they can)."""

# pointers travel as integers (uintp): the x86-64 and aarch64 calling conventions pass both alike
_init = types.ExternalFunction("SHA256_Init", types.intc(types.uintp))
_update = types.ExternalFunction("SHA256_Update", types.intc(types.uintp, types.uintp, types.uintp))
_final = types.ExternalFunction("SHA256_Final", types.intc(types.uintp, types.uintp))

_CTX_BYTES = 256  # SHA256_CTX is 112 bytes in OpenSSL 1.1 and 3.x: room to spare


@njit(cache=True, nogil=True)
def _digest(ctx, msg, size, dst):  # pragma: no cover - compiled
    _init(ctx)
    _update(ctx, msg, size)
    _final(dst, ctx)


@njit(cache=True, nogil=True)
def _leaf(ctx, msg, pad, src, size, dst):  # pragma: no cover - compiled
    """dst = H(0x00 || the `size` bytes at src || zeros up to a 1 KiB chunk)."""
    msg[0] = 0
    _init(ctx)
    _update(ctx, msg.ctypes.data, 1)
    _update(ctx, src, size)
    if size < 1024:
        _update(ctx, pad.ctypes.data, 1024 - size)
    _final(dst, ctx)


@njit(cache=True, nogil=True)
def _node(ctx, msg, left, right, dst):  # pragma: no cover - compiled
    """dst = H(0x01 || left || right); the children are copied first, so dst may be either."""
    msg[0] = 1
    for b in range(32):
        msg[1 + b] = left[b]
        msg[33 + b] = right[b]
    _digest(ctx, msg.ctypes.data, 65, dst)


@njit(cache=True, nogil=True)
def _bind(ctx, msg, dtype, count, tree, dst):  # pragma: no cover - compiled
    """dst = H(0x02 || dtype || element count (8 bytes, big-endian) || tree)."""
    msg[0] = 2
    msg[1] = dtype
    for b in range(8):
        msg[9 - b] = (count >> (8 * b)) & 0xFF
    for b in range(32):
        msg[10 + b] = tree[b]
    _digest(ctx, msg.ctypes.data, 42, dst)


@njit(cache=True, nogil=True)
def _tensor_roots(words, counts, dtype, zero, out):  # pragma: no cover - compiled
    """out[j] = tensor root of the j-th tensor of `dtype` (0 float32, 1 uint32), its counts[j]
    words laid in `words` right after the previous one's. Float32 NaNs are made canonical in
    `words` (a copy) first."""
    if dtype == 0:
        for i in range(words.size):
            if (words[i] & 0x7FFFFFFF) > 0x7F800000:
                words[i] = CANONICAL_NAN_BITS
    state = np.empty(_CTX_BYTES, np.uint8)
    msg = np.zeros(80, np.uint8)
    pad = np.zeros(1024, np.uint8)
    empty = np.zeros(32, np.uint8)
    ctx, base = state.ctypes.data, words.ctypes.data
    biggest = 1
    for j in range(counts.size):
        biggest = max(biggest, (counts[j] + 255) // 256)
    level = np.empty((biggest, 32), np.uint8)
    lv = level.ctypes.data
    first = 0  # in bytes
    for j in range(counts.size):
        size = 4 * counts[j]
        n = (size + 1023) // 1024
        for c in range(n):  # the last chunk zero-padded to 1 KiB
            _leaf(ctx, msg, pad, base + first + 1024 * c, min(1024, size - 1024 * c), lv + 32 * c)
        first += size
        h = 0
        while n > 1:  # a level at a time, in place: node i is written after 2i and 2i+1 are read
            half = (n + 1) // 2
            for i in range(half):
                right = level[2 * i + 1] if 2 * i + 1 < n else zero[h]
                _node(ctx, msg, level[2 * i], right, lv + 32 * i)
            n = half
            h += 1
        _bind(ctx, msg, dtype, counts[j], level[0] if size else empty, out.ctypes.data + 32 * j)


@njit(cache=True, nogil=True)
def _climb(ctx, msg, node, count, frontier):  # pragma: no cover - compiled
    """Append leaf `node` to the tree of `count` leaves: merge while it completes a subtree."""
    k, h = count, 0
    while k & 1:
        _node(ctx, msg, frontier[h], node, node.ctypes.data)
        k >>= 1
        h += 1
    for b in range(32):
        frontier[h, b] = node[b]


@njit(cache=True, nogil=True)
def _append_records(position, roots, count, frontier, tag):  # pragma: no cover - compiled
    """Append the record leaves H(tag || position || node id n || roots[n]) to the tree."""
    state = np.empty(_CTX_BYTES, np.uint8)
    msg = np.zeros(80, np.uint8)
    node = np.empty(32, np.uint8)
    ctx, m, nd = state.ctypes.data, msg.ctypes.data, node.ctypes.data
    for n in range(roots.shape[0]):
        msg[0] = tag
        for b in range(8):
            msg[8 - b] = (position >> (8 * b)) & 0xFF
        for b in range(4):
            msg[12 - b] = (n >> (8 * b)) & 0xFF
        for b in range(32):
            msg[13 + b] = roots[n, b]
        _digest(ctx, m, 45, nd)
        _climb(ctx, msg, node, count + n, frontier)


@njit(cache=True, nogil=True)
def _append_leaves(data, chunks, count, frontier):  # pragma: no cover - compiled
    """Append the leaves H(0x00 || chunk) of the first `chunks` 1 KiB chunks of `data`."""
    state = np.empty(_CTX_BYTES, np.uint8)
    msg = np.zeros(80, np.uint8)
    pad = np.zeros(1024, np.uint8)
    node = np.empty(32, np.uint8)
    ctx, base = state.ctypes.data, data.ctypes.data
    for c in range(chunks):
        _leaf(ctx, msg, pad, base + 1024 * c, 1024, node.ctypes.data)
        _climb(ctx, msg, node, count + c, frontier)


@njit(cache=True, nogil=True)
def _growing_root(frontier, count, tail, dtype, length, zero, out):  # pragma: no cover
    """out = bind(dtype, length, root of the tree's leaves plus the zero-padded `tail` chunk
    as one more leaf if non-empty): merkle.GrowingTensor.root."""
    state = np.empty(_CTX_BYTES, np.uint8)
    msg = np.zeros(80, np.uint8)
    pad = np.zeros(1024, np.uint8)
    node = np.zeros(32, np.uint8)
    ctx, nd = state.ctypes.data, node.ctypes.data
    extra = tail.size > 0
    if extra:
        _leaf(ctx, msg, pad, tail.ctypes.data, tail.size, nd)
    total = count + (1 if extra else 0)
    depth = 0
    while (1 << depth) < total:
        depth += 1
    if total > 0 and not extra and total == 1 << depth:
        for b in range(32):
            node[b] = frontier[depth, b]
    elif total > 0:
        n, right = count, extra
        for h in range(depth):
            if n & 1:
                _node(ctx, msg, frontier[h], node, nd)
                right = True
            elif right:
                _node(ctx, msg, node, zero[h], nd)
            else:
                for b in range(32):
                    node[b] = zero[h + 1, b]
            n >>= 1
    _bind(ctx, msg, dtype, length, node, out.ctypes.data)


def tensor_roots(words: np.ndarray, counts: np.ndarray, dtype: int, zero: np.ndarray) -> bytes:
    """The tensor roots, 32 bytes each, of tensors of `dtype` (merkle.DTYPE_F32 or DTYPE_U32)
    and counts[j] elements laid end to end in `words` (uint32; modified: float32 NaNs made
    canonical); `zero[h]` the empty subtree of height h. merkle.tensor_roots lays them out."""
    out = np.empty((counts.size, 32), np.uint8)
    _tensor_roots(words, counts, dtype, zero, out)
    return out.tobytes()


def append_records(
    frontier: np.ndarray, count: int, position: int, roots: list[bytes], tag: int
) -> None:
    """Append one position's record leaves (trace.record_leaves) to the incremental tree of
    `count` leaves whose frontier rows these are (merkle.IncrementalTree), in place.
    `position` < 2**63."""
    rows = np.frombuffer(b"".join(roots), np.uint8).reshape(len(roots), 32)
    _append_records(position, rows, count, frontier, tag)


def append_leaves(frontier: np.ndarray, count: int, data: bytes, chunks: int) -> None:
    """Append the leaves of the first `chunks` 1 KiB chunks of `data` to the tree, in place."""
    _append_leaves(np.frombuffer(data, np.uint8), chunks, count, frontier)


def growing_root(
    frontier: np.ndarray, count: int, tail: bytes, dtype: int, length: int, zero: np.ndarray
) -> bytes:
    """merkle.GrowingTensor.root: its tree, the partial `tail` chunk as one more leaf."""
    out = np.empty(32, np.uint8)
    _growing_root(frontier, count, np.frombuffer(tail, np.uint8), dtype, length, zero, out)
    return out.tobytes()
