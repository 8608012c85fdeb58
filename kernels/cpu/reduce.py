"""`tree_sum` and `tree_max` over the last axis in numba: the spec trees (docs/spec.md §5)
without numpy's per-level call overhead, which dominates for the short rows of norms and
attention (softmax takes a max, then a sum)."""

from __future__ import annotations

import numpy as np
from numba import njit

from refute.kernels import reference as ref


@njit(inline="always", fastmath=False, cache=True, nogil=True, error_model="numpy")
def padded_tree_sum(buf, k, width):  # pragma: no cover - compiled
    """The spec tree sum of the k terms in buf[:k], padded with +0.0 to `width` (the power of
    two at or above k, buf's length), computed in place; returns the root."""
    zero = np.float32(0.0)
    for i in range(k, width):
        buf[i] = zero
    w = width
    while w > 1:
        half = w // 2
        for i in range(half):
            buf[i] = buf[2 * i] + buf[2 * i + 1]
        w = half
    return buf[0]


@njit(fastmath=False, cache=True, nogil=True, error_model="numpy")
def _tree_rows(terms, out):  # pragma: no cover - compiled
    """out[r] = spec tree sum of terms[r, :] (padded with +0.0 to a power of two)."""
    rows, k = terms.shape
    width = 1
    while width < k:
        width *= 2
    buf = np.empty(width, dtype=np.float32)
    for r in range(rows):
        for i in range(k):
            buf[i] = terms[r, i]
        out[r] = padded_tree_sum(buf, k, width)


def _by_rows(x: np.ndarray, empty: float, kernel) -> np.ndarray:
    """A reduction over the last axis: `kernel(rows, out)` on the rows, canonical NaNs; rows of
    no element give `empty`, rows of one element are that element (a tree of one leaf performs
    no operation, so even a NaN keeps its payload, as in the reference)."""
    x = np.asarray(x, dtype=np.float32)
    lead = x.shape[:-1]
    k = x.shape[-1]
    if k == 1:
        return x[..., 0].copy()
    out = np.full(int(np.prod(lead)), empty, dtype=np.float32)
    if out.size and k:
        kernel(np.ascontiguousarray(x.reshape(out.size, k)), out)
        nan = np.isnan(out)
        if nan.any():
            out[nan] = ref.NAN
    return out.reshape(lead)


def tree_sum(x: np.ndarray) -> np.ndarray:
    """`reference.tree_sum(x, axis=-1)`, bit for bit (empty rows sum to +0)."""
    return _by_rows(x, 0.0, _tree_rows)


@njit(fastmath=False, cache=True, nogil=True, error_model="numpy")
def _max_rows(terms, out):  # pragma: no cover - compiled
    """out[r] = spec tree max of terms[r, :]. The spec's `maximum` (NaN if either is NaN; of
    -0 and +0, +0; otherwise the larger) is associative and commutative, so its tree over any
    padding with -inf equals one pass: NaN if any NaN, else the largest value, +0 over -0."""
    rows, k = terms.shape
    for r in range(rows):
        best = np.float32(-np.inf)
        nan = False
        for i in range(k):
            v = terms[r, i]
            if v != v:
                nan = True
            elif v > best or (v == best and v == 0.0 and np.signbit(best)):
                best = v
        out[r] = np.float32(np.nan) if nan else best


def tree_max(x: np.ndarray) -> np.ndarray:
    """`reference.tree_max(x, axis=-1)`, bit for bit (empty rows give -inf)."""
    return _by_rows(x, -np.inf, _max_rows)
