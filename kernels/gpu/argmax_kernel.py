"""Canonical argmax tree over the last axis of a [rows, K] tensor.

Each node is `argmax_step` (right wins only if strictly greater, or NaN against non-NaN), the
padding is (-inf, index >= K): a pad never wins, so blocks and their (value, index) partials
combine to the reference's index. Partial values keep their NaN-ness, which is all a later
comparison reads.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from refute.errors import ShapeError
from refute.kernels.gpu import spec
from refute.kernels.gpu._runtime import LAUNCH_OPTIONS, Io, next_pow2, quiet
from refute.kernels.gpu.tree_sum_kernel import PLANS, block_plan


@triton.jit
def argmax_kernel(
    x_ptr,
    xi_ptr,
    out_ptr,
    outi_ptr,
    n_rows,
    n_cols,
    stride_r,
    stride_or,
    FIRST: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * stride_r + cols[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=float("-inf"))
    if FIRST:  # indices are the column numbers, pads included
        i = tl.broadcast_to(cols[None, :], (ROWS, BLOCK))
    else:  # indices carried over from the previous pass
        i = tl.load(xi_ptr + offs, mask=mask, other=0)
    v, i = spec.argmax_rows(v, i, BLOCK)
    o = rows.to(tl.int64) * stride_or + tl.program_id(1)
    tl.store(out_ptr + o, v, mask=rows < n_rows)
    tl.store(outi_ptr + o, i, mask=rows < n_rows)


def argmax(x: Any) -> Any:
    """Index of the largest element of each row (NaN largest, lowest index wins ties), int64."""
    io = Io(x)
    xt = io.put(x)
    one_d = xt.dim() == 1
    if one_d:
        xt = xt.view(1, -1)
    if xt.dim() != 2:
        raise ValueError(f"argmax takes [rows, K] or [K], got shape {tuple(xt.shape)}")
    n_rows, n_cols = xt.shape
    if n_cols == 0:
        raise ShapeError("argmax of an empty axis")
    if n_cols >= 2**31:
        raise ShapeError("argmax indices are int32 in the kernel: K must be < 2**31")
    width = next_pow2(n_cols)
    values, index, first = xt, xt, True  # index is unused on the first pass
    while True:
        rows_per, block = block_plan(width, n_rows)
        nb = width // block
        out = io.empty(n_rows, nb)
        outi = io.empty(n_rows, nb, dtype=torch.int32)
        if n_rows:
            with quiet():
                argmax_kernel[(triton.cdiv(n_rows, rows_per), nb)](
                    values,
                    index,
                    out,
                    outi,
                    n_rows,
                    n_cols,
                    n_cols,
                    nb,
                    FIRST=first,
                    ROWS=rows_per,
                    BLOCK=block,
                    **LAUNCH_OPTIONS,
                )
        if nb == 1:
            y = outi.view(n_rows).to(torch.int64)
            return io.out(y[0] if one_d else y)
        values, index, first, n_cols, width = out, outi, False, nb, nb


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of representative launches, for the PTX audit."""
    out = []
    for first in (True, False):
        sig = {
            "x_ptr": "*fp32",
            "xi_ptr": "*fp32" if first else "*i32",
            "out_ptr": "*fp32",
            "outi_ptr": "*i32",
            "n_rows": "i32",
            "n_cols": "i32",
            "stride_r": "i32",
            "stride_or": "i32",
            "FIRST": "constexpr",
            "ROWS": "constexpr",
            "BLOCK": "constexpr",
        }
        out += [(argmax_kernel, sig, {"FIRST": first, "ROWS": r, "BLOCK": b}) for r, b in PLANS]
    return out
