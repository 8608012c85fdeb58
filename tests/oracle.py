"""An independent model of IEEE-754 binary32 arithmetic with exact rationals.

Nothing here touches numpy's float arithmetic: values are decoded from bit patterns into
`Fraction`s, the exact result is computed, and rounded to nearest-even by integer arithmetic.
The reference must agree with it bit for bit on every primitive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

NAN = 0x7FC00000
POS_INF = 0x7F800000
NEG_INF = 0xFF800000


@dataclass(frozen=True)
class Format:
    """A binary interchange format: precision p (with the hidden bit), exponent bias."""

    precision: int
    exponent_bits: int

    @property
    def bias(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return self.bias

    @property
    def width(self) -> int:
        return 1 + self.exponent_bits + self.precision - 1


BINARY32 = Format(24, 8)
BINARY16 = Format(11, 5)
BFLOAT16 = Format(8, 8)


def is_nan(bits: int, fmt: Format = BINARY32) -> bool:
    frac_bits = fmt.precision - 1
    exp = (bits >> frac_bits) & ((1 << fmt.exponent_bits) - 1)
    return exp == (1 << fmt.exponent_bits) - 1 and bits & ((1 << frac_bits) - 1) != 0


def decode(bits: int, fmt: Format = BINARY32) -> tuple[int, Fraction | None]:
    """(sign, magnitude) of a pattern; magnitude None for infinity (NaN is the caller's job)."""
    frac_bits = fmt.precision - 1
    sign = bits >> (fmt.width - 1)
    exp = (bits >> frac_bits) & ((1 << fmt.exponent_bits) - 1)
    frac = bits & ((1 << frac_bits) - 1)
    if exp == (1 << fmt.exponent_bits) - 1:
        return sign, None
    if exp == 0:
        return sign, Fraction(frac) * Fraction(2) ** (fmt.emin - frac_bits)
    return sign, Fraction(frac | (1 << frac_bits)) * Fraction(2) ** (exp - fmt.bias - frac_bits)


def _round_half_even(q: Fraction) -> int:
    floor = q.numerator // q.denominator
    rest = q - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        return floor + 1
    return floor


def encode(sign: int, magnitude: Fraction | None, fmt: Format = BINARY32) -> int:
    """Round sign * magnitude to the nearest pattern of fmt, ties to even (None = infinity)."""
    frac_bits = fmt.precision - 1
    sign_bit = sign << (fmt.width - 1)
    inf = sign_bit | (((1 << fmt.exponent_bits) - 1) << frac_bits)
    if magnitude is None:
        return inf
    if magnitude == 0:
        return sign_bit
    e = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** e > magnitude:
        e -= 1  # now 2^e <= magnitude < 2^(e+1)
    quantum = max(e, fmt.emin) - frac_bits
    m = _round_half_even(magnitude / Fraction(2) ** quantum)
    if m == 1 << fmt.precision:  # rounding carried into the next binade
        m >>= 1
        quantum += 1
    if m < 1 << frac_bits:  # subnormal (or rounded to zero)
        return sign_bit | m
    biased = quantum + frac_bits + fmt.bias
    if biased >= (1 << fmt.exponent_bits) - 1:
        return inf
    return sign_bit | (biased << frac_bits) | (m - (1 << frac_bits))


def add(a: int, b: int) -> int:
    if is_nan(a) or is_nan(b):
        return NAN
    (sa, ma), (sb, mb) = decode(a), decode(b)
    if ma is None or mb is None:
        if ma is None and mb is None and sa != sb:
            return NAN
        return a if ma is None else b
    exact = (-ma if sa else ma) + (-mb if sb else mb)
    if exact == 0:
        return 0x80000000 if (sa and sb) else 0  # x + (-x) = +0 under round-to-nearest
    return encode(int(exact < 0), abs(exact))


def sub(a: int, b: int) -> int:
    return add(a, b ^ 0x80000000) if not is_nan(b) else NAN


def mul(a: int, b: int) -> int:
    if is_nan(a) or is_nan(b):
        return NAN
    (sa, ma), (sb, mb) = decode(a), decode(b)
    sign = sa ^ sb
    if ma is None or mb is None:
        if ma == 0 or mb == 0:
            return NAN  # inf * 0
        return encode(sign, None)
    return encode(sign, ma * mb)


def div(a: int, b: int) -> int:
    if is_nan(a) or is_nan(b):
        return NAN
    (sa, ma), (sb, mb) = decode(a), decode(b)
    sign = sa ^ sb
    if ma is None:
        return NAN if mb is None else encode(sign, None)
    if mb is None:
        return encode(sign, Fraction(0))
    if mb == 0:
        return NAN if ma == 0 else encode(sign, None)
    return encode(sign, ma / mb)


def sqrt(a: int) -> int:
    if is_nan(a):
        return NAN
    sign, m = decode(a)
    if m == 0:
        return a  # sqrt(+-0) = +-0
    if sign:
        return NAN
    if m is None:
        return POS_INF
    # find q with 2^q <= sqrt(m) < 2^(q+1), then round sqrt(m) / 2^quantum by integer sqrt
    e = m.numerator.bit_length() - m.denominator.bit_length()
    if Fraction(2) ** e > m:
        e -= 1  # now 2^e <= m < 2^(e+1), so 2^(e//2) <= sqrt(m)
    quantum = max(e // 2, BINARY32.emin) - 23
    t = m / Fraction(4) ** quantum  # sqrt(t) = sqrt(m) / 2^quantum, below 2^25
    h = math.isqrt(t.numerator * 4 // t.denominator)  # floor(2 sqrt(t))
    if h % 2 == 0:
        r = h // 2
    elif Fraction(h * h, 4) == t:
        r = h // 2 + (h // 2) % 2  # exactly halfway (cannot happen for binary32, kept for rigor)
    else:
        r = h // 2 + 1
    return encode(0, Fraction(r) * Fraction(2) ** quantum)


def _value(bits: int) -> float | None:
    """Python float of a non-NaN pattern (exact: binary64 holds every binary32)."""
    sign, m = decode(bits)
    v = math.inf if m is None else float(m)
    return -v if sign else v


def maximum(a: int, b: int) -> int:
    if is_nan(a) or is_nan(b):
        return NAN
    va, vb = _value(a), _value(b)
    if va == vb:
        return a if not a >> 31 else b
    return a if va > vb else b


def minimum(a: int, b: int) -> int:
    if is_nan(a) or is_nan(b):
        return NAN
    va, vb = _value(a), _value(b)
    if va == vb:
        return a if a >> 31 else b
    return a if va < vb else b


def widen(bits: int, fmt: Format) -> int:
    """Exact conversion of a bf16 or fp16 pattern to binary32."""
    if is_nan(bits, fmt):
        return NAN
    sign, m = decode(bits, fmt)
    return encode(sign, m)


def narrow(bits: int, fmt: Format) -> int:
    """binary32 -> fmt, round to nearest even; NaN -> the canonical quiet NaN of fmt."""
    if is_nan(bits):
        return (((1 << fmt.exponent_bits) - 1) << (fmt.precision - 1)) | (1 << (fmt.precision - 2))
    sign, m = decode(bits)
    return encode(sign, m, fmt)
