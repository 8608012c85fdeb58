"""Fused canonical dot products on the CPU: `reference.dot`'s bits, streaming the weights once.

The spec's dot (docs/spec.md §5) is the pairwise tree, over k, of individually rounded products,
padded with +0.0 to a power of two. These kernels never materialise the products:

- Weights are re-laid out once (`pack`) into panels ``[N / LANES, Kp, LANES]``: LANES
  consecutive outputs at the same k are adjacent, so a SIMD vector holds LANES independent trees
  (one per output) and every operation is lane-wise — no horizontal adds, no reassociation.
  k is zero-padded to a multiple of BLOCK (x and w both +0, so the padded products are +0·+0 =
  +0, exactly the spec's pad value).
- k runs in aligned blocks of BLOCK = 8 elements; an aligned block is a complete subtree
  (the spec's chunking rule), summed as ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)).
- Block sums are merged with the binary-counter method: before pushing block b, while bit i of
  b is 1 the pending left sibling on level i is added (left + right), so the partial sums of a
  K-long tree take O(log K) slots.
- After the last real block, the remaining blocks of the padded width are all +0 subtrees; the
  fold adds them in O(log K) additions (`x + (+0)`, which turns -0 into +0 as the spec's padding
  does) instead of skipping them.
- Rows whose padded width is below BLOCK (K <= 4) use a small generic tree kernel.

NaNs: x86 produces a negative "default NaN" for inf·0; a NaN anywhere in a tree makes its root
NaN whatever the payload, so canonicalising the outputs once is exact.

Why numba: it compiles plain Python loops through LLVM with strict IEEE semantics when
``fastmath=False`` (no reassociation, no FMA contraction: the bit-exact tests with adversarial
values would catch either), vectorises the lane loops for the host's SIMD width, gives
multi-threading with ``prange``, caches compiled code on disk (``cache=True``), and installs as
wheels (numba + llvmlite) that support numpy 2.4 — no C toolchain on the watcher's machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.extending import intrinsic, overload

from refute.engine.weights import BF16, is_narrow, widen
from refute.kernels import reference as ref
from refute.kernels.cpu.split import ALWAYS_WORK, PARALLEL_LAUNCH, compile_variant

LANES = 16
"""Outputs per panel: one AVX-512 vector of float32 (two AVX2 vectors)."""

BLOCK = 8
"""k elements per aligned subtree evaluated as one fixed expression."""

_MAX_LEVELS = 64
_F32 = np.float32
_JIT_INLINE = {"fastmath": False, "cache": True, "nogil": True, "error_model": "numpy"}


def _pow2_ceil(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class PackedWeight:
    """A weight matrix re-laid out for the fused kernels: panels [N/LANES, Kp, LANES] of float32,
    or of bf16 bit patterns (uint16)."""

    panels: np.ndarray
    k: int
    n: int


def panel_shape(k: int, n: int) -> tuple[int, int, int]:
    """[N/LANES, Kp, LANES]: the panels of a K x N weight (K padded to a whole block)."""
    return -(-n // LANES), max(BLOCK, -(-k // BLOCK) * BLOCK), LANES


def panel_layout(k: int, n: int, stored: np.dtype) -> tuple[tuple[int, int, int], np.dtype]:
    """Shape and dtype of what `pack` makes of a K x N weight stored as `stored`: bf16 bit
    patterns for bf16, float32 for the rest."""
    return panel_shape(k, n), np.dtype(np.uint16 if stored == BF16 else _F32)


def pack(w: np.ndarray, transposed: bool = False) -> PackedWeight:
    """Re-lay out a weight once (at load time) so the kernels stream it contiguously.

    float32 weights give float32 panels; bf16 weights give panels of their 16-bit patterns
    (half the bytes to stream; the kernels widen each exactly, docs/spec.md `from_bf16`); fp16
    weights are widened to float32 panels. `w` is [N, K] (torch Linear, `transposed=False`)
    or [K, N] (GPT-2 Conv1D, `transposed=True`).
    """
    w = np.asarray(w)
    if w.dtype == BF16:  # panels of bf16 bits, widened in-register by the kernels
        w = w.view(np.uint16)
    elif w.dtype != np.uint16:  # fp16: widened here (no in-register fp16 path yet)
        w = widen(w) if is_narrow(w) else np.asarray(w, dtype=_F32)
    if w.ndim != 2:
        raise ValueError(f"pack needs a matrix, got shape {w.shape}")
    k, n = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    panels = np.zeros(panel_shape(k, n), dtype=w.dtype)  # +0 padding either way
    if transposed:
        full = n // LANES
        if full:
            panels[:full, :k, :] = w[:, : full * LANES].reshape(k, full, LANES).transpose(1, 0, 2)
        if n % LANES:
            panels[full, :k, : n % LANES] = w[:, full * LANES :]
    else:
        full = n // LANES
        if full:
            panels[:full, :k, :] = w[: full * LANES].reshape(full, LANES, k).transpose(0, 2, 1)
        if n % LANES:
            panels[full, :k, : n % LANES] = w[full * LANES :].T
    return PackedWeight(panels, k, n)


@intrinsic
def _f32_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """The binary32 whose bits are the uint32 `bits` (a register move, no conversion)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


PREFETCH_BYTES = 8192
"""How far ahead of the weights being summed a GEMV asks for them (software prefetch, one
request per 64-byte line). The hardware prefetcher alone kept one core's weight stream at
21-25 GB/s on a Zen 5 EPYC, where BLAS streams 34-38; 8 KiB ahead gave 31-38 GB/s
(docs/performance.md). A prefetch changes no bit, and one past the panels' end is harmless
(it never faults). Read when the kernels compile."""


@intrinsic
def _prefetch(typingctx, arr, index):  # pragma: no cover - compiled
    """Ask for the cache line holding arr[index] (llvm.prefetch: read, keep in all levels).
    The address is not checked: a prefetch never faults, wherever it points."""
    sig = types.void(arr, index)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        )
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


def _ld(panel, k, lane):  # pragma: no cover - replaced by the overload below
    raise NotImplementedError


@overload(_ld, inline="always")
def _ld_impl(panel, k, lane):
    """Weight (k, lane) of one panel, flat ([Kp * LANES]: the literal row length lets LLVM
    fold every index of a block into an address displacement, with no multiply or spilled
    index per load), as binary32: float32 as it is; bf16 bits (uint16) widened exactly
    in-register (`from_bf16`: a 16-bit shift; stored NaNs are already canonical)."""
    if panel.dtype == types.float32:
        return lambda panel, k, lane: panel[k * 16 + lane]
    if panel.dtype == types.uint16:
        return lambda panel, k, lane: _f32_from_bits(np.uint32(panel[k * 16 + lane]) << 16)
    return None


@njit(inline="always", **_JIT_INLINE)
def _block(xs, ws, o, lane):  # pragma: no cover - compiled
    """The aligned 8-subtree ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)) of lane `lane` over k = o..o+7
    of the slices xs (x) and ws (a panel's rows); `o` is a literal after inlining, so every
    load is at a constant displacement from two base pointers."""
    t01 = xs[o] * _ld(ws, o, lane) + xs[o + 1] * _ld(ws, o + 1, lane)
    t23 = xs[o + 2] * _ld(ws, o + 2, lane) + xs[o + 3] * _ld(ws, o + 3, lane)
    t45 = xs[o + 4] * _ld(ws, o + 4, lane) + xs[o + 5] * _ld(ws, o + 5, lane)
    t67 = xs[o + 6] * _ld(ws, o + 6, lane) + xs[o + 7] * _ld(ws, o + 7, lane)
    return (t01 + t23) + (t45 + t67)


def _fold(stack, s, r, nblocks, top, width, out, m, base, lanes):  # pragma: no cover
    """Finish row r's tree: merge the pending left siblings with the +0 subtrees of the padding.

    Bit `level` of nblocks set: stack[level] is a complete left subtree; its right sibling is
    the carry (the subtree holding the last real block) or, with no carry yet, all padding
    (+0). Bit clear with a carry: the carry is a left child whose right sibling is padding."""
    zero = np.float32(0.0)
    if nblocks == width:
        for lane in range(lanes):
            out[m, base + lane] = stack[r, top, lane]
        return
    have = False
    for level in range(top):
        if (nblocks >> level) & 1:
            if have:
                for lane in range(16):
                    s[r, lane] = stack[r, level, lane] + s[r, lane]
            else:
                for lane in range(16):
                    s[r, lane] = stack[r, level, lane] + zero
                have = True
        elif have:
            for lane in range(16):
                s[r, lane] = s[r, lane] + zero
    for lane in range(lanes):
        out[m, base + lane] = s[r, lane]


def _gemm_panels(x, panels, k, n, out):  # pragma: no cover - compiled
    """out[m, j] = spec tree over k of x[m, k] * w[k, j], for panels with padded width >= BLOCK.

    x: [M, Kp] zero-padded past k; panels: [B, Kp, LANES]; out: [M, n]. Rows go four at a time
    (each weight vector loaded once for four rows), the remainder one at a time."""
    m_rows = x.shape[0]
    kp = x.shape[1]
    nblocks = kp // 8
    width = 1
    while width < nblocks:
        width *= 2
    top = 0
    while (1 << top) < width:
        top += 1
    flat = panels.reshape(panels.size)  # the panels are one contiguous stream (C order)
    ahead = PREFETCH_BYTES // panels.itemsize
    line = 64 // panels.itemsize
    for j in prange(panels.shape[0]):
        panel = panels[j].reshape(kp * 16)
        stack = np.empty((4, top + 1, 16), dtype=np.float32)
        s = np.empty((4, 16), dtype=np.float32)
        base = j * 16
        lanes = min(16, n - base)
        m = 0
        while m + 4 <= m_rows:
            for b in range(nblocks):
                k0 = b * 8
                a0, a1, a2, a3 = x[m, k0], x[m, k0 + 1], x[m, k0 + 2], x[m, k0 + 3]
                a4, a5, a6, a7 = x[m, k0 + 4], x[m, k0 + 5], x[m, k0 + 6], x[m, k0 + 7]
                b0, b1, b2, b3 = x[m + 1, k0], x[m + 1, k0 + 1], x[m + 1, k0 + 2], x[m + 1, k0 + 3]
                b4, b5, b6, b7 = (
                    x[m + 1, k0 + 4],
                    x[m + 1, k0 + 5],
                    x[m + 1, k0 + 6],
                    x[m + 1, k0 + 7],
                )
                c0, c1, c2, c3 = x[m + 2, k0], x[m + 2, k0 + 1], x[m + 2, k0 + 2], x[m + 2, k0 + 3]
                c4, c5, c6, c7 = (
                    x[m + 2, k0 + 4],
                    x[m + 2, k0 + 5],
                    x[m + 2, k0 + 6],
                    x[m + 2, k0 + 7],
                )
                d0, d1, d2, d3 = x[m + 3, k0], x[m + 3, k0 + 1], x[m + 3, k0 + 2], x[m + 3, k0 + 3]
                d4, d5, d6, d7 = (
                    x[m + 3, k0 + 4],
                    x[m + 3, k0 + 5],
                    x[m + 3, k0 + 6],
                    x[m + 3, k0 + 7],
                )
                ws = panel[k0 * 16 : k0 * 16 + 128]
                for lane in range(16):
                    w0, w1 = _ld(ws, 0, lane), _ld(ws, 1, lane)
                    w2, w3 = _ld(ws, 2, lane), _ld(ws, 3, lane)
                    w4, w5 = _ld(ws, 4, lane), _ld(ws, 5, lane)
                    w6, w7 = _ld(ws, 6, lane), _ld(ws, 7, lane)
                    s[0, lane] = ((a0 * w0 + a1 * w1) + (a2 * w2 + a3 * w3)) + (
                        (a4 * w4 + a5 * w5) + (a6 * w6 + a7 * w7)
                    )
                    s[1, lane] = ((b0 * w0 + b1 * w1) + (b2 * w2 + b3 * w3)) + (
                        (b4 * w4 + b5 * w5) + (b6 * w6 + b7 * w7)
                    )
                    s[2, lane] = ((c0 * w0 + c1 * w1) + (c2 * w2 + c3 * w3)) + (
                        (c4 * w4 + c5 * w5) + (c6 * w6 + c7 * w7)
                    )
                    s[3, lane] = ((d0 * w0 + d1 * w1) + (d2 * w2 + d3 * w3)) + (
                        (d4 * w4 + d5 * w5) + (d6 * w6 + d7 * w7)
                    )
                level = 0
                cnt = b
                while cnt & 1:
                    for r in range(4):
                        for lane in range(16):
                            s[r, lane] = stack[r, level, lane] + s[r, lane]
                    level += 1
                    cnt >>= 1
                for r in range(4):
                    for lane in range(16):
                        stack[r, level, lane] = s[r, lane]
            for r in range(4):
                _fold(stack, s, r, nblocks, top, width, out, m + r, base, lanes)
            m += 4
        while m < m_rows:
            # one row (a GEMV): four blocks (32 k) at a time are one aligned subtree, summed in
            # registers and pushed on level 2 of the counter (a quarter of the stack traffic);
            # each block's tree is built as its products come (few values live at once: no
            # spills with 16 AVX2 registers), the weights PREFETCH_BYTES ahead requested first.
            # The blocks left over go one at a time.
            xm = x[m]
            b = 0
            while b + 4 <= nblocks:
                at = j * kp * 16 + b * 128 + ahead  # PREFETCH_BYTES past these 4 blocks
                for p in range(0, 512, line):
                    _prefetch(flat, at + p)
                xs = xm[b * 8 : b * 8 + 32]
                ws = panel[b * 128 : b * 128 + 512]
                for lane in range(16):
                    q0 = _block(xs, ws, 0, lane)
                    q1 = _block(xs, ws, 8, lane)
                    q2 = _block(xs, ws, 16, lane)
                    q3 = _block(xs, ws, 24, lane)
                    s[0, lane] = (q0 + q1) + (q2 + q3)
                level = 2
                cnt = b >> 2
                while cnt & 1:
                    for lane in range(16):
                        s[0, lane] = stack[0, level, lane] + s[0, lane]
                    level += 1
                    cnt >>= 1
                for lane in range(16):
                    stack[0, level, lane] = s[0, lane]
                b += 4
            while b < nblocks:
                xs = xm[b * 8 : b * 8 + 8]
                ws = panel[b * 128 : b * 128 + 128]
                for lane in range(16):
                    s[0, lane] = _block(xs, ws, 0, lane)
                level = 0
                cnt = b
                while cnt & 1:
                    for lane in range(16):
                        s[0, lane] = stack[0, level, lane] + s[0, lane]
                    level += 1
                    cnt >>= 1
                for lane in range(16):
                    stack[0, level, lane] = s[0, lane]
                b += 1
            _fold(stack, s, 0, nblocks, top, width, out, m, base, lanes)
            m += 1


def _gemm_small(x, panels, k, n, out):  # pragma: no cover - compiled
    """The same for padded widths 1, 2, 4 (k <= 4): a plain in-place tree per output."""
    m_rows = x.shape[0]
    width = 1
    while width < k:
        width *= 2
    for j in prange(panels.shape[0]):
        panel = panels[j].reshape(panels.shape[1] * 16)
        buf = np.empty(8, dtype=np.float32)
        base = j * 16
        for m in range(m_rows):
            for lane in range(min(16, n - base)):
                for i in range(width):
                    buf[i] = x[m, i] * _ld(panel, i, lane)
                w = width
                while w > 1:
                    for i in range(w // 2):
                        buf[i] = buf[2 * i] + buf[2 * i + 1]
                    w //= 2
                out[m, base + lane] = buf[0]


# Each kernel is compiled twice: threaded over output panels, and serial. A parallel region costs
# a thread wake-up and a barrier; on an oversubscribed machine a descheduled worker stalls the
# barrier for a whole time slice, so small products run serially (`PARALLEL_MIN_WORK`).
# Each variant is a renamed copy (`split.compile_variant`: numba's cache ignores the options).
_JIT = {"fastmath": False, "cache": True, "nogil": True, "error_model": "numpy"}


_fold = njit(**_JIT)(_fold)
_KERNELS = {
    (parallel, small): compile_variant(fn, parallel, **_JIT)
    for parallel in (False, True)
    for small, fn in ((False, _gemm_panels), (True, _gemm_small))
}


PARALLEL_MIN_WORK = ALWAYS_WORK
"""Multiply-adds (M·K·N) from which `matmul` uses numba's thread pool by default (the CPU
backend also times smaller ones both ways: `split.SplitChooser`)."""


def matmul(x: np.ndarray, w: PackedWeight, parallel: bool | None = None) -> np.ndarray:
    """x: [..., K] · packed w -> [..., N], bit-identical to `reference.dot`.

    `parallel`: use numba's threads (`numba.set_num_threads` sets how many); None decides by
    size (`PARALLEL_MIN_WORK`), and serially where numba has one thread (as `CPUBackend`
    does: a parallel region of one thread only costs its launch)."""
    x = np.asarray(x, dtype=_F32)
    if x.shape[-1] != w.k:
        raise ValueError(f"x has K = {x.shape[-1]}, the weight {w.k}")
    batch = x.shape[:-1]
    rows = x.reshape(math.prod(batch), w.k)
    kp = w.panels.shape[1]
    xp = np.zeros((rows.shape[0], kp), dtype=_F32)
    xp[:, : w.k] = rows
    out = np.empty((rows.shape[0], w.n), dtype=_F32)
    if parallel is None:
        parallel = rows.shape[0] * kp * w.n >= PARALLEL_MIN_WORK and get_num_threads() > 1
    if rows.shape[0] and w.n:
        if w.k == 0:
            out[:] = 0.0
        else:
            kernel = _KERNELS[bool(parallel), _pow2_ceil(w.k) < BLOCK]
            if parallel:
                with PARALLEL_LAUNCH:  # one parallel launch at a time (split.PARALLEL_LAUNCH)
                    kernel(xp, w.panels, w.k, w.n, out)
            else:
                kernel(xp, w.panels, w.k, w.n, out)
    nan = np.isnan(out)
    if nan.any():
        out[nan] = ref.NAN
    return out.reshape(*batch, w.n)


def dot(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Drop-in for `reference.dot` (x [..., K], w [K, N]); packs w on every call."""
    return matmul(x, pack(w, transposed=True))
