"""Triton kernels (refute.kernels.gpu) against the reference, bit for bit.

By default the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here before the
package is imported). With REFUTE_TRITON_DEVICE=cuda the same tests run on the GPU instead;
`test_bit_exact_on_cuda_device` does that in a subprocess whenever a CUDA device is present, and
is skipped, with the reason, otherwise.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")
torch = pytest.importorskip("torch")

ON_DEVICE = os.environ.get("REFUTE_TRITON_DEVICE") == "cuda"
if not ON_DEVICE:
    os.environ["TRITON_INTERPRET"] = "1"


def _load_gpu():
    """refute.kernels.gpu built for the mode of this run (re-imported if built otherwise)."""
    import refute.kernels.gpu as gpu

    if gpu.INTERPRETED == ON_DEVICE:  # imported earlier in the other mode: rebuild the kernels
        for name in [m for m in sys.modules if m.startswith("refute.kernels.gpu")]:
            del sys.modules[name]
        gpu = importlib.import_module("refute.kernels.gpu")
    return gpu


gpu = _load_gpu()
from refute.errors import ShapeError, SpecDomainError  # noqa: E402
from refute.kernels import reference as ref  # noqa: E402
from refute.kernels.gpu import (  # noqa: E402
    _runtime,
    gemm_kernel,
    gemv_kernel,
    spec,
    tree_sum_kernel,
)

U32 = np.uint32
F32 = np.float32
REPO = Path(__file__).resolve().parents[1]

SPECIAL_BITS = (
    0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x00000002, 0x00400000, 0x007FFFFF,
    0x807FFFFF, 0x00800000, 0x80800000, 0x00800001, 0x3F800000, 0xBF800000, 0x3F800001,
    0x3F7FFFFF, 0x3F000000, 0xBF000000, 0x3FC00000, 0x40200000, 0xBFC00000, 0x40000000,
    0x33800000, 0x33000000, 0x4B000000, 0x4B400000, 0x4A800001, 0x4AFFFFFF, 0x7F7FFFFF,
    0xFF7FFFFF, 0x7F000000, 0x1F800000, 0x5F800000, 0x7F800000, 0xFF800000, 0x7FC00000,
    0xFFC00000, 0x7FC00001, 0x7F800001, 0xFFFFFFFF,
)  # fmt: skip
"""±0, subnormals, normal boundary, ±1, halfway cases (0.5, 1.5, 2.5, 2^22+0.5), 2^23,
the rounding magic, extremes, ±inf, NaNs (canonical, negative, payload, signalling)."""

THRESHOLDS = (
    88.72283, 88.72284, 88.75, 89.0, 89.00001, -87.33654, -103.97208, -104.0, -104.00001,
    -150.0, 0.625, 0.62499994, -0.625, 9.0, 44.0, -44.0, 1.4142135, 1.4142137, 0.70710677,
    0.7071068, 1.0000001, 0.99999994, -10.0, -20.0, 4.0, 1e-8, -1e-8, 0.1, -80.0, -6.0,
)  # fmt: skip
"""Inputs at the branch points of exp, log, tanh, sigmoid, silu and gelu_tanh."""

UNARY_REFERENCE = {
    "neg": ref.neg,
    "abs": ref.abs_,
    "sqrt": ref.sqrt,
    "exp": ref.exp,
    "log": ref.log,
    "reciprocal": ref.reciprocal,
    "rsqrt": ref.rsqrt,
    "sigmoid": ref.sigmoid,
    "silu": ref.silu,
    "tanh": ref.tanh,
    "gelu_tanh": ref.gelu_tanh,
    "round_to_int": ref.round_to_int,
    "canonicalize": ref.canonicalize,
}
BINARY_REFERENCE = {
    "add": ref.add,
    "sub": ref.sub,
    "mul": ref.mul,
    "div": ref.div,
    "maximum": ref.maximum,
    "minimum": ref.minimum,
}


def bits(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=F32)).view(U32)


def assert_same_bits(got, want, inputs: tuple = ()) -> None:
    g, w = bits(got), bits(want)
    assert g.shape == w.shape, (g.shape, w.shape)
    bad = np.flatnonzero(g != w)
    if bad.size:
        i = bad[0]
        where = np.unravel_index(i, g.shape)
        shown = [hex(int(bits(a).reshape(-1)[i])) for a in inputs if np.size(a) == g.size]
        pytest.fail(
            f"{bad.size} of {g.size} results differ; first at {where}: inputs {shown}, "
            f"got {hex(int(g.reshape(-1)[i]))}, want {hex(int(w.reshape(-1)[i]))}"
        )


def unary_inputs(seed: int, n_random: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    special = np.array(SPECIAL_BITS, dtype=U32)
    near = bits(np.array(THRESHOLDS, dtype=F32))
    near = np.concatenate([near, near + U32(1), near - U32(1), near ^ U32(0x80000000)])
    uniform = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(U32)
    moderate = bits(rng.normal(0, 8, n_random).astype(F32))
    return np.concatenate([special, near, uniform, moderate]).view(F32)


def binary_inputs(seed: int, n_random: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    special = np.array(SPECIAL_BITS, dtype=U32)
    sa, sb = (g.ravel() for g in np.meshgrid(special, special, indexing="ij"))
    # halfway cases: a + a_ulp/2 and (1 + k 2^-12)(1 + j 2^-12), scaled into subnormals too
    a = rng.integers(0x00800000, 0x7F000000, n_random, dtype=np.uint64).astype(U32)
    half = ((np.maximum((a >> U32(23)).astype(np.int64) - 24, 1)) << 23).astype(U32)
    half |= (rng.random(n_random) < 0.5).astype(U32) << U32(31)
    c = (1 + rng.integers(1, 4096, n_random) / 4096.0).astype(F32)
    d = (1 + rng.integers(1, 4096, n_random) / 4096.0).astype(F32)
    scale = ((rng.integers(-140, 120, n_random) + 127).clip(1, 254) << 23).astype(U32)
    ra = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(U32)
    rb = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(U32)
    cb = ra ^ U32(0x80000000) ^ rng.integers(0, 64, n_random).astype(U32)  # cancellation
    left = np.concatenate([sa, a, bits(c * scale.view(F32)), ra, ra])
    right = np.concatenate([sb, half, bits(d), rb, cb])
    return left.view(F32), right.view(F32)


# --- setup -------------------------------------------------------------------------------------


def test_kernels_run_in_the_mode_of_this_session() -> None:
    assert gpu.available(), gpu.unavailable_reason()
    assert gpu.INTERPRETED is not ON_DEVICE


def test_unavailable_raises_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not gpu.available()
    assert "TRITON_INTERPRET" in gpu.unavailable_reason()
    with pytest.raises(gpu.TritonUnavailableError):
        gpu.exp(np.zeros(3, F32))
    with pytest.raises(gpu.TritonUnavailableError):
        gpu.gemv(np.zeros(3, F32), np.zeros((3, 2), F32))


def test_constants_are_the_reference_bit_patterns() -> None:
    def c(v) -> int:
        return int(bits(v)[0])

    want = {
        "CANONICAL_NAN": ref.CANONICAL_NAN_BITS,
        "POS_INF": c(ref.INF),
        "NEG_ZERO": c(F32(-0.0)),
        "ROUND_MAGIC": c(ref._ROUND_MAGIC),
        "EXP_OVERFLOW": c(ref.EXP_OVERFLOW),
        "EXP_UNDERFLOW": c(ref.EXP_UNDERFLOW),
        "LOG2E": c(ref.LOG2E),
        "LN2_HI": c(ref.LN2_HI),
        "LN2_LO": c(ref.LN2_LO),
        "SQRT2": c(ref.SQRT2),
        "TWO_POW_23": c(ref.TWO_POW_23),
        "SMALLEST_NORMAL": c(ref.SMALLEST_NORMAL),
        "TANH_SMALL": c(ref.TANH_SMALL),
        "GELU_A": c(ref.GELU_A),
        "GELU_2C": c(ref.GELU_2C),
        **{f"EXP_P{i}": c(v) for i, v in enumerate(ref.EXP_POLY)},
        **{f"LOG_P{i}": c(v) for i, v in enumerate(ref.LOG_POLY)},
        **{f"TANH_P{i}": c(v) for i, v in enumerate(ref.TANH_POLY)},
    }
    assert spec.CONSTANT_BITS == want


# --- elementwise -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNARY_REFERENCE))
def test_unary_special_and_random_values(name: str) -> None:
    x = unary_inputs(seed=sorted(UNARY_REFERENCE).index(name))
    assert_same_bits(gpu.unary(name, x), UNARY_REFERENCE[name](x), (x,))


def test_round_to_int_ties_to_even() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 2**22 + 0.5, 2**22 + 1.5, -(2**22) + 0.5], F32)
    assert_same_bits(gpu.round_to_int(x), ref.round_to_int(x), (x,))
    want = np.array([0, 2, 2, 0, -2, 2**22, 2**22 + 2, -(2**22)], F32)  # -0.5 -> +0
    assert_same_bits(gpu.round_to_int(x), want)


def test_pow2_whole_domain_and_refusal() -> None:
    k = np.arange(-126, 128, dtype=np.int32)
    assert_same_bits(gpu.pow2(k), ref.pow2(k))
    for bad in (-127, 128):
        with pytest.raises(SpecDomainError):
            gpu.pow2(np.array([0, bad], np.int32))


def test_every_nan_output_is_canonical() -> None:
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7FC00001, 0x7F800001, 0xFFFFFFFF], U32).view(F32)
    for name in UNARY_REFERENCE:
        assert np.all(bits(gpu.unary(name, nans)) == ref.CANONICAL_NAN_BITS), name
    for name in BINARY_REFERENCE:
        y = gpu.binary(name, nans, np.ones_like(nans))
        assert np.all(bits(y) == ref.CANONICAL_NAN_BITS), name


@pytest.mark.parametrize("name", sorted(BINARY_REFERENCE))
def test_binary_special_halfway_and_random_values(name: str) -> None:
    a, b = binary_inputs(seed=100 + sorted(BINARY_REFERENCE).index(name))
    assert_same_bits(gpu.binary(name, a, b), BINARY_REFERENCE[name](a, b), (a, b))


def test_binary_broadcasts_like_numpy() -> None:
    a = np.array([[0.0], [-0.0], [np.inf]], F32)
    b = np.array([-0.0, 0.0, 1e-45, -np.inf], F32)
    for name, f in BINARY_REFERENCE.items():
        assert_same_bits(gpu.binary(name, a, b), f(a, b))


float_bits = st.integers(0, 2**32 - 1)


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(sorted(UNARY_REFERENCE)),
    x=st.lists(float_bits, min_size=1, max_size=2100).map(lambda v: np.array(v, U32).view(F32)),
)
def test_unary_hypothesis(name: str, x: np.ndarray) -> None:
    assert_same_bits(gpu.unary(name, x), UNARY_REFERENCE[name](x), (x,))


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(sorted(BINARY_REFERENCE)), data=st.data())
def test_binary_hypothesis(name: str, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 2100))
    pairs = st.lists(float_bits, min_size=n, max_size=n)
    a = np.array(data.draw(pairs), U32).view(F32)
    b = np.array(data.draw(pairs), U32).view(F32)
    assert_same_bits(gpu.binary(name, a, b), BINARY_REFERENCE[name](a, b), (a, b))


def test_torch_tensors_in_torch_tensors_out() -> None:
    x = torch.tensor([0.5, -0.0, float("nan"), 3.0])
    y = gpu.exp(x)
    assert isinstance(y, torch.Tensor) and y.device == x.device
    assert_same_bits(y.cpu().numpy(), ref.exp(x.numpy()))
    assert isinstance(gpu.exp(x.numpy()), np.ndarray)
    with pytest.raises(TypeError):
        gpu.exp(torch.zeros(3, dtype=torch.float64))


# --- reductions --------------------------------------------------------------------------------

VALUE_POOL = np.array(
    [0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-40, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan,
     2.5, 2.5, 0.1, -0.1, 1e8, 1.0 + 2**-23, 2**-24, *range(-4, 5)],
    dtype=F32,
)  # fmt: skip


def rows_strategy(max_rows: int = 9, max_k: int = 2200):
    """[rows, K] float32 matrices: K anywhere (tails, powers of two and their neighbours),
    values mixing normals, specials and repeated values (ties)."""

    @st.composite
    def draw(data_draw) -> np.ndarray:
        rows = data_draw(st.integers(1, max_rows))
        k = data_draw(
            st.one_of(
                st.integers(1, 40),
                st.sampled_from([63, 64, 65, 127, 128, 129, 1023, 1024, 1025, 2047, 2048, 2049]),
                st.integers(1, max_k),
            )
        )
        seed = data_draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        mode = data_draw(st.sampled_from(["normal", "pool", "mixed", "bits", "zeros"]))
        if mode == "normal":
            x = rng.normal(0, 1e3, (rows, k)).astype(F32)
        elif mode == "pool":
            x = rng.choice(VALUE_POOL, (rows, k))
        elif mode == "bits":
            x = rng.integers(0, 1 << 32, (rows, k), dtype=np.uint64).astype(U32).view(F32)
        elif mode == "zeros":
            x = rng.choice(np.array([0.0, -0.0], F32), (rows, k), p=[0.1, 0.9])
        else:
            x = rng.normal(0, 1, (rows, k)).astype(F32)
            mask = rng.random((rows, k)) < 0.05
            x[mask] = rng.choice(VALUE_POOL, int(mask.sum()))
        return x

    return draw()


@settings(max_examples=30, deadline=None)
@given(x=rows_strategy())
def test_reductions_hypothesis(x: np.ndarray) -> None:
    assert_same_bits(gpu.tree_sum(x), ref.tree_sum(x, axis=-1))
    assert_same_bits(gpu.tree_max(x), ref.tree_max(x, axis=-1))
    np.testing.assert_array_equal(gpu.argmax(x), ref.argmax(x, axis=-1))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 1024, 1025, 2048, 3000])
def test_reductions_signed_zeros_and_padding(k: int) -> None:
    x = np.full((2, k), -0.0, F32)
    x[1, -1] = 0.0
    assert_same_bits(gpu.tree_sum(x), ref.tree_sum(x))
    assert_same_bits(gpu.tree_max(x), ref.tree_max(x))
    np.testing.assert_array_equal(gpu.argmax(x), ref.argmax(x))


def test_argmax_nan_and_tie_rules() -> None:
    nan, inf = np.nan, np.inf
    cases = [
        [1.0, 3.0, 3.0, 2.0],  # tie: lowest index
        [-0.0, 0.0],  # -0 and +0 tie: left
        [0.0, -0.0, 0.0],
        [1.0, nan, 5.0, nan],  # NaN beats non-NaN; first NaN wins
        [nan, nan, nan],
        [-inf, -inf, -inf],  # all -inf: index 0, never a pad
        [-inf] * 5,
        [2.0, nan] + [9.0] * 1100,
        [1.0] * 1030 + [nan],
        [-inf] * 1500 + [-3.0],
    ]
    for row in cases:
        x = np.array(row, F32)
        assert int(gpu.argmax(x)) == int(ref.argmax(x)), row


def test_reductions_inf_nan_and_empty() -> None:
    x = np.array([[np.inf, -np.inf, 1.0], [np.nan, 1.0, 2.0], [1e38, 3e38, 0.0]], F32)
    assert_same_bits(gpu.tree_sum(x), ref.tree_sum(x))
    assert_same_bits(gpu.tree_max(x), ref.tree_max(x))
    empty = np.zeros((3, 0), F32)
    assert_same_bits(gpu.tree_sum(empty), ref.tree_sum(empty))
    assert_same_bits(gpu.tree_max(empty), ref.tree_max(empty))
    with pytest.raises(ShapeError):
        gpu.argmax(empty)


@pytest.mark.parametrize(("block", "block_k"), [(2, 1), (4, 4), (8, 2)])
def test_tiling_does_not_change_the_tree(
    monkeypatch: pytest.MonkeyPatch, block: int, block_k: int
) -> None:
    """Tiny blocks force several combine passes; the bits must not move."""
    monkeypatch.setattr(tree_sum_kernel, "BLOCK", block)
    monkeypatch.setattr(tree_sum_kernel, "TILE", 16)
    monkeypatch.setattr(gemv_kernel, "BLOCK_K", block_k)
    monkeypatch.setattr(gemm_kernel, "BLOCK_K", block_k)
    rng = np.random.default_rng(block)
    x = rng.normal(0, 1, (3, 77)).astype(F32)
    x[0, :20] = -0.0
    x[1, 5] = np.nan
    assert_same_bits(gpu.tree_sum(x), ref.tree_sum(x))
    assert_same_bits(gpu.tree_max(x), ref.tree_max(x))
    np.testing.assert_array_equal(gpu.argmax(x), ref.argmax(x))
    w = rng.normal(0, 1, (77, 5)).astype(F32)
    assert_same_bits(gpu.gemv(x[2], w), ref.dot(x[2], w))
    assert_same_bits(gpu.gemm(x, w), ref.dot(x, w))


# --- tree dot ----------------------------------------------------------------------------------


def matrices(rng: np.random.Generator, shape: tuple[int, ...], mode: str) -> np.ndarray:
    if mode == "normal":
        return rng.normal(0, 1, shape).astype(F32)
    if mode == "pool":
        return rng.choice(VALUE_POOL, shape)
    if mode == "tiny":  # products in the subnormal range, and exact cancellation
        return (rng.integers(-3, 4, shape) * F32(2.0**-70)).astype(F32)
    return rng.integers(0, 1 << 32, shape, dtype=np.uint64).astype(U32).view(F32)


dot_modes = st.sampled_from(["normal", "normal", "pool", "tiny", "bits"])
dot_k = st.one_of(st.integers(1, 40), st.sampled_from([127, 128, 129, 255, 257]),
                  st.integers(1, 600))  # fmt: skip


@settings(max_examples=20, deadline=None)
@given(k=dot_k, n=st.integers(1, 70), mode=dot_modes, seed=st.integers(0, 2**32 - 1))
def test_gemv_hypothesis(k: int, n: int, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, w = matrices(rng, (k,), mode), matrices(rng, (k, n), mode)
    assert_same_bits(gpu.gemv(x, w), ref.dot(x, w))


@settings(max_examples=15, deadline=None)
@given(
    m=st.integers(1, 20),
    k=dot_k,
    n=st.integers(1, 40),
    mode=dot_modes,
    seed=st.integers(0, 2**32 - 1),
)
def test_gemm_hypothesis(m: int, k: int, n: int, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, w = matrices(rng, (m, k), mode), matrices(rng, (k, n), mode)
    assert_same_bits(gpu.gemm(x, w), ref.dot(x, w))


def test_gemv_decode_sized_and_strided_weights() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, 4099).astype(F32)
    w = rng.normal(0, 1, (4099, 24)).astype(F32)
    assert_same_bits(gpu.gemv(x, w), ref.dot(x, w))
    wt = torch.from_numpy(rng.normal(0, 1, (12, 300)).astype(F32)).t()  # non-contiguous
    y = gpu.gemv(torch.from_numpy(x[:300]), wt)
    assert_same_bits(y.cpu().numpy(), ref.dot(x[:300], wt.numpy()))


def test_dot_edge_cases() -> None:
    assert_same_bits(gpu.gemv(np.zeros(0, F32), np.zeros((0, 3), F32)), np.zeros(3, F32))
    assert_same_bits(gpu.gemm(np.zeros((2, 0), F32), np.zeros((0, 3), F32)), np.zeros((2, 3), F32))
    x = np.array([[-0.0, -0.0, -0.0], [np.inf, 1.0, 0.0]], F32)  # -0 sums, inf * 0 = NaN
    w = np.array([[1.0, 0.0], [1.0, -1.0], [1.0, np.inf]], F32)
    assert_same_bits(gpu.gemm(x, w), ref.dot(x, w))
    assert_same_bits(gpu.dot(x[0], w), ref.dot(x[0], w))
    with pytest.raises(ShapeError):
        gpu.gemv(np.zeros(3, F32), np.zeros((4, 2), F32))
    with pytest.raises(ShapeError):
        gpu.gemm(np.zeros((2, 3), F32), np.zeros((4, 2), F32))


# --- conformance vectors -----------------------------------------------------------------------

VECTOR_DIR = REPO / "tests" / "vectors"
VECTOR_UNARY = {"abs", "exp", "gelu_tanh", "log", "neg", "reciprocal", "rsqrt", "sigmoid",
                "silu", "sqrt", "tanh"}  # fmt: skip
VECTOR_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "max": "maximum",
                 "min": "minimum"}  # fmt: skip


def _vectors() -> dict[str, dict]:
    if not any(VECTOR_DIR.glob("*.msgpack")):
        pytest.skip(f"no conformance vectors under {VECTOR_DIR} (python -m refute.kernels.vectors)")
    vectors = pytest.importorskip("refute.kernels.vectors")
    return vectors.load(VECTOR_DIR)


def _f32s(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<u4").astype(U32).view(F32)


def test_conformance_vectors_elementwise() -> None:
    records = _vectors()
    seen = 0
    for name, rec in records.items():
        if name in VECTOR_UNARY:
            x = _f32s(rec["inputs"][0])
            assert_same_bits(gpu.unary(name, x), _f32s(rec["output"]), (x,))
        elif name in VECTOR_BINARY:
            a, b = (_f32s(v) for v in rec["inputs"])
            assert_same_bits(gpu.binary(VECTOR_BINARY[name], a, b), _f32s(rec["output"]), (a, b))
        else:
            continue
        seen += 1
    assert seen == len(VECTOR_UNARY) + len(VECTOR_BINARY)


def test_conformance_vectors_reductions_and_dot() -> None:
    records = _vectors()
    for name, fn in (("tree_sum", gpu.tree_sum), ("tree_max", gpu.tree_max)):
        for case in records[name]["cases"]:
            got = fn(_f32s(case["x"]))
            assert int(bits(got)[0]) == case["out"], (name, case)
    for case in records["argmax"]["cases"]:
        assert int(gpu.argmax(_f32s(case["x"]))) == case["out"], case
    for case in records["dot"]["cases"]:
        x = _f32s(case["x"])
        w = _f32s(case["w"]).reshape(case["k"], case["n"])
        assert_same_bits(gpu.gemv(x, w), _f32s(case["out"]))
        assert_same_bits(gpu.gemm(x[None, :], w)[0], _f32s(case["out"]))


# --- on a real GPU -----------------------------------------------------------------------------


def test_bit_exact_on_cuda_device() -> None:
    """Run this whole file on the GPU (a subprocess with the interpreter off)."""
    if ON_DEVICE:
        pytest.skip("this is the device run itself")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: GPU bit-exactness rests on the interpreter tests and the "
                    "PTX audit (tests/test_triton_ptx.py)")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["REFUTE_TRITON_DEVICE"] = "cuda"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]


# --- the engine on the Triton backend ------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_whole_generations_have_the_reference_trace_root(name: str) -> None:
    """Every node of every position computed on the Triton kernels (prefill as GEMM, decode as
    GEMV, batched, greedy and sampled) commits to exactly the reference's trace."""
    from refute.engine import backends
    from refute.engine.checkpoint import load_model
    from refute.engine.executor import Executor, Request

    model = load_model(name)
    requests = [Request((1, 2, 3), 3), Request((4, 5), 2, temperature=0.9, seed=5)]
    want = Executor(model).generate(requests)
    backend = backends.make("triton")
    got = Executor(model, backend=backend).generate(requests)
    for a, b in zip(want, got, strict=True):
        assert b.trace.root() == a.trace.root()
        assert b.trace.roots == a.trace.roots
        assert b.output_tokens == a.output_tokens
    # the fused kernels computed every norm and attention of every row (5 + 2 per position)
    norm = "rmsnorm" if name == "tiny-llama" else "layernorm"
    kinds = [f.kind for f in backend.fused(model.program).values()]
    assert sorted(kinds) == sorted([norm] * 5 + ["attention"] * 2)
    rows = sum(r.positions for r in requests)
    assert backend.launches == {norm: 5 * rows, "attention": 2 * rows}


# --- fused composites (norms, softmax, attention) ------------------------------------------------

from refute.engine.backend import GroupRow, ReferenceBackend, Row  # noqa: E402
from refute.engine.builder import ProgramBuilder  # noqa: E402
from refute.engine.ir import Fn, Op, Reducer, Src  # noqa: E402
from refute.engine.ir import T as T_DIM  # noqa: E402
from refute.kernels.gpu import fusion  # noqa: E402
from refute.kernels.gpu.backend import TritonBackend  # noqa: E402

MAX_T = 40


def fused_values(rng: np.random.Generator, shape: tuple[int, ...], mode: str) -> np.ndarray:
    """Inputs of the fused kernels: normal, mixed with specials, all -0, large or small."""
    if mode == "normal":
        return rng.normal(0, 1, shape).astype(F32)
    if mode == "negzero":
        return np.full(shape, -0.0, F32)
    if mode == "large":
        return (rng.normal(0, 1, shape) * 1e19).astype(F32)  # squares overflow to inf
    if mode == "small":
        return (rng.normal(0, 1, shape) * 1e-22).astype(F32)  # squares subnormal or 0
    if mode == "pool":
        return rng.choice(VALUE_POOL, shape)
    x = rng.normal(0, 3, shape).astype(F32)  # mixed
    mask = rng.random(shape) < 0.1
    x[mask] = rng.choice(VALUE_POOL, int(mask.sum()))
    return x


fused_modes = st.sampled_from(["normal", "normal", "negzero", "large", "small", "pool", "mixed"])
widths = st.one_of(st.integers(1, 40), st.sampled_from([63, 64, 65, 100, 127, 129, 300]))


def node_by_node(program, node_ids, rows: list[GroupRow]) -> list[list[np.ndarray]]:
    """The group evaluated one node at a time on the reference (what fusion must equal)."""
    reference = ReferenceBackend()
    local = [list(r.outputs) for r in rows]
    per_node = []
    for nid in node_ids:
        node = program.nodes[nid]
        inputs = []
        for r, outs in zip(rows, local, strict=True):
            sources = [
                outs[op.index] if op.src == Src.NODE
                else r.weights[op.index] if op.src == Src.WEIGHT
                else np.array([op.index], U32).view(F32)
                for op in node.operands
            ]  # fmt: skip
            inputs.append(Row(r.position, r.token, sources, r.temperature, r.seed))
        results = reference.evaluate(program, node, inputs)
        for outs, res in zip(local, results, strict=True):
            outs[nid] = res
        per_node.append(results)
    return per_node


def check_fused(program, weights, kind: str, rows: list[GroupRow]) -> None:
    """TritonBackend finds exactly one `kind` group and fuses it to the reference's bits."""
    backend = TritonBackend()
    groups = [g for g in backend.groups(program) if len(g) > 1]
    assert [backend.fused(program)[g[0]].kind for g in groups] == [kind]
    ids = groups[0]
    assert all(program.nodes[i].op != Op.CACHE_APPEND for i in ids)
    got = backend.evaluate_group(program, ids, rows)
    want = node_by_node(program, ids, rows)
    assert backend.launches == {kind: len(rows)}
    for nid, g_rows, w_rows in zip(ids, got, want, strict=True):
        for r, g, w in zip(rows, g_rows, w_rows, strict=True):
            assert g.shape == w.shape, (program.nodes[nid].name, r.position)
            assert_same_bits(g, w)


def group_rows(n_nodes: int, weights: list[np.ndarray], filled: list[dict[int, np.ndarray]],
               positions: list[int]) -> list[GroupRow]:  # fmt: skip
    rows = []
    for fill, t in zip(filled, positions, strict=True):
        outputs = [None] * n_nodes
        for nid, value in fill.items():
            outputs[nid] = value
        rows.append(GroupRow(t, 0, 0.0, 0, outputs, [w.reshape(-1) for w in weights]))
    return rows


def norm_program(kind: str, d: int, eps: float, rng, mode: str):
    """x (a [D] node) -> the builder's norm -> sample: the norm is nodes 1.."""
    b = ProgramBuilder(max_positions=4, vocab_size=2)
    x = b.embedding("x", b.weight("table", np.zeros((2, d), F32)))
    w = b.weight("w", fused_values(rng, (d,), mode if mode != "negzero" else "normal"))
    if kind == "rmsnorm":
        y = b.rmsnorm("norm", x, w, eps)
    else:
        y = b.layernorm("norm", x, w, b.weight("b", fused_values(rng, (d,), "normal")), eps)
    return b.build(y, b.sample("token", y))


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["rmsnorm", "layernorm"]),
    d=widths,
    n_rows=st.integers(1, 5),
    mode=fused_modes,
    eps=st.sampled_from([1e-5, 1e-6, 0.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_norms_equal_node_by_node(kind, d, n_rows, mode, eps, seed) -> None:
    rng = np.random.default_rng(seed)
    program, weights = norm_program(kind, d, eps, rng, mode)
    xs = fused_values(rng, (n_rows, d), mode)
    xs[0] = -0.0  # a -0 row: the sums must stay -0 (padding never wider than the spec's)
    rows = group_rows(len(program.nodes), weights, [{0: x} for x in xs], list(range(n_rows)))
    check_fused(program, weights, kind, rows)


def attention_program(g: int, rep: int, hd: int, scale_fn: Fn, softmax_only: bool):
    """q, k, v nodes (k and v caches) -> the builder's attention (or, with softmax_only, scores
    read straight from a cache, so that only the softmax chain is recognisable) -> sample."""
    b = ProgramBuilder(max_positions=MAX_T, vocab_size=2)
    h = g * rep
    q = b.embedding("q", b.weight("q_table", np.zeros((2, h * hd), F32)))
    kv = b.embedding("kv", b.weight("kv_table", np.zeros((2, g * hd), F32)))
    k_cache = b.cache("k_cache", kv, g, hd)
    v_cache = b.cache("v_cache", kv, g, hd)
    scale = float(hd) ** -0.5 if scale_fn == Fn.MUL else float(np.sqrt(hd))
    if not softmax_only:
        out = b.attention("attn", q, k_cache, v_cache, h, g, hd, scale, scale_fn)
        return b.build(q, b.sample("token", q)), out
    s_in = b.embedding("s", b.weight("s_table", np.zeros((2, h), F32)))
    scores = b.cache("scores", s_in, g, rep)  # [T, g, rep]
    s_shape = (T_DIM, g, rep)
    from refute.engine.builder import const

    scaled = b.map("scaled", scale_fn, s_shape, scores.whole(), const(scale).broadcast(s_shape))
    m = b.reduce("max", Reducer.MAX, Fn.COPY, (g, rep), T_DIM, scaled.read(rep, 1, g * rep))
    d = b.map("shift", Fn.SUB, s_shape, scaled.whole(), m.read(0, rep, 1))
    e = b.map("exp", Fn.EXP, s_shape, d.whole())
    z = b.reduce("sum", Reducer.SUM, Fn.COPY, (g, rep), T_DIM, e.read(rep, 1, g * rep))
    p = b.map("probs", Fn.DIV, s_shape, e.whole(), z.read(0, rep, 1))
    return b.build(q, b.sample("token", q)), p


gqa = st.sampled_from([(1, 1), (1, 4), (2, 1), (2, 2), (2, 3), (3, 2), (4, 1)])


@settings(max_examples=15, deadline=None)
@given(
    gr=gqa,
    hd=st.one_of(st.integers(1, 20), st.sampled_from([32, 33])),
    positions=st.lists(st.integers(0, MAX_T - 1), min_size=1, max_size=3),
    scale_fn=st.sampled_from([Fn.MUL, Fn.DIV]),
    mode=fused_modes,
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_attention_equals_node_by_node(gr, hd, positions, scale_fn, mode, seed) -> None:
    g, rep = gr
    rng = np.random.default_rng(seed)
    (program, weights), _ = attention_program(g, rep, hd, scale_fn, softmax_only=False)
    filled = []
    for t in positions:  # q; the caches after t + 1 appends (-0 values in the negzero mode)
        filled.append({0: fused_values(rng, (g * rep * hd,), mode),
                       2: fused_values(rng, ((t + 1) * g * hd,), mode),
                       3: fused_values(rng, ((t + 1) * g * hd,), mode)})  # fmt: skip
    if mode != "negzero":  # a v column of -0 with probabilities > 0: out must stay -0
        filled[0][3].reshape(positions[0] + 1, g * hd)[:, 0] = -0.0
    rows = group_rows(len(program.nodes), weights, filled, positions)
    check_fused(program, weights, "attention", rows)


@settings(max_examples=10, deadline=None)
@given(
    gr=gqa,
    positions=st.lists(st.integers(0, MAX_T - 1), min_size=1, max_size=3),
    scale_fn=st.sampled_from([Fn.MUL, Fn.DIV]),
    mode=fused_modes,
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_softmax_equals_node_by_node(gr, positions, scale_fn, mode, seed) -> None:
    g, rep = gr
    rng = np.random.default_rng(seed)
    (program, weights), _ = attention_program(g, rep, 4, scale_fn, softmax_only=True)
    scores_id = program.node_index("scores")
    filled = [{scores_id: fused_values(rng, ((t + 1) * g * rep,), mode)} for t in positions]
    rows = group_rows(len(program.nodes), weights, filled, positions)
    check_fused(program, weights, "softmax", rows)


def test_fused_wrappers_on_special_rows() -> None:
    """The wrappers alone: -0 rows, inf and NaN, one element, T = 1."""
    x = np.array([[-0.0, -0.0, -0.0], [np.inf, 1.0, -2.0], [np.nan, 0.0, 1e-45]], F32)
    w = np.array([1.0, -1.0, 0.5], F32)
    d = F32(3.0)
    outs = gpu.rmsnorm(x, w, d, F32(1e-6))
    ss = ref.tree_sum(ref.mul(x, x))
    mean = ref.div(ss, d)
    eps = ref.add(mean, F32(1e-6))
    r = ref.rsqrt(eps)
    scale = ref.mul(x, r[:, None])
    for got, want in zip(outs, (ss, mean, eps, r, scale, ref.mul(scale, w)), strict=True):
        assert_same_bits(got, want)
    x4 = np.full((1, 4), -0.0, F32)  # width 4 is the spec's: the sum stays -0
    assert bits(gpu.layernorm(x4, w[:1].repeat(4), x4[0], F32(4), F32(4), F32(0))[0])[0] == (
        0x80000000
    )
    x3 = np.full((1, 3), -0.0, F32)  # padded to 4 with +0: (-0 + -0) + (-0 + +0) = +0
    assert bits(gpu.layernorm(x3, w, x3[0], d, d, F32(0))[0])[0] == 0
    s = np.full((2, 1, 1, 1), -0.0, F32)
    outs = dict(zip(gpu.softmax_kernel.NODES, gpu.softmax(s, F32(0.5), False), strict=True))
    assert_same_bits(outs["probs"], np.ones((2, 1, 1, 1), F32))
    assert_same_bits(outs["max"], np.full((2, 1, 1), -0.0, F32))


def test_fusion_never_matches_a_changed_structure() -> None:
    """A norm whose node reads something else, or attention whose q depends on j, is left
    node by node."""
    import dataclasses

    rng = np.random.default_rng(0)
    program, _ = norm_program("rmsnorm", 8, 1e-5, rng, "normal")
    assert [f.kind for f in fusion.find(program)] == ["rmsnorm"]
    nodes = list(program.nodes)
    scale = nodes[5]  # x * rsqrt: read the mean instead
    nodes[5] = dataclasses.replace(
        scale, operands=(scale.operands[0], dataclasses.replace(scale.operands[1], index=2))
    )
    assert fusion.find(dataclasses.replace(program, nodes=tuple(nodes))) == []
    (program, _), _ = attention_program(2, 2, 4, Fn.MUL, softmax_only=False)
    assert [f.kind for f in fusion.find(program)] == ["attention"]
    nodes = list(program.nodes)
    i = program.node_index("attn.scores")
    q = nodes[i].operands[0]
    nodes[i] = dataclasses.replace(
        nodes[i],
        operands=(dataclasses.replace(q, strides=(1, *q.strides[1:])), nodes[i].operands[1]),
    )
    assert [f.kind for f in fusion.find(dataclasses.replace(program, nodes=tuple(nodes)))] == [
        "softmax"
    ]
