"""Commitments: roots, proofs and what a verifier must reject."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refute.engine import merkle
from refute.errors import CommitmentError

hashes = st.binary(min_size=32, max_size=32)
f32_arrays = hnp.arrays(
    np.float32, st.integers(1, 3000), elements=st.floats(width=32, allow_nan=True)
)


@given(leaves=st.lists(hashes, max_size=70), data=st.data())
def test_incremental_tree_equals_full_tree_at_every_size(leaves: list[bytes], data) -> None:
    tree = merkle.IncrementalTree()
    for i, leaf in enumerate(leaves):
        assert tree.root() == merkle.tree_root(leaves[:i])
        assert tree.root(leaf) == merkle.tree_root(leaves[: i + 1])
        tree.append(leaf)
    assert tree.root() == merkle.tree_root(leaves)
    if leaves:
        i = data.draw(st.integers(0, len(leaves) - 1))
        proof = merkle.tree_proof(leaves, i)
        assert len(proof) == merkle.depth_for(len(leaves))
        assert merkle.root_from_proof(leaves[i], i, proof) == merkle.tree_root(leaves)


@given(rows=st.lists(hnp.arrays(np.float32, st.integers(1, 1500)), min_size=1, max_size=8))
def test_growing_tensor_equals_the_root_of_the_whole(rows: list[np.ndarray]) -> None:
    grow = merkle.GrowingTensor()
    for i, row in enumerate(rows):
        grow.extend(row)
        assert grow.root() == merkle.tensor_root(np.concatenate(rows[: i + 1]))


def test_tensor_root_binds_dtype_length_and_canonical_nan() -> None:
    x = np.zeros(10, np.float32)
    assert merkle.tensor_root(x) != merkle.tensor_root(np.zeros(11, np.float32))
    assert merkle.tensor_root(x) != merkle.tensor_root(np.zeros(10, np.uint32))
    odd_nan = np.array([0x7FC00001, 0xFFC00000], np.uint32).view(np.float32)
    assert merkle.tensor_root(odd_nan) == merkle.tensor_root(np.full(2, np.nan, np.float32))
    with pytest.raises(CommitmentError, match="dtype"):
        merkle.tensor_root(np.zeros(3, np.float64))
    with pytest.raises(CommitmentError, match="uint32"):
        merkle.tensor_root(np.array([-1], np.int64))


@given(x=f32_arrays, data=st.data())
def test_element_proofs_open_exactly_the_committed_element(x: np.ndarray, data) -> None:
    root = merkle.tensor_root(x)
    i = data.draw(st.integers(0, x.size - 1))
    proof = merkle.prove_element(x, i)
    assert merkle.verify_element(root, proof)
    assert proof.value_bits == int(merkle.encode(x)[1][4 * i : 4 * i + 4][::-1].hex(), 16)


def _tampered(proof: merkle.ElementProof) -> list[tuple[str, merkle.ElementProof]]:
    out = []
    if proof.index + 1024 < proof.length:
        out.append(("index in another chunk", dataclasses.replace(proof, index=proof.index + 1024)))
    out.append(("wrong length", dataclasses.replace(proof, length=proof.length + 1)))
    out.append(("wrong dtype", dataclasses.replace(proof, dtype=1 - proof.dtype)))
    chunk = bytearray(proof.chunk)
    chunk[(proof.index * 4) % merkle.CHUNK_BYTES] ^= 1
    out.append(("flipped value", dataclasses.replace(proof, chunk=bytes(chunk))))
    out.append(("truncated path", dataclasses.replace(proof, siblings=proof.siblings[:-1])))
    out.append(
        ("extended path", dataclasses.replace(proof, siblings=(*proof.siblings, b"\0" * 32)))
    )
    if len(proof.siblings) >= 2:
        s = list(proof.siblings)
        s[0], s[1] = s[1], s[0]
        out.append(("swapped siblings", dataclasses.replace(proof, siblings=tuple(s))))
    return out


def test_verifier_rejects_tampered_proofs() -> None:
    x = np.arange(5000, dtype=np.float32)
    root = merkle.tensor_root(x)
    for i in (0, 1, 1023, 1024, 3000, 4999):
        proof = merkle.prove_element(x, i)
        assert merkle.verify_element(root, proof)
        for what, bad in _tampered(proof):
            assert not merkle.verify_element(root, bad), what
        # moving the index inside the opened chunk verifies, but then opens that element:
        # the value always comes from the committed chunk, never from the prover's word
        other = dataclasses.replace(proof, index=i ^ 1)
        assert merkle.verify_element(root, other) and other.value() == x[i ^ 1]


def test_leaf_and_node_cannot_be_confused() -> None:
    """An inner node's preimage (two hashes) is not a valid chunk: the tags differ."""
    leaves = [os.urandom(32) for _ in range(4)]
    inner = merkle.node_hash(leaves[0], leaves[1])
    assert merkle.sha256(merkle.TAG_LEAF, leaves[0] + leaves[1]) != inner
    # a two-level list cannot be opened as a one-level list of its inner nodes
    root = merkle.list_root(leaves)
    pair = [inner, merkle.node_hash(leaves[2], leaves[3])]
    assert not merkle.verify_list_item(root, 2, 0, inner, [pair[1]])
    assert merkle.verify_list_item(root, 4, 0, leaves[0], merkle.tree_proof(leaves, 0))


def test_nonzero_padding_in_the_last_chunk_is_rejected() -> None:
    x = np.ones(10, np.float32)
    proof = merkle.prove_element(x, 3)
    padded = bytearray(proof.chunk)
    padded[-1] = 1
    assert not merkle.verify_element(
        merkle.tensor_root(x), dataclasses.replace(proof, chunk=bytes(padded))
    )


def test_bad_requests_raise() -> None:
    with pytest.raises(CommitmentError):
        merkle.prove_element(np.ones(3, np.float32), 3)
    with pytest.raises(CommitmentError):
        merkle.tree_proof([b"\0" * 32], 1)
    with pytest.raises(CommitmentError, match="more bits"):
        merkle.root_from_proof(b"\0" * 32, 2, [b"\0" * 32])
