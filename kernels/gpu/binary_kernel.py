"""Elementwise kernel for the spec's two-argument functions (with numpy-style broadcasting)."""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from refute.kernels.gpu import spec
from refute.kernels.gpu._runtime import LAUNCH_OPTIONS, Io, quiet

BLOCK = 1024
"""Elements per program; any value gives the same bits (elementwise)."""

FUNCTIONS = ("add", "sub", "mul", "div", "maximum", "minimum")


@triton.jit
def binary_kernel(a_ptr, b_ptr, y_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0)
    if FN == "add":
        y = spec.add(a, b)
    elif FN == "sub":
        y = spec.sub(a, b)
    elif FN == "mul":
        y = spec.mul(a, b)
    elif FN == "div":
        y = spec.div(a, b)
    elif FN == "maximum":
        y = spec.maximum(a, b)
    else:
        tl.static_assert(FN == "minimum")
        y = spec.minimum(a, b)
    tl.store(y_ptr + offs, y, mask=mask)


def binary(fn: str, a: Any, b: Any) -> Any:
    """fn(a, b) elementwise with the spec's bits; float32 arrays or tensors, broadcast."""
    if fn not in FUNCTIONS:
        raise ValueError(f"unknown binary function {fn!r}; expected one of {FUNCTIONS}")
    io = Io(a)
    at, bt = torch.broadcast_tensors(io.put(a), io.put(b))
    at, bt = at.contiguous(), bt.contiguous()
    y = io.empty(*at.shape)
    n = at.numel()
    if n:
        with quiet():
            binary_kernel[(triton.cdiv(n, BLOCK),)](
                at, bt, y, n, FN=fn, BLOCK=BLOCK, **LAUNCH_OPTIONS
            )
    return io.out(y)


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of every launch `binary` makes, for the PTX audit."""
    sig = {
        "a_ptr": "*fp32",
        "b_ptr": "*fp32",
        "y_ptr": "*fp32",
        "n": "i32",
        "FN": "constexpr",
        "BLOCK": "constexpr",
    }
    return [(binary_kernel, sig, {"FN": fn, "BLOCK": BLOCK}) for fn in FUNCTIONS]
