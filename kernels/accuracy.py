"""Accuracy of the spec's derived functions, in float32 ulps, against float64 references.

Used by the tests (which assert the bounds stated in docs/spec.md on a sample of all 2^32 inputs)
and by scripts/measure_ulps.py (which sweeps every input once and prints the table of the spec).
numpy's float64 transcendental functions are fine here: they judge the canonical results, they
never produce them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from refute.kernels import reference as ref

_SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
_GELU_A = 0.044715


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        t = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + t), t / (1.0 + t))


def _gelu64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        y = 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + _GELU_A * x**3)))
        # 1 + tanh(u) cancels for u << 0; use 2*sigmoid(2u) there (same real function)
        tail = x * _sigmoid64(2.0 * _SQRT_2_OVER_PI * (x + _GELU_A * x**3))
        y = np.where(x < 0, tail, y)
        return np.where(x == -np.inf, -0.0, y)


def _silu64(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(x == -np.inf, -0.0, x * _sigmoid64(x))


@dataclass(frozen=True)
class DerivedFunction:
    name: str
    canonical: Callable[[np.ndarray], np.ndarray]
    exact: Callable[[np.ndarray], np.ndarray]


def _ignoring(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def g(x: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return f(x)

    return g


DERIVED: dict[str, DerivedFunction] = {
    f.name: f
    for f in (
        DerivedFunction("exp", ref.exp, _ignoring(np.exp)),
        DerivedFunction("log", ref.log, _ignoring(np.log)),
        DerivedFunction("sigmoid", ref.sigmoid, _sigmoid64),
        DerivedFunction("silu", ref.silu, _silu64),
        DerivedFunction("tanh", ref.tanh, _ignoring(np.tanh)),
        DerivedFunction("gelu_tanh", ref.gelu_tanh, _gelu64),
        DerivedFunction("reciprocal", ref.reciprocal, _ignoring(lambda x: 1.0 / x)),
        DerivedFunction("rsqrt", ref.rsqrt, _ignoring(lambda x: 1.0 / np.sqrt(x))),
    )
}


def ulp_error(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|got - exact| in units of the float32 ulp at `exact` (2^-149 in the subnormal range).

    Where float32 rounding of `exact` is infinite, or `got` is non-finite, the error is 0 if the
    bit patterns agree (inf = inf, NaN = NaN) and +inf otherwise.
    """
    got = np.asarray(got, dtype=np.float32)
    exact = np.asarray(exact, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = exact.astype(np.float32)
        _, e = np.frexp(exact)
        ulp = np.ldexp(1.0, np.maximum(e - 1, -126) - 23)
        err = np.abs(got.astype(np.float64) - exact) / ulp
    special = ~np.isfinite(rounded) | ~np.isfinite(got)
    same = (np.isnan(got) & np.isnan(rounded)) | (got == rounded)
    return np.where(special, np.where(same, 0.0, np.inf), err)


# Input intervals [lo, hi) reported separately: where a function is ill conditioned (gelu_tanh
# and silu for negative x, where a rounding of the argument of sigmoid is amplified by |u|) or
# its result is subnormal, its error is far from the bound that holds elsewhere.
REGIONS: dict[str, tuple[tuple[float, float], ...]] = {
    "silu": ((-np.inf, -87.0), (-87.0, np.inf)),
    "gelu_tanh": ((-np.inf, -10.0), (-10.0, -3.0), (-3.0, -1.0), (-1.0, np.inf)),
}


@dataclass
class AccuracyReport:
    """Worst errors of one function over the inputs it was shown."""

    name: str
    inputs: int = 0
    max_ulp_normal: float = 0.0  # over inputs whose exact result is a normal float32 (or zero)
    worst_input_bits: int = 0
    max_ulp_subnormal: float = 0.0  # in units of 2^-149, where the exact result is subnormal
    worst_subnormal_bits: int = 0
    region_max_ulp: list[float] = field(default_factory=list)  # per REGIONS[name], all results

    def update(self, bits: np.ndarray) -> None:
        f = DERIVED[self.name]
        x = ref.from_bits(bits)
        with np.errstate(invalid="ignore"):
            exact = f.exact(x.astype(np.float64))
        err = ulp_error(f.canonical(x), exact)
        tiny = (np.abs(exact) < 2.0**-126) & (exact != 0)
        self.inputs += bits.size
        regions = REGIONS.get(self.name, ())
        if len(self.region_max_ulp) < len(regions):
            self.region_max_ulp = [0.0] * len(regions)
        for i, (lo, hi) in enumerate(regions):
            inside = (x >= lo) & (x < hi)
            if inside.any():
                self.region_max_ulp[i] = max(self.region_max_ulp[i], float(err[inside].max()))
        for mask, attr, where in (
            (~tiny, "max_ulp_normal", "worst_input_bits"),
            (tiny, "max_ulp_subnormal", "worst_subnormal_bits"),
        ):
            if mask.any():
                e = np.where(mask, err, -1.0)
                i = int(np.argmax(e))
                if e[i] > getattr(self, attr):
                    setattr(self, attr, float(e[i]))
                    setattr(self, where, int(bits[i]))


def strided_bits(stride: int, offset: int = 0, chunk: int = 1 << 22):
    """Yield uint32 arrays covering offset, offset + stride, ... below 2^32, chunk by chunk."""
    total = ((1 << 32) - offset + stride - 1) // stride
    for lo in range(0, total, chunk):
        n = min(chunk, total - lo)
        yield (offset + stride * (lo + np.arange(n, dtype=np.uint64))).astype(np.uint32)


def measure(name: str, stride: int = 1, offset: int = 0) -> AccuracyReport:
    report = AccuracyReport(name)
    for bits in strided_bits(stride, offset):
        report.update(bits)
    return report
