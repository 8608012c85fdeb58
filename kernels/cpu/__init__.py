"""Fast CPU backend of the canonical arithmetic: fused tree dots bit-identical to the reference.

- ``dot``: numba kernels — `pack` a weight once, `matmul` (GEMV/GEMM) with `reference.dot`'s
  bits for both weight layouts the IR uses;
- ``backend``: `CPUBackend`, the engine backend that runs linear layers through them and every
  other node through `ReferenceBackend`.

Importing this package does not import numba (~0.2 s): the kernel modules load on first use.
"""

from __future__ import annotations

from typing import Any

from refute.kernels.cpu.backend import CPUBackend, dot_plan

_KERNEL_NAMES = ("PackedWeight", "dot", "matmul", "pack")

__all__ = ["CPUBackend", "PackedWeight", "dot", "dot_plan", "matmul", "pack"]


def __getattr__(name: str) -> Any:
    if name in _KERNEL_NAMES:
        from refute.kernels.cpu import tree_dot

        return getattr(tree_dot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
