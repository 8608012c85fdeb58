"""Canonical tree of `maximum` over the last axis of a [rows, K] tensor.

Same blocking as tree_sum.py, padding with -inf: max(x, -inf) = x, so NaN propagates and the
result is the reference's whatever the block size.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from refute.kernels.gpu import spec, tree_sum_kernel
from refute.kernels.gpu._runtime import Io
from refute.kernels.gpu.tree_sum_kernel import PLANS


@triton.jit
def tree_max_kernel(
    x_ptr,
    out_ptr,
    n_rows,
    n_cols,
    stride_xr,
    stride_xc,
    stride_or,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * stride_xr + cols[None, :].to(tl.int64) * stride_xc
    x = tl.load(x_ptr + offs, mask=mask, other=float("-inf"))  # the padding: -inf
    m = spec.tree_max_rows(x, BLOCK)
    tl.store(out_ptr + rows.to(tl.int64) * stride_or + tl.program_id(1), m, mask=rows < n_rows)


def reduce_strided(
    io: Io, x: torch.Tensor, n_rows: int, n_cols: int, stride_r: int, stride_c: int
) -> torch.Tensor:
    """Tree maxima of n_rows rows of n_cols strided elements -> [n_rows]; empty rows give -inf."""
    return tree_sum_kernel.reduce_strided(
        io, x, n_rows, n_cols, stride_r, stride_c, kernel=tree_max_kernel, empty=float("-inf")
    )


def tree_max(x: Any) -> Any:
    """Canonical tree maximum over the last axis of a [rows, K] (or [K]) float32 array."""
    io = Io(x)
    xt = io.put(x)
    one_d = xt.dim() == 1
    if one_d:
        xt = xt.view(1, -1)
    if xt.dim() != 2:
        raise ValueError(f"tree_max takes [rows, K] or [K], got shape {tuple(xt.shape)}")
    n_rows, k = xt.shape
    y = reduce_strided(io, xt, n_rows, k, k, 1)
    return io.out(y[0] if one_d else y)


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of representative launches, for the PTX audit."""
    sig = {
        "x_ptr": "*fp32",
        "out_ptr": "*fp32",
        "n_rows": "i32",
        "n_cols": "i32",
        "stride_xr": "i32",
        "stride_xc": "i32",
        "stride_or": "i32",
        "ROWS": "constexpr",
        "BLOCK": "constexpr",
    }
    return [(tree_max_kernel, sig, {"ROWS": r, "BLOCK": b}) for r, b in PLANS]
