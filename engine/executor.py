"""Run a program over token positions: KV caches, batching, sampling, and the trace.

Rows — (sequence, position) pairs — are evaluated together node by node: a prefill evaluates all
prompt positions of all sequences at once, a decode step one position per sequence. Every row's
outputs are what token-at-a-time execution of that sequence alone would give, bit for bit (the
tests check it), because each node's output element is a fixed function of its inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from refute.engine import committer, merkle
from refute.engine.backend import Backend, GroupRow, ReferenceBackend, Row
from refute.engine.ir import Op, Src
from refute.engine.model import Model
from refute.engine.trace import Trace, prompt_root
from refute.errors import ExecutionError
from refute.kernels.reference import F32

U32_MAX = 2**32


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    seed: int = 0

    @property
    def positions(self) -> int:
        """Positions executed: every prompt token, then every generated token but the last."""
        return len(self.prompt) + self.max_new_tokens - 1


class Cache:
    """One sequence's KV cache of one CACHE_APPEND node, with its incremental commitment (of
    the rows a recording executor appended: all of them, or none)."""

    def __init__(self, row_size: int) -> None:
        self.row_size = row_size
        self.data = np.empty(0, dtype=F32)
        self.rows = 0
        self.commitment = merkle.GrowingTensor()

    def append(self, row: np.ndarray) -> np.ndarray:
        need = (self.rows + 1) * self.row_size
        if need > self.data.size:
            grown = np.empty(max(need, 2 * self.data.size), dtype=F32)
            grown[: self.data.size] = self.data
            self.data = grown
        self.data[self.rows * self.row_size : need] = row
        self.rows += 1
        return self.data[:need]

    def prefix(self, rows: int) -> np.ndarray:
        return self.data[: rows * self.row_size]


@dataclass
class Generation:
    """One request's execution: its tokens, caches and trace."""

    request: Request
    tokens: list[int]  # prompt followed by generated tokens
    trace: Trace
    caches: dict[int, Cache] = field(default_factory=dict)
    captured: dict[int, list[np.ndarray]] = field(default_factory=dict)  # node -> per position
    executed: int = 0  # positions evaluated (the trace catches up when the generation ends)

    @property
    def output_tokens(self) -> list[int]:
        return self.tokens[len(self.request.prompt) :]

    @property
    def done(self) -> bool:
        return len(self.output_tokens) >= self.request.max_new_tokens


class Executor:
    def __init__(
        self,
        model: Model,
        backend: Backend | None = None,
        record: bool = True,
        capture: tuple[int, ...] = (),
        tamper: Callable[[int, int, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """`record`: commit every output and keep the trace (False: evaluate only; the trace
        stays empty). `tamper(position, node_id, output)` may replace an output before it is
        committed and used: it simulates a cheating prover in tests and in the demo."""
        self.model = model
        self.program = model.program
        self.backend = backend or ReferenceBackend()
        self.record = record
        self.capture = capture
        self.tamper = tamper
        self._flat_weights = [w.reshape(-1) for w in model.weights]
        attach = getattr(self.backend, "attach", None)
        if attach is not None:  # the CPU backend's pack cache names panels by tensor root
            attach(model, self._flat_weights)
        self._cache_nodes = frozenset(
            i for i, node in enumerate(self.program.nodes) if node.op == Op.CACHE_APPEND
        )
        # the outputs committed at the end of a step (a cache's root grows with the cache
        # instead): the float32 ones, then the index ones (one merkle.tensor_roots call each: a
        # list of one dtype is copied in one numpy call)
        step = [i for i in range(len(self.program.nodes)) if i not in self._cache_nodes]
        self._step_nodes = tuple(
            nodes
            for index in (False, True)
            if (nodes := [i for i in step if self.program.nodes[i].outputs_index == index])
        )
        # per node, what each operand reads: (node output?, index) or a constant's array
        # (built once: hundreds of nodes a position make per-call work the cost)
        self._reads = [
            tuple(
                np.array([op.index], dtype=np.uint32).view(F32) if op.src == Src.CONST
                else (op.src == Src.NODE, op.index)
                for op in node.operands
            )
            for node in self.program.nodes
        ]  # fmt: skip
        self._selectors = [node.selector for node in self.program.nodes]
        # each step's hashing (its outputs, caches and trace records) goes one step behind on a
        # thread of its own where the hasher releases the GIL, a core is free and the outputs
        # are large (engine/committer.py)
        self._leaves_a_core = getattr(self.backend, "leaves_a_core", _never)
        # (the chunks of the first position: caches aside, outputs that grow counted at one)
        position_chunks = sum(
            -(-self.program.output_size(i, 0) // merkle.CHUNK_VALUES)
            for nodes in self._step_nodes
            for i in nodes
        )
        self._large_steps = position_chunks >= committer.BACKGROUND_MIN_CHUNKS
        # accumulated wall time, for reports: computing and keeping outputs; the commitments'
        # time on this thread (the hashing itself when inline; else handing it over and waiting
        # for it); and the hashing's own time on the commit thread
        self.seconds = {"evaluate": 0.0, "commit": 0.0, "commit_background": 0.0}

    # --- public ------------------------------------------------------------------------------

    def generate(
        self,
        requests: list[Request],
        prefill: bool = True,
        on_position: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        """Run every request to its max_new_tokens; `on_position(n)` reports n rows done."""
        gens = [self._start(r) for r in requests]
        commits = committer.Committer(setup=_hash_serially)  # this call's, whatever the thread
        try:
            if prefill:
                rows = [(g, t) for g in gens for t in range(len(g.request.prompt))]
                self._run_rows(rows, commits)
                if on_position:
                    on_position(len(rows))
            while rows := [(g, g.executed) for g in gens if not g.done]:
                self._run_rows(rows, commits)
                if on_position:
                    on_position(len(rows))
        except BaseException:
            commits.close(discard=True)  # no hashing outlives the failed call
            raise
        start = time.perf_counter()
        commits.close()  # every trace complete
        self.seconds["commit"] += time.perf_counter() - start
        return gens

    def recompute(self, gen: Generation, position: int) -> list[np.ndarray]:
        """Every node's output at `position`, recomputed from the token and the cache prefixes
        (the prover keeps roots, not tensors: this is how it opens any record on demand)."""
        if not 0 <= position < gen.executed:
            raise ExecutionError(f"position {position} was not executed")
        shadow = Generation(gen.request, gen.tokens[: position + 1], Trace(len(self.program.nodes)))
        for node_id, cache in gen.caches.items():
            c = Cache(cache.row_size)
            for r in range(position):
                c.append(cache.prefix(r + 1)[r * cache.row_size :])
            shadow.caches[node_id] = c
        outputs, _ = self._evaluate([(shadow, position)], record=False)
        return outputs[0]

    # --- internals ---------------------------------------------------------------------------

    def _start(self, request: Request) -> Generation:
        p = self.program
        if not request.prompt:
            raise ExecutionError("the prompt must hold at least one token")
        if request.max_new_tokens < 1:
            raise ExecutionError("max_new_tokens must be at least 1")
        bad = [t for t in request.prompt if not 0 <= t < p.vocab_size]
        if bad:
            raise ExecutionError(
                f"prompt tokens {bad[:5]} outside the vocabulary [0, {p.vocab_size})"
            )
        if request.positions > p.max_positions:
            raise ExecutionError(
                f"{request.positions} positions exceed the model's {p.max_positions}"
                + getattr(self.model, "context_note", "")
            )
        if not 0 <= request.seed < 2**256:
            raise ExecutionError("seed must be a uint256")
        if not (np.isfinite(request.temperature) and request.temperature >= 0):
            raise ExecutionError("temperature must be finite and >= 0")
        gen = Generation(request, list(request.prompt), Trace(len(p.nodes)))
        for node_id, node in enumerate(p.nodes):
            if node.op == Op.CACHE_APPEND:
                gen.caches[node_id] = Cache(int(np.prod(node.shape[1:])))
        return gen

    def _run_rows(self, rows: list[tuple[Generation, int]], commits: committer.Committer) -> None:
        outputs, appends = self._evaluate(rows, record=self.record)
        for (gen, t), outs in zip(rows, outputs, strict=True):
            if t != gen.executed:
                raise ExecutionError("positions of a sequence must run in order")
            gen.executed += 1
            for node_id in self.capture:
                gen.captured.setdefault(node_id, []).append(outs[node_id].copy())
            if t >= len(gen.request.prompt) - 1 and not gen.done:
                token = int(outs[self.program.token_node][0])
                if not 0 <= token < self.program.vocab_size:
                    raise ExecutionError(f"sampled token {token} outside the vocabulary")
                gen.tokens.append(token)
        if not self.record:
            return
        start = time.perf_counter()
        # on the commit thread where the hashing releases the GIL (compiled), a core is free
        # and the outputs are large
        background = (
            self._large_steps and merkle.batch_hasher() is not None and self._leaves_a_core()
        )
        commits.submit(self._commit_job(rows, outputs, appends, background), background)
        self.seconds["commit"] += time.perf_counter() - start

    def _commit_job(
        self,
        rows: list[tuple[Generation, int]],
        outputs: list[list[np.ndarray]],
        appends: list[tuple[int, int, merkle.GrowingTensor, np.ndarray]],
        background: bool,
    ) -> Callable[[], None]:
        """The hashing of one step: each appended cache row grows its cache's root, every other
        output is committed together (merkle.tensor_roots, a call per dtype), and each row's
        roots become its trace position's records."""
        n, step_nodes = len(self.program.nodes), self._step_nodes

        def job() -> None:
            start = time.perf_counter()
            roots = [[merkle.EMPTY] * n for _ in rows]
            for i, node_id, commitment, row in appends:
                roots[i][node_id] = commitment.extend_root(row)
            for step in step_nodes:
                done = merkle.tensor_roots([outs[k] for outs in outputs for k in step])
                for i, row_roots in enumerate(roots):
                    row_done = done[i * len(step) : (i + 1) * len(step)]
                    for k, root in zip(step, row_done, strict=True):
                        row_roots[k] = root
            for (gen, _), row_roots in zip(rows, roots, strict=True):
                gen.trace.add_position(row_roots)
            if background:  # (inline, it is part of the submitting thread's commit time)
                self.seconds["commit_background"] += time.perf_counter() - start

        return job

    def _evaluate(
        self, rows: list[tuple[Generation, int]], record: bool
    ) -> tuple[list[list[np.ndarray]], list[tuple[int, int, merkle.GrowingTensor, np.ndarray]]]:
        """Every row's outputs of every node, and (when recording) the cache rows appended:
        (row, node, the cache's commitment, the row's values), for the commit job to hash."""
        program = self.program
        n = len(program.nodes)
        outs: list[list[np.ndarray]] = [[None] * n for _ in rows]  # type: ignore[list-item]
        appends: list[tuple[int, int, merkle.GrowingTensor, np.ndarray]] = []
        groups = self.backend.groups(program) if hasattr(self.backend, "groups") else None
        cache_nodes, n_rows = self._cache_nodes, len(rows)
        start = time.perf_counter()
        for group in groups or [(i,) for i in range(n)]:
            if len(group) == 1:
                node_id = group[0]
                node = program.nodes[node_id]
                inputs = [
                    self._row_inputs(node_id, gen, t, outs[i]) for i, (gen, t) in enumerate(rows)
                ]
                per_node = [self.backend.evaluate(program, node, inputs)]
            else:  # a fused group: the backend reads earlier outputs and returns every node's
                per_node = self.backend.evaluate_group(program, group, [
                    GroupRow(t, gen.tokens[t], gen.request.temperature, gen.request.seed,
                             outs[i], self._flat_weights)
                    for i, (gen, t) in enumerate(rows)
                ])  # fmt: skip
            for node_id, results in zip(group, per_node, strict=True):
                if self.tamper is None and node_id not in cache_nodes and len(results) == n_rows:
                    for row_outs, result in zip(outs, results, strict=True):  # _store's usual
                        row_outs[node_id] = result
                else:  # a cache or a tampered output
                    self._store(node_id, rows, results, outs, appends if record else None)
        self.seconds["evaluate"] += time.perf_counter() - start
        return outs, appends

    def _store(
        self,
        node_id: int,
        rows: list[tuple[Generation, int]],
        results: list[np.ndarray],
        outs: list[list[np.ndarray]],
        appends: list[tuple[int, int, merkle.GrowingTensor, np.ndarray]] | None,
    ) -> None:
        """Keep each row's output of a node (after the tamper hook), appending to its cache;
        a recorded cache row goes to `appends`, for its root to grow with the commit job."""
        node = self.program.nodes[node_id]
        for i, ((gen, t), result) in enumerate(zip(rows, results, strict=True)):
            if self.tamper is not None:
                result = self.tamper(t, node_id, result)
            if node.op == Op.CACHE_APPEND:
                cache = gen.caches[node_id]
                if cache.rows != t:
                    raise ExecutionError("cache rows out of step with positions")
                outs[i][node_id] = cache.append(result)
                if appends is not None:
                    appends.append((i, node_id, cache.commitment, result))
                continue
            outs[i][node_id] = result

    def _row_inputs(self, node_id: int, gen: Generation, t: int, outs: list[np.ndarray]) -> Row:
        weights = self._flat_weights
        sources = [
            read if isinstance(read, np.ndarray) else outs[read[1]] if read[0] else weights[read[1]]
            for read in self._reads[node_id]
        ]
        r = gen.request
        token = gen.tokens[t]
        if self._selectors[node_id] >= 0:
            token = self._selected(self.program.nodes[node_id], token, outs)
        return Row(t, token, sources, r.temperature, r.seed)

    def _selected(self, node, token: int, outs: list[np.ndarray]) -> int:
        """What the node's token_stride multiplies: the input token, or the value of its
        selector (an expert index), checked in range so that no read can leave its source."""
        select = node.selector
        if select < 0:
            return token
        value = int(outs[select][0])
        bound = self.program.selector_range(select, len(self.program.nodes))
        if not 0 <= value < bound:
            raise ExecutionError(f"{node.name} selects {value}, outside [0, {bound})")
        return value


def _never() -> bool:
    return False


def _hash_serially() -> None:
    """The commit thread's set-up: its hashing never launches threads of its own (the
    evaluation has the cores; its parallel kernels and this thread's would wait on each other)."""
    batch = merkle.batch_hasher()
    if batch is not None:
        batch.serial_here()


def summary(gen: Generation, model: Model) -> dict:
    """The roots and tokens a claim about this generation commits to."""
    return {
        "model_root": model.root,
        "weights_root": model.weights_root,
        "program_root": model.program_root,
        "prompt_root": prompt_root(list(gen.request.prompt)),
        "trace_root": gen.trace.root(),
        "records": gen.trace.num_records,
        "tokens": gen.output_tokens,
    }
