"""The committed conformance vectors are fresh, well formed, and cover the hard cases."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest

from refute.errors import VectorFileError
from refute.kernels import reference as ref
from refute.kernels import vectors

VECTOR_DIR = Path(__file__).parent / "vectors"


@pytest.fixture(scope="module")
def committed() -> dict[str, dict]:
    return vectors.load(VECTOR_DIR)


def test_committed_vectors_equal_a_fresh_generation(committed: dict[str, dict]) -> None:
    """If this fails the reference changed: that is a spec change (bump SPEC_VERSION)."""
    fresh = vectors.generate()
    assert sorted(committed) == sorted(fresh)
    for name in fresh:
        assert committed[name] == fresh[name], name


def test_every_spec_function_has_vectors(committed: dict[str, dict]) -> None:
    wanted = {
        "add",
        "sub",
        "mul",
        "div",
        "sqrt",
        "neg",
        "abs",
        "max",
        "min",
        "eq",
        "lt",
        "le",
        "select",
        "from_bf16",
        "from_fp16",
        "to_bf16",
        "exp",
        "log",
        "sigmoid",
        "silu",
        "tanh",
        "gelu_tanh",
        "reciprocal",
        "rsqrt",
        "tree_sum",
        "tree_max",
        "argmax",
        "dot",
        "noise",
        "sample",
    }
    assert wanted <= set(committed)


def test_vectors_weight_the_hard_cases(committed: dict[str, dict]) -> None:
    for name in ("exp", "add", "mul"):
        inputs = vectors.u32s(committed[name]["inputs"][0])
        for special in (
            0x80000000,
            0x00000001,
            0x007FFFFF,
            0x00800000,
            0x7F800000,
            0x7FC00000,
            0x7F800001,
        ):
            assert special in inputs, (name, hex(special))
    add_a, add_b = (vectors.u32s(v) for v in committed["add"]["inputs"])
    with np.errstate(all="ignore"):
        a, b = ref.from_bits(add_a).astype(np.float64), ref.from_bits(add_b).astype(np.float64)
        exact = a + b  # exact in float64 for operands within 2^53 of each other
        rounded = exact.astype(np.float32)
        toward_zero = np.nextafter(rounded, np.float32(0))
        gap = 2 * np.abs(exact - rounded)
        ties = (
            np.isfinite(exact)
            & (gap > 0)
            & ((gap == np.spacing(np.abs(rounded))) | (gap == np.spacing(np.abs(toward_zero))))
        )
    assert ties.sum() >= 500  # exact halfway sums, by construction


def test_vectors_replay_through_the_reference(committed: dict[str, dict]) -> None:
    """Replaying a file the way another backend would: inputs -> function -> output bits."""
    fns = dict(vectors.UNARY) | dict(vectors.BINARY)
    for name, f in fns.items():
        rec = committed[name]
        args = [ref.from_bits(vectors.u32s(x)) for x in rec["inputs"]]
        assert np.array_equal(ref.to_bits(f(*args)), vectors.u32s(rec["output"])), name
    for case in committed["tree_sum"]["cases"]:
        x = np.frombuffer(case["x"], "<f4")
        assert int(ref.to_bits(ref.tree_sum(x))) == case["out"]


def test_loader_rejects_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(VectorFileError, match="no conformance vectors"):
        vectors.load(tmp_path)
    (tmp_path / "bad.msgpack").write_bytes(b"\xc1\xc1 not msgpack")
    with pytest.raises(VectorFileError, match="not a msgpack"):
        vectors.load(tmp_path)
    (tmp_path / "bad.msgpack").write_bytes(msgpack.packb({"name": "x", "spec_version": 999}))
    with pytest.raises(VectorFileError, match="spec_version 999"):
        vectors.load(tmp_path)
