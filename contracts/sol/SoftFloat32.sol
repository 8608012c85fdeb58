// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

/// @title SoftFloat32: refute's canonical arithmetic on IEEE-754 binary32 bit patterns.
/// @notice Every function takes and returns `uint32` bit patterns and computes exactly the bits
///         of `refute.kernels.reference` (the normative definition of the canonical arithmetic):
///         binary32, round to nearest ties to even, subnormals kept, no fused multiply-add, and
///         one canonical NaN `0x7FC00000`.
/// @dev Invariants that hold for every function of this library:
///      - I1 (canonical NaN): every NaN result is exactly `CANONICAL_NAN`. NaN *inputs* of any
///        payload or sign are accepted, exactly as the reference accepts them; an on-chain verifier
///        that wants canonical operands calls `requireCanonical` first.
///      - I2 (correct rounding): add, sub, mul, div and sqrt return the correctly rounded
///        (round-to-nearest-even) binary32 result of the exact real operation, with IEEE-754
///        special cases (signed zeros, infinities, invalid operations giving NaN). Overflow gives
///        a signed infinity, underflow gives a subnormal or a signed zero.
///      - I3 (fixed sequences): exp, log, sigmoid, silu, tanh, geluTanh, reciprocal and rsqrt are
///        the same sequence of rounded primitive operations as the reference, with the same
///        constants (given here by bit pattern). Branches that the reference evaluates and then
///        discards with a select are skipped here: all functions are pure, so the bits agree.
///      - I4 (no reverts): no arithmetic function reverts, whatever its 32-bit input; only
///        `requireCanonical` reverts.
///      Internally a finite value is handled as `m * 2^(u - 149)` with an integer significand `m`
///      and a shifted exponent `u` (u = 0 is the scale of the smallest subnormal, 2^-149).
library SoftFloat32 {
    /// @notice An operand is a NaN other than the canonical NaN `0x7FC00000`.
    /// @param bits The offending bit pattern.
    error NonCanonicalNaN(uint32 bits);

    uint32 internal constant CANONICAL_NAN = 0x7FC00000;
    uint16 internal constant CANONICAL_BF16_NAN = 0x7FC0;
    uint32 internal constant POS_INF = 0x7F800000;
    uint32 internal constant NEG_INF = 0xFF800000;
    uint32 internal constant POS_ZERO = 0x00000000;
    uint32 internal constant NEG_ZERO = 0x80000000;
    uint32 internal constant ONE = 0x3F800000;
    uint32 internal constant TWO = 0x40000000;
    uint32 internal constant HALF = 0x3F000000;

    uint256 private constant SIGN = 0x80000000;
    uint256 private constant ABS = 0x7FFFFFFF;
    uint256 private constant FRAC = 0x007FFFFF;
    uint256 private constant HIDDEN = 0x00800000;
    uint256 private constant INF_BITS = 0x7F800000;

    // --- constants of the derived functions (bit patterns of reference.py) -----------------
    uint32 private constant ROUND_MAGIC = 0x4B400000; // 1.5 * 2^23
    uint32 private constant EXP_OVERFLOW = 0x42B20000; // 89.0
    uint32 private constant EXP_UNDERFLOW_ABS = 0x42D00000; // |-104.0|
    uint32 private constant LOG2E = 0x3FB8AA3B;
    uint32 private constant LN2_HI = 0x3F317200;
    uint32 private constant LN2_LO = 0x35BFBE8E;
    uint32 private constant EXP_C0 = 0x3F800000;
    uint32 private constant EXP_C1 = 0x3F800000;
    uint32 private constant EXP_C2 = 0x3EFFFFFE;
    uint32 private constant EXP_C3 = 0x3E2AAA0D;
    uint32 private constant EXP_C4 = 0x3D2AAC11;
    uint32 private constant EXP_C5 = 0x3C0933C9;
    uint32 private constant EXP_C6 = 0x3AB5738E;
    uint32 private constant SQRT2 = 0x3FB504F3;
    uint32 private constant TWO_POW_23 = 0x4B000000;
    uint32 private constant LOG_L1 = 0x3F2AAAAD;
    uint32 private constant LOG_L2 = 0x3ECCC9F5;
    uint32 private constant LOG_L3 = 0x3E92DB85;
    uint32 private constant LOG_L4 = 0x3E574B8A;
    uint32 private constant TANH_SMALL = 0x3F200000; // 0.625
    uint32 private constant TANH_T0 = 0xBEAAAA99;
    uint32 private constant TANH_T1 = 0x3E088393;
    uint32 private constant TANH_T2 = 0xBD5C1E2E;
    uint32 private constant TANH_T3 = 0x3CA91355;
    uint32 private constant TANH_T4 = 0xBBBAF103;
    uint32 private constant GELU_A = 0x3D372713; // 0.044715
    uint32 private constant GELU_2C = 0x3FCC422A; // 2 * sqrt(2 / pi)

    // =========================================================================================
    // Classification and canonical NaN
    // =========================================================================================

    /// @notice True iff `x` is a NaN (any payload, either sign).
    function isNaN(uint32 x) internal pure returns (bool r) {
        assembly {
            r := gt(and(x, ABS), INF_BITS)
        }
    }

    /// @notice Reverts with `NonCanonicalNaN(x)` if `x` is a NaN other than `0x7FC00000`.
    /// @dev For verifiers: operands committed on chain must carry the canonical NaN only.
    function requireCanonical(uint32 x) internal pure {
        if (isNaN(x) && x != CANONICAL_NAN) revert NonCanonicalNaN(x);
    }

    // =========================================================================================
    // Sign operations, comparisons, max/min
    // =========================================================================================

    /// @notice -x: flips the sign bit; a NaN input gives the canonical NaN.
    function neg(uint32 x) internal pure returns (uint32) {
        if (isNaN(x)) return CANONICAL_NAN;
        return x ^ uint32(SIGN);
    }

    /// @notice |x|: clears the sign bit; a NaN input gives the canonical NaN.
    function abs(uint32 x) internal pure returns (uint32) {
        if (isNaN(x)) return CANONICAL_NAN;
        return x & uint32(ABS);
    }

    /// @notice IEEE equality: false if either operand is NaN; -0 == +0.
    function eq(uint32 a, uint32 b) internal pure returns (bool) {
        if (isNaN(a) || isNaN(b)) return false;
        return a == b || (a | b) & uint32(ABS) == 0;
    }

    /// @notice IEEE a < b: false if either operand is NaN; -0 < +0 is false.
    function lt(uint32 a, uint32 b) internal pure returns (bool) {
        if (isNaN(a) || isNaN(b)) return false;
        if ((a | b) & uint32(ABS) == 0) return false; // both zeros
        bool na = a & uint32(SIGN) != 0;
        bool nb = b & uint32(SIGN) != 0;
        if (na != nb) return na;
        return na ? a > b : a < b; // same sign: magnitude order, reversed when negative
    }

    /// @notice IEEE a <= b: false if either operand is NaN; -0 <= +0 is true.
    function le(uint32 a, uint32 b) internal pure returns (bool) {
        if (isNaN(a) || isNaN(b)) return false;
        if (a == b || (a | b) & uint32(ABS) == 0) return true;
        bool na = a & uint32(SIGN) != 0;
        bool nb = b & uint32(SIGN) != 0;
        if (na != nb) return na;
        return na ? a > b : a < b;
    }

    /// @notice maximum(a, b) of the reference: NaN if either is NaN; of two equal values the
    ///         one with a clear sign bit, so max(-0, +0) = max(+0, -0) = +0.
    function max(uint32 a, uint32 b) internal pure returns (uint32) {
        if (isNaN(a) || isNaN(b)) return CANONICAL_NAN;
        if (lt(b, a)) return a;
        if (lt(a, b)) return b;
        return a & uint32(SIGN) != 0 ? b : a;
    }

    /// @notice minimum(a, b) of the reference: NaN if either is NaN; of two equal values the
    ///         one with a set sign bit, so min(-0, +0) = min(+0, -0) = -0.
    function min(uint32 a, uint32 b) internal pure returns (uint32) {
        if (isNaN(a) || isNaN(b)) return CANONICAL_NAN;
        if (lt(a, b)) return a;
        if (lt(b, a)) return b;
        return a & uint32(SIGN) != 0 ? a : b;
    }

    // =========================================================================================
    // Rounding core
    // =========================================================================================

    /// @dev Bit length of x (0 for x = 0): the smallest n with x < 2^n.
    function _bitLength(uint256 x) private pure returns (uint256 n) {
        assembly {
            n := shl(7, lt(0xffffffffffffffffffffffffffffffff, x))
            n := or(n, shl(6, lt(0xffffffffffffffff, shr(n, x))))
            n := or(n, shl(5, lt(0xffffffff, shr(n, x))))
            n := or(n, shl(4, lt(0xffff, shr(n, x))))
            n := or(n, shl(3, lt(0xff, shr(n, x))))
            n := or(n, shl(2, lt(0xf, shr(n, x))))
            n := or(n, shl(1, lt(0x3, shr(n, x))))
            n := add(or(n, lt(0x1, shr(n, x))), iszero(iszero(x)))
        }
    }

    /// @dev Rounds sign * m * 2^(u - 149) to binary32, round to nearest, ties to even.
    ///      Requires 0 < m < 2^128. Overflow gives a signed infinity, underflow a signed zero.
    ///      The kept least significant bit has weight 2^(lsb - 149) with
    ///      lsb = max(u + bitLength(m) - 24, 0); the packed pattern is (lsb << 23) + rounded,
    ///      which also carries a rounding overflow (2^24, or 2^23 for a subnormal) into the
    ///      exponent field.
    function _roundPack(uint256 sign, uint256 m, int256 u) private pure returns (uint32 r) {
        assembly {
            // n = bitLength(m) for 0 < m < 2^128, by binary search
            let n := shl(6, lt(0xffffffffffffffff, m))
            n := or(n, shl(5, lt(0xffffffff, shr(n, m))))
            n := or(n, shl(4, lt(0xffff, shr(n, m))))
            n := or(n, shl(3, lt(0xff, shr(n, m))))
            n := or(n, shl(2, lt(0xf, shr(n, m))))
            n := or(n, shl(1, lt(0x3, shr(n, m))))
            n := add(or(n, lt(0x1, shr(n, m))), 1)
            let lsb := sub(add(u, n), 24)
            if slt(lsb, 0) { lsb := 0 }
            let shift := sub(lsb, u)
            let rounded
            switch sgt(shift, 0)
            case 1 {
                // lsb = 0 here whenever shift > n: the value is below half the smallest
                // subnormal and rounds to zero; capping the shift keeps EVM shifts in range
                // without changing that result (m < 2^128).
                if gt(shift, 160) { shift := 160 }
                rounded := shr(shift, m)
                let rem := sub(m, shl(shift, rounded))
                let half := shl(sub(shift, 1), 1)
                if or(gt(rem, half), and(eq(rem, half), and(rounded, 1))) {
                    rounded := add(rounded, 1)
                }
            }
            default { rounded := shl(sub(0, shift), m) }
            let bits := add(shl(23, lsb), rounded)
            if gt(bits, INF_BITS) { bits := INF_BITS }
            r := or(sign, bits)
        }
    }

    /// @dev Exact conversion of an integer with |v| <= 2^24 to binary32 (0 gives +0).
    function _fromInt(int256 v) private pure returns (uint32) {
        if (v == 0) return POS_ZERO;
        if (v < 0) return _roundPack(SIGN, uint256(-v), 149);
        return _roundPack(0, uint256(v), 149);
    }

    // =========================================================================================
    // Primitives: IEEE-754 binary32, round to nearest even, subnormals kept
    // =========================================================================================

    /// @notice a + b, correctly rounded. NaN if either is NaN or for inf + (-inf);
    ///         -0 + -0 = -0, x + (-x) = +0.
    function add(uint32 a, uint32 b) internal pure returns (uint32) {
        unchecked {
            uint256 absA = uint256(a) & ABS;
            uint256 absB = uint256(b) & ABS;
            if (absA >= INF_BITS || absB >= INF_BITS) {
                if (absA > INF_BITS || absB > INF_BITS) return CANONICAL_NAN;
                if (absA == INF_BITS) {
                    // inf + (-inf) is invalid; inf + anything else is that inf
                    if (absB == INF_BITS && a != b) return CANONICAL_NAN;
                    return a;
                }
                return b;
            }
            if (absA < absB) (a, b, absA, absB) = (b, a, absB, absA); // now |a| >= |b|
            if (absB == 0) {
                // x + ±0 = x for x != 0; two zeros sum to -0 only if both are -0
                return absA == 0 ? a & b : a;
            }
            uint256 ea = absA >> 23;
            uint256 eb = absB >> 23;
            uint256 ma = absA & FRAC;
            uint256 mb = absB & FRAC;
            if (ea == 0) ea = 1;
            else ma |= HIDDEN;
            if (eb == 0) eb = 1;
            else mb |= HIDDEN;
            // Align on a grid 64 bits below a's least significant bit. When b lies further
            // down (d > 64, so a is normal), |b| < 2^-40 ulp(a): any value in (0, ulp(a)/4)
            // rounds the same, so b is replaced by one unit of the grid.
            uint256 d = ea - eb;
            uint256 bigA = ma << 64;
            uint256 bigB = d > 64 ? 1 : mb << (64 - d);
            uint256 m = (uint256(a) ^ uint256(b)) & SIGN == 0 ? bigA + bigB : bigA - bigB;
            if (m == 0) return POS_ZERO; // exact cancellation gives +0 (round to nearest)
            // value = m * 2^(ea - 150 - 64), so u = ea - 65
            return _roundPack(uint256(a) & SIGN, m, int256(ea) - 65);
        }
    }

    /// @notice a - b = a + (-b), correctly rounded.
    function sub(uint32 a, uint32 b) internal pure returns (uint32) {
        return add(a, b ^ uint32(SIGN));
    }

    /// @notice a * b, correctly rounded. NaN if either is NaN or for 0 * inf.
    function mul(uint32 a, uint32 b) internal pure returns (uint32) {
        unchecked {
            uint256 sign = (uint256(a) ^ uint256(b)) & SIGN;
            uint256 absA = uint256(a) & ABS;
            uint256 absB = uint256(b) & ABS;
            if (absA >= INF_BITS || absB >= INF_BITS) {
                if (absA > INF_BITS || absB > INF_BITS) return CANONICAL_NAN;
                if (absA == 0 || absB == 0) return CANONICAL_NAN; // inf * 0
                return uint32(sign | INF_BITS);
            }
            if (absA == 0 || absB == 0) return uint32(sign);
            uint256 ea = absA >> 23;
            uint256 eb = absB >> 23;
            uint256 ma = absA & FRAC;
            uint256 mb = absB & FRAC;
            if (ea == 0) ea = 1;
            else ma |= HIDDEN;
            if (eb == 0) eb = 1;
            else mb |= HIDDEN;
            // value = ma * mb * 2^(ea + eb - 300), so u = ea + eb - 151
            return _roundPack(sign, ma * mb, int256(ea + eb) - 151);
        }
    }

    /// @notice a / b, correctly rounded. NaN if either is NaN, for 0/0 and inf/inf;
    ///         x/0 = ±inf for x != 0.
    function div(uint32 a, uint32 b) internal pure returns (uint32) {
        unchecked {
            uint256 sign = (uint256(a) ^ uint256(b)) & SIGN;
            uint256 absA = uint256(a) & ABS;
            uint256 absB = uint256(b) & ABS;
            if (absA >= INF_BITS || absB >= INF_BITS) {
                if (absA > INF_BITS || absB > INF_BITS) return CANONICAL_NAN;
                if (absA == INF_BITS) {
                    return absB == INF_BITS ? CANONICAL_NAN : uint32(sign | INF_BITS);
                }
                return uint32(sign); // finite / inf
            }
            if (absB == 0) return absA == 0 ? CANONICAL_NAN : uint32(sign | INF_BITS);
            if (absA == 0) return uint32(sign);
            uint256 ea = absA >> 23;
            uint256 eb = absB >> 23;
            uint256 ma = absA & FRAC;
            uint256 mb = absB & FRAC;
            if (ea == 0) ea = 1;
            else ma |= HIDDEN;
            if (eb == 0) eb = 1;
            else mb |= HIDDEN;
            // q = floor(ma * 2^64 / mb) >= 2^40; the sticky bit below it records a nonzero
            // remainder, which is all round-to-nearest needs to know about the rest.
            uint256 num = ma << 64;
            uint256 q = num / mb;
            uint256 m = (q << 1) | (num % mb == 0 ? 0 : 1);
            // value = m * 2^(ea - eb - 65), so u = ea - eb + 84
            return _roundPack(sign, m, int256(ea) - int256(eb) + 84);
        }
    }

    /// @notice Correctly rounded square root; sqrt(-0) = -0, sqrt(+inf) = +inf, NaN for x < 0.
    function sqrt(uint32 x) internal pure returns (uint32) {
        unchecked {
            uint256 absX = uint256(x) & ABS;
            if (absX > INF_BITS) return CANONICAL_NAN;
            if (absX == 0) return x; // ±0
            if (uint256(x) & SIGN != 0) return CANONICAL_NAN; // negative, including -inf
            if (absX == INF_BITS) return x;
            uint256 e = absX >> 23;
            uint256 m = absX & FRAC;
            if (e == 0) e = 1;
            else m |= HIDDEN;
            // value = m * 2^(e - 150); scale m by 2^t with e - 150 - t even, t >= 52, so that
            // s = floor(sqrt(m * 2^t)) >= 2^26, then append a sticky bit for the remainder.
            uint256 t = 52 + (e & 1);
            uint256 big = m << t;
            uint256 s = _isqrt(big);
            uint256 r = (s << 1) | (s * s == big ? 0 : 1);
            // value = r * 2^((e - 150 - t) / 2 - 1), so u = (e - t + 146) / 2 (exact, > 0)
            return _roundPack(0, r, int256((e - t + 146) >> 1));
        }
    }

    /// @dev floor(sqrt(x)) for 0 < x < 2^80 by Newton's iteration from above.
    function _isqrt(uint256 x) private pure returns (uint256 r) {
        unchecked {
            r = uint256(1) << ((_bitLength(x) + 1) >> 1); // >= sqrt(x)
            while (true) {
                uint256 y = (r + x / r) >> 1;
                if (y >= r) break;
                r = y;
            }
        }
    }

    // =========================================================================================
    // Conversions
    // =========================================================================================

    /// @notice Exact widening of a bfloat16 bit pattern; a NaN gives the canonical NaN.
    function fromBf16(uint16 h) internal pure returns (uint32) {
        uint32 w = uint32(h) << 16;
        return isNaN(w) ? CANONICAL_NAN : w;
    }

    /// @notice Exact widening of an IEEE binary16 bit pattern (subnormals included);
    ///         a NaN gives the canonical NaN.
    function fromFp16(uint16 h) internal pure returns (uint32) {
        unchecked {
            uint256 sign = (uint256(h) & 0x8000) << 16;
            uint256 e = (uint256(h) >> 10) & 0x1F;
            uint256 m = uint256(h) & 0x3FF;
            if (e == 0x1F) return m == 0 ? uint32(sign | INF_BITS) : CANONICAL_NAN;
            if (e == 0) {
                if (m == 0) return uint32(sign);
                return _roundPack(sign, m, 125); // m * 2^-24, exact
            }
            return uint32(sign | ((e + 112) << 23) | (m << 13));
        }
    }

    /// @notice binary32 -> bfloat16 bit pattern, round to nearest even; NaN gives 0x7FC0.
    function toBf16(uint32 x) internal pure returns (uint16) {
        if (isNaN(x)) return CANONICAL_BF16_NAN;
        unchecked {
            uint256 u = uint256(x);
            return uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
        }
    }

    // =========================================================================================
    // Derived functions: fixed sequences of the primitives above (reference.py)
    // =========================================================================================

    /// @dev 2^k for -126 <= k <= 127 from the exponent field (callers guarantee the range).
    function _pow2(int256 k) private pure returns (uint32) {
        return uint32(uint256(k + 127) << 23);
    }

    /// @notice e^x: Cody-Waite reduction by ln 2, a degree-6 polynomial in Horner form, and a
    ///         scaling by two powers of two. exp(x) = +inf for x > 89, +0 for x < -104.
    function exp(uint32 x) internal pure returns (uint32) {
        unchecked {
            if (isNaN(x)) return CANONICAL_NAN;
            if (x & uint32(SIGN) == 0) {
                if (x > EXP_OVERFLOW) return POS_INF;
            } else if (x & uint32(ABS) > EXP_UNDERFLOW_ABS) {
                return POS_ZERO;
            }
            // k = round_to_int(x * LOG2E) = (t + 1.5*2^23) - 1.5*2^23; |t| < 151, so the sum
            // lies in [2^23, 2^24) where its bit pattern is ROUND_MAGIC + k.
            uint32 kb = add(mul(x, LOG2E), ROUND_MAGIC);
            uint32 k = sub(kb, ROUND_MAGIC);
            int256 ki = int256(uint256(kb)) - int256(uint256(ROUND_MAGIC));
            uint32 r = sub(sub(x, mul(k, LN2_HI)), mul(k, LN2_LO));
            uint32 p = EXP_C6;
            p = add(mul(p, r), EXP_C5);
            p = add(mul(p, r), EXP_C4);
            p = add(mul(p, r), EXP_C3);
            p = add(mul(p, r), EXP_C2);
            p = add(mul(p, r), EXP_C1);
            p = add(mul(p, r), EXP_C0);
            int256 kc = ki < -126 ? -126 : (ki > 127 ? int256(127) : ki);
            return mul(mul(p, _pow2(ki - kc)), _pow2(kc));
        }
    }

    /// @notice Natural logarithm: x = m * 2^e with m in (sqrt(1/2), sqrt(2)], then
    ///         log m = f - (hfsq - s*(hfsq + R)) with s = f/(2+f) and a degree-4 R in s^2.
    ///         log(±0) = -inf, log(+inf) = +inf, NaN for x < 0.
    function log(uint32 x) internal pure returns (uint32) {
        unchecked {
            if (isNaN(x)) return CANONICAL_NAN;
            if (x & uint32(ABS) == 0) return NEG_INF;
            if (x & uint32(SIGN) != 0) return CANONICAL_NAN;
            if (x == POS_INF) return POS_INF;
            uint32 xs = x;
            int256 e;
            if (xs < uint32(HIDDEN)) {
                xs = mul(xs, TWO_POW_23); // exact: a subnormal scaled into the normal range
                e = int256(uint256(xs >> 23)) - 150;
            } else {
                e = int256(uint256(xs >> 23)) - 127;
            }
            uint32 m = (xs & uint32(FRAC)) | ONE;
            if (m > SQRT2) {
                // m is positive, so bit order is value order
                m = mul(m, HALF);
                e += 1;
            }
            uint32 dk = _fromInt(e);
            uint32 f = sub(m, ONE);
            uint32 s = div(f, add(TWO, f));
            uint32 z = mul(s, s);
            uint32 p = LOG_L4;
            p = add(mul(p, z), LOG_L3);
            p = add(mul(p, z), LOG_L2);
            p = add(mul(p, z), LOG_L1);
            uint32 r = mul(z, p);
            uint32 hfsq = mul(mul(HALF, f), f);
            uint32 inner = sub(hfsq, add(mul(s, add(hfsq, r)), mul(dk, LN2_LO)));
            return sub(mul(dk, LN2_HI), sub(inner, f));
        }
    }

    /// @notice 1 / x, one correctly rounded division.
    function reciprocal(uint32 x) internal pure returns (uint32) {
        return div(ONE, x);
    }

    /// @notice 1 / sqrt(x): two roundings (sqrt, then the division); rsqrt(-0) = -inf.
    function rsqrt(uint32 x) internal pure returns (uint32) {
        return div(ONE, sqrt(x));
    }

    /// @notice 1/(1+t) for x >= 0 and t/(1+t) for x < 0, with t = exp(-|x|).
    function sigmoid(uint32 x) internal pure returns (uint32) {
        if (isNaN(x)) return CANONICAL_NAN;
        uint32 t = exp(x | uint32(SIGN)); // neg(abs(x)) for a non-NaN x
        uint32 d = add(ONE, t);
        return x & uint32(SIGN) == 0 || x == NEG_ZERO ? div(ONE, d) : div(t, d);
    }

    /// @dev x * sigmoid(u), with x = -inf giving -0 (the limit) instead of NaN.
    function _timesSigmoid(uint32 x, uint32 u) private pure returns (uint32) {
        if (x == NEG_INF) return NEG_ZERO;
        return mul(x, sigmoid(u));
    }

    /// @notice x * sigmoid(x); silu(-inf) = -0.
    function silu(uint32 x) internal pure returns (uint32) {
        return _timesSigmoid(x, x);
    }

    /// @notice tanh: odd polynomial x + (x*z)*P(z), z = x*x, for |x| < 0.625, else
    ///         sign(x) * (1 - 2/(exp(2|x|) + 1)); tanh(±0) = ±0.
    function tanh(uint32 x) internal pure returns (uint32) {
        if (isNaN(x)) return CANONICAL_NAN;
        uint32 a = x & uint32(ABS);
        if (a == 0) return x; // the polynomial would turn -0 into +0
        if (a < TANH_SMALL) {
            // a is non-negative, so bit order is value order
            uint32 z = mul(x, x);
            uint32 p = TANH_T4;
            p = add(mul(p, z), TANH_T3);
            p = add(mul(p, z), TANH_T2);
            p = add(mul(p, z), TANH_T1);
            p = add(mul(p, z), TANH_T0);
            return add(x, mul(mul(x, z), p));
        }
        uint32 e = exp(add(a, a));
        uint32 large = sub(ONE, div(TWO, add(e, ONE)));
        return x & uint32(SIGN) != 0 ? neg(large) : large;
    }

    /// @notice GELU, tanh form, computed as x * sigmoid(2c(x + a x^3)); geluTanh(-inf) = -0.
    function geluTanh(uint32 x) internal pure returns (uint32) {
        uint32 x3 = mul(mul(x, x), x);
        uint32 u = mul(GELU_2C, add(x, mul(GELU_A, x3)));
        return _timesSigmoid(x, u);
    }
}
