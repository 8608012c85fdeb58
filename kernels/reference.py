"""The canonical arithmetic of docs/spec.md, implemented once with numpy.

This module *defines the bits*: every other backend (the fast CPU kernels, the Triton kernels,
the Solidity soft-float) is tested against it. It therefore uses numpy only for what IEEE-754
pins down exactly on binary32 (add, sub, mul, div, sqrt, comparisons, bit reinterpretation) and
never numpy's own reductions, matmul or transcendental functions on the data: sums are explicit
pairwise trees and exp/log are the spec's fixed primitive sequences.

All functions take array-likes that are converted to float32 (pass float32 to avoid a rounding
on the way in), work elementwise over any batch shape, and return numpy arrays. Every NaN they
produce carries the canonical bit pattern ``0x7FC00000``.
"""

from __future__ import annotations

import numpy as np
from eth_hash.auto import keccak

from refute.errors import ShapeError, SpecDomainError, SubnormalFlushError

SPEC_VERSION = 1
"""Version of docs/spec.md this module implements; committed with every claim."""

CANONICAL_NAN_BITS = 0x7FC00000
CANONICAL_BF16_NAN_BITS = 0x7FC0

F32 = np.float32
U32 = np.uint32


def from_bits(bits: np.typing.ArrayLike) -> np.ndarray:
    """Reinterpret uint32 bit patterns as float32 values (no NaN canonicalisation)."""
    return np.asarray(bits, dtype=U32).view(F32)


def to_bits(x: np.typing.ArrayLike) -> np.ndarray:
    """Reinterpret float32 values as their uint32 bit patterns."""
    return np.asarray(x, dtype=F32).view(U32)


def _const(bits: int) -> np.float32:
    return np.uint32(bits).view(F32)


NAN = _const(CANONICAL_NAN_BITS)
INF = _const(0x7F800000)
ZERO = F32(0.0)
ONE = F32(1.0)
TWO = F32(2.0)
HALF = F32(0.5)


def _check_subnormals() -> None:
    """Refuse to run where subnormal inputs or results are flushed to zero (FTZ/DAZ)."""
    tiny = from_bits(np.array([1], dtype=U32))
    smallest_normal = from_bits(np.array([0x00800000], dtype=U32))
    daz_ok = to_bits(tiny + tiny)[0] == 2
    ftz_ok = to_bits(smallest_normal * F32(0.5))[0] == 0x00400000
    if not (daz_ok and ftz_ok):
        raise SubnormalFlushError(
            "this platform flushes float32 subnormals to zero (FTZ/DAZ is set); the canonical "
            "arithmetic keeps subnormals, so refute cannot compute canonical results here"
        )


_check_subnormals()


def _f32(x: np.typing.ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=F32)


def canonicalize(y: np.typing.ArrayLike) -> np.ndarray:
    """Replace every NaN by the canonical NaN; leave all other bit patterns alone."""
    y = _f32(y)
    return np.where(np.isnan(y), NAN, y)


# --- primitives: IEEE-754 binary32, round to nearest even, subnormals kept ---------------------


def add(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    with np.errstate(all="ignore"):
        return canonicalize(np.add(_f32(a), _f32(b)))


def sub(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    with np.errstate(all="ignore"):
        return canonicalize(np.subtract(_f32(a), _f32(b)))


def mul(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    with np.errstate(all="ignore"):
        return canonicalize(np.multiply(_f32(a), _f32(b)))


def div(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    with np.errstate(all="ignore"):
        return canonicalize(np.divide(_f32(a), _f32(b)))


def sqrt(x: np.typing.ArrayLike) -> np.ndarray:
    """Correctly rounded square root; sqrt(-0) = -0, sqrt(x < 0) = NaN."""
    with np.errstate(all="ignore"):
        return canonicalize(np.sqrt(_f32(x)))


def neg(x: np.typing.ArrayLike) -> np.ndarray:
    """Flip the sign bit; a NaN input gives the canonical NaN."""
    return canonicalize(from_bits(to_bits(x) ^ U32(0x80000000)))


def abs_(x: np.typing.ArrayLike) -> np.ndarray:
    """Clear the sign bit; a NaN input gives the canonical NaN."""
    return canonicalize(from_bits(to_bits(x) & U32(0x7FFFFFFF)))


def _signbit(x: np.ndarray) -> np.ndarray:
    return (to_bits(x) >> U32(31)).astype(bool)


def maximum(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    """max: NaN if either operand is NaN; max(-0, +0) = max(+0, -0) = +0."""
    a, b = np.broadcast_arrays(_f32(a), _f32(b))
    equal_pick = np.where(_signbit(a), b, a)  # of two equal values prefer +0
    y = np.where(a > b, a, np.where(a < b, b, equal_pick))
    return np.where(np.isnan(a) | np.isnan(b), NAN, y)


def minimum(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    """min: NaN if either operand is NaN; min(-0, +0) = min(+0, -0) = -0."""
    a, b = np.broadcast_arrays(_f32(a), _f32(b))
    equal_pick = np.where(_signbit(a), a, b)  # of two equal values prefer -0
    y = np.where(a < b, a, np.where(a > b, b, equal_pick))
    return np.where(np.isnan(a) | np.isnan(b), NAN, y)


def eq(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    """IEEE equality: false if either is NaN, -0 == +0."""
    return np.equal(_f32(a), _f32(b))


def lt(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    return np.less(_f32(a), _f32(b))


def le(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    return np.less_equal(_f32(a), _f32(b))


def select(cond: np.typing.ArrayLike, a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    """cond ? a : b, elementwise; bit patterns pass through unchanged."""
    return np.where(np.asarray(cond, dtype=bool), _f32(a), _f32(b))


# --- conversions -------------------------------------------------------------------------------


def from_bf16(bits: np.typing.ArrayLike) -> np.ndarray:
    """Exact widening of bfloat16 bit patterns (uint16) to float32."""
    wide = np.asarray(bits, dtype=np.uint16).astype(U32) << U32(16)
    return canonicalize(from_bits(wide))


def from_fp16(bits: np.typing.ArrayLike) -> np.ndarray:
    """Exact widening of IEEE binary16 bit patterns (uint16) to float32 (subnormals included)."""
    half = np.asarray(bits, dtype=np.uint16).view(np.float16)
    return canonicalize(half.astype(F32))


def to_bf16(x: np.typing.ArrayLike) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even; NaN -> 0x7FC0."""
    x = _f32(x)
    u = to_bits(x).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(np.isnan(x), CANONICAL_BF16_NAN_BITS, rounded).astype(np.uint16)


# --- exact helper steps used by the derived functions -------------------------------------------

_ROUND_MAGIC = _const(0x4B400000)  # 1.5 * 2**23


def round_to_int(x: np.typing.ArrayLike) -> np.ndarray:
    """(x + 1.5*2^23) - 1.5*2^23: round to the nearest integer, ties to even, for |x| <= 2^22."""
    return sub(add(x, _ROUND_MAGIC), _ROUND_MAGIC)


def pow2(k: np.typing.ArrayLike) -> np.ndarray:
    """2**k as float32 for integers -126 <= k <= 127, built from the exponent field."""
    k = np.asarray(k, dtype=np.int64)
    if np.any((k < -126) | (k > 127)):
        raise SpecDomainError("pow2 takes integers in [-126, 127]")
    return from_bits(((k + 127) << 23).astype(U32))


def _horner(x: np.ndarray, coeffs: tuple[np.float32, ...]) -> np.ndarray:
    """c[0] + x*(c[1] + x*(... c[n])) with a rounding after every multiply and every add."""
    p = np.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        p = add(mul(p, x), c)
    return p


# --- exp ---------------------------------------------------------------------------------------

EXP_OVERFLOW = _const(0x42B20000)  # 89.0: above it exp is +inf
EXP_UNDERFLOW = _const(0xC2D00000)  # -104.0: below it exp is +0
LOG2E = _const(0x3FB8AA3B)  # 1.44269502
LN2_HI = _const(0x3F317200)  # 0.693145751953125, 15 significant bits: k*LN2_HI is exact
LN2_LO = _const(0x35BFBE8E)  # 1.42860677e-06 = ln 2 - LN2_HI, rounded
# exp(r) ~ 1 + r*(E1 + r*(E2 + ... r*E6)) on |r| <= 0.3466 (fitted by scripts/fit_coefficients.py)
EXP_POLY = tuple(
    _const(b)
    for b in (0x3F800000, 0x3F800000, 0x3EFFFFFE, 0x3E2AAA0D, 0x3D2AAC11, 0x3C0933C9, 0x3AB5738E)
)


def exp(x: np.typing.ArrayLike) -> np.ndarray:
    """e**x: Cody-Waite reduction by ln 2, a degree-6 polynomial, scaling by two powers of 2."""
    x = _f32(x)
    in_range = le(x, EXP_OVERFLOW) & le(EXP_UNDERFLOW, x)
    xr = select(in_range, x, ZERO)
    k = round_to_int(mul(xr, LOG2E))
    r = sub(sub(xr, mul(k, LN2_HI)), mul(k, LN2_LO))
    p = _horner(r, EXP_POLY)
    ki = k.astype(np.int64)
    kc = np.clip(ki, -126, 127)
    y = mul(mul(p, pow2(ki - kc)), pow2(kc))
    y = select(lt(EXP_OVERFLOW, x), INF, y)
    y = select(lt(x, EXP_UNDERFLOW), ZERO, y)
    return canonicalize(select(np.isnan(x), NAN, y))


# --- log ---------------------------------------------------------------------------------------

SQRT2 = _const(0x3FB504F3)  # 1.41421354
TWO_POW_23 = _const(0x4B000000)
SMALLEST_NORMAL = _const(0x00800000)
# log(1+f) = f - (hfsq - s*(hfsq + R)), s = f/(2+f), R(z) ~ z*(L1 + z*(L2 + z*(L3 + z*L4))), z = s*s
LOG_POLY = tuple(_const(b) for b in (0x3F2AAAAD, 0x3ECCC9F5, 0x3E92DB85, 0x3E574B8A))


def log(x: np.typing.ArrayLike) -> np.ndarray:
    """Natural log: split x = m * 2^e with m in (sqrt(1/2), sqrt(2)], then log m by atanh series."""
    x = _f32(x)
    positive_finite = lt(ZERO, x) & lt(x, INF)
    xs = select(positive_finite, x, ONE)
    subnormal = lt(xs, SMALLEST_NORMAL)
    xs = select(subnormal, mul(xs, TWO_POW_23), xs)
    bits = to_bits(xs).astype(np.int64)
    e = ((bits >> 23) & 0xFF) - 127 - np.where(subnormal, 23, 0)
    m = from_bits(((bits & 0x7FFFFF) | 0x3F800000).astype(U32))
    big = lt(SQRT2, m)
    m = select(big, mul(m, HALF), m)
    dk = (e + big).astype(F32)  # exact: |e| <= 150
    f = sub(m, ONE)
    s = div(f, add(TWO, f))
    z = mul(s, s)
    r = mul(z, _horner(z, LOG_POLY))
    hfsq = mul(mul(HALF, f), f)
    inner = sub(hfsq, add(mul(s, add(hfsq, r)), mul(dk, LN2_LO)))
    y = sub(mul(dk, LN2_HI), sub(inner, f))
    y = select(eq(x, ZERO), -INF, y)
    y = select(eq(x, INF), INF, y)
    y = select(lt(x, ZERO) | np.isnan(x), NAN, y)
    return canonicalize(y)


# --- functions transformer models need ---------------------------------------------------------


def reciprocal(x: np.typing.ArrayLike) -> np.ndarray:
    """1 / x, one correctly rounded division."""
    return div(ONE, x)


def rsqrt(x: np.typing.ArrayLike) -> np.ndarray:
    """1 / sqrt(x): two roundings (sqrt, then the division); rsqrt(-0) = -inf."""
    return div(ONE, sqrt(x))


def sigmoid(x: np.typing.ArrayLike) -> np.ndarray:
    """1/(1+t) for x >= 0 and t/(1+t) for x < 0, with t = exp(-|x|): never overflows."""
    x = _f32(x)
    t = exp(neg(abs_(x)))
    d = add(ONE, t)
    return select(le(ZERO, x), div(ONE, d), div(t, d))


def _times_sigmoid(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """x * sigmoid(u), with x = -inf giving -0 (the limit) instead of -inf * 0 = NaN."""
    y = mul(x, sigmoid(u))
    return select(eq(x, -INF), F32(-0.0), y)


def silu(x: np.typing.ArrayLike) -> np.ndarray:
    """x * sigmoid(x); silu(-inf) = -0."""
    x = _f32(x)
    return _times_sigmoid(x, x)


TANH_SMALL = _const(0x3F200000)  # 0.625: below it the odd polynomial, above it via exp
# tanh(x) ~ x + (x*z)*P(z), z = x*x, P(z) = T0 + z*(T1 + ... z*T4)
TANH_POLY = tuple(_const(b) for b in (0xBEAAAA99, 0x3E088393, 0xBD5C1E2E, 0x3CA91355, 0xBBBAF103))


def tanh(x: np.typing.ArrayLike) -> np.ndarray:
    """Odd polynomial for |x| < 0.625, else sign(x) * (1 - 2/(exp(2|x|) + 1)); tanh(+-0) = +-0."""
    x = _f32(x)
    a = abs_(x)
    z = mul(x, x)
    small = add(x, mul(mul(x, z), _horner(z, TANH_POLY)))
    e = exp(add(a, a))
    large = sub(ONE, div(TWO, add(e, ONE)))
    large = select(_signbit(x), neg(large), large)
    y = select(lt(a, TANH_SMALL), small, large)
    y = select(eq(x, ZERO), x, y)  # the polynomial would turn -0 into +0
    return canonicalize(select(np.isnan(x), NAN, y))


GELU_A = _const(0x3D372713)  # 0.044715
GELU_2C = _const(0x3FCC422A)  # 2*sqrt(2/pi) = 1.59576912


def gelu_tanh(x: np.typing.ArrayLike) -> np.ndarray:
    """GELU, tanh form: 0.5x(1 + tanh(c(x + a x^3))) computed as x * sigmoid(2c(x + a x^3)).

    The two are equal as real functions; the sigmoid form avoids the cancellation in 1 + tanh
    for negative x. gelu_tanh(-inf) = -0.
    """
    x = _f32(x)
    x3 = mul(mul(x, x), x)
    u = mul(GELU_2C, add(x, mul(GELU_A, x3)))
    return _times_sigmoid(x, u)


# --- reductions: fixed pairwise trees -----------------------------------------------------------


def _pad_pow2(x: np.ndarray, axis: int, fill: np.float32) -> np.ndarray:
    n = x.shape[axis]
    width = 1 if n <= 1 else 1 << (n - 1).bit_length()
    if width == n:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, width - n)
    return np.pad(x, pad, constant_values=fill)


def _pairs(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Even and odd elements along axis: (x[0::2], x[1::2])."""
    even = [slice(None)] * x.ndim
    odd = [slice(None)] * x.ndim
    even[axis] = slice(0, None, 2)
    odd[axis] = slice(1, None, 2)
    return x[tuple(even)], x[tuple(odd)]


def _tree(x: np.ndarray, axis: int, fill: np.float32, combine) -> np.ndarray:
    x = _pad_pow2(x, axis, fill)
    while x.shape[axis] > 1:
        x = combine(*_pairs(x, axis))
    return np.squeeze(x, axis=axis)


def tree_sum(x: np.typing.ArrayLike, axis: int = -1) -> np.ndarray:
    """Pairwise tree sum over axis, padded with +0.0 to a power of two; empty sum = +0."""
    x = _f32(x)
    if x.shape[axis] == 0:
        return np.zeros(np.delete(np.array(x.shape), axis % x.ndim), dtype=F32)
    return _tree(x, axis % x.ndim, ZERO, add)


def tree_max(x: np.typing.ArrayLike, axis: int = -1) -> np.ndarray:
    """Pairwise tree of `maximum`, padded with -inf; NaN anywhere gives NaN; empty max = -inf."""
    x = _f32(x)
    if x.shape[axis] == 0:
        return np.full(np.delete(np.array(x.shape), axis % x.ndim), -INF, dtype=F32)
    return _tree(x, axis % x.ndim, -INF, maximum)


def argmax_step(
    left_value: np.ndarray, left_index: np.ndarray, right_value: np.ndarray, right_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One node of the argmax tree: the right child wins only if strictly greater, or NaN
    against a non-NaN; ties (including -0 vs +0 and NaN vs NaN) keep the left, lower index."""
    lnan, rnan = np.isnan(left_value), np.isnan(right_value)
    take_right = (right_value > left_value) | (rnan & ~lnan)
    return (
        np.where(take_right, right_value, left_value),
        np.where(take_right, right_index, left_index),
    )


def argmax(x: np.typing.ArrayLike, axis: int = -1) -> np.ndarray:
    """Index of the largest element along axis (NaN counts as largest; lowest index wins ties).

    Computed as a pairwise tree of `argmax_step`, padded with (-inf, n..) to a power of two.
    """
    x = _f32(x)
    axis %= x.ndim
    n = x.shape[axis]
    if n == 0:
        raise ShapeError("argmax of an empty axis")
    values = np.moveaxis(_pad_pow2(x, axis, -INF), axis, -1)
    index = np.broadcast_to(np.arange(values.shape[-1], dtype=np.int64), values.shape)
    while values.shape[-1] > 1:
        values, index = argmax_step(
            values[..., 0::2], index[..., 0::2], values[..., 1::2], index[..., 1::2]
        )
    return index[..., 0]


_DOT_CHUNK_ELEMENTS = 1 << 24  # bound on the products materialised at once


def dot(x: np.typing.ArrayLike, w: np.typing.ArrayLike) -> np.ndarray:
    """x: [..., K], w: [K, N] -> [..., N]; each output is the tree sum of the K rounded products."""
    x, w = _f32(x), _f32(w)
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ShapeError(f"dot needs x [..., K] and w [K, N]; got {x.shape} and {w.shape}")
    k, n = w.shape
    batch = x.shape[:-1]
    if k == 0:  # the empty sum
        return np.zeros((*batch, n), dtype=F32)
    rows = x.reshape(-1, k)
    out = np.empty((rows.shape[0], n), dtype=F32)
    step = max(1, _DOT_CHUNK_ELEMENTS // max(1, k * rows.shape[0]))
    for lo in range(0, n, step):
        products = mul(rows[:, :, None], w[None, :, lo : lo + step])
        out[:, lo : lo + step] = tree_sum(products, axis=1)
    return out.reshape(*batch, n)


# --- sampling ----------------------------------------------------------------------------------

_UINT256 = 1 << 256


def noise_uniform(seed: int, position: int, indices: np.typing.ArrayLike) -> np.ndarray:
    """u = (2m + 1) * 2^-24 with m the top 23 bits of keccak256(abi.encode(seed, position, index)).

    Every u is exactly representable and lies in [2^-24, 1 - 2^-24], so log(u) is finite.
    """
    for name, v in (("seed", seed), ("position", position)):
        if not 0 <= v < _UINT256:
            raise SpecDomainError(f"{name} must be a uint256, got {v}")
    prefix = seed.to_bytes(32, "big") + position.to_bytes(32, "big")
    idx = np.asarray(indices, dtype=object)
    flat = []
    for i in idx.ravel():
        i = int(i)
        if not 0 <= i < _UINT256:
            raise SpecDomainError(f"noise index must be a uint256, got {i}")
        flat.append(int.from_bytes(keccak(prefix + i.to_bytes(32, "big"))[:3], "big") >> 1)
    m = np.array(flat, dtype=np.int64).reshape(idx.shape)
    return ((2 * m + 1).astype(F32) * F32(2.0**-24)).astype(F32)


def gumbel_noise(seed: int, position: int, indices: np.typing.ArrayLike) -> np.ndarray:
    """g = -log(-log(u)) with the spec's log."""
    return neg(log(neg(log(noise_uniform(seed, position, indices)))))


def sample(logits: np.typing.ArrayLike, temperature: float, seed: int, position: int) -> int:
    """One token from a row of logits: greedy argmax when temperature == 0, else Gumbel-max
    argmax(logits / T + g) with g = gumbel_noise(seed, position, 0..V-1)."""
    logits = _f32(logits)
    if logits.ndim != 1:
        raise ShapeError(f"sample takes one row of logits, got shape {logits.shape}")
    t = F32(temperature)
    if not (t >= 0 and np.isfinite(t)):
        raise SpecDomainError(f"temperature must be finite and >= 0, got {temperature}")
    if t == 0:
        return int(argmax(logits))
    g = gumbel_noise(seed, position, np.arange(logits.shape[0]))
    return int(argmax(add(div(logits, t), g)))
