"""Elementwise kernel for the spec's one-argument functions over a flat tensor.

The function is a constexpr, so each one compiles to its own kernel with nothing else in it.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from refute.errors import SpecDomainError
from refute.kernels.gpu import spec
from refute.kernels.gpu._runtime import LAUNCH_OPTIONS, Io, quiet

BLOCK = 1024
"""Elements per program; any value gives the same bits (elementwise)."""

FUNCTIONS = (
    "neg",
    "abs",
    "sqrt",
    "exp",
    "log",
    "reciprocal",
    "rsqrt",
    "sigmoid",
    "silu",
    "tanh",
    "gelu_tanh",
    "round_to_int",
    "canonicalize",
    "pow2",
)
"""Names accepted by `unary`; `pow2` takes int32 exponents, all others float32 values."""


@triton.jit
def unary_kernel(x_ptr, y_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0)
    if FN == "neg":
        y = spec.neg(x)
    elif FN == "abs":
        y = spec.abs_(x)
    elif FN == "sqrt":
        y = spec.sqrt(x)
    elif FN == "exp":
        y = spec.exp(x)
    elif FN == "log":
        y = spec.log(x)
    elif FN == "reciprocal":
        y = spec.reciprocal(x)
    elif FN == "rsqrt":
        y = spec.rsqrt(x)
    elif FN == "sigmoid":
        y = spec.sigmoid(x)
    elif FN == "silu":
        y = spec.silu(x)
    elif FN == "tanh":
        y = spec.tanh(x)
    elif FN == "gelu_tanh":
        y = spec.gelu_tanh(x)
    elif FN == "round_to_int":
        y = spec.round_to_int(x)
    elif FN == "canonicalize":
        y = spec.canonicalize(x)
    else:
        tl.static_assert(FN == "pow2")
        y = spec.pow2(x)
    tl.store(y_ptr + offs, y, mask=mask)


def unary(fn: str, x: Any) -> Any:
    """fn(x) elementwise with the spec's bits; x is a float32 (int32 for pow2) array or tensor."""
    if fn not in FUNCTIONS:
        raise ValueError(f"unknown unary function {fn!r}; expected one of {FUNCTIONS}")
    io = Io(x)
    if fn == "pow2":
        import torch

        xt = io.put(x, dtype=torch.int32)
        if xt.numel() and bool(((xt < -126) | (xt > 127)).any()):
            raise SpecDomainError("pow2 takes integers in [-126, 127]")
    else:
        xt = io.put(x)
    y = io.empty(*xt.shape)
    n = xt.numel()
    if n:
        with quiet():
            unary_kernel[(triton.cdiv(n, BLOCK),)](xt, y, n, FN=fn, BLOCK=BLOCK, **LAUNCH_OPTIONS)
    return io.out(y)


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of every launch `unary` makes, for the PTX audit."""
    out = []
    for fn in FUNCTIONS:
        x_ty = "*i32" if fn == "pow2" else "*fp32"
        sig = {"x_ptr": x_ty, "y_ptr": "*fp32", "n": "i32", "FN": "constexpr", "BLOCK": "constexpr"}
        out.append((unary_kernel, sig, {"FN": fn, "BLOCK": BLOCK}))
    return out
