"""Derived functions: stated ulp bounds, and exact behaviour at the edges (docs/spec.md)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refute.kernels import accuracy
from refute.kernels import reference as ref

# Worst errors over all 2^32 inputs, measured by scripts/measure_ulps.py (docs/spec.md, table
# "Accuracy"). Normal results in ulps; subnormal results in units of 2^-149.
ULP_BOUNDS = {
    "exp": (1.35, 0.84),
    "log": (0.84, 0.0),
    "sigmoid": (2.44, 0.84),
    "silu": (47.12, 52.02),
    "tanh": (1.35, 0.0),
    "gelu_tanh": (218.41, 113.37),
    "reciprocal": (0.5, 0.5),
    "rsqrt": (1.5, 0.0),
}
# Worst error per input interval of accuracy.REGIONS (the same sweep; docs/spec.md §4.8).
REGION_BOUNDS = {
    "silu": (52.02, 3.4),
    "gelu_tanh": (206.7, 218.41, 17.0, 3.29),
}


@pytest.mark.parametrize("name", sorted(ULP_BOUNDS))
def test_ulp_bound_holds_on_a_sample_of_all_inputs(name: str) -> None:
    report = accuracy.measure(name, stride=65537, offset=12345)
    normal, subnormal = ULP_BOUNDS[name]
    assert report.max_ulp_normal <= normal
    assert report.max_ulp_subnormal <= subnormal


@pytest.mark.parametrize("name", sorted(ULP_BOUNDS))
@given(bits=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=256))
def test_ulp_bound_holds_on_random_inputs(name: str, bits: list[int]) -> None:
    report = accuracy.AccuracyReport(name)
    report.update(np.array(bits, dtype=np.uint32))
    normal, subnormal = ULP_BOUNDS[name]
    assert report.max_ulp_normal <= normal
    assert report.max_ulp_subnormal <= subnormal


@pytest.mark.parametrize("name", sorted(REGION_BOUNDS))
def test_regional_bounds_on_a_sample_of_all_inputs(name: str) -> None:
    report = accuracy.measure(name, stride=65537, offset=777)
    for (lo, hi), worst, bound in zip(
        accuracy.REGIONS[name], report.region_max_ulp, REGION_BOUNDS[name], strict=True
    ):
        assert worst <= bound, (lo, hi)


@pytest.mark.parametrize("name", sorted(REGION_BOUNDS))
def test_regional_bounds_on_dense_intervals(name: str) -> None:
    f = accuracy.DERIVED[name]
    for (lo, hi), bound in zip(accuracy.REGIONS[name], REGION_BOUNDS[name], strict=True):
        x = np.linspace(max(lo, -120.0), min(hi, 60.0), 200_001, dtype=np.float32)
        x = x[x < hi]
        err = accuracy.ulp_error(f.canonical(x), f.exact(x.astype(np.float64)))
        assert err.max() <= bound, (lo, hi)


INF, NAN = np.inf, np.nan
# (function, input, expected output) for the edges each function states in docs/spec.md.
EDGES = [
    ("exp", 0.0, 1.0),
    ("exp", -0.0, 1.0),
    ("exp", INF, INF),
    ("exp", -INF, 0.0),
    ("exp", 89.0, INF),
    ("exp", 88.72283, 3.4028e38),
    ("exp", -104.0, 0.0),
    ("exp", -103.97208, 2**-149),
    ("exp", 1e-30, 1.0),
    ("log", 1.0, 0.0),
    ("log", 0.0, -INF),
    ("log", -0.0, -INF),
    ("log", INF, INF),
    ("log", -1.0, NAN),
    ("log", -INF, NAN),
    ("log", 2**-149, -103.27893),
    ("sigmoid", 0.0, 0.5),
    ("sigmoid", -0.0, 0.5),
    ("sigmoid", INF, 1.0),
    ("sigmoid", -INF, 0.0),
    ("sigmoid", 20.0, 1.0),
    ("sigmoid", -200.0, 0.0),
    ("silu", 0.0, 0.0),
    ("silu", -0.0, -0.0),
    ("silu", INF, INF),
    ("silu", -INF, -0.0),
    ("silu", -200.0, -0.0),
    ("tanh", 0.0, 0.0),
    ("tanh", -0.0, -0.0),
    ("tanh", INF, 1.0),
    ("tanh", -INF, -1.0),
    ("tanh", 10.0, 1.0),
    ("tanh", 2**-149, 2**-149),
    ("gelu_tanh", 0.0, 0.0),
    ("gelu_tanh", -0.0, -0.0),
    ("gelu_tanh", INF, INF),
    ("gelu_tanh", -INF, -0.0),
    ("gelu_tanh", 1e30, 1e30),
    ("gelu_tanh", -1e30, -0.0),
    ("reciprocal", 0.0, INF),
    ("reciprocal", -0.0, -INF),
    ("reciprocal", INF, 0.0),
    ("rsqrt", 0.0, INF),
    ("rsqrt", -0.0, -INF),
    ("rsqrt", INF, 0.0),
    ("rsqrt", -1.0, NAN),
    ("rsqrt", 4.0, 0.5),
]


@pytest.mark.parametrize(("name", "x", "want"), EDGES)
def test_edge_behaviour(name: str, x: float, want: float) -> None:
    got = accuracy.DERIVED[name].canonical(np.array([x], dtype=np.float32))
    want32 = np.array([want], dtype=np.float32)
    if np.isnan(want):
        assert ref.to_bits(got)[0] == ref.CANONICAL_NAN_BITS
    elif name == "exp" and x == np.float32(88.72283):
        assert np.isfinite(got[0]) and got[0] > 3.4e38
    elif name == "log" and x == 2**-149:
        assert got[0] == np.float32(-103.27893)
    else:
        assert ref.to_bits(got)[0] == ref.to_bits(want32)[0], (got, want32)


@pytest.mark.parametrize("name", sorted(ULP_BOUNDS))
def test_odd_and_monotone_where_the_math_is(name: str) -> None:
    x = np.linspace(-30, 30, 200_001, dtype=np.float32)
    if name in ("log", "rsqrt"):
        x = np.linspace(1e-3, 60, 200_001, dtype=np.float32)
    y = accuracy.DERIVED[name].canonical(x).astype(np.float64)
    if name in ("exp", "log", "sigmoid", "tanh"):
        assert np.all(np.diff(y) >= 0), f"{name} is not monotone"
    if name == "tanh":
        assert np.array_equal(ref.to_bits(ref.tanh(-x)), ref.to_bits(ref.neg(ref.tanh(x))))


# (function, threshold t, side, property): the property holds exactly for x on `side` of t,
# as docs/spec.md section 4.9 states; checked over the 2000 floats nearest to t.
SATURATION = [
    ("exp", 88.72284, ">=", lambda x, y: np.isposinf(y)),
    ("exp", -87.33655, "<=", lambda x, y: np.abs(y) < 2.0**-126),
    ("exp", -103.972084, "<=", lambda x, y: y == 0),
    ("sigmoid", 16.635532, ">=", lambda x, y: y == 1),
    ("sigmoid", -103.972084, "<=", lambda x, y: y == 0),
    ("silu", 16.635532, ">=", lambda x, y: y == x),
    ("silu", -103.97208, "<", lambda x, y: ref.to_bits(y) == 0x80000000),
    ("tanh", 9.010913, ">", lambda x, y: y == 1),
    ("tanh", 0.0003521119, "<", lambda x, y: y == x),
    ("gelu_tanh", 4.9619694, ">", lambda x, y: y == x),
    ("gelu_tanh", -10.6802225, "<", lambda x, y: ref.to_bits(y) == 0x80000000),
    ("reciprocal", 2.938737e-39, "<", lambda x, y: np.isinf(y)),
    ("reciprocal", 2.0**126, ">", lambda x, y: y < 2.0**-126),
]


@pytest.mark.parametrize(
    ("name", "t", "side", "prop"), SATURATION, ids=[f"{s[0]}{s[2]}{s[1]}" for s in SATURATION]
)
def test_saturation_thresholds(name: str, t: float, side: str, prop) -> None:
    t32 = np.float32(t)
    x = ref.from_bits(ref.to_bits(t32) + np.arange(-1000, 1000).astype(np.int64).astype(np.uint32))
    x = x[x > 0] if t32 > 0 else x[x < 0]
    y = accuracy.DERIVED[name].canonical(x)
    expected = {"<": x < t32, "<=": x <= t32, ">": x > t32, ">=": x >= t32}[side]
    assert np.array_equal(prop(x, y), expected)
