"""Derive the polynomial coefficients of docs/spec.md (exp, log, tanh) and print their bits.

Near-minimax fits by Lawson's iteratively reweighted least squares on Chebyshev nodes, in
float64, minimizing the relative error of the final function; the coefficients are then rounded
to binary32. The spec fixes the printed bit patterns; this script only documents where they
came from (re-running it must print the same patterns).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def chebyshev_nodes(lo: float, hi: float, n: int = 4000) -> np.ndarray:
    k = np.arange(n)
    return (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / n)


def lawson_fit(
    x: np.ndarray, powers: range, target: np.ndarray, weight: np.ndarray, rounds: int = 30
) -> tuple[np.ndarray, float]:
    """Coefficients c of sum(c_i x^p_i) minimizing max |weight * (fit - target)|."""
    basis = np.stack([x**p for p in powers], axis=1)
    lawson = np.ones_like(x)
    for _ in range(rounds):
        w = weight * np.sqrt(lawson)
        coeffs, *_ = np.linalg.lstsq(basis * w[:, None], target * w, rcond=None)
        err = np.abs((basis @ coeffs - target) * weight)
        lawson = lawson * err
        lawson /= lawson.sum()
    return coeffs, float(err.max())


def show(name: str, coeffs: np.ndarray, err: float) -> None:
    bits = [f"0x{int(np.float32(c).view(np.uint32)):08X}" for c in coeffs]
    print(f"{name}: {', '.join(bits)}   (max weighted error {err:.3g})")


def main() -> None:
    # exp(r) = 1 + E1 r + ... + E6 r^6 on |r| <= ln(2)/2
    r = chebyshev_nodes(-0.3466, 0.3466)
    show("exp E1..E6", *lawson_fit(r, range(1, 7), np.exp(r) - 1, 1 / np.exp(r)))
    # log: R(z) = z (L1 + L2 z + L3 z^2 + L4 z^3), z = s^2, s = f / (2 + f) in (0, 0.1716]
    s = chebyshev_nodes(1e-6, 0.17158)
    exact: Callable[[np.ndarray], np.ndarray] = lambda v: np.log((1 + v) / (1 - v))  # noqa: E731
    show("log L1..L4", *lawson_fit(s * s, range(1, 5), (exact(s) - 2 * s) / s, s / exact(s)))
    # tanh(x) = x + x z P(z), z = x^2, on 0 < x < 0.625
    x = chebyshev_nodes(1e-4, 0.625)
    z = x * x
    show("tanh T0..T4", *lawson_fit(z, range(0, 5), (np.tanh(x) / x - 1) / z, x * z / np.tanh(x)))


if __name__ == "__main__":
    main()
