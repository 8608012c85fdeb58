"""The fused CPU kernels and `CPUBackend` give exactly the reference's bits.

Kernels against `reference.dot` on adversarial values (signed zeros, subnormals, infinities,
NaNs, products and sums that round at halfway — an FMA contraction or a reassociation changes
those) and awkward shapes (K = 1, K below the block width, K and N not powers of two, partial
panels); then whole generations through `Executor` against the reference backend's trace roots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refute.engine.backend import ReferenceBackend, Row
from refute.engine.checkpoint import build, load_model, random_weights
from refute.engine.executor import Executor, Request
from refute.engine.ir import Fn, Node, Op, Operand, Program, Reducer, Src, T
from refute.engine.models import LlamaConfig
from refute.kernels import reference as ref
from refute.kernels import vectors
from refute.kernels.cpu import (
    CPUBackend,
    dot_plan,
    elementwise,
    matmul,
    nodes,
    pack,
    split,
    tree_dot,
)
from refute.kernels.cpu.reduce import tree_max, tree_sum

VECTOR_DIR = Path(__file__).parent / "vectors"

SPECIAL = ref.from_bits(
    np.array(
        [
            *vectors.SPECIAL_BITS,
            0x3F800800,  # 1 + 2^-12: its square is 1 + 2^-11 + 2^-24, a halfway product
            0xBF800800,
            0x33800000,  # 2^-24: added to 1, a halfway sum
            0x4B800001,
            0x00000003,
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0xFFC00001,  # a negative NaN with payload
        ],
        dtype=np.uint32,
    )
)


def _values(rng: np.random.Generator, shape: tuple[int, ...], special: float) -> np.ndarray:
    """Normal values with a share of special patterns, and some exact-halfway neighbours."""
    v = rng.standard_normal(shape).astype(np.float32)
    if special > 0:
        pick = rng.random(shape) < special
        v[pick] = rng.choice(SPECIAL, int(pick.sum()))
        ones = rng.random(shape) < special / 2
        v[ones] = rng.choice(
            ref.from_bits(np.array([0x3F800000, 0x3F800800], np.uint32)), ones.sum()
        )
    return v


def _check(x: np.ndarray, w_kn: np.ndarray, parallel: bool | None = None) -> None:
    want = ref.to_bits(ref.dot(x, w_kn))
    for transposed, stored in ((True, w_kn), (False, np.ascontiguousarray(w_kn.T))):
        got = ref.to_bits(matmul(x, pack(stored, transposed=transposed), parallel=parallel))
        assert got.shape == want.shape
        bad = np.argwhere(got != want)
        assert bad.size == 0, (
            f"transposed={transposed}: {len(bad)} differ, first at {bad[0]}: "
            f"{got[tuple(bad[0])]:#010x} != {want[tuple(bad[0])]:#010x}"
        )


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.one_of(st.integers(1, 20), st.integers(21, 300)),
    n=st.integers(1, 40),
    special=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    parallel=st.sampled_from([None, False, True]),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernels_equal_reference_dot(m, k, n, special, parallel, seed) -> None:
    rng = np.random.default_rng(seed)
    _check(_values(rng, (m, k), special), _values(rng, (k, n), special), parallel)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 40, 127, 129, 1000])
@pytest.mark.parametrize("parallel", [False, True])
def test_signed_zero_padding(k: int, parallel: bool) -> None:
    """All products -0: the root is -0 only where no +0 pad enters the tree (K a power of 2)."""
    x = np.full((2, k), -0.0, np.float32)
    w = np.ones((k, 17), np.float32)
    _check(x, w, parallel)
    out = matmul(x, pack(w, transposed=True), parallel=parallel)
    negative = k & (k - 1) == 0
    assert np.all(np.signbit(out) == negative)


def test_halfway_sums_expose_fma_and_reordering() -> None:
    """1 + 2^-24 + 2^-24 + ...: each add rounds at halfway; any other order or an FMA differs."""
    k = 64
    x = np.full((1, k), ref.from_bits(np.array([0x3F800800], np.uint32))[0], np.float32)
    w = np.tile(x.reshape(k, 1), (1, 33))  # products (1 + 2^-12)^2 round at halfway
    w[::3, 1::2] = np.float32(2.0**-24)
    w[1::5, ::4] = np.float32(-1.0)
    _check(x, w, parallel=False)
    _check(x, w, parallel=True)


def test_matmul_runs_serially_where_numba_has_one_thread(monkeypatch) -> None:
    """Left to decide, `matmul` threads a large product only where numba has threads to give it
    (the benchmarks call it so; `CPUBackend` decides the same way)."""
    import numba

    ran = []
    for key, kernel in list(tree_dot._KERNELS.items()):
        monkeypatch.setitem(
            tree_dot._KERNELS, key, lambda *a, key=key, f=kernel: (ran.append(key), f(*a))
        )
    rng = np.random.default_rng(5)
    x, w = _values(rng, (1, 2048), 0.0), _values(rng, (2048, 1024), 0.0)
    assert 2048 * 1024 >= tree_dot.PARALLEL_MIN_WORK
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            _check(x, w)
            assert ran[-2:] == [(threads > 1, False)] * 2  # (both layouts of the weight)
    finally:
        numba.set_num_threads(before)


def test_large_shapes_both_variants() -> None:
    rng = np.random.default_rng(7)
    x = _values(rng, (3, 1100), 0.01)
    w = _values(rng, (1100, 70), 0.01)
    _check(x, w, parallel=False)
    _check(x, w, parallel=True)
    _check(x[:1], w, parallel=True)


def test_dot_drop_in_and_empty() -> None:
    rng = np.random.default_rng(3)
    x = _values(rng, (2, 3, 19), 0.1)
    w = _values(rng, (19, 5), 0.1)
    assert np.array_equal(ref.to_bits(tree_dot.dot(x, w)), ref.to_bits(ref.dot(x, w)))
    # K = 0: the empty sum is +0 (spec §5); reference.dot itself cannot reshape this case
    empty = tree_dot.dot(np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32))
    assert np.array_equal(ref.to_bits(empty), np.zeros((2, 3), np.uint32))


def test_conformance_vectors() -> None:
    cases = vectors.load(VECTOR_DIR)["dot"]["cases"]
    assert cases
    for c in cases:
        x = ref.from_bits(np.frombuffer(c["x"], "<u4"))
        w = ref.from_bits(np.frombuffer(c["w"], "<u4")).reshape(c["k"], c["n"])
        want = np.frombuffer(c["out"], "<u4")
        for parallel in (False, True):
            got = ref.to_bits(matmul(x, pack(w, transposed=True), parallel=parallel))
            assert np.array_equal(got, want), (c["k"], c["n"])


@pytest.mark.parametrize("name", ["exp", "sigmoid", "silu"])
def test_elementwise_equal_reference(name: str) -> None:
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate(
        [ref.from_bits(bits), rng.normal(0, 20, 1 << 16).astype(np.float32), SPECIAL]
    )
    want = ref.to_bits(getattr(ref, name)(x))
    assert np.array_equal(ref.to_bits(getattr(elementwise, name)(x)), want)
    record = vectors.load(VECTOR_DIR)[name]
    x = ref.from_bits(np.frombuffer(record["inputs"][0], "<u4"))
    got = ref.to_bits(getattr(elementwise, name)(x))
    assert np.array_equal(got, np.frombuffer(record["output"], "<u4"))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 4), k=st.integers(0, 70), special=st.sampled_from([0.0, 0.3, 1.0]))
def test_tree_sum_equals_reference(rows: int, k: int, special: float) -> None:
    x = _values(np.random.default_rng(rows * 1000 + k), (rows, k), special)
    want = ref.tree_sum(x, axis=-1)
    assert np.array_equal(ref.to_bits(tree_sum(x)), ref.to_bits(want))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 4),
    k=st.integers(0, 70),
    special=st.sampled_from([0.0, 0.3, 1.0]),
    signed_zeros=st.booleans(),
)
def test_tree_max_equals_reference(rows: int, k: int, special: float, signed_zeros: bool) -> None:
    """Softmax's max: NaN anywhere, -0 against +0 in any order, rows of -inf, empty rows."""
    rng = np.random.default_rng(rows * 1000 + k + 7)
    x = _values(rng, (rows, k), special)
    if signed_zeros:  # the ties the spec settles: only zeros and -inf
        x = rng.choice(np.array([0.0, -0.0, -np.inf], np.float32), (rows, k))
    want = ref.tree_max(x, axis=-1)
    assert np.array_equal(ref.to_bits(tree_max(x)), ref.to_bits(want))


# --- the compiled node loop (kernels/cpu/nodes.py) -------------------------------------------

TIES = ref.from_bits(  # signed zeros and -inf first, then inf and NaNs with payloads
    np.array([0x0, 0x80000000, 0xFF800000, 0x7F800000, 0xFFC00001, 0x7FC00000], np.uint32)
)
UNARY = (Fn.COPY, Fn.NEG, Fn.ABS, Fn.SQRT, Fn.EXP, Fn.SIGMOID, Fn.SILU, Fn.RECIPROCAL, Fn.RSQRT)


@st.composite
def _operand(draw, index: int, dims: tuple[int, ...], const: bool) -> tuple[Operand, int]:
    """An operand reading source `index` over `dims` with strides in [-3, 3] (negative ones
    start from an offset that keeps every read in bounds), and the source size it needs."""
    if const:
        bits = draw(st.sampled_from([0x3F800000, 0x80000000, 0x7F800000, 0x00000001, 0x3A83126F]))
        return Operand(Src.CONST, bits, (0,) * len(dims)), 1
    strides = tuple(draw(st.integers(-3, 3)) for _ in dims)
    low = sum((d - 1) * -s for d, s in zip(dims, strides, strict=True) if s < 0 and d > 0)
    high = sum((d - 1) * s for d, s in zip(dims, strides, strict=True) if s > 0 and d > 0)
    offset = low + draw(st.integers(0, 2))
    return Operand(Src.NODE, index, strides, offset), offset + high + 1


@pytest.mark.parametrize("fn", sorted(nodes.SUPPORTED))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_node_loop_equals_reference(fn: Fn, data) -> None:
    """MAP, REDUCE(SUM), REDUCE(MAX) and REDUCE(ARGMAX) nodes of every function the loop has,
    over up to four output axes (one of them the position count), strided and negative-strided
    operands, constants, reductions of 0 (1 for an argmax) to 70 terms, and special values (NaN
    payloads, signed zeros, infinities, subnormals, halfway sums): the backend's bits are the
    reference's, and the loop (not a fallback) computed them."""
    reducer = data.draw(st.sampled_from(list(Reducer)))
    position = data.draw(st.integers(0, 5))
    shape = tuple(data.draw(st.lists(st.integers(1, 6), max_size=4)))
    if shape and data.draw(st.integers(0, 9)) == 0:  # now and then an empty axis
        shape = (0, *shape[1:])
    if shape and data.draw(st.booleans()):
        shape = (T, *shape[1:])
    k = data.draw(st.one_of(st.integers(0, 4), st.integers(5, 70))) if reducer else 0
    if reducer == Reducer.ARGMAX:
        k = max(k, 1)
    dims = tuple(position + 1 if d == T else d for d in shape) + ((k,) if k or reducer else ())
    arity = 1 if fn in UNARY else 2
    operands, sizes = [], []
    for i in range(arity):
        op, size = data.draw(_operand(i, dims, const=i == 1 and data.draw(st.booleans())))
        operands.append(op)
        sizes.append(size)
    op = Op.MAP if reducer == Reducer.NONE else Op.REDUCE
    node = Node("n", op, shape, tuple(operands), fn, reducer, k)
    program = Program((node,), (), 64, 1, 0, 0)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    special = data.draw(st.sampled_from([0.0, 0.3, 1.0, -1.0, -2.0]))  # < 0: only the ties
    ties = TIES if special == -1.0 else TIES[:3]  # the spec settles; -2: no NaN among them
    sources = [
        np.array([ref.from_bits(np.uint32(o.index))], np.float32)
        if o.src == Src.CONST
        else rng.choice(ties, n)
        if special < 0
        else _values(rng, (n,), special)
        for o, n in zip(operands, sizes, strict=True)
    ]
    rows = [Row(position, 0, sources), Row(position, 0, [s.copy() for s in sources])]
    backend = CPUBackend(parallel=False)
    got = backend.evaluate(program, node, rows)
    want = ReferenceBackend().evaluate(program, node, rows)
    assert backend._calls[node] is not None
    dtype = np.uint32 if reducer == Reducer.ARGMAX else np.float32
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape
        assert np.array_equal(g.view(np.uint32), np.asarray(w, dtype).view(np.uint32))


@settings(max_examples=60, deadline=None)
@given(
    v=st.integers(1, 300),
    special=st.sampled_from([0.0, 0.3, -1.0, -2.0]),
    temperature=st.sampled_from([0.0, 0.0, 0.7]),
    seed=st.integers(0, 2**32 - 1),
)
def test_node_loop_samples_greedily_as_the_reference(v, special, temperature, seed) -> None:
    """A SAMPLE node at temperature 0 is the argmax of its logits through the loop (ties of
    equal values, -0 against +0 and NaNs keep the first index); at a temperature the row goes to
    the reference's Gumbel sampling. Either way the token is the reference's."""
    node = Node("s", Op.SAMPLE, (), (Operand(Src.NODE, 0, (1,)),), Fn.COPY, Reducer.NONE, v)
    program = Program((node,), (), 64, v, 0, 0)
    rng = np.random.default_rng(seed)
    logits = (
        rng.choice(TIES[:3] if special == -2.0 else TIES, v)
        if special < 0
        else (_values(rng, (v,), special))
    )
    rows = [Row(3, 0, [logits], temperature, seed)]
    backend = CPUBackend(parallel=False)
    (got,) = backend.evaluate(program, node, rows)
    (want,) = ReferenceBackend().evaluate(program, node, rows)
    assert got.dtype == np.uint32 and got.tolist() == want.tolist()
    assert backend._calls[node] is not None and backend._calls[node].greedy


@pytest.mark.parametrize("k", range(1, 18))
def test_sum_trees_pad_with_plus_zero(k: int) -> None:
    """A sum of -0s: -0 + -0 is -0, but a subtree of padding is +0 and -0 + +0 is +0, so the
    root's sign tells whether every non-power-of-two width is padded with +0 (the node loop's
    tree and `reduce.tree_sum` share it)."""
    terms = np.full(k, -0.0, np.float32)
    want = ref.to_bits(ref.tree_sum(terms))
    assert ref.to_bits(tree_sum(terms[None, :]))[0] == want
    node = Node("s", Op.REDUCE, (), (Operand(Src.NODE, 0, (1,)),), Fn.COPY, Reducer.SUM, k)
    program = Program((node,), (), 64, 1, 0, 0)
    (got,) = CPUBackend(parallel=False).evaluate(program, node, [Row(0, 0, [terms])])
    assert ref.to_bits(got)[0] == want


def test_node_loop_leaves_what_it_lacks_to_the_reference() -> None:
    """Functions outside the loop and index spaces beyond its five axes plan to None (the
    reference's path); an argmax of an empty axis is declined, so the reference says so."""
    x = Operand(Src.NODE, 0, (1,))
    assert nodes.plan(Node("m", Op.REDUCE, (), (x,), Fn.COPY, Reducer.ARGMAX, 4)) is not None
    assert nodes.plan(Node("s", Op.SAMPLE, (), (x,), Fn.COPY, Reducer.NONE, 4)) is not None
    empty = Node("e", Op.REDUCE, (), (x,), Fn.COPY, Reducer.ARGMAX, 0)
    with pytest.raises(ref.ShapeError):
        CPUBackend(parallel=False).evaluate(
            Program((empty,), (), 64, 1, 0, 0), empty, [Row(0, 0, [np.ones(1, np.float32)])]
        )
    assert nodes.plan(Node("t", Op.MAP, (4,), (x,), Fn.TANH)) is None
    wide = Node("w", Op.MAP, (1, 1, 1, 1, 2), (Operand(Src.NODE, 0, (0, 0, 0, 0, 1)),), Fn.COPY)
    assert nodes.plan(wide) is None
    assert nodes.plan(Node("c", Op.MAP, (4,), (x,), Fn.COPY)) is not None


# --- the backend --------------------------------------------------------------------------------

MODELS = {name: load_model(name) for name in ("tiny-llama", "tiny-gpt2")}
VOCAB = 320


def test_dot_plan_finds_every_linear_and_nothing_else() -> None:
    for name, model in MODELS.items():
        nodes = model.program.nodes
        planned = {n.name for n in nodes if dot_plan(n) is not None}
        linear_suffixes = (
            ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down", "lm_head")
            if "llama" in name
            else ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj", "lm_head")
        )
        assert planned == {n.name for n in nodes if n.name.endswith(linear_suffixes)}
        assert all(nodes[i].op == Op.REDUCE for i, n in enumerate(nodes) if n.name in planned)


def _roots(model, requests, backend, prefill=True):
    gens = Executor(model, backend=backend).generate(list(requests), prefill=prefill)
    return [g.trace.root() for g in gens], [g.output_tokens for g in gens]


def requests(max_prompt: int = 6, max_new: int = 4):
    return st.builds(
        Request,
        prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=max_prompt).map(tuple),
        max_new_tokens=st.integers(1, max_new),
        temperature=st.sampled_from([0.0, 0.8]),
        seed=st.integers(0, 2**256 - 1),
    )


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(MODELS)),
    batch=st.lists(requests(), min_size=1, max_size=3),
    prefill=st.booleans(),
    parallel=st.sampled_from([None, True]),
)
def test_generations_equal_the_reference(name, batch, prefill, parallel) -> None:
    model = MODELS[name]
    want = _roots(model, batch, ReferenceBackend(), prefill=True)
    assert _roots(model, batch, CPUBackend(parallel=parallel), prefill=prefill) == want


def test_larger_llama_equals_the_reference() -> None:
    """Odd sizes (K and N not powers of two, partial panels), GQA, sampled and greedy, batch."""
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=120,
        intermediate_size=330,
        num_layers=3,
        num_heads=6,
        num_kv_heads=2,
        head_dim=20,
        max_positions=64,
    )
    model = build("odd-llama", config, random_weights(config, 5))
    batch = [Request((1, 5, 999, 3, 42), 6), Request((7,), 5, temperature=0.9, seed=11)]
    want = _roots(model, batch, ReferenceBackend())
    for parallel in (False, True):
        assert _roots(model, batch, CPUBackend(parallel=parallel)) == want
        assert _roots(model, batch, CPUBackend(parallel=parallel), prefill=False) == want


# --- serial or threaded (kernels/cpu/split.py) ---------------------------------------------------


@pytest.mark.parametrize("threads_faster", [True, False])
def test_split_keeps_the_faster_way_and_measures_again(threads_faster: bool) -> None:
    chooser, key, work = split.SplitChooser(), ("k", "n"), split.MIN_WORK * 4
    ways = []
    for _ in range(2 * split.TRIALS):
        parallel = chooser.choose(key, work, threads=2)
        ways.append(parallel)
        fast = parallel == threads_faster
        chooser.record(key, parallel, 1.0 if fast else 2.0)
    assert ways == [False] * split.TRIALS + [True] * split.TRIALS  # each way timed
    kept = [chooser.choose(key, work, threads=2) for _ in range(split.RECHECK - len(ways))]
    assert kept == [threads_faster] * len(kept)
    assert chooser.choose(key, work, threads=2) is False  # RECHECK calls on: timed again


def test_split_never_threads_what_cannot_gain() -> None:
    chooser = split.SplitChooser()
    assert not chooser.choose("a", split.MIN_WORK * 4, threads=1)  # one thread
    assert not chooser.choose("b", split.MIN_WORK - 1, threads=2)  # a tiny product
    assert chooser.choose("c", split.ALWAYS_WORK, threads=2)  # a large one, always


def test_backend_bits_do_not_depend_on_the_split() -> None:
    """Dots between MIN_WORK and ALWAYS_WORK (timed serially, then threaded, then run the
    faster way as the generation goes on), all threaded, all serial: the reference's roots."""
    config = LlamaConfig(vocab_size=300, hidden_size=256, intermediate_size=512, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=64, max_positions=32)  # fmt: skip
    model = build("split-llama", config, random_weights(config, 3))
    assert split.MIN_WORK <= 256 * 256 and 256 * 512 < split.ALWAYS_WORK
    request = Request((3, 1, 4, 1, 5), 8)
    (want,) = Executor(model).generate([request])
    for parallel in (None, True, False):
        (got,) = Executor(model, backend=CPUBackend(parallel=parallel)).generate([request])
        assert got.trace.root() == want.trace.root() and got.tokens == want.tokens
