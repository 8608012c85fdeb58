"""The canonical arithmetic as Triton device functions, one for one with kernels/reference.py.

reference.py defines the bits; each function here performs the same primitive operations on the
same constants (given as bit patterns) in the same order, with the same selects. Only IEEE
operations that a GPU performs exactly are used: fp32 add/sub/mul (launched with fusion off, so
never fma), ``tl.math.div_rn`` and ``tl.sqrt_rn`` (never ``/``, ``tl.sqrt`` or ``tl.exp``),
comparisons, selects and integer bit manipulation. Every NaN a function returns is canonical.

Negation and absolute value are sign-bit operations, as in the reference (``0 - x`` would turn
``-(+0)`` into ``+0``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Bit patterns of the constants, equal to the reference's (tests/test_triton_kernels.py checks).
CANONICAL_NAN: tl.constexpr = tl.constexpr(0x7FC00000)
POS_INF: tl.constexpr = tl.constexpr(0x7F800000)
NEG_ZERO: tl.constexpr = tl.constexpr(0x80000000)
ROUND_MAGIC: tl.constexpr = tl.constexpr(0x4B400000)
EXP_OVERFLOW: tl.constexpr = tl.constexpr(0x42B20000)
EXP_UNDERFLOW: tl.constexpr = tl.constexpr(0xC2D00000)
LOG2E: tl.constexpr = tl.constexpr(0x3FB8AA3B)
LN2_HI: tl.constexpr = tl.constexpr(0x3F317200)
LN2_LO: tl.constexpr = tl.constexpr(0x35BFBE8E)
EXP_P0: tl.constexpr = tl.constexpr(0x3F800000)
EXP_P1: tl.constexpr = tl.constexpr(0x3F800000)
EXP_P2: tl.constexpr = tl.constexpr(0x3EFFFFFE)
EXP_P3: tl.constexpr = tl.constexpr(0x3E2AAA0D)
EXP_P4: tl.constexpr = tl.constexpr(0x3D2AAC11)
EXP_P5: tl.constexpr = tl.constexpr(0x3C0933C9)
EXP_P6: tl.constexpr = tl.constexpr(0x3AB5738E)
SQRT2: tl.constexpr = tl.constexpr(0x3FB504F3)
TWO_POW_23: tl.constexpr = tl.constexpr(0x4B000000)
SMALLEST_NORMAL: tl.constexpr = tl.constexpr(0x00800000)
LOG_P0: tl.constexpr = tl.constexpr(0x3F2AAAAD)
LOG_P1: tl.constexpr = tl.constexpr(0x3ECCC9F5)
LOG_P2: tl.constexpr = tl.constexpr(0x3E92DB85)
LOG_P3: tl.constexpr = tl.constexpr(0x3E574B8A)
TANH_SMALL: tl.constexpr = tl.constexpr(0x3F200000)
TANH_P0: tl.constexpr = tl.constexpr(0xBEAAAA99)
TANH_P1: tl.constexpr = tl.constexpr(0x3E088393)
TANH_P2: tl.constexpr = tl.constexpr(0xBD5C1E2E)
TANH_P3: tl.constexpr = tl.constexpr(0x3CA91355)
TANH_P4: tl.constexpr = tl.constexpr(0xBBBAF103)
GELU_A: tl.constexpr = tl.constexpr(0x3D372713)
GELU_2C: tl.constexpr = tl.constexpr(0x3FCC422A)

CONSTANT_BITS: dict[str, int] = {
    name: value.value
    for name, value in dict(globals()).items()
    if isinstance(value, tl.constexpr) and name.isupper()
}
"""Every constant above by name, for the drift check against the reference."""


# --- bits --------------------------------------------------------------------------------------


@triton.jit
def const(bits: tl.constexpr):
    """The float32 whose bit pattern is `bits` (exact: no decimal round trip)."""
    return tl.full((), bits, tl.uint32).to(tl.float32, bitcast=True)


@triton.jit
def to_bits(x):
    return x.to(tl.uint32, bitcast=True)


@triton.jit
def from_bits(bits):
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def is_nan(x):
    return x != x


@triton.jit
def signbit(x):
    return (x.to(tl.uint32, bitcast=True) >> 31) != 0


@triton.jit
def canonicalize(y):
    """Replace every NaN by the canonical NaN (GPUs and CPUs disagree on NaN payloads)."""
    return tl.where(y != y, const(CANONICAL_NAN), y)


# --- primitives --------------------------------------------------------------------------------


@triton.jit
def add(a, b):
    return canonicalize(a + b)


@triton.jit
def sub(a, b):
    return canonicalize(a - b)


@triton.jit
def mul(a, b):
    return canonicalize(a * b)


@triton.jit
def div(a, b):
    """Correctly rounded division (``/`` is approximate on the GPU)."""
    return canonicalize(tl.math.div_rn(a, b))


@triton.jit
def sqrt(x):
    """Correctly rounded square root; sqrt(-0) = -0, sqrt(x < 0) = NaN."""
    return canonicalize(tl.sqrt_rn(x))


@triton.jit
def neg(x):
    """Flip the sign bit."""
    return canonicalize((x.to(tl.uint32, bitcast=True) ^ 0x80000000).to(tl.float32, bitcast=True))


@triton.jit
def abs_(x):
    """Clear the sign bit."""
    return canonicalize((x.to(tl.uint32, bitcast=True) & 0x7FFFFFFF).to(tl.float32, bitcast=True))


@triton.jit
def maximum(a, b):
    """NaN if either is NaN; of two equal values (-0, +0) prefer +0."""
    equal_pick = tl.where(signbit(a), b, a)
    y = tl.where(a > b, a, tl.where(a < b, b, equal_pick))
    return tl.where(is_nan(a) | is_nan(b), const(CANONICAL_NAN), y)


@triton.jit
def minimum(a, b):
    """NaN if either is NaN; of two equal values (-0, +0) prefer -0."""
    equal_pick = tl.where(signbit(a), a, b)
    y = tl.where(a < b, a, tl.where(a > b, b, equal_pick))
    return tl.where(is_nan(a) | is_nan(b), const(CANONICAL_NAN), y)


@triton.jit
def argmax_step(left_value, left_index, right_value, right_index):
    """The right child wins only if strictly greater, or NaN against a non-NaN."""
    take_right = (right_value > left_value) | (is_nan(right_value) & ~is_nan(left_value))
    return (
        tl.where(take_right, right_value, left_value),
        tl.where(take_right, right_index, left_index),
    )


# --- exact helper steps ------------------------------------------------------------------------


@triton.jit
def round_to_int(x):
    """(x + 1.5*2^23) - 1.5*2^23: nearest integer, ties to even, for |x| <= 2^22."""
    return sub(add(x, const(ROUND_MAGIC)), const(ROUND_MAGIC))


@triton.jit
def pow2(k):
    """2**k for int32 k in [-126, 127], from the exponent field (the caller keeps k in range)."""
    return ((k + 127) << 23).to(tl.float32, bitcast=True)


# --- exp ---------------------------------------------------------------------------------------


@triton.jit
def exp(x):
    """Cody-Waite reduction by ln 2, degree-6 Horner polynomial, scaling by two powers of 2."""
    in_range = (x <= const(EXP_OVERFLOW)) & (const(EXP_UNDERFLOW) <= x)
    xr = tl.where(in_range, x, 0.0)
    k = round_to_int(mul(xr, const(LOG2E)))
    r = sub(sub(xr, mul(k, const(LN2_HI))), mul(k, const(LN2_LO)))
    p = add(mul(const(EXP_P6), r), const(EXP_P5))
    p = add(mul(p, r), const(EXP_P4))
    p = add(mul(p, r), const(EXP_P3))
    p = add(mul(p, r), const(EXP_P2))
    p = add(mul(p, r), const(EXP_P1))
    p = add(mul(p, r), const(EXP_P0))
    ki = k.to(tl.int32)  # k is an integer-valued float in [-150, 129]: exact
    kc = tl.minimum(tl.maximum(ki, -126), 127)
    y = mul(mul(p, pow2(ki - kc)), pow2(kc))
    y = tl.where(const(EXP_OVERFLOW) < x, const(POS_INF), y)
    y = tl.where(x < const(EXP_UNDERFLOW), 0.0, y)
    return canonicalize(tl.where(is_nan(x), const(CANONICAL_NAN), y))


# --- log ---------------------------------------------------------------------------------------


@triton.jit
def log(x):
    """Split x = m * 2^e with m in (sqrt(1/2), sqrt(2)], then log m by the atanh series."""
    positive_finite = (0.0 < x) & (x < const(POS_INF))
    xs = tl.where(positive_finite, x, 1.0)
    subnormal = xs < const(SMALLEST_NORMAL)
    xs = tl.where(subnormal, mul(xs, const(TWO_POW_23)), xs)
    bits = xs.to(tl.int32, bitcast=True)  # xs > 0: the sign bit is clear
    e = ((bits >> 23) & 0xFF) - 127 - tl.where(subnormal, 23, 0)
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = const(SQRT2) < m
    m = tl.where(big, mul(m, 0.5), m)
    dk = (e + big.to(tl.int32)).to(tl.float32)  # exact: |e| <= 150
    f = sub(m, 1.0)
    s = div(f, add(2.0, f))
    z = mul(s, s)
    q = add(mul(const(LOG_P3), z), const(LOG_P2))
    q = add(mul(q, z), const(LOG_P1))
    q = add(mul(q, z), const(LOG_P0))
    r = mul(z, q)
    hfsq = mul(mul(0.5, f), f)
    inner = sub(hfsq, add(mul(s, add(hfsq, r)), mul(dk, const(LN2_LO))))
    y = sub(mul(dk, const(LN2_HI)), sub(inner, f))
    y = tl.where(x == 0.0, neg(const(POS_INF)), y)
    y = tl.where(x == const(POS_INF), const(POS_INF), y)
    y = tl.where((x < 0.0) | is_nan(x), const(CANONICAL_NAN), y)
    return canonicalize(y)


# --- functions transformer models need ---------------------------------------------------------


@triton.jit
def reciprocal(x):
    """1 / x, one correctly rounded division."""
    return div(1.0, x)


@triton.jit
def rsqrt(x):
    """1 / sqrt(x): two roundings, never the hardware rsqrt."""
    return div(1.0, sqrt(x))


@triton.jit
def sigmoid(x):
    """1/(1+t) for x >= 0 and t/(1+t) for x < 0, with t = exp(-|x|)."""
    t = exp(neg(abs_(x)))
    d = add(1.0, t)
    return tl.where(0.0 <= x, div(1.0, d), div(t, d))


@triton.jit
def times_sigmoid(x, u):
    """x * sigmoid(u), with x = -inf giving -0 instead of NaN."""
    y = mul(x, sigmoid(u))
    return tl.where(x == neg(const(POS_INF)), const(NEG_ZERO), y)


@triton.jit
def silu(x):
    return times_sigmoid(x, x)


@triton.jit
def tanh(x):
    """Odd polynomial for |x| < 0.625, else sign(x) * (1 - 2/(exp(2|x|) + 1)); tanh(+-0) = +-0."""
    a = abs_(x)
    z = mul(x, x)
    p = add(mul(const(TANH_P4), z), const(TANH_P3))
    p = add(mul(p, z), const(TANH_P2))
    p = add(mul(p, z), const(TANH_P1))
    p = add(mul(p, z), const(TANH_P0))
    small = add(x, mul(mul(x, z), p))
    e = exp(add(a, a))
    large = sub(1.0, div(2.0, add(e, 1.0)))
    large = tl.where(signbit(x), neg(large), large)
    y = tl.where(a < const(TANH_SMALL), small, large)
    y = tl.where(x == 0.0, x, y)  # the polynomial would turn -0 into +0
    return canonicalize(tl.where(is_nan(x), const(CANONICAL_NAN), y))


@triton.jit
def gelu_tanh(x):
    """x * sigmoid(2c(x + a x^3)): the tanh-form GELU without the cancellation in 1 + tanh."""
    x3 = mul(mul(x, x), x)
    u = mul(const(GELU_2C), add(x, mul(const(GELU_A), x3)))
    return times_sigmoid(x, u)


# --- pairwise trees over the last axis of a 2-D block ------------------------------------------


@triton.jit
def tree_sum_rows(x, WIDTH: tl.constexpr):
    """[R, WIDTH] -> [R]: the canonical tree (x[0::2] + x[1::2] per level); WIDTH a power of 2."""
    for _ in tl.static_range(WIDTH.bit_length() - 1):
        a, b = tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 2, 2)))
        x = add(a, b)
    return tl.reshape(x, (x.shape[0],))


@triton.jit
def tree_max_rows(x, WIDTH: tl.constexpr):
    """[R, WIDTH] -> [R]: the canonical tree of `maximum`."""
    for _ in tl.static_range(WIDTH.bit_length() - 1):
        a, b = tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 2, 2)))
        x = maximum(a, b)
    return tl.reshape(x, (x.shape[0],))


@triton.jit
def argmax_rows(v, i, WIDTH: tl.constexpr):
    """([R, WIDTH] values, indices) -> ([R], [R]): the canonical tree of `argmax_step`."""
    for _ in tl.static_range(WIDTH.bit_length() - 1):
        va, vb = tl.split(tl.reshape(v, (v.shape[0], v.shape[1] // 2, 2)))
        ia, ib = tl.split(tl.reshape(i, (i.shape[0], i.shape[1] // 2, 2)))
        v, i = argmax_step(va, ia, vb, ib)
    return tl.reshape(v, (v.shape[0],)), tl.reshape(i, (i.shape[0],))
