"""Gas per SoftFloat32 function: a table of min / median / max over a mix of inputs.

    python bench/gas_softfloat.py [--cases 400] [--rpc-url URL]

Runs on the embedded py-evm chain unless --rpc-url names a node (anvil: same gas rules). The
figure is FloatHarness.gasOf's: the internal library call (jump in, body, jump out), measured
with gasleft() around it, minus the cost of an empty measurement. Calldata, ABI decoding and the
transaction's base cost are not included: they depend on how a verifier calls the library.
"""

from __future__ import annotations

import argparse

import numpy as np

from refute.contracts.chain import connect, deploy
from refute.kernels import reference as ref

OPS = {
    "add": 1, "sub": 2, "mul": 3, "div": 4, "max": 5, "min": 6, "sqrt": 7, "exp": 8, "log": 9,
    "sigmoid": 10, "silu": 11, "tanh": 12, "geluTanh": 13, "reciprocal": 14, "rsqrt": 15,
}  # fmt: skip
SPECIAL = [0x0, 0x80000000, 0x1, 0x7FFFFF, 0x800000, 0x3F800000, 0x7F7FFFFF, 0x7F800000,
           0xFF800000, 0x7FC00000, 0x80000001, 0xBF800000]  # fmt: skip


def inputs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A third uniform bit patterns, a third N(0, 4) values, a third subnormal or special."""
    k = n // 3
    u = rng.integers(0, 1 << 32, (2, k), dtype=np.uint64).astype(np.uint32)
    g = ref.to_bits(rng.normal(0, 4, (2, k)).astype(np.float32)).astype(np.uint32)
    s = rng.integers(0, 1 << 23, (2, n - 2 * k), dtype=np.uint64).astype(np.uint32)
    s[:, : len(SPECIAL)] = np.array(SPECIAL, dtype=np.uint32)[None, : s.shape[1]]
    x = np.concatenate([u, g, s], axis=1)
    return x[0], x[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300, help="inputs per function")
    parser.add_argument("--rpc-url", default=None, help="JSON-RPC node (default: embedded)")
    args = parser.parse_args()
    w3 = connect(args.rpc_url)
    harness = deploy(w3, "FloatHarness").functions
    a, b = inputs(np.random.default_rng(0), args.cases)
    a_list, b_list = [int(v) for v in a], [int(v) for v in b]
    gas_cap = {"gas": 25_000_000}
    baseline = min(harness.gasOf(0, a_list[:10], b_list[:10]).call(gas_cap)[0])
    print(f"gas per call, {len(a_list)} inputs each (empty measurement: {baseline} gas)")
    print(f"{'function':<12} {'min':>7} {'median':>7} {'max':>7}")
    for name, op in OPS.items():
        used = np.array(harness.gasOf(op, a_list, b_list).call(gas_cap)[0]) - baseline
        print(f"{name:<12} {used.min():>7} {int(np.median(used)):>7} {used.max():>7}")


if __name__ == "__main__":
    main()
