"""The batched commitment path (merkle.tensor_roots, IncrementalTree.extend, record_leaves)
gives exactly the roots of the definition in docs/commitments.md, recomputed here from it with
hashlib alone, for random tensors of every dtype and size."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refute.engine import merkle
from refute.engine.trace import record_leaf, record_leaves
from refute.errors import CommitmentError


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _tree(leaves: list[bytes]) -> bytes:
    """Complete binary tree of height ceil(log2 n), missing leaves 32 zero bytes."""
    if not leaves:
        return bytes(32)
    width = 1 << max(0, (len(leaves) - 1).bit_length())
    level = leaves + [bytes(32)] * (width - len(leaves))
    while len(level) > 1:
        level = [_h(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def definition_root(values: np.ndarray) -> bytes:
    """docs/commitments.md, 'tensor root', word for word."""
    if values.dtype == np.float32:
        words = [
            0x7FC00000 if np.isnan(v) else int(b)
            for v, b in zip(values.reshape(-1), values.reshape(-1).view(np.uint32), strict=True)
        ]
        dtype = 0
    else:
        words = [int(v) for v in values.reshape(-1)]
        dtype = 1
    data = b"".join(w.to_bytes(4, "little") for w in words)
    chunks = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    leaves = [_h(b"\x00" + c + bytes(1024 - len(c))) for c in chunks]
    return _h(b"\x02" + bytes([dtype]) + len(words).to_bytes(8, "big") + _tree(leaves))


SPECIAL_BITS = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001,
                0x7F800001, 0x00000001, 0x807FFFFF, 0x3F800000]  # fmt: skip

sizes = st.one_of(st.integers(0, 8), st.integers(250, 260), st.integers(500, 1300))


@st.composite
def tensors(draw) -> np.ndarray:
    n = draw(sizes)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["f32", "f32-special", "f32-2d", "u32", "i64", "u8"]))
    if kind.startswith("f32"):
        bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
        if kind == "f32-special" and n:
            bits[rng.integers(0, n, max(1, n // 3))] = rng.choice(SPECIAL_BITS, max(1, n // 3))
        values = bits.view(np.float32)
        if kind == "f32-2d" and n % 2 == 0 and n:
            values = values.reshape(2, n // 2)[:, ::-1]  # not contiguous
        return values
    if kind == "u32":
        return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    if kind == "i64":
        return rng.integers(0, 2**32, n, dtype=np.int64)
    return rng.integers(0, 256, n, dtype=np.uint8)


@given(st.lists(tensors(), min_size=1, max_size=8))
def test_tensor_roots_are_the_definition(batch: list[np.ndarray]) -> None:
    want = [definition_root(t) for t in batch]
    assert merkle.tensor_roots(batch) == want
    assert [merkle.tensor_root(t) for t in batch] == want


def test_tensor_roots_leave_their_inputs_alone_and_refuse_what_root_refuses() -> None:
    nan = np.array([np.nan, -np.nan, 1.0], dtype=np.float32)
    nan.view(np.uint32)[1] = 0xFFC00123
    before = nan.view(np.uint32).copy()
    assert merkle.tensor_roots([nan]) == [definition_root(nan)]
    assert (nan.view(np.uint32) == before).all()  # NaNs canonical in the hashed copy only
    with pytest.raises(CommitmentError):
        merkle.tensor_roots([np.zeros(3, dtype=np.float32), np.zeros(3, dtype=np.float64)])
    with pytest.raises(CommitmentError):
        merkle.tensor_roots([np.array([-1], dtype=np.int32)])
    assert merkle.tensor_roots([]) == []


@given(st.lists(st.integers(0, 40), max_size=8))
def test_incremental_extend_equals_append_and_the_tree(batches: list[int]) -> None:
    leaves = [_h(i.to_bytes(4, "big")) for i in range(sum(batches))]
    one, many = merkle.IncrementalTree(), merkle.IncrementalTree()
    done = 0
    for size in batches:
        many.extend(leaves[done : done + size])
        for leaf in leaves[done : done + size]:
            one.append(leaf)
        done += size
        assert many.count == one.count == done
        held = [h for h in range(done.bit_length()) if done >> h & 1]  # the full subtrees
        assert [many.subtree(h) for h in held] == [one.subtree(h) for h in held]
        assert many.root() == one.root() == (_tree(leaves[:done]) if done else merkle.EMPTY)
        assert many.root(b"\x07" * 32) == _tree([*leaves[:done], b"\x07" * 32])


@given(st.integers(0, 2**64 - 1), st.lists(st.binary(min_size=32, max_size=32), max_size=20))
def test_record_leaves_are_record_leaf(position: int, roots: list[bytes]) -> None:
    want = [
        _h(b"\x20" + position.to_bytes(8, "big") + n.to_bytes(4, "big") + r)
        for n, r in enumerate(roots)
    ]
    assert record_leaves(position, roots) == want
    assert [record_leaf(position, n, r) for n, r in enumerate(roots)] == want
