"""Triton backend of the canonical arithmetic: the same bits as kernels/reference.py, on a GPU.

One kernel per module, its launch wrapper beside it (as in Triton's tutorials):

- ``spec``: the spec's scalar functions as ``@triton.jit`` device functions;
- ``unary_kernel`` / ``binary_kernel``: elementwise kernels over flat tensors;
- ``tree_sum_kernel`` / ``tree_max_kernel`` / ``argmax_kernel``: reductions over the last
  axis of [rows, K];
- ``gemv_kernel`` (decode) / ``gemm_kernel`` (prefill): tree dot products, exactly
  ``reference.dot``;
- ``rmsnorm_kernel`` / ``layernorm_kernel`` / ``softmax_kernel`` / ``attention_kernel``: fused
  composites of engine.builder, writing out every intermediate node's output (``fusion``
  recognises the node runs, ``backend.TritonBackend`` launches them);
- ``audit``: compiles every kernel for sm_80/sm_90 and checks the PTX/SASS (no GPU needed).

Wrappers take numpy arrays or torch tensors and return the same kind. Kernels are built for the
GPU, or for Triton's CPU interpreter when ``TRITON_INTERPRET=1`` is set before this package is
imported; `available()` says whether either can run here, and every wrapper raises
`TritonUnavailableError` when not.
"""

from __future__ import annotations

from typing import Any

from refute.kernels.gpu._runtime import (
    INTERPRETED,
    TritonUnavailableError,
    available,
    require,
    unavailable_reason,
)

try:
    from refute.kernels.gpu.argmax_kernel import argmax
    from refute.kernels.gpu.attention_kernel import attention
    from refute.kernels.gpu.binary_kernel import binary
    from refute.kernels.gpu.gemm_kernel import gemm
    from refute.kernels.gpu.gemv_kernel import gemv
    from refute.kernels.gpu.layernorm_kernel import layernorm
    from refute.kernels.gpu.rmsnorm_kernel import rmsnorm
    from refute.kernels.gpu.softmax_kernel import softmax
    from refute.kernels.gpu.tree_max_kernel import tree_max
    from refute.kernels.gpu.tree_sum_kernel import tree_sum
    from refute.kernels.gpu.unary_kernel import unary
except ImportError:  # pragma: no cover - triton/torch missing: every wrapper raises instead

    def _missing(*_args: Any, **_kwargs: Any) -> Any:
        require()
        raise AssertionError("unreachable")  # pragma: no cover

    argmax = attention = binary = gemm = gemv = layernorm = rmsnorm = softmax = _missing
    tree_max = tree_sum = unary = _missing


def dot(x: Any, w: Any) -> Any:
    """x [K] or [M, K] times w [K, N]: gemv for one row (decode), gemm for several (prefill)."""
    return gemv(x, w) if len(x.shape) == 1 else gemm(x, w)


def _unary(name: str) -> Any:
    def f(x: Any) -> Any:
        return unary(name, x)

    f.__name__ = name
    f.__doc__ = f"Elementwise spec `{name}` (bits of reference.{name})."
    return f


def _binary(name: str) -> Any:
    def f(a: Any, b: Any) -> Any:
        return binary(name, a, b)

    f.__name__ = name
    f.__doc__ = f"Elementwise spec `{name}` (bits of reference.{name})."
    return f


neg = _unary("neg")
abs_ = _unary("abs")
sqrt = _unary("sqrt")
exp = _unary("exp")
log = _unary("log")
reciprocal = _unary("reciprocal")
rsqrt = _unary("rsqrt")
sigmoid = _unary("sigmoid")
silu = _unary("silu")
tanh = _unary("tanh")
gelu_tanh = _unary("gelu_tanh")
round_to_int = _unary("round_to_int")
canonicalize = _unary("canonicalize")
pow2 = _unary("pow2")
add = _binary("add")
sub = _binary("sub")
mul = _binary("mul")
div = _binary("div")
maximum = _binary("maximum")
minimum = _binary("minimum")

__all__ = [
    "INTERPRETED",
    "TritonUnavailableError",
    "abs_",
    "add",
    "argmax",
    "attention",
    "available",
    "binary",
    "canonicalize",
    "div",
    "dot",
    "exp",
    "gelu_tanh",
    "gemm",
    "gemv",
    "layernorm",
    "log",
    "maximum",
    "minimum",
    "mul",
    "neg",
    "pow2",
    "reciprocal",
    "rmsnorm",
    "round_to_int",
    "rsqrt",
    "sigmoid",
    "silu",
    "softmax",
    "sqrt",
    "sub",
    "tanh",
    "tree_max",
    "tree_sum",
    "unary",
    "unavailable_reason",
]
