"""Reductions are fixed pairwise trees: chunkable, row-independent, layout-independent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refute.errors import ShapeError
from refute.kernels import reference as ref

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
any32 = st.one_of(
    finite32,
    st.sampled_from([0.0, -0.0, np.inf, -np.inf, np.nan, 2.0**-149, 3.4e38]),
)


def rows(elements=finite32, max_rows: int = 6, max_k: int = 70):
    return hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, max_rows), st.integers(1, max_k)),
        elements=elements,
    )


def bits(x: np.ndarray) -> np.ndarray:
    return ref.to_bits(x).copy()


def naive_tree_sum(x: list[np.float32]) -> np.float32:
    """The definition, written the slow way: pad with +0 to 2^m, then add adjacent pairs."""
    n = 1
    while n < len(x):
        n *= 2
    level = list(x) + [np.float32(0.0)] * (n - len(x))
    while len(level) > 1:
        level = [np.float32(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


@given(x=hnp.arrays(np.float32, st.integers(1, 40), elements=any32))
def test_tree_sum_is_the_pairwise_definition(x: np.ndarray) -> None:
    with np.errstate(all="ignore"):
        want = ref.canonicalize(naive_tree_sum(list(x)))
    assert bits(ref.tree_sum(x)) == bits(want)


@given(x=rows(any32), log_chunk=st.integers(0, 6))
def test_aligned_power_of_two_chunks_combine_to_the_canonical_result(
    x: np.ndarray, log_chunk: int
) -> None:
    """What makes tiled GPU kernels legal: reduce aligned chunks of the padded row, then the
    partials by the same tree, and get the canonical sum, max and argmax."""
    k = x.shape[1]
    width = 1 << max(0, (k - 1).bit_length())
    chunk = min(1 << log_chunk, width)
    padded_sum = np.pad(x, ((0, 0), (0, width - k)), constant_values=0.0)
    padded_max = np.pad(x, ((0, 0), (0, width - k)), constant_values=-np.inf)
    parts = padded_sum.reshape(x.shape[0], -1, chunk)
    partial_sums = ref.tree_sum(parts, axis=-1)
    assert np.array_equal(bits(ref.tree_sum(partial_sums)), bits(ref.tree_sum(x)))
    partial_max = ref.tree_max(padded_max.reshape(x.shape[0], -1, chunk), axis=-1)
    assert np.array_equal(bits(ref.tree_max(partial_max)), bits(ref.tree_max(x)))
    # argmax: each chunk's (value, index) pair, then the same tree over chunks
    chunks = padded_max.reshape(x.shape[0], -1, chunk)
    local = ref.argmax(chunks, axis=-1)
    value = np.take_along_axis(chunks, local[..., None], axis=-1)[..., 0]
    index = local + chunk * np.arange(chunks.shape[1])
    while value.shape[-1] > 1:
        value, index = ref.argmax_step(
            value[..., 0::2], index[..., 0::2], value[..., 1::2], index[..., 1::2]
        )
    assert np.array_equal(index[..., 0], ref.argmax(x))


@given(x=rows(), k_chunk=st.integers(0, 5), data=st.data())
def test_dot_chunked_over_k_is_canonical(x: np.ndarray, k_chunk: int, data) -> None:
    k = x.shape[1]
    n = data.draw(st.integers(1, 5))
    w = data.draw(hnp.arrays(np.float32, (k, n), elements=finite32))
    width = 1 << max(0, (k - 1).bit_length())
    chunk = min(1 << k_chunk, width)
    products = ref.mul(x[:, :, None], w[None])
    products = np.pad(products, ((0, 0), (0, width - k), (0, 0)))
    partial = ref.tree_sum(products.reshape(x.shape[0], -1, chunk, n), axis=2)
    assert np.array_equal(bits(ref.tree_sum(partial, axis=1)), bits(ref.dot(x, w)))


@given(x=rows(any32), data=st.data())
def test_a_rows_result_does_not_depend_on_the_other_rows(x: np.ndarray, data) -> None:
    i = data.draw(st.integers(0, x.shape[0] - 1))
    w = data.draw(hnp.arrays(np.float32, (x.shape[1], 3), elements=finite32))
    one = x[i : i + 1]
    for f in (ref.tree_sum, ref.tree_max, ref.argmax, ref.exp, ref.gelu_tanh):
        assert np.array_equal(bits(np.asarray(f(x))[i]), bits(np.asarray(f(one))[0]))
    assert np.array_equal(bits(ref.dot(x, w)[i]), bits(ref.dot(one, w)[0]))


@given(x=rows(any32, max_rows=8, max_k=33))
def test_layout_does_not_change_results(x: np.ndarray) -> None:
    w = np.arange(x.shape[1] * 3, dtype=np.float32).reshape(x.shape[1], 3) / 7
    layouts = [
        np.asfortranarray(x),
        np.repeat(x, 2, axis=0)[::2],  # strided rows
        np.repeat(x, 3, axis=1)[:, ::3],  # strided columns
        x.T.copy().T,  # transposed storage
    ]
    for f in (ref.tree_sum, ref.tree_max, ref.argmax, ref.sigmoid, lambda v: ref.dot(v, w)):
        want = bits(np.asarray(f(x)))
        for view in layouts:
            assert np.array_equal(bits(np.asarray(f(view))), want)
    assert np.array_equal(bits(ref.dot(x, np.asfortranarray(w))), bits(ref.dot(x, w)))


def test_sum_sign_of_zero_and_padding() -> None:
    assert bits(ref.tree_sum(np.array([-0.0], np.float32))) == 0x80000000
    assert bits(ref.tree_sum(np.array([-0.0, -0.0], np.float32))) == 0x80000000
    # three elements pad with +0: (-0 + -0) + (-0 + +0) = -0 + +0 = +0
    assert bits(ref.tree_sum(np.array([-0.0, -0.0, -0.0], np.float32))) == 0
    assert ref.tree_sum(np.zeros((2, 0), np.float32)).tolist() == [0.0, 0.0]
    # the tree, not left-to-right: 1 + (2^-24 + 2^-24) = 1 + 2^-23 but ((1 + 2^-24) + ...) = 1
    x = np.array([1.0, 2.0**-24, 2.0**-24, 0.0], np.float32)
    assert ref.tree_sum(x) == np.float32(1.0)  # (1 + 2^-24) + (2^-24 + 0): both ties to even
    y = np.array([2.0**-24, 2.0**-24, 1.0, 0.0], np.float32)
    assert ref.tree_sum(y) == np.float32(1.0 + 2.0**-23)


def test_max_and_argmax_rules() -> None:
    assert bits(ref.tree_max(np.array([-0.0, 0.0], np.float32))) == 0
    assert bits(ref.tree_max(np.array([0.0, -0.0], np.float32))) == 0
    assert bits(ref.tree_max(np.array([1.0, np.nan, 2.0], np.float32))) == 0x7FC00000
    assert ref.tree_max(np.zeros((0,), np.float32)) == -np.inf
    assert ref.argmax(np.array([1.0, 3.0, 3.0, 2.0], np.float32)) == 1
    assert ref.argmax(np.array([1.0, np.nan, 5.0, np.nan], np.float32)) == 1
    assert ref.argmax(np.array([-np.inf, -np.inf, -np.inf], np.float32)) == 0
    assert ref.argmax(np.array([-0.0, 0.0], np.float32)) == 0
    with pytest.raises(ShapeError):
        ref.argmax(np.zeros((3, 0), np.float32))


@given(x=hnp.arrays(np.float32, st.integers(1, 50), elements=any32))
def test_argmax_is_first_maximum_with_nan_largest(x: np.ndarray) -> None:
    nan = np.isnan(x)
    want = int(np.flatnonzero(nan)[0]) if nan.any() else int(np.flatnonzero(x == x.max())[0])
    assert ref.argmax(x) == want


def test_dot_shape_errors() -> None:
    with pytest.raises(ShapeError, match="dot needs"):
        ref.dot(np.ones(3, np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(ShapeError):
        ref.dot(np.ones(3, np.float32), np.ones(3, np.float32))


@given(x=rows(max_k=20))
def test_dot_against_exact_rounding_of_each_product(x: np.ndarray) -> None:
    """Products are rounded before the tree: compare against float64 products rounded to f32."""
    assume(np.all(np.abs(x) < 1e18))
    w = np.linspace(-2, 2, x.shape[1] * 2, dtype=np.float32).reshape(x.shape[1], 2)
    with np.errstate(all="ignore"):
        products = (x[:, :, None].astype(np.float64) * w[None].astype(np.float64)).astype(
            np.float32
        )
        want = np.stack(
            [[naive_tree_sum(list(products[i, :, j])) for j in range(2)] for i in range(x.shape[0])]
        )
    assert np.array_equal(bits(ref.dot(x, w)), bits(ref.canonicalize(want)))
