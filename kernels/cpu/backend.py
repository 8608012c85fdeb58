"""`CPUBackend`: the watchers' default backend — fused tree dots, the reference for the rest.

A dot against a weight (a `linear`: REDUCE(SUM, MUL) of a node read as x[k] and a weight read as
W[n, k] or W[k, n]) is where nearly all the arithmetic of a transformer is; it runs through the
fused numba kernels of `refute.kernels.cpu.tree_dot` for all rows at once (a GEMV for one row, a
GEMM for a prefill or a batch).

The other nodes are cheap in arithmetic but, at decode, dominated by the reference backend's
per-node overhead (strided views, concatenating and splitting rows: ~0.1 ms a node, hundreds of
nodes a token). Once the kernels are loaded, MAP, REDUCE (SUM, MAX, ARGMAX), cache-append and
greedy SAMPLE nodes of the spec functions it has run a row at a time through one compiled loop
that reads the IR's affine maps directly (`refute.kernels.cpu.nodes`, a few us a node). Before
that (the default backend's numpy phase), and for what the loop lacks, two light paths keep the
reference's bits and only change how operands are gathered: MAP nodes call the spec function on
operands taken as slices or constants (exp, sigmoid and silu in numba,
`refute.kernels.cpu.elementwise`), and one-row REDUCE(SUM/MAX) nodes reduce the reference's
terms with the numba trees of `refute.kernels.cpu.reduce`. Everything else (sampling at a
temperature, tanh and gelu, the other nodes before the load) goes to `ReferenceBackend`, which
defines the bits.

Start-up: importing numba and loading its compiled kernels costs ~0.4 s per process even from
the on-disk cache (more on a first compile), which is longer than a short run of a tiny model
takes on numpy. The numba modules are therefore imported only when the kernels are first
needed, and `CPUBackend(load_after_s=...)` may wait until its numpy paths have spent that long
(ski rental: never more than twice the better choice); the bits are the same either way.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from refute.engine import merkle
from refute.engine.backend import FUNCTIONS, Backend, ReferenceBackend, Row, index_dims, strided
from refute.engine.builder import row_major
from refute.engine.ir import Fn, Node, Op, Operand, Program, Reducer, Src
from refute.engine.weights import is_narrow, widen
from refute.kernels.cpu.split import SplitChooser

if TYPE_CHECKING:
    from refute.kernels.cpu.pack_cache import PackCache
    from refute.kernels.cpu.tree_dot import PackedWeight


@dataclass(frozen=True)
class DotPlan:
    """How to read a linear node: x = node source[x_offset : x_offset + k], W from a weight."""

    x_operand: int  # index of the node operand (the other one is the weight)
    x_offset: int
    w_offset: int
    k: int
    n: int
    transposed: bool  # W stored [K, N] (strides (1, N)) rather than [N, K] (strides (K, 1))


def _plain(op: Operand) -> bool:
    return op.t_stride == 0 and op.token_stride == 0


def dot_plan(node: Node) -> DotPlan | None:
    """The fused-dot reading of `node`, or None when it is not a dot against a weight."""
    if not (
        node.op == Op.REDUCE
        and node.reducer == Reducer.SUM
        and node.fn == Fn.MUL
        and len(node.shape) == 1
        and node.shape[0] >= 0
        and node.reduce_len >= 0
        and len(node.operands) == 2
    ):
        return None
    n, k = node.shape[0], node.reduce_len
    for xi in (0, 1):  # mul is commutative bit for bit (NaNs are canonicalised)
        x, w = node.operands[xi], node.operands[1 - xi]
        if not (x.src == Src.NODE and w.src == Src.WEIGHT and _plain(x) and _plain(w)):
            continue
        if x.strides != (0, 1):
            continue
        if w.strides == (k, 1):
            return DotPlan(xi, x.offset, w.offset, k, n, transposed=False)
        if w.strides == (1, n):
            return DotPlan(xi, x.offset, w.offset, k, n, transposed=True)
    return None


LOAD_COST_S = 0.4
"""About what importing numba and loading the kernels from the on-disk cache costs a process
(measured: docs/performance.md); the default backend's `load_after_s`."""

COMPILE_NOTICE = "compiling CPU kernels (once)..."

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
"""The cores this process may run on (asked once)."""

WIDEN_AT_MOST = 1 << 20
"""Elements of a narrow weight the compiled node loop keeps widened (norm gains, biases); a
larger one (an embedding table) is read a row at a time instead."""


@dataclass(frozen=True)
class Kernels:
    """The numba kernels, imported on first use (importing numba alone takes ~0.2 s)."""

    functions: dict[Fn, Callable[..., np.ndarray]]  # spec functions, numba where it has one
    trees: dict[Reducer, Callable[[np.ndarray], np.ndarray]]  # the numba SUM and MAX trees
    node_plan: Callable[[Node], Any]  # a non-dot node's compiled reading (`nodes.plan`)
    node_run: Callable[..., np.ndarray | None]  # one row of it (`nodes.run`)
    matmul: Callable[..., np.ndarray]
    pack: Callable[..., PackedWeight]
    modules: tuple[ModuleType, ...]  # whose numba dispatchers these are
    threads: Callable[[], int]  # numba's thread count now (numba.get_num_threads)


_KERNELS: Kernels | None = None
_COMPILE_CALLBACKS: list[Callable[[], None]] = []


def kernels() -> Kernels:
    """Import the numba kernels (once per process) and watch for compilations."""
    global _KERNELS
    if _KERNELS is None:
        import numba
        from numba.core import event

        from refute.kernels.cpu import elementwise, nodes, reduce, sha256, tree_dot

        class _FirstCompile(event.Listener):
            """Calls the waiting callbacks when numba starts compiling (not on a cache load)."""

            def on_start(self, _event: event.Event) -> None:
                while _COMPILE_CALLBACKS:
                    _COMPILE_CALLBACKS.pop(0)()

            def on_end(self, _event: event.Event) -> None:
                pass

        event.register("numba:compile", _FirstCompile())
        # spec functions with a numba version (bit-identical; tests/test_cpu_backend.py checks)
        functions = {
            **FUNCTIONS,
            Fn.EXP: elementwise.exp,
            Fn.SIGMOID: elementwise.sigmoid,
            Fn.SILU: elementwise.silu,
        }
        _KERNELS = Kernels(
            functions, {Reducer.SUM: reduce.tree_sum, Reducer.MAX: reduce.tree_max},
            nodes.plan, nodes.run, tree_dot.matmul, tree_dot.pack,
            (elementwise, nodes, reduce, tree_dot, sha256), numba.get_num_threads,
        )  # fmt: skip
        if not sha256.UNAVAILABLE:  # the step commitments in compiled loops too (same roots)
            merkle.use_batch_hasher(sha256)
    return _KERNELS


def on_first_compile(callback: Callable[[], None]) -> None:
    """Call `callback` once, when numba next starts compiling a kernel (a cache miss)."""
    _COMPILE_CALLBACKS.append(callback)


def compile_stats() -> dict[str, tuple[int, int]]:
    """(loads from the on-disk cache, compilations) of each numba kernel in this process."""
    from numba.core.dispatcher import Dispatcher

    found: dict[str, Dispatcher] = {}
    for module in kernels().modules:
        for value in vars(module).values():
            for d in value.values() if isinstance(value, dict) else (value,):
                if isinstance(d, Dispatcher):
                    found[d.py_func.__qualname__] = d
    return {
        name: (sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()))
        for name, d in sorted(found.items())
    }


class CPUBackend:
    """Fused canonical GEMV/GEMM for linear layers; `fallback` (the reference) for the rest.

    `parallel`: run the kernels on numba's threads (True), serially (False), or (None) small
    products serially, large ones threaded and those between whichever way they ran faster
    here (`split.SplitChooser`). `load_after_s`: None loads the numba kernels on first
    use; a number runs every node on numpy (the reference's functions, the light paths) until
    that many seconds of evaluation have passed, then loads them — what the default backend does
    (`LOAD_COST_S`), so that a short run does not pay more for loading than it can gain. The bits
    are the same either way. `on_compile` is called once if numba has to compile a kernel (no
    usable on-disk cache), before it does: the CLI says so."""

    name = "cpu"

    def __init__(
        self,
        fallback: Backend | None = None,
        parallel: bool | None = None,
        load_after_s: float | None = None,
        on_compile: Callable[[], None] | None = None,
        pack_cache: PackCache | None = None,
    ) -> None:
        self.fallback = fallback or ReferenceBackend()
        self.pack_cache = pack_cache
        self.parallel = parallel
        self.load_after_s = load_after_s
        self.on_compile = on_compile
        self.numpy_s = 0.0  # evaluation time spent before the kernels were loaded
        self._kernels: Kernels | None = None
        self._plans: dict[Node, DotPlan | None] = {}
        self._calls: dict[Node, Any] = {}  # node -> its `nodes.NodeCall`, or None
        self._wide: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # narrow weight, widened
        self._split = SplitChooser()  # parallel=None: serial or threaded, by measured time
        # (id(source), offset, transposed, k, n) -> (source kept alive, its packed panels)
        self._packed: dict[tuple[int, int, bool, int, int], tuple[np.ndarray, PackedWeight]] = {}

    def attach(self, model: Any, flat_weights: list[np.ndarray]) -> None:
        """An executor's weights (its flat arrays): their panels may come from the pack cache."""
        if self.pack_cache is not None:
            self.pack_cache.attach(model, flat_weights)

    @property
    def loaded(self) -> bool:
        """Whether this backend runs the numba kernels yet."""
        return self._kernels is not None

    def leaves_a_core(self) -> bool:
        """Whether evaluation on the calling thread leaves a core unused (its numba threads, or
        serial kernels, fewer than the cores): there the executor hashes each step on a thread
        of its own beside the next step's evaluation. Where the evaluation has every core, a
        hashing thread only takes time from it (measured in docs/performance.md)."""
        k = self._kernels
        return k is not None and (self.parallel is False or k.threads() < CPUS)

    def _load(self) -> Kernels:
        if self.on_compile is not None:
            on_first_compile(self.on_compile)
        self._kernels = kernels()
        return self._kernels

    def evaluate(self, program: Program, node: Node, rows: list[Row]) -> list[np.ndarray]:
        """Each row's flat output of `node`; dots against weights run fused, all rows at once."""
        k = self._kernels
        if k is None:
            if self.load_after_s is None or self.numpy_s >= self.load_after_s:
                k = self._load()
            else:
                start = time.perf_counter()
                try:
                    if node.op == Op.MAP:
                        return [self._map_row(program, node, row, FUNCTIONS) for row in rows]
                    return self.fallback.evaluate(program, node, rows)
                finally:
                    self.numpy_s += time.perf_counter() - start
        plan = self._plans.get(node, False)
        if plan is False:
            plan = self._plans[node] = dot_plan(node)
        if plan is None or not rows:
            call = self._calls.get(node, False)
            if call is False:
                call = self._calls[node] = k.node_plan(node)
            if call is not None:
                done = [k.node_run(call, row, self._float32) for row in rows]
                if all(out is not None for out in done):
                    return done
            if node.op == Op.MAP:
                return [self._map_row(program, node, row, k.functions) for row in rows]
            if node.op == Op.REDUCE and len(rows) == 1 and node.reducer in k.trees:
                return [self._reduce_row(program, node, rows[0], k.trees[node.reducer])]
            return self.fallback.evaluate(program, node, rows)
        weight = self.packed(rows[0].sources[1 - plan.x_operand], plan)
        lo, hi = plan.x_offset, plan.x_offset + plan.k
        if len(rows) == 1:
            x = rows[0].sources[plan.x_operand][lo:hi][None, :]
        else:
            x = np.stack([row.sources[plan.x_operand][lo:hi] for row in rows])
        if self.parallel is not None:
            return list(k.matmul(x, weight, parallel=self.parallel))
        key = (plan.k, plan.n, x.shape[0], weight.panels.dtype.char)
        work = x.shape[0] * weight.panels.shape[1] * plan.n
        parallel = self._split.choose(key, work, k.threads())
        start = time.perf_counter()
        out = k.matmul(x, weight, parallel=parallel)
        self._split.record(key, parallel, time.perf_counter() - start)
        return list(out)

    def _float32(self, source: np.ndarray) -> np.ndarray | None:
        """A bf16/fp16 weight widened exactly, once (weights are immutable), for the compiled
        node loop; None for a large one (an embedding table: its own path reads one row) and
        for other dtypes (token and index outputs)."""
        if not is_narrow(source):  # (not kept: a node's output lives for one step)
            return None
        hit = self._wide.get(id(source))
        if hit is not None and hit[0] is source:
            return hit[1]
        wide = widen(source) if source.size <= WIDEN_AT_MOST else None
        self._wide[id(source)] = (source, wide)
        return wide

    @staticmethod
    def _operand(
        source: np.ndarray, op: Operand, dims: tuple[int, ...], size: int, row: Row
    ) -> np.ndarray | np.float32:
        """A MAP operand as a flat slice (contiguous read), a scalar (constant), or a gather."""
        if op.src == Src.CONST:
            return source[0]
        if op.strides == row_major(dims):
            base = op.offset + op.t_stride * row.position + op.token_stride * row.token
            return widen(source[base : base + size])  # a bf16/fp16 weight: exactly
        return strided(source, op, dims, row.position, row.token).reshape(-1)

    def _map_row(
        self, program: Program, node: Node, row: Row, functions: dict[Fn, Callable]
    ) -> np.ndarray:
        """The reference's elementwise function on this row's operands, gathered cheaply."""
        dims = index_dims(program, node, row.position)
        size = math.prod(dims)
        args = [
            self._operand(src, op, dims, size, row)
            for src, op in zip(row.sources, node.operands, strict=True)
        ]
        out = np.asarray(functions[node.fn](*args), dtype=np.float32)
        if out.shape != (size,) or node.fn == Fn.COPY:  # constants broadcast; never alias
            out = np.array(np.broadcast_to(out, (size,)), dtype=np.float32)
        return out

    def _reduce_row(
        self, program: Program, node: Node, row: Row, tree: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """REDUCE(SUM or MAX): the reference's terms (strided views, its function), the numba
        tree."""
        dims = index_dims(program, node, row.position)
        views = [
            strided(src, op, dims, row.position, row.token)
            for src, op in zip(row.sources, node.operands, strict=True)
        ]
        terms = np.asarray(FUNCTIONS[node.fn](*views), dtype=np.float32)
        return tree(np.broadcast_to(terms, dims)).reshape(-1)

    def packed(self, source: np.ndarray, plan: DotPlan) -> PackedWeight:
        """The weight's panels, packed on first use and kept (weights are immutable); a bf16
        weight stays 16-bit in its panels (`tree_dot.pack`)."""
        key = (id(source), plan.w_offset, plan.transposed, plan.k, plan.n)
        hit = self._packed.get(key)
        if hit is not None and hit[0] is source:
            return hit[1]
        flat = source[plan.w_offset : plan.w_offset + plan.k * plan.n]
        shape = (plan.k, plan.n) if plan.transposed else (plan.n, plan.k)
        kernels = self._kernels or self._load()

        def pack() -> PackedWeight:
            return kernels.pack(flat.reshape(shape), transposed=plan.transposed)

        weight = None
        if self.pack_cache is not None:
            layout = (plan.w_offset, plan.transposed, plan.k, plan.n)
            weight = self.pack_cache.panels(source, layout, pack)
        if weight is None:
            weight = pack()
        self._packed[key] = (source, weight)
        return weight
