"""Fused attention for one position: every node of engine.builder.attention, in one kernel.

For a row (a position of a sequence) with T positions so far and kv head g, the builder's
eight nodes are, over j < T, r < REP (query heads of the group), d < HD:

    scores[j, g, r] = tree_sum_d(q[g, r, d] * k[j, g, d])
    scaled, max, shift, exp, sum, probs          (softmax_kernel.softmax_chain)
    out[g, r, d]    = tree_sum_j(probs[j, g, r] * v[j, g, d])

One program computes all of them for one (row, g) from a [TW, REPW, HDW] block of products:
HDW = next_pow2(HD) and TW = next_pow2(T) exactly, so both dot trees are the spec's (pads +0,
never wider: a wider pad would turn an all -0 sum into +0). The blocks hold the whole row, so
the backend fuses attention only while TW * REPW * HDW <= MAX_BLOCK.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from refute.errors import ShapeError
from refute.kernels.gpu import spec
from refute.kernels.gpu._runtime import LAUNCH_OPTIONS, Io, next_pow2, quiet
from refute.kernels.gpu.softmax_kernel import buckets, check_lengths, softmax_chain, store_chain

NODES = ("scores", "scaled", "max", "shift", "exp", "sum", "probs", "out")
"""The builder's node order (the order `attention` returns the outputs in)."""
MAX_BLOCK = 1 << 16
"""Largest product block (TW * next_pow2(REP) * next_pow2(HD)) one program holds."""


@triton.jit
def attention_kernel(
    q_ptr, k_ptr, v_ptr, c_ptr, rows_ptr, len_ptr,
    scores_ptr, scaled_ptr, max_ptr, shift_ptr, exp_ptr, sum_ptr, probs_ptr, out_ptr,
    T_MAX,
    G: tl.constexpr, REP: tl.constexpr, HD: tl.constexpr, SCALE_DIV: tl.constexpr,
    TW: tl.constexpr, REPW: tl.constexpr, HDW: tl.constexpr,
):  # fmt: skip
    row = tl.load(rows_ptr + tl.program_id(0))
    g = tl.program_id(1)
    T = tl.load(len_ptr + row)
    r64 = row.to(tl.int64)
    j = tl.arange(0, TW)
    r = tl.arange(0, REPW)
    d = tl.arange(0, HDW)
    j_in = j < T
    r_in = r < REP
    d_in = d < HD
    # q [REPW, HDW] of (row, g); k [TW, HDW] and v^T [HDW, TW] of kv head g
    q_offs = r64 * G * REP * HD + g * REP * HD + r[:, None] * HD + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=r_in[:, None] & d_in[None, :], other=0.0)
    kv_row = r64 * T_MAX * G * HD + g * HD
    k = tl.load(k_ptr + kv_row + j[:, None] * (G * HD) + d[None, :],
                mask=j_in[:, None] & d_in[None, :], other=0.0)  # fmt: skip
    vt = tl.load(v_ptr + kv_row + j[None, :] * (G * HD) + d[:, None],
                 mask=d_in[:, None] & j_in[None, :], other=0.0)  # fmt: skip
    # scores: the tree over d of the rounded products, pads +0
    qk = spec.mul(q[None, :, :], k[:, None, :])  # [TW, REPW, HDW]
    qk = tl.where(d_in[None, None, :], qk, 0.0)
    scores = tl.reshape(spec.tree_sum_rows(tl.reshape(qk, (TW * REPW, HDW)), HDW), (TW, REPW))
    valid = j_in[:, None] & r_in[None, :]
    c = tl.load(c_ptr)
    scaled, m, shift, e, z, p = softmax_chain(scores, valid, c, SCALE_DIV, TW)
    # out: the tree over j of the rounded products, pads +0
    pv = spec.mul(tl.trans(p)[:, None, :], vt[None, :, :])  # [REPW, HDW, TW]
    pv = tl.where(j_in[None, None, :], pv, 0.0)
    out = tl.reshape(spec.tree_sum_rows(tl.reshape(pv, (REPW * HDW, TW)), TW), (REPW, HDW))
    offs = r64 * T_MAX * G * REP + j[:, None] * (G * REP) + g * REP + r[None, :]
    tl.store(scores_ptr + offs, scores, mask=valid)
    store_chain(scaled_ptr, max_ptr, shift_ptr, exp_ptr, sum_ptr, probs_ptr,
                scaled, m, shift, e, z, p, row, g, j, r, T, T_MAX, G, REP)  # fmt: skip
    o_offs = r64 * G * REP * HD + g * REP * HD + r[:, None] * HD + d[None, :]
    tl.store(out_ptr + o_offs, out, mask=r_in[:, None] & d_in[None, :])


def fits(t: int, rep: int, hd: int) -> bool:
    """Whether one program's block for T = t positions stays within MAX_BLOCK."""
    return next_pow2(t) * next_pow2(rep) * next_pow2(hd) <= MAX_BLOCK


def attention(
    q: Any, k: Any, v: Any, scale: float, scale_div: bool, lengths: Any = None
) -> tuple[Any, ...]:
    """The eight node outputs of attention for rows of q [R, G, REP, HD] against caches
    k, v [R, T_MAX, G, HD] (row i uses positions j < lengths[i], default all), in the builder's
    order (NODES): scores, scaled, shift, exp, probs [R, T_MAX, G, REP] (entries j >= lengths[i]
    unspecified), max, sum [R, G, REP], out [R, G, REP, HD]."""
    io = Io(q)
    qt, kt, vt = io.put(q), io.put(k), io.put(v)
    if (
        qt.dim() != 4
        or kt.dim() != 4
        or kt.shape != vt.shape
        or (kt.shape[0], kt.shape[2], kt.shape[3]) != (qt.shape[0], qt.shape[1], qt.shape[3])
    ):
        raise ShapeError(f"attention takes q [R, G, REP, HD], k and v [R, T, G, HD]; got "
                         f"{tuple(qt.shape)}, {tuple(kt.shape)}, {tuple(vt.shape)}")  # fmt: skip
    n_rows, g, rep, hd = qt.shape
    t_max = kt.shape[1]
    lengths = check_lengths(lengths, n_rows, t_max)
    if hd == 0 or not fits(int(lengths.max(initial=1)), rep, hd):
        raise ShapeError(f"attention block for T={t_max}, REP={rep}, HD={hd} exceeds MAX_BLOCK")
    c = io.put(np.array([scale], np.float32))
    out = {n: io.empty(n_rows, t_max, g, rep) for n in ("scores", "scaled", "shift", "exp",
                                                        "probs")}  # fmt: skip
    out |= {n: io.empty(n_rows, g, rep) for n in ("max", "sum")}
    out["out"] = io.empty(n_rows, g, rep, hd)
    lens = io.put(lengths, dtype=torch.int32)
    for tw, rows in buckets(lengths).items():
        with quiet():
            attention_kernel[(len(rows), g)](
                qt, kt, vt, c, io.put(rows, dtype=torch.int32), lens,
                *(out[n] for n in NODES), t_max,
                G=g, REP=rep, HD=hd, SCALE_DIV=bool(scale_div), TW=tw, REPW=next_pow2(rep),
                HDW=next_pow2(hd), **LAUNCH_OPTIONS,
            )  # fmt: skip
    return tuple(io.out(out[n]) for n in NODES)


SIGNATURE = {
    **{p: "*fp32" for p in ("q_ptr", "k_ptr", "v_ptr", "c_ptr")},
    "rows_ptr": "*i32", "len_ptr": "*i32",
    **{f"{n}_ptr": "*fp32" for n in NODES}, "T_MAX": "i32",
    **{p: "constexpr" for p in ("G", "REP", "HD", "SCALE_DIV", "TW", "REPW", "HDW")},
}  # fmt: skip


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of representative launches, for the PTX audit."""
    return [
        (attention_kernel, SIGNATURE,
         {"G": g, "REP": rep, "HD": hd, "SCALE_DIV": div, "TW": tw, "REPW": next_pow2(rep),
          "HDW": next_pow2(hd)})
        for g, rep, hd, div, tw in ((1, 1, 1, False, 1), (2, 2, 16, True, 32))
    ]  # fmt: skip
