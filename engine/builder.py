"""Emit IR nodes from model code: tensor handles, index maps, and the composite layers.

The composites (rmsnorm, layernorm, linear, attention) fix how each layer of a model is spelled
in spec primitives — the order of operations of every model refute supports is decided here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refute.engine.ir import Fn, Node, Op, Operand, Program, Reducer, Src, T, WeightSpec
from refute.engine.weights import admit
from refute.errors import ProgramError


def row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of a contiguous row-major tensor (T may only be the outermost dimension)."""
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d if d != T else 0
    return tuple(reversed(strides))


def f32_bits(value: float) -> int:
    return int(np.float32(value).view(np.uint32))


@dataclass(frozen=True)
class Ref:
    """A tensor a node can read: an earlier node's output, a weight, or a constant."""

    src: Src
    index: int
    shape: tuple[int, ...]

    def read(
        self,
        *strides: int,
        offset: int = 0,
        t_stride: int = 0,
        token_stride: int = 0,
        select: Ref | None = None,
    ) -> Operand:
        """An operand over this tensor; with `select` (an index node), token_stride multiplies
        that node's value instead of the input token: a data-dependent read (docs/ir.md)."""
        select_node = -1 if select is None else select.index
        return Operand(
            self.src, self.index, tuple(strides), offset, t_stride, token_stride, select_node
        )

    def whole(self) -> Operand:
        """Read elementwise in its own shape."""
        return self.read(*row_major(self.shape))

    def broadcast(self, shape: tuple[int, ...]) -> Operand:
        """Read in `shape`, numpy-style: trailing dims aligned, missing or size-1 dims repeat."""
        if self.src == Src.CONST:
            return self.read(*([0] * len(shape)))
        own = row_major(self.shape)
        pad = len(shape) - len(self.shape)
        if pad < 0:
            raise ProgramError(f"cannot broadcast {self.shape} to {shape}")
        strides = [0] * pad
        for d, (n, s) in enumerate(zip(self.shape, own, strict=True)):
            if n not in (1, shape[pad + d]):
                raise ProgramError(f"cannot broadcast {self.shape} to {shape}")
            strides.append(0 if n == 1 and shape[pad + d] != 1 else s)
        return self.read(*strides)


def const(value: float) -> Ref:
    return Ref(Src.CONST, f32_bits(value), ())


class ProgramBuilder:
    def __init__(self, max_positions: int, vocab_size: int) -> None:
        self.max_positions = max_positions
        self.vocab_size = vocab_size
        self.nodes: list[Node] = []
        self.weight_specs: list[WeightSpec] = []
        self.weight_values: list[np.ndarray] = []
        self.layer = -1

    # --- tensors ---------------------------------------------------------------------------

    def weight(self, name: str, value: np.ndarray) -> Ref:
        value = admit(value)  # float32, bf16 or fp16 as stored (engine/weights.py)
        self.weight_specs.append(WeightSpec(name, tuple(value.shape)))
        self.weight_values.append(value)
        return Ref(Src.WEIGHT, len(self.weight_specs) - 1, tuple(value.shape))

    def node(
        self,
        name: str,
        op: Op,
        shape: tuple[int, ...],
        operands: list[Operand],
        fn: Fn = Fn.COPY,
        reducer: Reducer = Reducer.NONE,
        reduce_len: int = 0,
    ) -> Ref:
        prefix = f"layers.{self.layer}." if self.layer >= 0 else ""
        self.nodes.append(
            Node(
                prefix + name,
                op,
                tuple(shape),
                tuple(operands),
                fn,
                reducer,
                reduce_len,
                self.layer,
            )
        )
        return Ref(Src.NODE, len(self.nodes) - 1, tuple(shape))

    def map(self, name: str, fn: Fn, shape: tuple[int, ...], *inputs: Ref | Operand) -> Ref:
        operands = [x if isinstance(x, Operand) else x.broadcast(shape) for x in inputs]
        return self.node(name, Op.MAP, shape, operands, fn=fn)

    def reduce(
        self,
        name: str,
        reducer: Reducer,
        fn: Fn,
        shape: tuple[int, ...],
        k: int,
        *operands: Operand,
    ) -> Ref:
        return self.node(
            name, Op.REDUCE, shape, list(operands), fn=fn, reducer=reducer, reduce_len=k
        )

    def build(self, logits: Ref, token: Ref) -> tuple[Program, list[np.ndarray]]:
        program = Program(
            tuple(self.nodes),
            tuple(self.weight_specs),
            self.max_positions,
            self.vocab_size,
            logits.index,
            token.index,
        )
        program.validate()
        return program, self.weight_values

    # --- composites ------------------------------------------------------------------------

    def embedding(self, name: str, table: Ref) -> Ref:
        """Row `token` of a [V, D] table."""
        d = table.shape[1]
        return self.map(name, Fn.COPY, (d,), table.read(1, token_stride=d))

    def linear(
        self, name: str, x: Ref, w: Ref, transposed: bool = False, bias: Ref | None = None
    ) -> Ref:
        """y[n] = tree_sum_k x[k] * W[n, k] (+ b[n]): W is [N, K] (torch Linear), or [K, N]
        when `transposed` (GPT-2's Conv1D)."""
        k = math.prod(x.shape)
        n = w.shape[1] if transposed else w.shape[0]
        w_read = w.read(1, n) if transposed else w.read(k, 1)
        y = self.reduce(name, Reducer.SUM, Fn.MUL, (n,), k, x.read(0, 1), w_read)
        if bias is not None:
            y = self.map(name + ".bias", Fn.ADD, (n,), y, bias)
        return y

    def rmsnorm(self, name: str, x: Ref, weight: Ref, eps: float) -> Ref:
        """x * rsqrt(sum(x*x) / D + eps) * w, as Hugging Face's LlamaRMSNorm orders it."""
        (d,) = x.shape
        ss = self.reduce(f"{name}.sumsq", Reducer.SUM, Fn.MUL, (), d, x.read(1), x.read(1))
        ms = self.map(f"{name}.mean", Fn.DIV, (), ss, const(d))
        r = self.map(
            f"{name}.rsqrt", Fn.RSQRT, (), self.map(f"{name}.eps", Fn.ADD, (), ms, const(eps))
        )
        xr = self.map(f"{name}.scale", Fn.MUL, (d,), x, r)
        return self.map(f"{name}.weight", Fn.MUL, (d,), xr, weight)

    def head_rmsnorm(
        self, name: str, x: Ref, heads: int, head_dim: int, weight: Ref, eps: float
    ) -> Ref:
        """rmsnorm of each head of x, viewed as [heads, head_dim], with one [head_dim] gain
        shared by all heads (Qwen3's q_norm and k_norm): the steps of `rmsnorm`, one per head,
        with the head as an outer index of every node."""
        h, hd = heads, head_dim
        per_elem = x.read(hd, 1)  # (h, k)
        ss = self.reduce(f"{name}.sumsq", Reducer.SUM, Fn.MUL, (h,), hd, per_elem, per_elem)
        ms = self.map(f"{name}.mean", Fn.DIV, (h,), ss, const(hd))
        eps_added = self.map(f"{name}.eps", Fn.ADD, (h,), ms, const(eps))
        r = self.map(f"{name}.rsqrt", Fn.RSQRT, (h,), eps_added)
        xr = self.map(f"{name}.scale", Fn.MUL, (h, hd), x.read(hd, 1), r.read(1, 0))
        return self.map(f"{name}.weight", Fn.MUL, (h, hd), xr, weight.read(0, 1))

    def layernorm(self, name: str, x: Ref, weight: Ref, bias: Ref, eps: float) -> Ref:
        """(x - mean) * rsqrt(var + eps) * w + b with var = sum((x - mean)^2) / D."""
        (d,) = x.shape
        s = self.reduce(f"{name}.sum", Reducer.SUM, Fn.COPY, (), d, x.read(1))
        mean = self.map(f"{name}.mean", Fn.DIV, (), s, const(d))
        xc = self.map(f"{name}.center", Fn.SUB, (d,), x, mean)
        ss = self.reduce(f"{name}.sumsq", Reducer.SUM, Fn.MUL, (), d, xc.read(1), xc.read(1))
        var = self.map(f"{name}.var", Fn.DIV, (), ss, const(d))
        r = self.map(
            f"{name}.rsqrt", Fn.RSQRT, (), self.map(f"{name}.eps", Fn.ADD, (), var, const(eps))
        )
        xn = self.map(f"{name}.scale", Fn.MUL, (d,), xc, r)
        y = self.map(f"{name}.weight", Fn.MUL, (d,), xn, weight)
        return self.map(f"{name}.bias", Fn.ADD, (d,), y, bias)

    def rope(
        self,
        name: str,
        x: Ref,
        heads: int,
        head_dim: int,
        cos: Ref,
        sin_signed: Ref,
        offset: int = 0,
    ) -> Ref:
        """x * cos + rotate_half(x) * sin on [heads, head_dim] read from x at `offset`.

        Viewed as [heads, 2, head_dim/2], rotate_half swaps the halves (index 1 - s, a stride
        of -head_dim/2) and negates the first: the sign lives in the committed sin table."""
        h2 = head_dim // 2
        shape = (heads, 2, h2)
        table = {"t_stride": head_dim}
        xc = self.map(
            f"{name}.cos",
            Fn.MUL,
            shape,
            x.read(head_dim, h2, 1, offset=offset),
            cos.read(0, h2, 1, **table),
        )
        xs = self.map(
            f"{name}.sin",
            Fn.MUL,
            shape,
            x.read(head_dim, -h2, 1, offset=offset + h2),
            sin_signed.read(0, h2, 1, **table),
        )
        return self.map(name, Fn.ADD, shape, xc, xs)

    def cache(self, name: str, x: Ref, rows: int, width: int, offset: int = 0) -> Ref:
        """Append x[offset : offset + rows*width] as row t of a [T, rows, width] cache."""
        return self.node(name, Op.CACHE_APPEND, (T, rows, width), [x.read(width, 1, offset=offset)])

    def attention(
        self,
        name: str,
        q: Ref,
        k_cache: Ref,
        v_cache: Ref,
        heads: int,
        kv_heads: int,
        head_dim: int,
        scale: float,
        scale_fn: Fn,
        q_offset: int = 0,
        softcap: float = 0.0,
        mask: Ref | None = None,
    ) -> Ref:
        """softmax(q k^T * scale) v over the positions so far, grouped-query: head h reads
        kv head h // (heads / kv_heads). Scores are [T, G, rep] so T stays outermost.

        With `softcap`, the scaled scores become cap * tanh(scores / cap) (Gemma 2); with
        `mask` (a [max_positions] table indexed by t - j, see models.window_mask), it is added
        next, as transformers adds its attention mask: a sliding window is one MAP(ADD)."""
        g, rep, hd = kv_heads, heads // kv_heads, head_dim
        s_shape = (T, g, rep)
        scores = self.reduce(
            f"{name}.scores",
            Reducer.SUM,
            Fn.MUL,
            s_shape,
            hd,
            q.read(0, rep * hd, hd, 1, offset=q_offset),
            k_cache.read(g * hd, hd, 0, 1),
        )
        scaled = self.map(
            f"{name}.scaled", scale_fn, s_shape, scores.whole(), const(scale).broadcast(s_shape)
        )
        if softcap:
            scaled = self.softcap(f"{name}.softcap", scaled, softcap)
        if mask is not None:  # mask[t - j]: t_stride 1, stride -1 on the key index j
            scaled = self.map(
                f"{name}.window", Fn.ADD, s_shape, scaled.whole(), mask.read(-1, 0, 0, t_stride=1)
            )
        s_by_row = scaled.read(rep, 1, g * rep)  # (g, r, k=j)
        m = self.reduce(f"{name}.max", Reducer.MAX, Fn.COPY, (g, rep), T, s_by_row)
        d = self.map(f"{name}.shift", Fn.SUB, s_shape, scaled.whole(), m.read(0, rep, 1))
        e = self.map(f"{name}.exp", Fn.EXP, s_shape, d.whole())
        z = self.reduce(f"{name}.sum", Reducer.SUM, Fn.COPY, (g, rep), T, e.read(rep, 1, g * rep))
        p = self.map(f"{name}.probs", Fn.DIV, s_shape, e.whole(), z.read(0, rep, 1))
        return self.reduce(
            f"{name}.out",
            Reducer.SUM,
            Fn.MUL,
            (g, rep, hd),
            T,
            p.read(rep, 1, 0, g * rep),
            v_cache.read(hd, 0, 1, g * hd),
        )

    def softcap(self, name: str, x: Ref, cap: float) -> Ref:
        """cap * tanh(x / cap), elementwise, in transformers' order: three spec functions (DIV,
        TANH, MUL) with the cap a CONST, so no new scalar function is needed."""
        c = const(cap)
        divided = self.map(f"{name}.div", Fn.DIV, x.shape, x.whole(), c.broadcast(x.shape))
        tanh = self.map(f"{name}.tanh", Fn.TANH, x.shape, divided.whole())
        return self.map(name, Fn.MUL, x.shape, tanh.whole(), c.broadcast(x.shape))

    def softmax(self, name: str, x: Ref) -> Ref:
        """exp(x - max) / sum over a vector, the steps of attention's softmax."""
        (e,) = x.shape
        m = self.reduce(f"{name}.max", Reducer.MAX, Fn.COPY, (), e, x.read(1))
        shifted = self.map(f"{name}.shift", Fn.SUB, (e,), x, m)
        ex = self.map(f"{name}.exp", Fn.EXP, (e,), shifted)
        z = self.reduce(f"{name}.sum", Reducer.SUM, Fn.COPY, (), e, ex.read(1))
        return self.map(f"{name}.probs", Fn.DIV, (e,), ex, z)

    def top_k(self, name: str, scores: Ref, k: int, mask: Ref) -> list[Ref]:
        """The indices of the k largest scores, as k ARGMAX passes (docs/spec.md §5, top_k): pass j
        reads the scores with every earlier pick masked to -inf, by adding mask[E - 1 - pick +
        e] (`mask` is [2E - 1], -inf at E - 1, +0 elsewhere; read by the pick, a selector)."""
        (e,) = scores.shape
        picks: list[Ref] = []
        current = scores
        for j in range(k):
            if j:
                hole = mask.read(1, offset=e - 1, token_stride=-1, select=picks[-1])
                current = self.map(f"{name}.masked{j}", Fn.ADD, (e,), current.whole(), hole)
            picks.append(
                self.reduce(f"{name}.{j}", Reducer.ARGMAX, Fn.COPY, (), e, current.read(1))
            )
        return picks

    def expert_linear(self, name: str, x: Ref, w: Ref, pick: Ref) -> Ref:
        """y[n] = tree_sum_k x[k] * W[pick, n, k] of a stacked [E, N, K] weight: expert `pick`'s
        rows are read at offset pick * N * K, the value of the index node `pick`."""
        _, n, k = w.shape
        w_read = w.read(k, 1, token_stride=n * k, select=pick)
        return self.reduce(name, Reducer.SUM, Fn.MUL, (n,), k, x.read(0, 1), w_read)

    def moe(
        self,
        name: str,
        x: Ref,
        router: Ref,
        experts: tuple[Ref, Ref, Ref],
        k: int,
        norm_topk: bool,
        act: tuple[str, Fn],
        mask: Ref,
    ) -> Ref:
        """A sparse mixture of experts as transformers' Mixtral / Qwen-MoE blocks compute it:
        probs = softmax(router x); the top k of probs; weights = the selected probs (divided by
        their sum with `norm_topk`); sum over the k picks, in pick order, of weight_j *
        down_j(act(gate_j x) * up_j x) with expert pick_j's rows. Only those k experts are read."""
        if k < 1:
            raise ProgramError("a mixture of experts runs at least one expert")
        gate, up, down = experts
        d = down.shape[1]
        f = gate.shape[1]
        logits = self.linear(f"{name}.router", x, router)
        probs = self.softmax(f"{name}.router.softmax", logits)
        picks = self.top_k(f"{name}.topk", probs, k, mask)
        weights = [
            self.map(f"{name}.topk.{j}.prob", Fn.COPY, (), probs.read(token_stride=1, select=p))
            for j, p in enumerate(picks)
        ]
        if norm_topk:
            total = weights[0]
            for j in range(1, k):
                total = self.map(f"{name}.topk.total{j}", Fn.ADD, (), total, weights[j])
            weights = [
                self.map(f"{name}.topk.{j}.weight", Fn.DIV, (), w, total)
                for j, w in enumerate(weights)
            ]
        out = None
        for j, (p, w) in enumerate(zip(picks, weights, strict=True)):
            e = f"{name}.expert{j}"
            g = self.expert_linear(f"{e}.gate", x, gate, p)
            u = self.expert_linear(f"{e}.up", x, up, p)
            a = self.map(f"{e}.{act[0]}", act[1], (f,), g)
            h = self.map(f"{e}.gated", Fn.MUL, (f,), a, u)
            y = self.map(
                f"{e}.weighted", Fn.MUL, (d,), self.expert_linear(f"{e}.down", h, down, p), w
            )
            out = y if out is None else self.map(f"{name}.sum{j}", Fn.ADD, (d,), out, y)
        return out  # type: ignore[return-value]

    def sample(self, name: str, logits: Ref) -> Ref:
        (v,) = logits.shape
        return self.node(name, Op.SAMPLE, (), [logits.read(1)], reduce_len=v)
