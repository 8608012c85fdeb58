"""exp, sigmoid and silu in numba: the spec sequences of docs/spec.md §4.1, §4.3, §4.4, operation
for operation (every multiply and add rounded to binary32; no FMA with ``fastmath=False``).

The numpy reference spends ~25 array passes (and their call overhead) on one exp; SwiGLU's silu
over the intermediate width and attention's exp are the largest non-dot costs of a decode step.
The conformance vectors and a sample of bit patterns check these against the reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refute.kernels import reference as ref

_F32 = np.float32
_POW2 = np.array([2.0**k for k in range(-126, 128)], dtype=_F32)  # pow2(k) = _POW2[k + 126]
_C = np.array(
    [
        ref.EXP_OVERFLOW,
        ref.EXP_UNDERFLOW,
        ref.LOG2E,
        ref.LN2_HI,
        ref.LN2_LO,
        ref._ROUND_MAGIC,
        *ref.EXP_POLY,
    ],
    dtype=_F32,
)


@njit(fastmath=False, cache=True, nogil=True, error_model="numpy", inline="always")
def _exp(x, c, pow2):  # pragma: no cover - compiled
    """Spec exp of one float32; c holds the constants (float32 all the way, no promotion)."""
    if x != x:
        return x
    if c[0] < x:
        return np.float32(np.inf)
    if x < c[1]:
        return np.float32(0.0)
    k = (x * c[2] + c[5]) - c[5]
    r = (x - k * c[3]) - k * c[4]
    p = c[12]
    for i in range(11, 5, -1):
        p = p * r + c[i]
    ki = int(k)
    kc = min(max(ki, -126), 127)
    return (p * pow2[ki - kc + 126]) * pow2[kc + 126]


@njit(fastmath=False, cache=True, nogil=True, error_model="numpy", inline="always")
def _sigmoid(x, c, pow2):  # pragma: no cover - compiled
    t = _exp(-abs(x), c, pow2)
    d = np.float32(1.0) + t
    if np.float32(0.0) <= x:
        return np.float32(1.0) / d
    return t / d


@njit(fastmath=False, cache=True, nogil=True, error_model="numpy")
def _apply(kind, x, out, c, pow2):  # pragma: no cover - compiled
    for i in range(x.size):
        v = x[i]
        if kind == 0:
            out[i] = _exp(v, c, pow2)
        elif kind == 1:
            out[i] = _sigmoid(v, c, pow2)
        elif v == -np.inf:
            out[i] = np.float32(-0.0)
        else:
            out[i] = v * _sigmoid(v, c, pow2)


def _run(kind: int, x: np.typing.ArrayLike) -> np.ndarray:
    x = np.asarray(x, dtype=_F32)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    _apply(kind, flat, out, _C, _POW2)
    nan = np.isnan(out)
    if nan.any():
        out[nan] = ref.NAN
    return out.reshape(x.shape)


def exp(x: np.typing.ArrayLike) -> np.ndarray:
    """`reference.exp`, bit for bit."""
    return _run(0, x)


def sigmoid(x: np.typing.ArrayLike) -> np.ndarray:
    """`reference.sigmoid`, bit for bit."""
    return _run(1, x)


def silu(x: np.typing.ArrayLike) -> np.ndarray:
    """`reference.silu`, bit for bit (silu(-inf) = -0)."""
    return _run(2, x)
