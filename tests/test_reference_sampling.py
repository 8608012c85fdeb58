"""Sampling: keccak-derived noise a contract can recompute, and Gumbel-max is a real sampler."""

from __future__ import annotations

import numpy as np
import pytest
from Crypto.Hash import keccak as pycryptodome_keccak
from hypothesis import given
from hypothesis import strategies as st

from refute.errors import ShapeError, SpecDomainError
from refute.kernels import reference as ref

uint256 = st.integers(0, 2**256 - 1)


def independent_uniform(seed: int, position: int, index: int) -> float:
    """The spec's definition, computed with another keccak implementation and Python floats."""
    h = pycryptodome_keccak.new(digest_bits=256)
    h.update(seed.to_bytes(32, "big") + position.to_bytes(32, "big") + index.to_bytes(32, "big"))
    m = int.from_bytes(h.digest(), "big") >> 233
    return (2 * m + 1) / 2**24


@given(seed=uint256, position=uint256, index=uint256)
def test_noise_matches_the_definition(seed: int, position: int, index: int) -> None:
    u = ref.noise_uniform(seed, position, [index])[0]
    assert float(u) == independent_uniform(seed, position, index)
    assert 0.0 < u < 1.0
    g = ref.gumbel_noise(seed, position, [index])[0]
    assert np.isfinite(g)
    assert ref.to_bits(g) == ref.to_bits(ref.neg(ref.log(ref.neg(ref.log(u)))))


def test_noise_is_counter_based() -> None:
    """A value depends only on (seed, position, index), not on what else is drawn with it."""
    all_of_them = ref.noise_uniform(9, 4, np.arange(100))
    assert all_of_them[37] == ref.noise_uniform(9, 4, [37])[0]
    assert not np.array_equal(all_of_them, ref.noise_uniform(9, 5, np.arange(100)))
    assert not np.array_equal(all_of_them, ref.noise_uniform(10, 4, np.arange(100)))


def test_greedy_at_zero_temperature() -> None:
    logits = np.array([0.5, 3.0, 3.0, -1.0], np.float32)
    assert ref.sample(logits, 0.0, seed=1, position=0) == 1


def test_gumbel_max_samples_from_the_softmax() -> None:
    """Frequencies over many positions approach softmax(logits / T) (chi-square, fixed seed)."""
    logits = np.array([1.0, 0.0, 2.0, -1.0, 0.5], np.float32)
    temperature = 0.8
    draws = [ref.sample(logits, temperature, seed=77, position=t) for t in range(4000)]
    counts = np.bincount(draws, minlength=logits.size)
    p = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    chi2 = float(((counts - 4000 * p) ** 2 / (4000 * p)).sum())
    assert chi2 < 20.5  # 4 degrees of freedom: p < 0.0005 under the null


def test_sampling_rejects_bad_arguments() -> None:
    with pytest.raises(SpecDomainError, match="temperature"):
        ref.sample(np.zeros(3, np.float32), -1.0, seed=0, position=0)
    with pytest.raises(SpecDomainError, match="temperature"):
        ref.sample(np.zeros(3, np.float32), float("nan"), seed=0, position=0)
    with pytest.raises(ShapeError):
        ref.sample(np.zeros((2, 3), np.float32), 1.0, seed=0, position=0)
    with pytest.raises(SpecDomainError, match="seed"):
        ref.noise_uniform(-1, 0, [0])
    with pytest.raises(SpecDomainError, match="index"):
        ref.noise_uniform(0, 0, [2**256])
