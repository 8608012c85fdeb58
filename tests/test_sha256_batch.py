"""The compiled hashing of a step's commitments (refute.kernels.cpu.sha256, over OpenSSL) gives
the roots of the definition: tensor roots, trace records and growing KV-cache roots, checked
against docs/commitments.md recomputed with hashlib (tests/test_commit_batch.py) and against
merkle.py's own hashlib path, for random sizes, NaN payloads, odd row lengths and positions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from refute.engine import merkle
from refute.engine.checkpoint import builtin_model
from refute.engine.executor import Executor, Request, summary
from refute.engine.trace import TAG_RECORD, Trace, record_leaf, record_leaves
from refute.errors import CommitmentError
from refute.kernels.cpu import sha256
from tests.test_commit_batch import SPECIAL_BITS, definition_root, tensors

pytestmark = pytest.mark.skipif(bool(sha256.UNAVAILABLE), reason=sha256.UNAVAILABLE or "-")


@contextmanager
def hashing(hasher: merkle.BatchHasher | None) -> Iterator[None]:
    before = merkle.batch_hasher()
    merkle.use_batch_hasher(hasher)
    try:
        yield
    finally:
        merkle.use_batch_hasher(before)


@given(st.lists(tensors(), min_size=1, max_size=10))
def test_tensor_roots_are_the_definition(batch: list[np.ndarray]) -> None:
    with hashing(sha256):
        got = merkle.tensor_roots(batch)
    assert got == [definition_root(t) for t in batch]


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 700), min_size=1, max_size=40))
@example(seed=0, sizes=[256, 0, 1, 257])
def test_tensor_roots_of_one_dtype_are_the_definition(seed: int, sizes: list[int]) -> None:
    """What the executor commits a step as: all float32 (NaN payloads, strided views, 0-d),
    all uint32, and those lists with one array of the other dtype (the general path), or one
    that `tensor_root` refuses (big-endian, float64, a list), refused alike."""
    rng = np.random.default_rng(seed)
    special = np.array(SPECIAL_BITS, np.uint32)
    f32 = [rng.choice(special, n).view(np.float32) for n in sizes]
    f32[0] = np.repeat(f32[0], 2)[::2]  # not contiguous
    f32.append(np.float32(np.nan) * np.ones((), np.float32))
    u32 = [rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32) for n in sizes]
    for batch in (f32, u32, [*f32, u32[0]], [*u32, f32[-1]]):
        with hashing(sha256):
            assert merkle.tensor_roots(batch) == [definition_root(t) for t in batch]
    for odd in (np.arange(3, dtype=">f4"), np.arange(3, dtype=np.float64), [1.0]):
        with hashing(sha256), pytest.raises(CommitmentError):
            merkle.tensor_roots([*f32, odd])


def test_the_copy_buffer_is_reused_but_never_kept_past_its_cap(monkeypatch) -> None:
    """A step is copied into this thread's buffer, reused while steps fit under the cap; a
    larger step gets a buffer of its own, and the kept one stays within the cap. The roots are
    the definition's either way."""
    monkeypatch.setattr(merkle, "SCRATCH_KEEP_WORDS", 1000)
    monkeypatch.setattr(merkle, "_SCRATCH", threading.local())
    rng = np.random.default_rng(3)
    for sizes in ([300, 200], [100], [2500, 10], [700, 300], [1]):
        batch = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        with hashing(sha256):
            assert merkle.tensor_roots(batch) == [definition_root(t) for t in batch]
        kept = merkle._SCRATCH.buf
        assert sum(sizes) <= kept.size <= 1000 or sum(sizes) > 1000 >= kept.size
    assert merkle._SCRATCH.buf.size == 1000


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("layout", ["random", "empty at the ends", "all empty", "one large", "few"])
def test_tensor_roots_threaded_or_serial_are_the_definition(
    parallel: bool, layout: str, monkeypatch
) -> None:
    """A step's roots on numba's threads (parts of whole tensors, about equal chunks each) or
    serially: the same roots, NaN payloads made canonical, whatever the parts get: many
    tensors of any size, empty ones first and last (they start where the chunks end), none but
    empty ones, one tensor of most of the chunks among small ones, fewer tensors than parts."""
    monkeypatch.setattr(sha256._SPLIT, "choose", lambda key, work, threads: parallel)
    rng = np.random.default_rng(5)
    bits = rng.choice(np.array(SPECIAL_BITS, np.uint32), 40_000)
    sizes = {
        "random": rng.integers(0, 3000, 60),
        "empty at the ends": [0, 0, *rng.integers(1, 3000, 30), 0, 0, 0],
        "all empty": [0] * 20,
        "one large": [3, 1, 38_000, *rng.integers(1, 40, 25)],
        "few": [1, 700, 256],
    }[layout]
    batch = [bits.view(np.float32)[: int(n)] for n in sizes]
    with hashing(sha256):
        got = merkle.tensor_roots(batch)
    assert got == [definition_root(t) for t in batch]


def test_tensor_roots_leave_their_inputs_alone() -> None:
    bits = np.array(SPECIAL_BITS * 300, dtype=np.uint32)  # NaN payloads across chunks
    values = bits.view(np.float32)
    with hashing(sha256):
        got = merkle.tensor_roots([values, values[:5], values[:0]])
    assert (values.view(np.uint32) == bits).all()
    assert got == [
        definition_root(values),
        definition_root(values[:5]),
        definition_root(values[:0]),
    ]


hashes = st.binary(min_size=32, max_size=32)


@given(st.integers(0, 2**63 - 1), st.integers(0, 300), st.lists(hashes, max_size=70))
def test_record_leaves_enter_the_tree_as_on_the_hashlib_path(
    position: int, before: int, roots: list[bytes]
) -> None:
    """One position's records appended to a tree of any size at any position: the same root
    and the same full subtrees as `IncrementalTree.extend(record_leaves(...))`."""
    plain, fast = merkle.IncrementalTree(), merkle.IncrementalTree()
    earlier = [bytes([k % 256, k // 256]) * 16 for k in range(before)]
    plain.extend(earlier)
    fast.extend(earlier)
    plain.extend(record_leaves(position, roots))
    sha256.append_records(fast.frontier, fast.count, position, roots, TAG_RECORD[0])
    fast.count += len(roots)
    held = [h for h in range(plain.count.bit_length()) if plain.count >> h & 1]
    assert [fast.subtree(h) for h in held] == [plain.subtree(h) for h in held]
    assert fast.root() == plain.root() == merkle.tree_root(earlier + record_leaves(position, roots))


@given(st.lists(st.lists(hashes, min_size=5, max_size=5), max_size=8))
def test_a_trace_grows_to_the_same_root(positions: list[list[bytes]]) -> None:
    plain, fast = Trace(5), Trace(5)
    leaves = []
    for position, roots in enumerate(positions):
        with hashing(None):
            plain.add_position(roots)
        with hashing(sha256):
            fast.add_position(roots)
        leaves += [record_leaf(position, n, r) for n, r in enumerate(roots)]
        assert fast.root() == plain.root() == merkle.list_root(leaves)


@given(
    st.lists(st.integers(0, 700), min_size=1, max_size=12),
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.float32, np.uint32]),
)
@example(rows=[68, 700], seed=0, dtype=np.float32)  # a row that ends on a chunk boundary
def test_growing_tensor_roots_match(rows: list[int], seed: int, dtype: type) -> None:
    """A cache grown by rows of any length (NaNs included; some rows strided views) has, after
    every row, the root of the whole tensor, on both paths and through extend_root too; NaNs
    are made canonical in the commitment only, never in the row."""
    rng = np.random.default_rng(seed)
    code = merkle.DTYPE_F32 if dtype is np.float32 else merkle.DTYPE_U32
    plain, fast, both = (merkle.GrowingTensor(code) for _ in range(3))
    grown = np.zeros(0, dtype=dtype)
    for n in rows:
        bits = rng.integers(0, 2**32, 2 * n, dtype=np.uint64).astype(np.uint32)
        if n:
            bits[rng.integers(0, 2 * n, max(1, n // 2))] = rng.choice(SPECIAL_BITS, max(1, n // 2))
        row = bits.view(dtype)[::2] if n % 3 == 0 else bits.view(dtype)[:n]
        kept = row.copy()
        grown = np.concatenate([grown, row])
        with hashing(None):
            plain.extend(row)
            want = plain.root()
        with hashing(sha256):
            fast.extend(row)
            got = fast.root()
            at_once = both.extend_root(row)
        assert got == want == at_once == definition_root(grown)
        assert row.view(np.uint32).tolist() == kept.view(np.uint32).tolist()


def test_a_generation_has_the_same_roots_either_way() -> None:
    model = builtin_model("tiny-llama")
    requests = [Request((3, 1, 4, 1, 5), 6), Request((2, 7), 4, temperature=0.8, seed=9)]
    done = {}
    for hasher in (None, sha256):
        with hashing(hasher):
            gens = Executor(model).generate(requests)
        done[hasher] = [summary(g, model) for g in gens]
    assert done[None] == done[sha256]


def test_a_missing_library_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sha256, "_libcrypto", lambda: "/nonexistent/libcrypto.so.3")
    assert "/nonexistent/libcrypto.so.3" in sha256._find()
    monkeypatch.setattr(sha256, "_libcrypto", lambda: None)
    assert sha256._find() == "no libcrypto found"
