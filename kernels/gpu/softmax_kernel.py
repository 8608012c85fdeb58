"""Fused softmax over attention scores: the builder's chain from `scaled` to `probs`.

engine.builder.attention spells softmax over the positions j < T of scores [T, G, REP] as six
nodes, each committed on its own:

    scaled = scores * c  (or scores / c)      max = tree_max_j(scaled)     shift = scaled - max
    exp = exp(shift)                          sum = tree_sum_j(exp)        probs = exp / sum

One program handles one row (a position of a sequence) and one kv head g: a [TW, REPW] block
with TW = next_pow2(T) exactly, so the trees over j are the spec's (max padded with -inf, sum
with +0, never wider). Rows of one launch must share TW; the wrapper groups them.
`softmax_chain` is also the middle of attention_kernel.
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

NODES = ("scaled", "max", "shift", "exp", "sum", "probs")
"""The builder's node order (the order `softmax` returns the outputs in)."""


@triton.jit
def softmax_chain(s, valid, c, SCALE_DIV: tl.constexpr, TW: tl.constexpr):
    """scores [TW, REPW] (valid: j < T) -> (scaled, max [REPW], shift, exp, sum [REPW], probs)."""
    if SCALE_DIV:
        scaled = spec.div(s, c)
    else:
        scaled = spec.mul(s, c)
    m = spec.tree_max_rows(tl.trans(tl.where(valid, scaled, float("-inf"))), TW)
    shift = spec.sub(scaled, m[None, :])
    e = spec.exp(shift)
    z = spec.tree_sum_rows(tl.trans(tl.where(valid, e, 0.0)), TW)
    p = spec.div(e, z[None, :])
    return scaled, m, shift, e, z, p


@triton.jit
def store_chain(
    scaled_ptr, max_ptr, shift_ptr, exp_ptr, sum_ptr, probs_ptr,
    scaled, m, shift, e, z, p, row, g, j, r, T, T_MAX, G: tl.constexpr, REP: tl.constexpr,
):  # fmt: skip
    """Write the chain's [TW, REPW] and [REPW] blocks of (row, g) into [R, T_MAX, G, REP] and
    [R, G, REP] outputs."""
    r64 = row.to(tl.int64)
    offs = r64 * T_MAX * G * REP + j[:, None] * (G * REP) + g * REP + r[None, :]
    mask = (j[:, None] < T) & (r[None, :] < REP)
    tl.store(scaled_ptr + offs, scaled, mask=mask)
    tl.store(shift_ptr + offs, shift, mask=mask)
    tl.store(exp_ptr + offs, e, mask=mask)
    tl.store(probs_ptr + offs, p, mask=mask)
    small = r64 * G * REP + g * REP + r
    tl.store(max_ptr + small, m, mask=r < REP)
    tl.store(sum_ptr + small, z, mask=r < REP)


@triton.jit
def softmax_kernel(
    s_ptr, c_ptr, rows_ptr, len_ptr,
    scaled_ptr, max_ptr, shift_ptr, exp_ptr, sum_ptr, probs_ptr,
    T_MAX,
    G: tl.constexpr, REP: tl.constexpr, SCALE_DIV: tl.constexpr, TW: tl.constexpr,
    REPW: tl.constexpr,
):  # fmt: skip
    row = tl.load(rows_ptr + tl.program_id(0))
    g = tl.program_id(1)
    T = tl.load(len_ptr + row)
    j = tl.arange(0, TW)
    r = tl.arange(0, REPW)
    valid = (j[:, None] < T) & (r[None, :] < REP)
    offs = row.to(tl.int64) * T_MAX * G * REP + j[:, None] * (G * REP) + g * REP + r[None, :]
    s = tl.load(s_ptr + offs, mask=valid, other=0.0)
    c = tl.load(c_ptr)
    scaled, m, shift, e, z, p = softmax_chain(s, valid, c, SCALE_DIV, TW)
    store_chain(scaled_ptr, max_ptr, shift_ptr, exp_ptr, sum_ptr, probs_ptr,
                scaled, m, shift, e, z, p, row, g, j, r, T, T_MAX, G, REP)  # fmt: skip


def buckets(lengths: np.ndarray) -> dict[int, np.ndarray]:
    """Rows grouped by the tree width next_pow2(length) of their reductions over T."""
    out: dict[int, list[int]] = {}
    for i, n in enumerate(lengths.tolist()):
        out.setdefault(next_pow2(int(n)), []).append(i)
    return {w: np.array(rows, np.int32) for w, rows in out.items()}


def check_lengths(lengths: Any, n_rows: int, t_max: int) -> np.ndarray:
    lengths = np.full(n_rows, t_max, np.int32) if lengths is None else np.asarray(lengths)
    if lengths.shape != (n_rows,) or (lengths < 1).any() or (lengths > t_max).any():
        raise ShapeError(f"lengths must be {n_rows} values in [1, {t_max}]")
    return lengths.astype(np.int32)


def softmax(scores: Any, scale: float, scale_div: bool, lengths: Any = None) -> tuple[Any, ...]:
    """The six node outputs of softmax over scores [R, T_MAX, G, REP] (row i uses positions
    j < lengths[i], default all), scaled by `scale` (a float32; divided by it when scale_div):
    (scaled, max, shift, exp, sum, probs), with max and sum [R, G, REP] and the others
    [R, T_MAX, G, REP] (entries j >= lengths[i] are unspecified)."""
    io = Io(scores)
    st = io.put(scores)
    if st.dim() != 4:
        raise ShapeError(f"softmax takes scores [R, T, G, REP], got {tuple(st.shape)}")
    n_rows, t_max, g, rep = st.shape
    lengths = check_lengths(lengths, n_rows, t_max)
    c = io.put(np.array([scale], np.float32))
    big = {n: io.empty(n_rows, t_max, g, rep) for n in ("scaled", "shift", "exp", "probs")}
    small = {n: io.empty(n_rows, g, rep) for n in ("max", "sum")}
    out = big | small
    lens = io.put(lengths, dtype=torch.int32)
    for tw, rows in buckets(lengths).items():
        with quiet():
            softmax_kernel[(len(rows), g)](
                st, c, io.put(rows, dtype=torch.int32), lens, *(out[n] for n in NODES), t_max,
                G=g, REP=rep, SCALE_DIV=bool(scale_div), TW=tw, REPW=next_pow2(rep),
                **LAUNCH_OPTIONS,
            )  # fmt: skip
    return tuple(io.out(out[n]) for n in NODES)


SIGNATURE = {
    **{p: "*fp32" for p in ("s_ptr", "c_ptr")}, "rows_ptr": "*i32", "len_ptr": "*i32",
    **{f"{n}_ptr": "*fp32" for n in NODES}, "T_MAX": "i32",
    **{p: "constexpr" for p in ("G", "REP", "SCALE_DIV", "TW", "REPW")},
}  # fmt: skip


def specializations() -> list[tuple[Any, dict[str, str], dict[str, Any]]]:
    """(kernel, signature, constexprs) of representative launches, for the PTX audit."""
    return [
        (softmax_kernel, SIGNATURE,
         {"G": g, "REP": rep, "SCALE_DIV": div, "TW": tw, "REPW": next_pow2(rep)})
        for g, rep, div, tw in ((1, 1, False, 1), (2, 3, True, 64))
    ]  # fmt: skip
