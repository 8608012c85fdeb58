"""Prefill GEMM: Y[m, n] = tree sum over k of the rounded products X[m, k] * W[k, n].

Program (m-block, n-block, kb) forms the [BLOCK_M, BLOCK_N, BLOCK_K] rounded products of the
aligned chunk kb and reduces each (m, n) to its subtree sum; the [NB, M, N] partials are reduced
over NB by tree_sum's kernel. No tl.dot: tensor cores' accumulation order is unspecified.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from refute.errors import ShapeError
from refute.kernels.gpu import spec, tree_sum_kernel
from refute.kernels.gpu._runtime import LAUNCH_OPTIONS, Io, next_pow2, quiet

BLOCK_M = 16
BLOCK_N = 32
BLOCK_K = 16
"""Products per output one program sums as one subtree (a power of two; smaller when K is)."""


@triton.jit
def gemm_kernel(
    x_ptr,
    w_ptr,
    part_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wk,
    stride_wn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    kb = tl.program_id(2)
    k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_in = k < K
    x_offs = m[:, None].to(tl.int64) * stride_xm + k[None, :].to(tl.int64) * stride_xk
    x = tl.load(x_ptr + x_offs, mask=(m[:, None] < M) & k_in[None, :], other=0.0)  # [BM, BK]
    w_offs = k[None, :].to(tl.int64) * stride_wk + n[:, None].to(tl.int64) * stride_wn
    w = tl.load(w_ptr + w_offs, mask=k_in[None, :] & (n[:, None] < N), other=0.0)  # [BN, BK]
    p = spec.mul(x[:, None, :], w[None, :, :])  # [BM, BN, BK]
    p = tl.where(k_in[None, None, :], p, 0.0)  # pad +0
    s = spec.tree_sum_rows(tl.reshape(p, (BLOCK_M * BLOCK_N, BLOCK_K)), BLOCK_K)
    s = tl.reshape(s, (BLOCK_M, BLOCK_N))
    o = kb.to(tl.int64) * M * N + m[:, None].to(tl.int64) * N + n[None, :]
    tl.store(part_ptr + o, s, mask=(m[:, None] < M) & (n[None, :] < N))


def gemm(x: Any, w: Any) -> Any:
    """X [M, K] @ W [K, N] -> [M, N], each output the canonical tree sum of its K products."""
    io = Io(x)
    xt, wt = io.put(x), io.put(w)
    if xt.dim() != 2 or wt.dim() != 2 or xt.shape[1] != wt.shape[0]:
        raise ShapeError(
            f"gemm needs x [M, K] and w [K, N]; got {tuple(xt.shape)}, {tuple(wt.shape)}"
        )
    m, k = xt.shape
    n = wt.shape[1]
    if k == 0:
        return io.out(io.full((m, n), 0.0))
    bk = min(BLOCK_K, next_pow2(k))
    nb = next_pow2(k) // bk
    part = io.empty(nb, m, n)
    if m and n:
        with quiet():
            gemm_kernel[(triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N), nb)](
                xt,
                wt,
                part,
                m,
                n,
                k,
                xt.stride(0),
                xt.stride(1),
                wt.stride(0),
                wt.stride(1),
                BLOCK_M=BLOCK_M,
                BLOCK_N=BLOCK_N,
                BLOCK_K=bk,
                **LAUNCH_OPTIONS,
            )
    if nb == 1:
        return io.out(part.view(m, n))
    return io.out(tree_sum_kernel.reduce_strided(io, part, m * n, nb, 1, m * n).view(m, n))


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of representative launches, for the PTX audit."""
    sig = {
        "x_ptr": "*fp32",
        "w_ptr": "*fp32",
        "part_ptr": "*fp32",
        "M": "i32",
        "N": "i32",
        "K": "i32",
        "stride_xm": "i32",
        "stride_xk": "i32",
        "stride_wk": "i32",
        "stride_wn": "i32",
        "BLOCK_M": "constexpr",
        "BLOCK_N": "constexpr",
        "BLOCK_K": "constexpr",
    }
    return [
        (gemm_kernel, sig, {"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": bk})
        for bk in (1, 4, BLOCK_K)
    ]
