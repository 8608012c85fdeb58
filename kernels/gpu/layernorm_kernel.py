"""Fused LayerNorm: every intermediate of engine.builder.layernorm for a block of rows.

The builder spells LayerNorm as ten nodes, each committed on its own:

    sum = tree_sum(x)        mean = sum / D          center = x - mean
    sumsq = tree_sum(center * center)                var = sumsq / D
    eps = var + epsilon      rsqrt = rsqrt(eps)      scale = center * rsqrt
    weight = scale * w       bias = weight + b

As in rmsnorm_kernel, one program holds ROWS whole rows of WIDTH = next_pow2(D) columns, so both
trees are exactly the spec's (pads are +0 and never wider than the spec's width; the pads of
`center` are set to +0 explicitly, since x - mean is not 0 there).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton
import triton.language as tl

from refute.errors import ShapeError
from refute.kernels.gpu import spec
from refute.kernels.gpu._runtime import LAUNCH_OPTIONS, Io, quiet
from refute.kernels.gpu.rmsnorm_kernel import MAX_WIDTH, plan

SCALARS = ("sum", "mean", "sumsq", "var", "eps", "rsqrt")
FULL = ("center", "scale", "weight", "bias")
NODES = ("sum", "mean", "center", "sumsq", "var", "eps", "rsqrt", "scale", "weight", "bias")
"""The builder's node order (the order `layernorm` returns the outputs in)."""


@triton.jit
def layernorm_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    c_ptr,
    sum_ptr,
    mean_ptr,
    sumsq_ptr,
    var_ptr,
    eps_ptr,
    rsqrt_ptr,
    center_ptr,
    scale_ptr,
    weight_ptr,
    bias_ptr,
    n_rows,
    D,
    stride_x,
    stride_w,
    stride_b,
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
    b = tl.load(b_ptr + r64[:, None] * stride_b + cols[None, :], mask=mask, other=0.0)
    mean_divisor = tl.load(c_ptr)
    var_divisor = tl.load(c_ptr + 1)
    epsilon = tl.load(c_ptr + 2)
    total = spec.tree_sum_rows(x, WIDTH)  # masked loads: pads are +0
    mean = spec.div(total, mean_divisor)
    center = spec.sub(x, mean[:, None])
    sumsq = spec.tree_sum_rows(tl.where(mask, spec.mul(center, center), 0.0), WIDTH)
    var = spec.div(sumsq, var_divisor)
    eps = spec.add(var, epsilon)
    r = spec.rsqrt(eps)
    scale = spec.mul(center, r[:, None])
    weight = spec.mul(scale, w)
    bias = spec.add(weight, b)
    tl.store(sum_ptr + rows, total, mask=row_in)
    tl.store(mean_ptr + rows, mean, mask=row_in)
    tl.store(sumsq_ptr + rows, sumsq, mask=row_in)
    tl.store(var_ptr + rows, var, mask=row_in)
    tl.store(eps_ptr + rows, eps, mask=row_in)
    tl.store(rsqrt_ptr + rows, r, mask=row_in)
    offs = r64[:, None] * D + cols[None, :]
    tl.store(center_ptr + offs, center, mask=mask)
    tl.store(scale_ptr + offs, scale, mask=mask)
    tl.store(weight_ptr + offs, weight, mask=mask)
    tl.store(bias_ptr + offs, bias, mask=mask)


def layernorm(
    x: Any, w: Any, b: Any, mean_divisor: float, var_divisor: float, epsilon: float
) -> tuple[Any, ...]:
    """The ten node outputs of LayerNorm over the rows of x [R, D], with w and b [D] or [R, D],
    in the builder's order (NODES): scalars are [R], the rest [R, D]."""
    io = Io(x)
    xt, wt, bt = io.put(x), io.put(w), io.put(b)
    if xt.dim() != 2 or any(t.dim() not in (1, 2) or t.shape[-1] != xt.shape[1] for t in (wt, bt)):
        raise ShapeError(f"layernorm takes x [R, D], w and b [D] or [R, D]; got "
                         f"{tuple(xt.shape)}, {tuple(wt.shape)}, {tuple(bt.shape)}")  # fmt: skip
    n_rows, d = xt.shape
    if d == 0 or d > MAX_WIDTH:
        raise ShapeError(f"layernorm rows must have 1..{MAX_WIDTH} elements, not {d}")
    c = io.put(np.array([mean_divisor, var_divisor, epsilon], np.float32))
    out = {n: io.empty(n_rows) for n in SCALARS} | {n: io.empty(n_rows, d) for n in FULL}
    rows_per, width = plan(n_rows, d)
    if n_rows:
        with quiet():
            layernorm_kernel[(triton.cdiv(n_rows, rows_per),)](
                xt, wt, bt, c, *(out[n] for n in SCALARS), *(out[n] for n in FULL),
                n_rows, d, d, 0 if wt.dim() == 1 else d, 0 if bt.dim() == 1 else d,
                ROWS=rows_per, WIDTH=width, **LAUNCH_OPTIONS,
            )  # fmt: skip
    return tuple(io.out(out[n]) for n in NODES)


SIGNATURE = {
    **{p: "*fp32" for p in ("x_ptr", "w_ptr", "b_ptr", "c_ptr")},
    **{f"{n}_ptr": "*fp32" for n in (*SCALARS, *FULL)},
    "n_rows": "i32", "D": "i32", "stride_x": "i32", "stride_w": "i32", "stride_b": "i32",
    "ROWS": "constexpr", "WIDTH": "constexpr",
}  # fmt: skip


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of representative launches, for the PTX audit."""
    return [(layernorm_kernel, SIGNATURE, {"ROWS": r, "WIDTH": w})
            for r, w in ((1, 1), (4, 512))]  # fmt: skip
