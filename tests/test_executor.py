"""Execution is a function of (model, request): batching, prefill and recomputation never change
a bit, and any corruption shows in the trace exactly from the first record it affects."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refute.engine import merkle
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.engine.ir import Src
from refute.errors import ExecutionError

MODELS = {name: load_model(name) for name in ("tiny-llama", "tiny-gpt2")}
VOCAB = 320


def requests(max_prompt: int = 6, max_new: int = 4):
    return st.builds(
        Request,
        prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=max_prompt).map(tuple),
        max_new_tokens=st.integers(1, max_new),
        temperature=st.sampled_from([0.0, 0.7, 1.5]),
        seed=st.integers(0, 2**256 - 1),
    )


def run(model, reqs, **kw):
    return Executor(model).generate(list(reqs), **kw)


@settings(max_examples=15)
@given(name=st.sampled_from(sorted(MODELS)), request=requests())
def test_prefill_equals_token_at_a_time_and_runs_repeat(name: str, request: Request) -> None:
    model = MODELS[name]
    (a,) = run(model, [request])
    (b,) = run(model, [request], prefill=False)
    (c,) = run(model, [request])
    assert a.trace.roots == b.trace.roots == c.trace.roots
    assert a.output_tokens == b.output_tokens
    assert len(a.output_tokens) == request.max_new_tokens
    assert a.trace.positions == request.positions


@settings(max_examples=10)
@given(name=st.sampled_from(sorted(MODELS)), batch=st.lists(requests(), min_size=2, max_size=4))
def test_a_batch_gives_each_request_what_it_gets_alone(name: str, batch: list[Request]) -> None:
    model = MODELS[name]
    together = run(model, batch)
    for request, gen in zip(batch, together, strict=True):
        (alone,) = run(model, [request], prefill=False)
        assert gen.trace.root() == alone.trace.root()
        assert gen.output_tokens == alone.output_tokens


@settings(max_examples=8)
@given(name=st.sampled_from(sorted(MODELS)), request=requests(), data=st.data())
def test_recomputing_from_the_caches_reproduces_committed_roots(name, request, data) -> None:
    model = MODELS[name]
    executor = Executor(model)
    (gen,) = executor.generate([request])
    t = data.draw(st.integers(0, gen.trace.positions - 1))
    outputs = executor.recompute(gen, t)
    assert [merkle.tensor_root(o) for o in outputs] == gen.trace.roots[t]


def _first_reader(model, weight_index: int) -> int:
    return next(
        i
        for i, n in enumerate(model.program.nodes)
        if any(o.src == Src.WEIGHT and o.index == weight_index for o in n.operands)
    )


def _first_difference(a, b) -> tuple[int, int]:
    diff = a.trace.first_difference(b.trace)
    assert diff is not None
    return diff


@settings(max_examples=12)
@given(name=st.sampled_from(sorted(MODELS)), data=st.data())
def test_a_flipped_intermediate_bit_shows_exactly_at_its_record(name: str, data) -> None:
    model = MODELS[name]
    request = Request((5, 6, 7), 3)
    (honest,) = run(model, [request])
    t = data.draw(st.integers(0, request.positions - 1), label="position")
    node_id = data.draw(st.integers(0, len(model.program.nodes) - 1), label="node")
    bit = data.draw(st.integers(0, 31), label="bit")
    element = data.draw(st.integers(0, 10**6), label="element")

    def tamper(position: int, nid: int, out: np.ndarray) -> np.ndarray:
        if (position, nid) != (t, node_id):
            return out
        out = out.copy()
        raw = out.view(np.uint32)
        if nid == model.program.token_node:  # another token, still in the vocabulary
            raw[0] = (raw[0] + 1 + bit) % VOCAB
        else:
            raw[element % raw.size] ^= np.uint32(1 << bit)
        return out

    (cheat,) = Executor(model, tamper=tamper).generate([request])
    assert _first_difference(honest, cheat) == (t, node_id)


@settings(max_examples=12)
@given(name=st.sampled_from(sorted(MODELS)), data=st.data())
def test_a_flipped_weight_bit_shows_first_at_a_record_reading_it(name: str, data) -> None:
    model = MODELS[name]
    request = Request((5, 6, 7), 3)
    (honest,) = run(model, [request])
    w = data.draw(st.integers(0, len(model.weights) - 1), label="weight")
    element = data.draw(st.integers(0, model.weights[w].size - 1), label="element")
    bit = data.draw(st.integers(0, 30), label="bit")
    corrupt = load_model(name)
    corrupt.weights[w].reshape(-1).view(np.uint32)[element] ^= np.uint32(1 << bit)
    corrupt._tensor_roots = None
    (cheat,) = run(corrupt, [request])
    diff = cheat.trace.first_difference(honest.trace)
    if diff is None:
        return  # the flip never reached an output (read only where a factor is 0, or rounded away)
    t, node_id = diff
    # records before the first reader are identical; the first difference reads the weight or
    # comes later (a reader's output can absorb the flip)
    reader = _first_reader(model, w)
    assert (t, node_id) >= (0, reader)
    assert cheat.trace.roots[0][:reader] == honest.trace.roots[0][:reader]


@settings(max_examples=10)
@given(name=st.sampled_from(sorted(MODELS)), data=st.data())
def test_a_changed_prompt_token_shows_first_at_its_position(name: str, data) -> None:
    model = MODELS[name]
    prompt = [5, 6, 7, 8]
    (honest,) = run(model, [Request(tuple(prompt), 2)])
    p = data.draw(st.integers(0, len(prompt) - 1))
    bit = data.draw(st.integers(0, 8))
    changed = list(prompt)
    changed[p] ^= 1 << bit
    if changed[p] >= VOCAB:
        changed[p] = (prompt[p] + 1) % VOCAB
    (cheat,) = run(model, [Request(tuple(changed), 2)])
    assert _first_difference(honest, cheat) == (p, 0)  # the embedding of position p


def test_sampling_is_reproducible_by_seed() -> None:
    model = MODELS["tiny-llama"]
    req = Request((1, 2, 3), 12, temperature=1.0, seed=42)
    (a,), (b,) = run(model, [req]), run(model, [req])
    (c,) = run(model, [Request((1, 2, 3), 12, temperature=1.0, seed=43)])
    assert a.output_tokens == b.output_tokens
    assert a.output_tokens != c.output_tokens


def test_an_out_of_vocabulary_token_is_refused() -> None:
    """A (cheating) sample output outside the vocabulary never reaches an index map."""
    model = MODELS["tiny-llama"]

    def tamper(position: int, nid: int, out: np.ndarray) -> np.ndarray:
        return np.array([VOCAB + 5], np.uint32) if nid == model.program.token_node else out

    with pytest.raises(ExecutionError, match="outside the vocabulary"):
        Executor(model, tamper=tamper).generate([Request((1, 2), 3)])


def test_bad_requests_are_refused() -> None:
    model = MODELS["tiny-llama"]
    cases = [
        (Request((), 3), "at least one token"),
        (Request((VOCAB,), 3), "outside the vocabulary"),
        (Request((-1,), 3), "outside the vocabulary"),
        (Request((1,), 0), "max_new_tokens"),
        (Request((1,), 300), "exceed"),
        (Request((1,), 3, temperature=-1.0), "temperature"),
        (Request((1,), 3, seed=2**256), "seed"),
    ]
    for request, message in cases:
        with pytest.raises(ExecutionError, match=message):
            run(model, [request])


def test_memory_per_position_is_roots_and_caches_only() -> None:
    """The prover keeps 32 bytes per record plus the KV caches, not the intermediate tensors."""
    model = MODELS["tiny-llama"]
    (gen,) = run(model, [Request((1, 2, 3), 40)])
    cache_bytes = sum(c.prefix(c.rows).nbytes for c in gen.caches.values())
    root_bytes = 32 * gen.trace.num_records
    assert not gen.captured
    per_position_cache = cache_bytes / gen.trace.positions
    assert per_position_cache == 2 * 2 * 2 * 16 * 4  # layers * (k, v) * kv_heads * head_dim * 4
    assert root_bytes == 32 * len(model.program.nodes) * gen.trace.positions


class _PairwiseReference:
    """A fusing backend in form only: groups nodes in pairs (never a cache append) and evaluates
    each group node by node with the reference, reading the group's inputs from GroupRow."""

    name = "pairs"

    def __init__(self) -> None:
        from refute.engine.backend import ReferenceBackend

        self.reference = ReferenceBackend()

    def groups(self, program):
        from refute.engine.ir import Op

        out, current = [], []
        for i, node in enumerate(program.nodes):
            if node.op == Op.CACHE_APPEND:
                out += [tuple(current)] if current else []
                out.append((i,))
                current = []
                continue
            current.append(i)
            if len(current) == 2:
                out.append(tuple(current))
                current = []
        return out + ([tuple(current)] if current else [])

    def evaluate(self, program, node, rows):
        return self.reference.evaluate(program, node, rows)

    def evaluate_group(self, program, node_ids, rows):
        from refute.engine.backend import Row

        local = [list(r.outputs) for r in rows]
        per_node = []
        for nid in node_ids:
            node = program.nodes[nid]
            inputs = []
            for r, outs in zip(rows, local, strict=True):
                sources = [
                    outs[op.index] if op.src == Src.NODE
                    else r.weights[op.index] if op.src == Src.WEIGHT
                    else np.array([op.index], np.uint32).view(np.float32)
                    for op in node.operands
                ]  # fmt: skip
                inputs.append(Row(r.position, r.token, sources, r.temperature, r.seed))
            results = self.reference.evaluate(program, node, inputs)
            for outs, res in zip(local, results, strict=True):
                outs[nid] = res
            per_node.append(results)
        return per_node


def test_a_fusing_backend_commits_every_node_of_its_groups() -> None:
    for model in MODELS.values():
        requests = [Request((1, 2, 3), 3), Request((9,), 2, temperature=1.0, seed=3)]
        want = run(model, requests)
        got = Executor(model, backend=_PairwiseReference()).generate(requests)
        assert [g.trace.roots for g in got] == [w.trace.roots for w in want]
