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
import time

import numba
import numpy as np
from llvmlite import binding
from numba import njit, prange, types

from refute.kernels.cpu.split import PARALLEL_LAUNCH, SplitChooser, compile_variant
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
_SPLIT = SplitChooser()  # the chunk leaves serially or threaded, by measured time


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
def _leaf_table(counts):  # pragma: no cover - compiled
    """Every chunk of the tensors laid end to end: its first word and its words (the last
    chunk of a tensor may be short), and the index of each tensor's first chunk."""
    first = np.empty(counts.size + 1, np.int64)
    chunks = 0
    for j in range(counts.size):
        first[j] = chunks
        chunks += (counts[j] + 255) // 256
    first[counts.size] = chunks
    start = np.empty(chunks, np.int64)
    words = np.empty(chunks, np.int64)
    w = 0
    for j in range(counts.size):
        for c in range(first[j + 1] - first[j]):
            start[first[j] + c] = w + 256 * c
            words[first[j] + c] = min(256, counts[j] - 256 * c)
        w += counts[j]
    return first, start, words


@njit(cache=True, nogil=True, inline="always")
def _canonical(w, dtype):  # pragma: no cover - compiled
    """The word `w` as committed: a float32 NaN (dtype 0) becomes the canonical NaN."""
    if dtype == 0 and (w & 0x7FFFFFFF) > 0x7F800000:
        return np.uint32(CANONICAL_NAN_BITS)
    return w


@njit(cache=True, nogil=True)
def _tree_and_bind(ctx, msg, empty, leaves, lo, hi, count, dtype, zero, dst):  # pragma: no cover
    """dst = bind(dtype, count, tree over the leaves[lo:hi] of one tensor, EMPTY if none), the
    tree built in place over those rows (node i is written after 2i and 2i+1 are read)."""
    level = leaves[lo:hi]
    n, h = hi - lo, 0
    while n > 1:
        half = (n + 1) // 2
        for i in range(half):
            right = level[2 * i + 1] if 2 * i + 1 < n else zero[h]
            _node(ctx, msg, level[2 * i], right, level[i].ctypes.data)
        n = half
        h += 1
    _bind(ctx, msg, dtype, count, level[0] if n else empty, dst)


def _roots_in_parts(
    words, first, start, sizes, counts, dtype, zero, leaves, out
):  # pragma: no cover
    """out[j] = tensor j's root: its chunk leaves H(0x00 || chunk, zero-padded to 1 KiB), float32
    NaNs in them made canonical first, its tree and its bind. The tensors go in a few contiguous
    parts of about equal numbers of chunks, each with its own context (the parts run on numba's
    threads in the parallel variant): the trees and binds are split with the leaves."""
    tensors, chunks = counts.size, start.size
    parts = max(1, min(tensors, 16))
    bounds = np.searchsorted(first[:tensors], np.arange(parts + 1) * chunks // parts)
    bounds[0], bounds[parts] = 0, tensors  # trailing empty tensors start at `chunks` too
    pad = np.zeros(1024, np.uint8)
    empty = np.zeros(32, np.uint8)
    for part in prange(parts):
        state = np.empty(_CTX_BYTES, np.uint8)
        msg = np.zeros(80, np.uint8)
        ctx, base = state.ctypes.data, words.ctypes.data
        for j in range(bounds[part], bounds[part + 1]):
            for c in range(first[j], first[j + 1]):
                if dtype == 0:
                    for i in range(start[c], start[c] + sizes[c]):
                        words[i] = _canonical(words[i], dtype)
                _leaf(ctx, msg, pad, base + 4 * start[c], 4 * sizes[c], leaves[c].ctypes.data)
            _tree_and_bind(ctx, msg, empty, leaves, first[j], first[j + 1], counts[j], dtype,
                           zero, out.ctypes.data + 32 * j)  # fmt: skip


_ROOTS = {p: compile_variant(_roots_in_parts, p, cache=True, nogil=True) for p in (False, True)}


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
def _root_of(ctx, msg, pad, node, frontier, count, tail, tail_words, dtype, length, zero, dst):
    """dst = bind(dtype, length, root of the tree's `count` leaves plus, if tail_words > 0, the
    zero-padded chunk of the first tail_words words of `tail` as one more leaf)."""
    nd = node.ctypes.data
    extra = tail_words > 0
    if extra:
        _leaf(ctx, msg, pad, tail.ctypes.data, 4 * tail_words, nd)
    else:
        node[:] = 0  # EMPTY: the right child while no leaf has been climbed past
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
    _bind(ctx, msg, dtype, length, node, dst)


@njit(cache=True, nogil=True)
def _grow(frontier, count, tail, tail_words, words, dtype, length, zero, out):  # pragma: no cover
    """Append `words` to a growing tensor through its partial last chunk `tail` (its first
    tail_words words are data; float32 NaNs made canonical as they are copied in), each chunk
    it completes a leaf of the tree; then, if `out` has room, the root into it. Returns the
    new (count, tail_words)."""
    state = np.empty(_CTX_BYTES, np.uint8)
    msg = np.zeros(80, np.uint8)
    pad = np.zeros(1024, np.uint8)
    node = np.empty(32, np.uint8)
    ctx, base, nd = state.ctypes.data, tail.ctypes.data, node.ctypes.data
    for i in range(words.size):
        tail[tail_words] = _canonical(words[i], dtype)
        tail_words += 1
        if tail_words == 256:
            _leaf(ctx, msg, pad, base, 1024, nd)
            _climb(ctx, msg, node, count, frontier)
            count += 1
            tail_words = 0
    if out.size:
        _root_of(ctx, msg, pad, node, frontier, count, tail, tail_words, dtype, length, zero,
                 out.ctypes.data)  # fmt: skip
    return count, tail_words


@njit(cache=True, nogil=True)
def _growing_root(frontier, count, tail, tail_words, dtype, length, zero, out):  # pragma: no cover
    """out = merkle.GrowingTensor.root: its tree, the partial last chunk as one more leaf."""
    state = np.empty(_CTX_BYTES, np.uint8)
    msg = np.zeros(80, np.uint8)
    pad = np.zeros(1024, np.uint8)
    node = np.zeros(32, np.uint8)
    _root_of(state.ctypes.data, msg, pad, node, frontier, count, tail, tail_words, dtype, length,
             zero, out.ctypes.data)  # fmt: skip


def tensor_roots(words: np.ndarray, counts: np.ndarray, dtype: int, zero: np.ndarray) -> bytes:
    """The tensor roots, 32 bytes each, of tensors of `dtype` (merkle.DTYPE_F32 or DTYPE_U32)
    and counts[j] elements laid end to end in `words` (uint32; modified: float32 NaNs made
    canonical); `zero[h]` the empty subtree of height h. merkle.tensor_roots lays them out.

    The work goes on numba's threads, in parts of whole tensors, when that was faster here for
    this many chunks (`split.SplitChooser`, work = bytes hashed)."""
    out = np.empty((counts.size, 32), np.uint8)
    first, start, sizes = _leaf_table(counts)
    leaves = np.empty((start.size, 32), np.uint8)
    key, threads = ("sha256", start.size.bit_length()), numba.get_num_threads()
    parallel = _SPLIT.choose(key, 1024 * start.size, threads)
    began = time.perf_counter()
    if parallel:
        with PARALLEL_LAUNCH:
            _ROOTS[True](words, first, start, sizes, counts, dtype, zero, leaves, out)
    else:
        _ROOTS[False](words, first, start, sizes, counts, dtype, zero, leaves, out)
    if threads > 1:  # (a serial-only thread, the commit thread, says nothing of the choice)
        _SPLIT.record(key, parallel, time.perf_counter() - began)
    return out.tobytes()


def serial_here() -> None:
    """Hash serially on the calling thread from now on (numba's thread count is per thread):
    the executor's commit thread, which runs beside the evaluation's threads."""
    numba.set_num_threads(1)


def append_records(
    frontier: np.ndarray, count: int, position: int, roots: list[bytes], tag: int
) -> None:
    """Append one position's record leaves (trace.record_leaves) to the incremental tree of
    `count` leaves whose frontier rows these are (merkle.IncrementalTree), in place.
    `position` < 2**63."""
    rows = np.frombuffer(b"".join(roots), np.uint8).reshape(len(roots), 32)
    _append_records(position, rows, count, frontier, tag)


def grow(
    frontier: np.ndarray, count: int, tail: np.ndarray, tail_words: int, words: np.ndarray,
    dtype: int, length: int, zero: np.ndarray, root: bool,
) -> tuple[int, int, bytes]:  # fmt: skip
    """merkle.GrowingTensor's append of `words` (uint32, the tensor's bits; float32 NaNs are
    made canonical in the copy), in place: the new (count, tail_words), and with `root` the
    root at the new `length` (else b"")."""
    out = np.empty(32 if root else 0, np.uint8)
    count, tail_words = _grow(frontier, count, tail, tail_words, words, dtype, length, zero, out)
    return count, tail_words, out.tobytes()


def growing_root(
    frontier: np.ndarray, count: int, tail: np.ndarray, tail_words: int, dtype: int, length: int,
    zero: np.ndarray,
) -> bytes:  # fmt: skip
    """merkle.GrowingTensor.root: its tree, the partial last chunk as one more leaf."""
    out = np.empty(32, np.uint8)
    _growing_root(frontier, count, tail, tail_words, dtype, length, zero, out)
    return out.tobytes()
