"""Fast CPU backend of the canonical arithmetic: fused tree dots bit-identical to the reference.

- ``dot``: numba kernels — `pack` a weight once, `matmul` (GEMV/GEMM) with `reference.dot`'s
  bits for both weight layouts the IR uses;
- ``backend``: `CPUBackend`, the engine backend that runs linear layers through them and every
  other node through `ReferenceBackend`.
"""

from refute.kernels.cpu.backend import CPUBackend, dot_plan
from refute.kernels.cpu.tree_dot import PackedWeight, dot, matmul, pack

__all__ = ["CPUBackend", "PackedWeight", "dot", "dot_plan", "matmul", "pack"]
