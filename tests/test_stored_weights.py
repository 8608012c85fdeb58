"""Weights at their stored width (engine/weights.py): bf16/fp16 checkpoints stay 16-bit and
memory-mapped, every backend widens them exactly, and no root or trace bit changes."""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refute.engine.checkpoint import TINY_LLAMA, load_model, random_weights
from refute.engine.executor import Executor, Request
from refute.engine.weights import BF16, F16, F32, admit, widen
from refute.kernels import reference as ref
from refute.kernels.cpu import CPUBackend

HF_CONFIG = {
    "model_type": "llama",
    "vocab_size": TINY_LLAMA.vocab_size,
    "hidden_size": TINY_LLAMA.hidden_size,
    "intermediate_size": TINY_LLAMA.intermediate_size,
    "num_hidden_layers": TINY_LLAMA.num_layers,
    "num_attention_heads": TINY_LLAMA.num_heads,
    "num_key_value_heads": TINY_LLAMA.num_kv_heads,
    "head_dim": TINY_LLAMA.head_dim,
    "max_position_embeddings": TINY_LLAMA.max_positions,
    "rms_norm_eps": TINY_LLAMA.rms_eps,
    "tie_word_embeddings": False,
}
_CODES = {F32: "F32", BF16: "BF16", F16: "F16"}


def write_checkpoint(directory: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A safetensors file written by hand (8-byte header length, JSON header, data)."""
    directory.mkdir(parents=True, exist_ok=True)
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {
            "dtype": _CODES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    (directory / "config.json").write_text(json.dumps(HF_CONFIG))
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """tiny-llama's shapes in bf16 and fp16, and the same values widened, in fp32."""
    base = tmp_path_factory.mktemp("stored")
    w = random_weights(TINY_LLAMA, 0)
    bf16 = {k: v.astype(BF16) for k, v in w.items()}
    fp16 = {k: v.astype(F16) for k, v in w.items()}
    return {
        "bf16": write_checkpoint(base / "bf16", bf16),
        "bf16-as-f32": write_checkpoint(base / "bf16f32", {k: widen(v) for k, v in bf16.items()}),
        "fp16": write_checkpoint(base / "fp16", fp16),
        "fp16-as-f32": write_checkpoint(base / "fp16f32", {k: widen(v) for k, v in fp16.items()}),
    }


def _mapped(a: np.ndarray) -> bool:
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


@pytest.mark.parametrize("width", ["bf16", "fp16"])
def test_checkpoint_stays_at_stored_width_with_the_float32_roots(checkpoints, width) -> None:
    model = load_model(checkpoints[width])
    wide = load_model(checkpoints[f"{width}-as-f32"])
    stored = [
        w for s, w in zip(model.program.weights, model.weights, strict=True) if "rope" not in s.name
    ]
    assert {w.dtype for w in stored} == {BF16 if width == "bf16" else F16}
    assert all(_mapped(w) and not w.flags.writeable for w in stored)  # zero-copy, shared map
    assert all(_mapped(w) and w.dtype == F32 for w in wide.weights[3:])  # fp32 mapped too
    assert model.weight_bytes * 2 - wide.weight_bytes == sum(
        w.nbytes for s, w in zip(model.program.weights, model.weights, strict=True)
        if "rope" in s.name
    )  # fmt: skip
    # committed as the binary32 values: the roots do not depend on the stored width
    assert model.tensor_roots == wide.tensor_roots
    assert model.root == wide.root


@pytest.mark.parametrize("width", ["bf16", "fp16"])
def test_trace_roots_equal_across_backends_and_widths(checkpoints, width) -> None:
    request = Request(prompt=(3, 141, 59, 26), max_new_tokens=4, temperature=0.8, seed=7)
    roots = {}
    for label, path in ((width, checkpoints[width]), ("f32", checkpoints[f"{width}-as-f32"])):
        model = load_model(path)
        for name, backend in (
            ("reference", None),
            ("cpu-serial", CPUBackend(parallel=False)),
            ("cpu-parallel", CPUBackend(parallel=True)),
        ):
            gen = Executor(model, backend).generate([request])[0]
            roots[label, name] = (gen.trace.root(), tuple(gen.output_tokens))
    assert len(set(roots.values())) == 1, roots


def test_pack_cache_maps_one_copy_with_the_same_bits(checkpoints, tmp_path: Path) -> None:
    """Panels written once per weight (bf16 16-bit, fp16 and fp32 widened) and mapped by the
    next executor instead of packed again: same trace roots as the reference; the same values
    stored at another width are other files; a file of the wrong shape is packed again; an
    unwritable directory leaves the panels in memory, naming why."""
    from refute.kernels.cpu.pack_cache import PackCache

    request = Request(prompt=(3, 141, 59, 26), max_new_tokens=3, temperature=0.8, seed=7)
    cache_dir = tmp_path / "packed"
    for width in ("bf16", "bf16-as-f32", "fp16"):
        model = load_model(checkpoints[width])
        want = Executor(model).generate([request])[0].trace.root()
        first = PackCache(cache_dir, min_bytes=0)
        gen = Executor(model, CPUBackend(pack_cache=first)).generate([request])[0]
        assert gen.trace.root() == want and first.written > 0 and first.mapped == 0
        again = PackCache(cache_dir, min_bytes=0)
        backend = CPUBackend(pack_cache=again)
        gen = Executor(load_model(checkpoints[width]), backend).generate([request])[0]
        assert gen.trace.root() == want and again.written == 0 and again.mapped == first.written
        panels = [w.panels for _, w in backend._packed.values()]
        assert all(isinstance(p, np.memmap) for p in panels)
        assert {p.dtype for p in panels} == {np.dtype(np.uint16 if width == "bf16" else F32)}
    files = sorted(cache_dir.glob("*.npy"))
    assert len(files) == 3 * first.written  # bf16 / fp32 of the same values: different panels
    np.save(files[0], np.zeros((1, 8, 16), np.float32))  # a stale or foreign file
    repair = PackCache(cache_dir, min_bytes=0)
    for width in ("bf16", "bf16-as-f32", "fp16"):
        model = load_model(checkpoints[width])
        gen = Executor(model, CPUBackend(pack_cache=repair)).generate([request])[0]
        assert gen.trace.root() == Executor(model).generate([request])[0].trace.root()
    assert repair.written == 1 and np.load(files[0]).shape != (1, 8, 16)
    (tmp_path / "f").write_text("a file, not a directory")
    unwritable = PackCache(tmp_path / "f" / "packed", min_bytes=0)
    model = load_model(checkpoints["fp16"])
    gen = Executor(model, CPUBackend(pack_cache=unwritable)).generate([request])[0]
    assert gen.trace.root() == Executor(model).generate([request])[0].trace.root()
    assert unwritable.written == 0 and str(tmp_path / "f") in unwritable.failed
    assert not list(cache_dir.glob("*.tmp"))


def test_noncanonical_nans_are_made_canonical_once() -> None:
    bits = np.array([0x3F80, 0xFFC1, 0x7F81, 0x7FC0, 0x0001], np.uint16)
    admitted = admit(bits.view(BF16))
    assert admitted.view(np.uint16).tolist() == [0x3F80, 0x7FC0, 0x7FC0, 0x7FC0, 0x0001]
    mapped = np.array([0x3F80, 0x7FC0], np.uint16).view(BF16)
    assert admit(mapped) is mapped  # nothing to change: no copy


def test_widen_is_the_spec_over_every_pattern() -> None:
    every = np.arange(1 << 16, dtype=np.uint16)
    spec_bf16, spec_fp16 = ref.from_bf16(every), ref.from_fp16(every)
    for dtype, spec in ((BF16, spec_bf16), (F16, spec_fp16)):
        got = widen(admit(every.view(dtype)))
        assert np.array_equal(got.view(np.uint32), spec.view(np.uint32)), dtype


_SPECIAL = [0x0000, 0x8000, 0x0001, 0x807F, 0x7F80, 0xFF80, 0x7FC0, 0x3F80, 0xBF80, 0x7F7F]


@settings(deadline=None)
@given(
    m=st.integers(1, 5),
    k=st.integers(1, 300),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    special=st.floats(0, 0.2),
)
def test_bf16_kernels_match_the_reference(m, k, n, seed, special) -> None:
    """The numba GEMV/GEMM on bf16 panels (widened in-register) = reference.dot on the widened
    weights, bit for bit, with subnormals, infinities, NaNs and signed zeros in the weights."""
    from refute.kernels.cpu import tree_dot

    rng = np.random.default_rng(seed)
    bits = ref.to_bf16(rng.standard_normal((n, k)).astype(np.float32) * 3)
    where = rng.random((n, k)) < special
    bits[where] = rng.choice(np.array(_SPECIAL, np.uint16), where.sum())
    w = admit(bits.view(BF16))
    x = (rng.standard_normal((m, k)) * rng.choice([1e-30, 1.0, 1e30], (m, k))).astype(np.float32)
    want = ref.dot(x, np.ascontiguousarray(widen(w).T))
    packed = tree_dot.pack(w)
    assert packed.panels.dtype == np.uint16
    for parallel in (False, True):
        got = tree_dot.matmul(x, packed, parallel=parallel)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_bf16_weight_dot_leaf_verifies_on_chain(embedded_web3, checkpoints) -> None:
    """A dot leaf reading a weight of a bf16 checkpoint (opened from its committed binary32
    chunk): the contract computes the engine's value, accepts it, rejects it one bit off."""
    from refute.contracts.onestep import OneStepClient, StepProver

    model = load_model(checkpoints["bf16"])
    ex = Executor(model, CPUBackend(parallel=False))
    gen = ex.generate([Request(prompt=(5, 17, 250), max_new_tokens=2)])[0]
    prover = StepProver(model, ex, gen)
    client = OneStepClient(w3=embedded_web3)
    ids = {node.name: i for i, node in enumerate(model.program.nodes)}
    calls = [
        prover.step(2, ids["layers.1.attn.q"], 9, leaf=37),
        prover.step(1, ids["layers.0.mlp.down"], 63, leaf=175),
        prover.step(2, ids["lm_head"], 300, leaf=0),
    ]
    for call in calls:
        assert client.compute(call) == (call.value, call.index)
        assert client.verify(call)
        assert not client.verify(call, value=call.value ^ 1)
