"""Differential tests: the Solidity soft-float (contracts/sol/SoftFloat32.sol) against the
numpy reference (refute.kernels.reference), bit for bit, through FloatHarness.

- On the embedded chain (py-evm in process): special values and a few thousand mixed cases per
  function; this part runs everywhere.
- On anvil: 200,000 cases per binary primitive and large volumes for the unary functions and the
  conversions (bf16/fp16 exhaustively), a hypothesis property, the conformance vectors under
  tests/vectors/, and the gas budget of add and mul. Without anvil these skip, or fail under CI
  (see tests/chain_fixtures.py).

Batches go through the harness's *Batch functions with eth_call; the calldata is encoded and the
result decoded with numpy, since web3's ABI coder would dominate the run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from eth_abi import decode as abi_decode
from eth_hash.auto import keccak
from eth_tester.exceptions import TransactionFailed
from hypothesis import given
from hypothesis import strategies as st
from web3 import Web3
from web3.exceptions import ContractCustomError

from refute.contracts.chain import deploy
from refute.contracts.game import revert_data
from refute.kernels import reference as ref

U32 = np.uint32
SIGN = U32(0x80000000)
VECTOR_DIR = Path(__file__).resolve().parent / "vectors"

# --- the functions under test and their reference ------------------------------------------

BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": ref.add,
    "sub": ref.sub,
    "mul": ref.mul,
    "div": ref.div,
    "max": ref.maximum,
    "min": ref.minimum,
}
UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sqrt": ref.sqrt,
    "neg": ref.neg,
    "abs": ref.abs_,
    "reciprocal": ref.reciprocal,
    "rsqrt": ref.rsqrt,
    "exp": ref.exp,
    "log": ref.log,
    "sigmoid": ref.sigmoid,
    "silu": ref.silu,
    "tanh": ref.tanh,
    "geluTanh": ref.gelu_tanh,
}
DERIVED = ("exp", "log", "sigmoid", "silu", "tanh", "geluTanh")
GAS_OPS = {"add": 1, "sub": 2, "mul": 3, "div": 4, "max": 5, "min": 6, "sqrt": 7, "exp": 8}
GAS_OPS |= {"log": 9, "sigmoid": 10, "silu": 11, "tanh": 12, "geluTanh": 13}
GAS_OPS |= {"reciprocal": 14, "rsqrt": 15}
GAS_BUDGET = {"add": 2000, "mul": 2000}


def ref_binary(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ref.to_bits(BINARY[name](ref.from_bits(a), ref.from_bits(b))).astype(U32)


def ref_unary(name: str, x: np.ndarray) -> np.ndarray:
    return ref.to_bits(UNARY[name](ref.from_bits(x))).astype(U32)


def ref_cmp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa, fb = ref.from_bits(a), ref.from_bits(b)
    return (
        ref.eq(fa, fb).astype(U32) | (ref.lt(fa, fb).astype(U32) << 1) | (ref.le(fa, fb) << 2)
    ).astype(U32)


# --- a thin, fast client of FloatHarness -----------------------------------------------------


def _selector(signature: str) -> bytes:
    return keccak(signature.encode())[:4]


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _array(values: np.ndarray) -> bytes:
    """ABI tail of a uint32[] / uint16[]: length word, then one word per element."""
    words = np.zeros((values.size + 1, 8), dtype=">u4")
    words[0, 7] = values.size
    words[1:, 7] = values
    return words.tobytes()


def _encode_arrays(signature: str, *arrays: np.ndarray) -> bytes:
    head, tail = b"", b""
    offset = 32 * len(arrays)
    for arr in arrays:
        head += _word(offset + len(tail))
        tail += _array(arr)
    return _selector(signature) + head + tail


def _decode_array(data: bytes) -> np.ndarray:
    """Decode a single returned dynamic array of uint8/16/32."""
    n = int.from_bytes(data[32:64], "big")
    words = np.frombuffer(data[64 : 64 + 32 * n], dtype=">u4").reshape(n, 8)
    if np.any(words[:, :7]):
        raise AssertionError("a returned element does not fit 32 bits")
    return words[:, 7].astype(U32)


@dataclass
class Harness:
    """FloatHarness deployed on one chain, with batch helpers that split into chunks."""

    w3: Web3
    address: str
    call_gas: int
    chunk: int

    def _call(self, data: bytes) -> bytes:
        return bytes(self.w3.eth.call({"to": self.address, "data": data, "gas": self.call_gas}))

    def binary(self, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sig = f"{name}Batch(uint32[],uint32[])"
        out = [
            _decode_array(
                self._call(_encode_arrays(sig, a[i : i + self.chunk], b[i : i + self.chunk]))
            )
            for i in range(0, a.size, self.chunk)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=U32)

    def unary(self, name: str, x: np.ndarray, arg: str = "uint32") -> np.ndarray:
        sig = f"{name}Batch({arg}[])"
        out = [
            _decode_array(self._call(_encode_arrays(sig, x[i : i + self.chunk])))
            for i in range(0, x.size, self.chunk)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=U32)

    def cmp(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """eq | lt << 1 | le << 2 per pair."""
        return self.binary("cmp", a, b)

    def gas(self, op: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sig = "gasOf(uint8,uint32[],uint32[])"
        head = _word(op) + _word(96) + _word(96 + 32 * (a.size + 1))
        data = _selector(sig) + head + _array(a) + _array(b)
        gas_used, _ = abi_decode(["uint256[]", "uint32[]"], self._call(data))
        return np.array(gas_used, dtype=np.int64)


def assert_bits_equal(
    what: str, inputs: tuple[np.ndarray, ...], got: np.ndarray, want: np.ndarray
) -> None:
    assert got.shape == want.shape, f"{what}: {got.shape} results for {want.shape} cases"
    bad = np.flatnonzero(got != want)
    if bad.size:
        lines = [
            "  "
            + ", ".join(f"{int(x[i]):#010x}" for x in inputs)
            + f" -> evm {int(got[i]):#010x}, reference {int(want[i]):#010x}"
            for i in bad[:10]
        ]
        raise AssertionError(
            f"{what}: {bad.size} of {want.size} cases differ; first ones:\n" + "\n".join(lines)
        )


# --- inputs ---------------------------------------------------------------------------------

SPECIALS = np.array(
    [
        0x00000000, 0x00000001, 0x00000002, 0x00000003, 0x00400000, 0x007FFFFE, 0x007FFFFF,
        0x00800000, 0x00800001, 0x00FFFFFF, 0x01000000, 0x0C000000, 0x33000000, 0x33800000,
        0x34000000, 0x3F000000, 0x3F7FFFFF, 0x3F800000, 0x3F800001, 0x3FC00000, 0x3FFFFFFF,
        0x40000000, 0x40400000, 0x4B000000, 0x4B400000, 0x4B800000, 0x3F200000, 0x3FB504F3,
        0x42B20000, 0x42B20001, 0x42D00000, 0x42D00001, 0x3F317218, 0x7F000000, 0x7F7FFFFE,
        0x7F7FFFFF, 0x7F800000, 0x7FC00000, 0x7FC00001, 0x7F800001, 0x7FFFFFFF,
    ],
    dtype=U32,
)  # fmt: skip
SPECIALS = np.concatenate([SPECIALS, SPECIALS | SIGN])


def _bits(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(U32)


def _compose(sign: np.ndarray, exponent: np.ndarray, mantissa: np.ndarray) -> np.ndarray:
    return (
        (sign.astype(U32) << U32(31))
        | (np.clip(exponent, 0, 255).astype(U32) << U32(23))
        | (mantissa.astype(U32) & U32(0x7FFFFF))
    )


def _few_bit_mantissas(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mantissas with only their top 1..13 bits random: exact and halfway products/quotients."""
    k = rng.integers(1, 14, n)
    return rng.integers(0, 1 << 13, n) >> (13 - k) << (23 - k)


def _sprinkle(rng: np.random.Generator, x: np.ndarray, rate: float) -> np.ndarray:
    """Replace a fraction `rate` of x by special values."""
    x = x.copy()
    pick = rng.random(x.size) < rate
    x[pick] = rng.choice(SPECIALS, int(pick.sum()))
    return x


def binary_cases(
    rng: np.random.Generator, n: int, special_pairs: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of special values (all of them, or a random subset of `special_pairs`), then
    at least `n` random pairs from mixes weighted to the hard cases."""
    sa, sb = (g.ravel() for g in np.meshgrid(SPECIALS, SPECIALS, indexing="ij"))
    if special_pairs is not None:
        keep = rng.permutation(sa.size)[:special_pairs]
        sa, sb = sa[keep], sb[keep]
    parts = 9
    k = -(-n // parts)
    sign = lambda: rng.integers(0, 2, k)  # noqa: E731
    mant = lambda: rng.integers(0, 1 << 23, k)  # noqa: E731
    # 1. uniform bit patterns
    a1, b1 = _bits(rng, k), _bits(rng, k)
    # 2. nearby exponents (alignment, cancellation)
    e = rng.integers(0, 255, k)
    a2 = _compose(sign(), e, mant())
    b2 = _compose(sign(), e + rng.integers(-26, 27, k), mant())
    # 3. few significant bits (exact results, ties for add/mul/div)
    e = rng.integers(1, 255, k)
    a3 = _compose(sign(), e, _few_bit_mantissas(rng, k))
    b3 = _compose(sign(), e + rng.integers(-30, 31, k), _few_bit_mantissas(rng, k))
    # 4. subnormal and tiny operands
    a4 = _compose(sign(), rng.integers(0, 3, k), mant())
    b4 = _compose(sign(), rng.integers(0, 30, k), mant())
    # 5. products and quotients near overflow / underflow: ea + eb ~ 127 + {0, 254}, ea - eb ~
    ea = rng.integers(1, 255, k)
    target = rng.choice([127 - 24, 127 - 1, 127, 127 + 254, 127 + 253], k)
    a5 = _compose(sign(), ea, mant())
    b5 = _compose(sign(), np.where(rng.random(k) < 0.5, target - ea, ea - (target - 254)) +
                  rng.integers(-2, 3, k), mant())  # fmt: skip
    # 6. add halfway: b is exactly (or nearly) half an ulp of a
    ea = rng.integers(1, 255, k)
    a6 = _compose(sign(), ea, mant())
    b6 = _compose(sign(), ea - 24 + rng.integers(-1, 2, k), rng.choice([0, 1, 0x7FFFFF], k))
    # 7. x op x and x op -x
    a7 = _bits(rng, k)
    b7 = np.where(rng.random(k) < 0.5, a7, a7 ^ SIGN).astype(U32)
    # 8. moderate values (the range of activations)
    a8 = ref.to_bits(rng.normal(0, 4, k).astype(np.float32)).astype(U32)
    b8 = ref.to_bits(rng.normal(0, 4, k).astype(np.float32)).astype(U32)
    # 9. odd significands whose exact product has 25 or 26 bits: mul ties and near-ties
    k1 = rng.integers(2, 25, k)
    k2 = 26 - k1
    sig_a = (rng.integers(0, 1 << 23, k) % (1 << (k1 - 1))) | (1 << (k1 - 1)) | 1
    sig_b = (rng.integers(0, 1 << 23, k) % (1 << (k2 - 1))) | (1 << (k2 - 1)) | 1
    a9 = _compose(sign(), rng.integers(60, 190, k), sig_a << (24 - k1))
    b9 = _compose(sign(), rng.integers(60, 190, k), sig_b << (24 - k2))
    a = np.concatenate([sa, a1, a2, a3, a4, a5, a6, a7, a8, a9])
    b = np.concatenate([sb, b1, b2, b3, b4, b5, b6, b7, b8, b9])
    swap = rng.random(a.size) < 0.5
    swap[: sa.size] = False
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    return _sprinkle(rng, a, 0.02), _sprinkle(rng, b, 0.02)


def unary_cases(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    """n inputs for one unary function: the specials, then a mix for the function's domain."""
    k = max(n - SPECIALS.size, 0) // 4
    f32 = lambda v: ref.to_bits(np.asarray(v, dtype=np.float32)).astype(U32)  # noqa: E731
    uniform = _bits(rng, k)
    subnormal = _compose(rng.integers(0, 2, k), np.zeros(k), rng.integers(0, 1 << 23, k))
    if name in ("sqrt", "rsqrt"):
        squares = f32(ref.from_bits(_compose(np.zeros(k), rng.integers(64, 190, k),
                                             _few_bit_mantissas(rng, k))) ** 2)  # fmt: skip
        domain = np.concatenate([squares, subnormal & U32(0x7FFFFFFF)])
    elif name == "exp":
        near = f32(rng.choice([89.0, -104.0, 88.72284, -87.33655, -103.27893, 0.0], k))
        domain = np.concatenate([f32(rng.uniform(-110, 95, k)), near + rng.integers(-4, 5, k)])
    elif name == "log":
        near = f32(rng.choice([1.0, 1.4142135, 0.70710677, 2.0, 0.5], k))
        domain = np.concatenate([uniform & U32(0x7FFFFFFF), near + rng.integers(-64, 65, k)])
    elif name in DERIVED:  # sigmoid, silu, tanh, geluTanh
        near = f32(rng.choice([0.625, -0.625, 0.0, 9.0, -9.3, -20.0, 44.0], k))
        domain = np.concatenate([f32(rng.normal(0, 6, k)), near + rng.integers(-8, 9, k)])
    else:
        domain = np.concatenate([f32(rng.normal(0, 6, k)), subnormal])
    x = np.concatenate([SPECIALS, uniform, subnormal, domain]).astype(U32)
    return _sprinkle(rng, x, 0.01)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded(embedded_web3: Web3) -> Harness:
    contract = deploy(embedded_web3, "FloatHarness")
    return Harness(embedded_web3, contract.address, call_gas=29_000_000, chunk=800)


@pytest.fixture(scope="module")
def anvil(anvil_web3: Web3) -> Harness:
    contract = deploy(anvil_web3, "FloatHarness")
    return Harness(anvil_web3, contract.address, call_gas=10**11, chunk=20_000)


# --- embedded chain: everywhere -------------------------------------------------------------

EMBEDDED_BINARY_CASES = 1500  # random pairs, after 1,500 pairs of special values
EMBEDDED_UNARY_CASES = {"sqrt": 1500, "neg": 600, "abs": 600, "reciprocal": 1500, "rsqrt": 1000}
EMBEDDED_DERIVED_CASES = 400


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_embedded(embedded: Harness, name: str) -> None:
    rng = np.random.default_rng(1000 + len(name))
    a, b = binary_cases(rng, EMBEDDED_BINARY_CASES, special_pairs=1500)
    assert_bits_equal(name, (a, b), embedded.binary(name, a, b), ref_binary(name, a, b))


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_embedded(embedded: Harness, name: str) -> None:
    n = EMBEDDED_UNARY_CASES.get(name, EMBEDDED_DERIVED_CASES)
    x = unary_cases(np.random.default_rng(2000 + len(name)), name, n)
    assert_bits_equal(name, (x,), embedded.unary(name, x), ref_unary(name, x))


def test_comparisons_embedded(embedded: Harness) -> None:
    a, b = binary_cases(np.random.default_rng(3000), EMBEDDED_BINARY_CASES, special_pairs=1500)
    assert_bits_equal("eq|lt|le", (a, b), embedded.cmp(a, b), ref_cmp(a, b))


def test_conversions_embedded(embedded: Harness) -> None:
    rng = np.random.default_rng(4000)
    halves = np.concatenate(
        [np.array([0, 1, 0x3FF, 0x400, 0x7BFF, 0x7C00, 0x7C01, 0x7E00, 0x7F80, 0x7FC0], np.uint32),
         rng.integers(0, 1 << 16, 1000).astype(U32)]
    )  # fmt: skip
    halves = np.concatenate([halves, halves | U32(0x8000)])
    h16 = halves.astype(np.uint16)
    got = embedded.unary("fromBf16", halves, "uint16")
    assert_bits_equal("fromBf16", (halves,), got, ref.to_bits(ref.from_bf16(h16)).astype(U32))
    got = embedded.unary("fromFp16", halves, "uint16")
    assert_bits_equal("fromFp16", (halves,), got, ref.to_bits(ref.from_fp16(h16)).astype(U32))
    x = unary_cases(rng, "toBf16", 1500)
    ties = (rng.integers(0, 1 << 16, 500).astype(U32) << U32(16)) | U32(0x8000)
    x = np.concatenate([x, ties, ties + U32(1), ties - U32(1)])
    want = ref.to_bf16(ref.from_bits(x)).astype(U32)
    assert_bits_equal("toBf16", (x,), embedded.unary("toBf16", x), want)


@pytest.mark.parametrize("chain", ["embedded_web3", "anvil_web3"])
def test_require_canonical(request: pytest.FixtureRequest, chain: str) -> None:
    w3: Web3 = request.getfixturevalue(chain)
    contract = deploy(w3, "FloatHarness")
    for ok in (0x7FC00000, 0x00000000, 0x7F800000, 0xFF800000, 0x3F800000):
        contract.functions.requireCanonical(ok).call()
    selector = _selector("NonCanonicalNaN(uint32)")
    for bad in (0x7FC00001, 0xFFC00000, 0x7F800001, 0xFFFFFFFF):
        with pytest.raises((ContractCustomError, TransactionFailed)) as info:
            contract.functions.requireCanonical(bad).call()
        assert revert_data(info.value) == selector + _word(bad)


def test_single_call_entry_points(embedded_web3: Web3) -> None:
    """The non-batch functions agree with the batch ones (spot check)."""
    f = deploy(embedded_web3, "FloatHarness").functions
    assert f.add(0x3F800000, 0x40000000).call() == 0x40400000
    assert f.sub(0x3F800000, 0x3F800000).call() == 0x00000000
    assert f.mul(0x00000001, 0x3F000000).call() == 0x00000000  # 2^-150 ties to even: +0
    assert f.div(0x3F800000, 0x40400000).call() == 0x3EAAAAAB
    assert f.sqrt(0x80000000).call() == 0x80000000
    assert f.max(0x80000000, 0x00000000).call() == 0x00000000
    assert f.min(0x00000000, 0x80000000).call() == 0x80000000
    assert f.rsqrt(0x80000000).call() == 0xFF800000
    assert f.exp(0x3F800000).call() == int(ref.to_bits(ref.exp(np.float32(1.0))))
    assert f.log(0x00000000).call() == 0xFF800000
    assert f.toBf16(0x7FC12345).call() == 0x7FC0
    assert f.fromFp16(0x0001).call() == 0x33800000
    assert f.eq(0x80000000, 0x00000000).call() is True
    assert f.lt(0x7FC00000, 0x3F800000).call() is False
    assert f.le(0xFF800000, 0x7F800000).call() is True


# --- anvil: volume ----------------------------------------------------------------------------

ANVIL_BINARY_CASES = 200_000  # random pairs, after the 6,724 pairs of special values
ANVIL_UNARY_CASES = {"sqrt": 200_000, "neg": 50_000, "abs": 50_000, "reciprocal": 100_000}
ANVIL_UNARY_CASES |= {"rsqrt": 100_000}
ANVIL_DERIVED_CASES = 100_000


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_anvil(anvil: Harness, name: str) -> None:
    a, b = binary_cases(
        np.random.default_rng(5000 + len(name) * 7 + ord(name[0])), ANVIL_BINARY_CASES
    )
    assert a.size >= ANVIL_BINARY_CASES + SPECIALS.size**2
    assert_bits_equal(name, (a, b), anvil.binary(name, a, b), ref_binary(name, a, b))


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_anvil(anvil: Harness, name: str) -> None:
    n = ANVIL_UNARY_CASES.get(name, ANVIL_DERIVED_CASES)
    x = unary_cases(np.random.default_rng(6000 + len(name) * 7 + ord(name[0])), name, n)
    assert_bits_equal(name, (x,), anvil.unary(name, x), ref_unary(name, x))


def test_comparisons_anvil(anvil: Harness) -> None:
    a, b = binary_cases(np.random.default_rng(7000), 100_000)
    got = anvil.cmp(a, b)
    assert_bits_equal("eq|lt|le", (a, b), got, ref_cmp(a, b))


def test_conversions_exhaustive_anvil(anvil: Harness) -> None:
    halves = np.arange(1 << 16, dtype=U32)
    h16 = halves.astype(np.uint16)
    got = anvil.unary("fromBf16", halves, "uint16")
    assert_bits_equal("fromBf16", (halves,), got, ref.to_bits(ref.from_bf16(h16)).astype(U32))
    got = anvil.unary("fromFp16", halves, "uint16")
    assert_bits_equal("fromFp16", (halves,), got, ref.to_bits(ref.from_fp16(h16)).astype(U32))
    rng = np.random.default_rng(8000)
    ties = (halves << U32(16)) | U32(0x8000)
    x = np.concatenate([_bits(rng, 100_000), ties, ties + U32(1), ties - U32(1)])
    want = ref.to_bf16(ref.from_bits(x)).astype(U32)
    assert_bits_equal("toBf16", (x,), anvil.unary("toBf16", x), want)


def test_gas_budget(anvil: Harness) -> None:
    """add and mul cost at most 2,000 gas each (internal call), worst case over a case mix."""
    a, b = binary_cases(np.random.default_rng(9000), 20_000)
    baseline = int(anvil.gas(0, a[:100], b[:100]).max())
    for name, budget in GAS_BUDGET.items():
        used = anvil.gas(GAS_OPS[name], a, b) - baseline
        assert used.max() <= budget, f"{name}: up to {used.max()} gas, budget {budget}"


# --- anvil: hypothesis and conformance vectors ----------------------------------------------

_float_bits = st.one_of(
    st.integers(0, 2**32 - 1),
    st.sampled_from([int(v) for v in SPECIALS]),
    st.floats(width=32, allow_nan=False).map(lambda v: int(ref.to_bits(np.float32(v)))),
)


@given(st.lists(st.tuples(_float_bits, _float_bits), min_size=1, max_size=64))
def test_binary_hypothesis_anvil(anvil: Harness, pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs], dtype=U32)
    b = np.array([p[1] for p in pairs], dtype=U32)
    for name in BINARY:
        assert_bits_equal(name, (a, b), anvil.binary(name, a, b), ref_binary(name, a, b))
    for name in ("sqrt", "exp", "log", "tanh"):
        assert_bits_equal(name, (a,), anvil.unary(name, a), ref_unary(name, a))


_VECTOR_FUNCTIONS = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "max": "max", "min": "min",
    "sqrt": "sqrt", "neg": "neg", "abs": "abs", "reciprocal": "reciprocal", "rsqrt": "rsqrt",
    "exp": "exp", "log": "log", "sigmoid": "sigmoid", "silu": "silu", "tanh": "tanh",
    "gelu_tanh": "geluTanh", "from_bf16": "fromBf16", "from_fp16": "fromFp16",
    "to_bf16": "toBf16",
}  # fmt: skip
_VECTOR_COMPARISONS = {"eq": 0, "lt": 1, "le": 2}


def test_conformance_vectors_anvil(anvil: Harness) -> None:
    """Every elementwise conformance vector the soft-float implements, through the harness."""
    vectors = pytest.importorskip("refute.kernels.vectors")
    if not any(VECTOR_DIR.glob("*.msgpack")):
        pytest.skip(f"no conformance vectors in {VECTOR_DIR}")
    records = vectors.load(VECTOR_DIR)
    checked = 0
    for name, rec in sorted(records.items()):
        if rec["kind"] != "elementwise" or (
            name not in _VECTOR_FUNCTIONS and name not in _VECTOR_COMPARISONS
        ):
            continue
        in_dtype = "<u2" if rec.get("input_dtype") == "uint16" else "<u4"
        out_dtype = "<u2" if rec.get("output_dtype") == "uint16" else "<u4"
        inputs = [np.frombuffer(x, dtype=in_dtype).astype(U32) for x in rec["inputs"]]
        want = np.frombuffer(rec["output"], dtype=out_dtype).astype(U32)
        if name in _VECTOR_COMPARISONS:
            got_all = anvil.cmp(inputs[0], inputs[1])
            got = (got_all >> U32(_VECTOR_COMPARISONS[name])) & U32(1)
        elif rec["arity"] == 2:
            got = anvil.binary(_VECTOR_FUNCTIONS[name], inputs[0], inputs[1])
        else:
            arg = "uint16" if in_dtype == "<u2" else "uint32"
            got = anvil.unary(_VECTOR_FUNCTIONS[name], inputs[0], arg)
        assert_bits_equal(f"vectors/{name}", tuple(inputs), got, want)
        checked += 1
    assert checked == len(_VECTOR_FUNCTIONS) + len(_VECTOR_COMPARISONS), checked
