"""The reference's primitives agree bit for bit with an exact-rational model of IEEE-754."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from refute.errors import SpecDomainError, SubnormalFlushError
from refute.kernels import reference as ref
from refute.kernels.vectors import SPECIAL_BITS
from tests import oracle

# Bit patterns: uniform over all 2^32, specials, and values near each other's magnitude.
bits32 = st.one_of(
    st.integers(0, 2**32 - 1),
    st.sampled_from(SPECIAL_BITS),
    st.floats(width=32, allow_nan=True).map(lambda f: int(ref.to_bits(np.float32(f)))),
    st.integers(0, 2**23 - 1),  # positive subnormals
)


def _apply(f, *bits: int) -> int:
    args = [ref.from_bits(np.array([b], dtype=np.uint32)) for b in bits]
    return int(ref.to_bits(f(*args))[0])


BINARY = [
    (ref.add, oracle.add),
    (ref.sub, oracle.sub),
    (ref.mul, oracle.mul),
    (ref.div, oracle.div),
    (ref.maximum, oracle.maximum),
    (ref.minimum, oracle.minimum),
]


@pytest.mark.parametrize(("impl", "model"), BINARY, ids=lambda f: getattr(f, "__name__", ""))
@given(a=bits32, b=bits32)
@example(a=0x3F800000, b=0x33800000)  # 1 + 2^-24: tie, stays at the even 1.0
@example(a=0x3F800001, b=0x33800000)  # tie, rounds up to the even neighbour
@example(a=0x7F7FFFFF, b=0x73000000)  # FLT_MAX + half an ulp: overflows to inf
@example(a=0x00800000, b=0x80000001)  # result just below the smallest normal
@example(a=0x80000000, b=0x80000000)  # -0 op -0
@example(a=0x20000000, b=0x20000000)  # 2^-63 * 2^-63 underflows to +0
def test_binary_primitives_match_exact_model(impl, model, a: int, b: int) -> None:
    assert _apply(impl, a, b) == model(a, b)


@given(a=bits32)
@example(a=0x00000001)
@example(a=0x80000000)
@example(a=0x7F7FFFFF)
def test_sqrt_matches_exact_model(a: int) -> None:
    assert _apply(ref.sqrt, a) == oracle.sqrt(a)


def test_every_binary_primitive_case_near_rounding_boundaries() -> None:
    """Operands one ulp apart, across the whole exponent range: cancellation and subnormals."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 2**32, 3000, dtype=np.uint64).astype(np.uint32)
    b = a ^ np.uint32(0x80000000) ^ rng.integers(0, 3, 3000).astype(np.uint32)
    for impl, model in BINARY:
        got = ref.to_bits(impl(ref.from_bits(a), ref.from_bits(b)))
        want = [model(int(x), int(y)) for x, y in zip(a, b, strict=True)]
        assert got.tolist() == want, impl.__name__


@pytest.mark.parametrize("fmt_name", ["bf16", "fp16"])
def test_widening_is_exact_for_every_16_bit_pattern(fmt_name: str) -> None:
    fmt, impl = {
        "bf16": (oracle.BFLOAT16, ref.from_bf16),
        "fp16": (oracle.BINARY16, ref.from_fp16),
    }[fmt_name]
    halves = np.arange(1 << 16, dtype=np.uint16)
    got = ref.to_bits(impl(halves)).tolist()
    assert got == [oracle.widen(int(h), fmt) for h in halves]


@given(a=bits32)
@example(a=0x3F808000)  # exact tie, even below: rounds down
@example(a=0x3F818000)  # exact tie, odd below: rounds up
@example(a=0x7F7FFFFF)  # rounds up to bf16 infinity
def test_to_bf16_rounds_to_nearest_even(a: int) -> None:
    got = int(ref.to_bf16(ref.from_bits(np.array([a], dtype=np.uint32)))[0])
    assert got == oracle.narrow(a, oracle.BFLOAT16)


@given(a=bits32, b=bits32)
def test_comparisons_and_select_follow_ieee(a: int, b: int) -> None:
    fa, fb = (ref.from_bits(np.array([v], dtype=np.uint32)) for v in (a, b))
    if oracle.is_nan(a) or oracle.is_nan(b):
        assert not ref.eq(fa, fb)[0] and not ref.lt(fa, fb)[0] and not ref.le(fa, fb)[0]
    else:
        va, vb = float(fa[0]), float(fb[0])
        assert (ref.eq(fa, fb)[0], ref.lt(fa, fb)[0], ref.le(fa, fb)[0]) == (
            va == vb,
            va < vb,
            va <= vb,
        )
    assert ref.to_bits(ref.select([True], fa, fb))[0] == a
    assert ref.to_bits(ref.select([False], fa, fb))[0] == b


@given(a=bits32)
def test_neg_and_abs_touch_only_the_sign_bit(a: int) -> None:
    if oracle.is_nan(a):
        assert _apply(ref.neg, a) == _apply(ref.abs_, a) == oracle.NAN
    else:
        assert _apply(ref.neg, a) == a ^ 0x80000000
        assert _apply(ref.abs_, a) == a & 0x7FFFFFFF


def test_every_nan_result_is_canonical() -> None:
    nans = ref.from_bits(np.array([0x7FC00001, 0xFFC00000, 0x7F800001, 0xFFFFFFFF], np.uint32))
    one = np.float32(1.0)
    for f in (ref.add, ref.sub, ref.mul, ref.div, ref.maximum, ref.minimum):
        assert set(ref.to_bits(f(nans, one)).tolist()) == {ref.CANONICAL_NAN_BITS}
    for f in (
        ref.sqrt,
        ref.exp,
        ref.log,
        ref.tanh,
        ref.sigmoid,
        ref.silu,
        ref.gelu_tanh,
        ref.rsqrt,
        ref.neg,
        ref.abs_,
    ):
        assert set(ref.to_bits(f(nans)).tolist()) == {ref.CANONICAL_NAN_BITS}
    assert ref.to_bits(ref.sqrt(np.float32(-1)))[()] == ref.CANONICAL_NAN_BITS
    assert ref.to_bits(ref.sub(np.float32(np.inf), np.float32(np.inf)))[()] == 0x7FC00000


def test_round_to_int_and_pow2() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 3.7, -150.2, 127.5], dtype=np.float32)
    assert ref.round_to_int(x).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 4.0, -150.0, 128.0]
    assert ref.to_bits(ref.pow2([-126, 0, 127])).tolist() == [0x00800000, 0x3F800000, 0x7F000000]
    with pytest.raises(SpecDomainError):
        ref.pow2([128])


def test_flush_to_zero_platform_is_refused(monkeypatch) -> None:
    ref._check_subnormals()  # this machine keeps subnormals
    monkeypatch.setattr(ref, "to_bits", lambda x: np.zeros(np.shape(x) or (1,), np.uint32))
    with pytest.raises(SubnormalFlushError, match="flushes"):
        ref._check_subnormals()
