"""Canonical tree sum over the last axis of a [rows, K] tensor.

A program reduces one aligned block of BLOCK (a power of two) columns of ROWS rows: an aligned
power-of-two chunk is a subtree of the canonical tree, so the block partials, reduced again by
the same kernel, give exactly the reference's tree over K padded with +0 to a power of two.
BLOCK never exceeds that padded width: padding a subtree further with +0 could turn -0 into +0.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from refute.kernels.gpu import spec
from refute.kernels.gpu._runtime import LAUNCH_OPTIONS, Io, next_pow2, quiet

BLOCK = 1024
"""Largest subtree one program reduces (a power of two)."""
TILE = 4096
"""Elements one program loads at most: ROWS * BLOCK <= TILE."""


@triton.jit
def tree_sum_kernel(
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
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)  # the padding: +0
    s = spec.tree_sum_rows(x, BLOCK)
    tl.store(out_ptr + rows.to(tl.int64) * stride_or + tl.program_id(1), s, mask=rows < n_rows)


def block_plan(width: int, rows: int) -> tuple[int, int]:
    """(ROWS, BLOCK) for a pass over `width` (a power of two) columns of `rows` rows."""
    if BLOCK < 2 or BLOCK & (BLOCK - 1):
        raise ValueError(f"BLOCK must be a power of two >= 2 (each pass must shrink), not {BLOCK}")
    b = min(BLOCK, width)
    return max(1, min(TILE // b, next_pow2(rows))), b


def reduce_strided(
    io: Io,
    x: torch.Tensor,
    n_rows: int,
    n_cols: int,
    stride_r: int,
    stride_c: int,
    kernel: Any = None,
    empty: float = 0.0,
) -> torch.Tensor:
    """Tree reductions of n_rows rows of n_cols strided elements -> [n_rows], pass after pass:
    each pass reduces aligned blocks (subtrees) to one value, until one is left. `kernel` is
    tree_sum_kernel (default) or a kernel with its signature (tree_max_kernel); `empty` is what
    an empty row gives."""
    kernel = tree_sum_kernel if kernel is None else kernel
    if n_cols == 0:
        return io.full((n_rows,), empty)
    width = next_pow2(n_cols)
    while True:
        rows_per, block = block_plan(width, n_rows)
        nb = width // block
        out = io.empty(n_rows, nb)
        if n_rows:
            with quiet():
                kernel[(triton.cdiv(n_rows, rows_per), nb)](
                    x,
                    out,
                    n_rows,
                    n_cols,
                    stride_r,
                    stride_c,
                    nb,
                    ROWS=rows_per,
                    BLOCK=block,
                    **LAUNCH_OPTIONS,
                )
        if nb == 1:
            return out.view(n_rows)
        x, n_cols, stride_r, stride_c, width = out, nb, nb, 1, nb


def tree_sum(x: Any) -> Any:
    """Canonical tree sum over the last axis of a [rows, K] (or [K]) float32 array -> [rows]."""
    io = Io(x)
    xt = io.put(x)
    one_d = xt.dim() == 1
    if one_d:
        xt = xt.view(1, -1)
    if xt.dim() != 2:
        raise ValueError(f"tree_sum takes [rows, K] or [K], got shape {tuple(xt.shape)}")
    n_rows, k = xt.shape
    y = reduce_strided(io, xt, n_rows, k, k, 1)
    return io.out(y[0] if one_d else y)


PLANS = ((1, 1), (2048, 2), (4, 1024))
"""(ROWS, BLOCK) pairs the PTX audit compiles: the extremes of block_plan (same code otherwise)."""


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
    return [(tree_sum_kernel, sig, {"ROWS": r, "BLOCK": b}) for r, b in PLANS]
