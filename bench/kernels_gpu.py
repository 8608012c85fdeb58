"""Triton backend on a GPU: decode GEMV bandwidth against peak, and time against torch.matmul.

    python bench/kernels_gpu.py [--peak-gbps 2039] [--reps 50]

Decode is memory-bound: the canonical GEMV (split-K over aligned chunks, tree combine, fp32
CUDA cores, no tensor cores) should stream the weights near the memory bandwidth. For each 7B
Llama decode shape (W stored [K, N]) it prints the achieved bandwidth (weights + activations +
chunk partials, bytes / time), that as a fraction of peak, and torch.matmul's time / ours (>= 1:
ours is faster; torch uses its fastest fp32 path, TF32 off). It also checks the result against
the reference on the first shape. Peak bandwidth is read from the device (memory clock x bus
width x 2) unless --peak-gbps is given. Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

SHAPES = ((4096, 4096), (4096, 11008), (11008, 4096))  # (K in, N out): q/o, gate/up, down


def _peak_gbps(torch, override: float | None) -> float | None:
    if override:
        return override
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-gbps", type=float, default=None)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        import torch
        import triton.testing
    except ImportError as exc:
        print(f"skipped: triton/torch not installed ({exc})")
        return 0
    if not torch.cuda.is_available():
        print("skipped: no CUDA device (the Triton kernels' GPU benchmark needs one)")
        return 0
    import refute.kernels.gpu as gpu
    from refute.kernels import reference as ref
    from refute.kernels.gpu import gemv, gemv_kernel

    if gpu.INTERPRETED or not gpu.available():
        print(f"skipped: the kernels are not built for the GPU here ({gpu.unavailable_reason()})")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    peak = _peak_gbps(torch, args.peak_gbps)
    print(f"device: {torch.cuda.get_device_name(0)}; peak {peak or float('nan'):.0f} GB/s")
    print(
        f"{'K':>6} {'N':>6} {'ours us':>9} {'GB/s':>7} {'of peak':>8} {'torch us':>9} {'ratio':>6}"
    )
    gen = torch.Generator(device="cuda").manual_seed(0)
    for i, (k, n) in enumerate(SHAPES):
        x = torch.randn(k, device="cuda", generator=gen)
        w = torch.randn(k, n, device="cuda", generator=gen)
        if i == 0:
            got = gemv(x, w).cpu().numpy()
            want = ref.dot(x.cpu().numpy(), w.cpu().numpy())
            if not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
                print("FAIL: GPU gemv differs from the reference")
                return 1
        ours = triton.testing.do_bench(lambda x=x, w=w: gemv(x, w), rep=args.reps) * 1e-3
        theirs = triton.testing.do_bench(lambda x=x, w=w: x @ w, rep=args.reps) * 1e-3
        nb = max(1, (1 << (k - 1).bit_length()) // gemv_kernel.BLOCK_K)
        moved = 4 * (k * n + k + n + 2 * nb * n)
        gbps = moved / ours / 1e9
        frac = f"{gbps / peak:8.2f}" if peak else f"{'?':>8}"
        print(f"{k:>6} {n:>6} {ours * 1e6:9.1f} {gbps:7.0f} {frac} {theirs * 1e6:9.1f} "
              f"{theirs / ours:6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
