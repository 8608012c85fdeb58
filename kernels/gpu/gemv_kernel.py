"""Decode GEMV: y[n] = tree sum over k of the rounded products x[k] * W[k, n].

Split-K: program (n-block, kb) reduces the aligned chunk kb of BLOCK_K (a power of two) products
to its subtree sum, for BLOCK_N columns; the [NB, N] chunk partials are then reduced over NB by
tree_sum's kernel. Aligned power-of-two chunks are subtrees, so this is reference.dot exactly.
The partials cost 1/BLOCK_K of the weight traffic.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from refute.errors import ShapeError
from refute.kernels.gpu import spec, tree_sum_kernel
from refute.kernels.gpu._runtime import LAUNCH_OPTIONS, Io, next_pow2, quiet

BLOCK_K = 128
"""Products one program sums as one subtree (a power of two; smaller when K is)."""
BLOCK_N = 32
"""Output columns per program; any value gives the same bits."""


@triton.jit
def gemv_kernel(
    x_ptr, w_ptr, part_ptr, K, N, stride_wk, stride_wn, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    kb = tl.program_id(1)
    k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_in = k < K
    x = tl.load(x_ptr + k, mask=k_in, other=0.0)
    w_offs = k[None, :].to(tl.int64) * stride_wk + n[:, None].to(tl.int64) * stride_wn
    w = tl.load(w_ptr + w_offs, mask=k_in[None, :] & (n[:, None] < N), other=0.0)
    p = tl.where(k_in[None, :], spec.mul(x[None, :], w), 0.0)  # [BLOCK_N, BLOCK_K]; pad +0
    s = spec.tree_sum_rows(p, BLOCK_K)
    tl.store(part_ptr + kb.to(tl.int64) * N + n, s, mask=n < N)


def gemv(x: Any, w: Any) -> Any:
    """x [K] @ W [K, N] -> [N], each output the canonical tree sum of its K rounded products."""
    io = Io(x)
    xt, wt = io.put(x), io.put(w)
    if xt.dim() != 1 or wt.dim() != 2 or xt.shape[0] != wt.shape[0]:
        raise ShapeError(f"gemv needs x [K] and w [K, N]; got {tuple(xt.shape)}, {tuple(wt.shape)}")
    k, n = wt.shape
    if k == 0:
        return io.out(io.full((n,), 0.0))
    bk = min(BLOCK_K, next_pow2(k))
    nb = next_pow2(k) // bk
    part = io.empty(nb, n)
    if n:
        with quiet():
            gemv_kernel[(triton.cdiv(n, BLOCK_N), nb)](
                xt,
                wt,
                part,
                k,
                n,
                wt.stride(0),
                wt.stride(1),
                BLOCK_K=bk,
                BLOCK_N=BLOCK_N,
                **LAUNCH_OPTIONS,
            )
    if nb == 1:
        return io.out(part.view(n))
    return io.out(tree_sum_kernel.reduce_strided(io, part, n, nb, 1, n))


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of representative launches, for the PTX audit."""
    sig = {
        "x_ptr": "*fp32",
        "w_ptr": "*fp32",
        "part_ptr": "*fp32",
        "K": "i32",
        "N": "i32",
        "stride_wk": "i32",
        "stride_wn": "i32",
        "BLOCK_K": "constexpr",
        "BLOCK_N": "constexpr",
    }
    return [(gemv_kernel, sig, {"BLOCK_K": bk, "BLOCK_N": BLOCK_N}) for bk in (1, 8, BLOCK_K)]
