"""Fused RMSNorm: every intermediate of engine.builder.rmsnorm for a block of rows, in one kernel.

The builder spells RMSNorm as six nodes, each committed on its own:

    sumsq = tree_sum(x * x)      mean = sumsq / D      eps = mean + epsilon
    rsqrt = rsqrt(eps)           scale = x * rsqrt     weight = scale * w

One program holds ROWS whole rows of WIDTH = next_pow2(D) columns: the tree over a row is
exactly the spec's (padded with +0 to that width and no wider — a wider pad would turn a sum of
-0 into +0), and every node's output is written out, not only the last.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton
import triton.language as tl

from refute.errors import ShapeError
from refute.kernels.gpu import spec
from refute.kernels.gpu._runtime import LAUNCH_OPTIONS, Io, next_pow2, quiet

MAX_WIDTH = 8192
"""Widest row (next_pow2(D)) one program holds; the backend does not fuse wider norms."""
TILE = 4096
"""Elements one program loads at most (ROWS * WIDTH <= TILE, ROWS >= 1)."""


@triton.jit
def rmsnorm_kernel(
    x_ptr,
    w_ptr,
    c_ptr,
    sumsq_ptr,
    mean_ptr,
    eps_ptr,
    rsqrt_ptr,
    scale_ptr,
    out_ptr,
    n_rows,
    D,
    stride_x,
    stride_w,
    ROWS: tl.constexpr,
    WIDTH: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, WIDTH)
    row_in = rows < n_rows
    mask = row_in[:, None] & (cols[None, :] < D)
    r64 = rows.to(tl.int64)
    x = tl.load(x_ptr + r64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    w = tl.load(w_ptr + r64[:, None] * stride_w + cols[None, :], mask=mask, other=0.0)
    divisor = tl.load(c_ptr)
    epsilon = tl.load(c_ptr + 1)
    sumsq = spec.tree_sum_rows(tl.where(mask, spec.mul(x, x), 0.0), WIDTH)  # pad: +0
    mean = spec.div(sumsq, divisor)
    eps = spec.add(mean, epsilon)
    r = spec.rsqrt(eps)
    scale = spec.mul(x, r[:, None])
    out = spec.mul(scale, w)
    tl.store(sumsq_ptr + rows, sumsq, mask=row_in)
    tl.store(mean_ptr + rows, mean, mask=row_in)
    tl.store(eps_ptr + rows, eps, mask=row_in)
    tl.store(rsqrt_ptr + rows, r, mask=row_in)
    offs = r64[:, None] * D + cols[None, :]
    tl.store(scale_ptr + offs, scale, mask=mask)
    tl.store(out_ptr + offs, out, mask=mask)


def plan(n_rows: int, d: int) -> tuple[int, int]:
    """(ROWS, WIDTH) of a launch over n_rows rows of d columns."""
    width = next_pow2(d)
    return max(1, min(TILE // width, next_pow2(n_rows))), width


def rmsnorm(x: Any, w: Any, divisor: float, epsilon: float) -> tuple[Any, ...]:
    """The six node outputs of RMSNorm over the rows of x [R, D] with weight w [D] or [R, D]:
    (sumsq [R], mean [R], eps [R], rsqrt [R], scale [R, D], weight [R, D]). `divisor` (D in
    the builder) and `epsilon` are float32 values."""
    io = Io(x)
    xt, wt = io.put(x), io.put(w)
    if xt.dim() != 2 or wt.shape[-1] != xt.shape[1] or wt.dim() not in (1, 2):
        raise ShapeError(f"rmsnorm takes x [R, D], w [D] or [R, D]; got {tuple(xt.shape)}, "
                         f"{tuple(wt.shape)}")  # fmt: skip
    n_rows, d = xt.shape
    if d == 0 or d > MAX_WIDTH:
        raise ShapeError(f"rmsnorm rows must have 1..{MAX_WIDTH} elements, not {d}")
    stride_w = 0 if wt.dim() == 1 else d
    c = io.put(np.array([divisor, epsilon], np.float32))
    scalars = [io.empty(n_rows) for _ in range(4)]
    full = [io.empty(n_rows, d) for _ in range(2)]
    rows_per, width = plan(n_rows, d)
    if n_rows:
        with quiet():
            rmsnorm_kernel[(triton.cdiv(n_rows, rows_per),)](
                xt, wt, c, *scalars, *full, n_rows, d, d, stride_w,
                ROWS=rows_per, WIDTH=width, **LAUNCH_OPTIONS,
            )  # fmt: skip
    return tuple(io.out(t) for t in (*scalars, *full))


SIGNATURE = {
    **{p: "*fp32" for p in ("x_ptr", "w_ptr", "c_ptr", "sumsq_ptr", "mean_ptr", "eps_ptr",
                            "rsqrt_ptr", "scale_ptr", "out_ptr")},
    "n_rows": "i32", "D": "i32", "stride_x": "i32", "stride_w": "i32",
    "ROWS": "constexpr", "WIDTH": "constexpr",
}  # fmt: skip


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of representative launches, for the PTX audit."""
    return [(rmsnorm_kernel, SIGNATURE, {"ROWS": r, "WIDTH": w})
            for r, w in ((1, 1), (4, 512))]  # fmt: skip
