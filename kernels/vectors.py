"""Conformance vectors: inputs and expected output bit patterns of every spec function.

The files under tests/vectors/ are what every other implementation of docs/spec.md (the Triton
kernels, the fast CPU kernels, the Solidity soft-float) is checked against. They are generated
here from the reference and weighted toward the hard cases: signed zeros, subnormals, the
normal/subnormal boundary, halfway rounding cases, overflow and underflow thresholds, infinities
and NaNs (canonical and not).

    python -m refute.kernels.vectors --out tests/vectors

File format (msgpack, one map per file ``<name>.msgpack``)::

    {"spec_version": 1, "name": "add", "kind": "elementwise", "arity": 2,
     "inputs": [<uint32 LE bytes>, <uint32 LE bytes>], "output": <uint32 LE bytes>}

kinds: ``elementwise`` (float32 in, float32 out; conversions use uint16 where bf16/fp16 bits are
involved, named by "input_dtype"/"output_dtype"), ``reduction`` (a list of cases
``{"x": <f32 LE bytes>, "out": int}``; argmax outputs an index), ``dot`` (cases
``{"k", "n", "x", "w", "out"}``), ``noise`` (cases ``{"seed", "position", "index", "u", "g"}``)
and ``sample`` (cases ``{"logits", "temperature", "seed", "position", "token"}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np

from refute.errors import VectorFileError
from refute.kernels import reference as ref

U32 = np.uint32

# Bit patterns every function must get right.
SPECIAL_BITS: tuple[int, ...] = (
    0x00000000,
    0x80000000,  # +0, -0
    0x00000001,
    0x80000001,  # smallest subnormals
    0x00000002,
    0x00400000,  # small and mid subnormals
    0x007FFFFF,
    0x807FFFFF,  # largest subnormals
    0x00800000,
    0x80800000,  # smallest normals
    0x00800001,
    0x3F800000,
    0xBF800000,  # 1, -1
    0x3F800001,
    0x3F7FFFFF,
    0x3F000000,
    0x40000000,
    0x40400000,
    0x33800000,
    0x33000000,  # 2^-24, 2^-25: halfway quanta around 1
    0x4B000000,
    0x4B400000,  # 2^23, 1.5*2^23
    0x7F7FFFFF,
    0xFF7FFFFF,  # largest finite
    0x7F000000,
    0x1F800000,
    0x5F800000,  # 2^127, 2^-64, 2^64
    0x7F800000,
    0xFF800000,  # +inf, -inf
    0x7FC00000,  # canonical NaN
    0xFFC00000,
    0x7FC00001,
    0x7F800001,
    0xFFFFFFFF,  # other NaNs: negative, payload, signalling
)

# Inputs near the thresholds of the derived functions (docs/spec.md).
THRESHOLD_VALUES: tuple[float, ...] = (
    88.72283,
    88.72284,
    88.7228394,
    88.75,
    89.0,
    89.00001,
    -87.33654,
    -87.3366,
    -103.27893,
    -103.97208,
    -103.9721,
    -104.0,
    -104.00001,
    -150.0,
    0.625,
    0.62499994,
    -0.625,
    9.0,
    9.01,
    44.0,
    -44.0,
    1.4142135,
    1.4142137,
    0.70710677,
    0.7071068,
    1.0000001,
    0.99999994,
    -10.0,
    -9.3,
    -20.0,
    4.0,
    -4.0,
    1e-8,
    -1e-8,
    0.5,
    -0.5,
    3.0,
    0.1,
)


def _bits(values) -> np.ndarray:
    return ref.to_bits(np.asarray(values, dtype=np.float32)).copy()


def _unary_inputs(rng: np.random.Generator, n_random: int) -> np.ndarray:
    special = np.array(SPECIAL_BITS, dtype=U32)
    near = _bits(THRESHOLD_VALUES)
    near = np.concatenate([near, near + U32(1), near - U32(1), near ^ U32(0x80000000)])
    uniform_bits = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(U32)
    moderate = _bits(rng.normal(0, 8, n_random))
    return np.concatenate([special, near, uniform_bits, moderate])


def _halfway_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """a and b with a + b, a * b exactly halfway between two floats (ties-to-even cases)."""
    a = ref.from_bits(rng.integers(0x00800000, 0x7F000000, n, dtype=np.uint64).astype(U32))
    exp_a = (ref.to_bits(a) >> U32(23)).astype(np.int64)
    half_ulp = ref.from_bits(((np.maximum(exp_a - 24, 1)) << 23).astype(U32))  # 2^(e-24)
    sign = np.where(rng.random(n) < 0.5, np.float32(1), np.float32(-1))
    b = (half_ulp * sign).astype(np.float32)
    # products (1 + 2^-12 k) * (1 + 2^-12 j) land on halves of the ulp for many k, j
    k = rng.integers(1, 4096, n)
    j = rng.integers(1, 4096, n)
    c = (1 + k / 4096.0).astype(np.float32)
    d = (1 + j / 4096.0).astype(np.float32)
    scale = ref.from_bits(((rng.integers(-120, 120, n) + 127) << 23).astype(U32))
    return np.concatenate([_bits(a), _bits(c * scale)]), np.concatenate([_bits(b), _bits(d)])


def _binary_inputs(rng: np.random.Generator, n_random: int) -> tuple[np.ndarray, np.ndarray]:
    special = np.array(SPECIAL_BITS, dtype=U32)
    sa, sb = (g.ravel() for g in np.meshgrid(special, special, indexing="ij"))
    ha, hb = _halfway_pairs(rng, n_random // 2)
    ra = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(U32)
    rb = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(U32)
    # operands of nearby magnitude: cancellation, exact zeros, subnormal results
    ca = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(U32)
    cb = ca ^ U32(0x80000000) ^ rng.integers(0, 64, n_random).astype(U32)
    return (np.concatenate([sa, ha, ra, ca]), np.concatenate([sb, hb, rb, cb]))


UNARY: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] = (
    ("sqrt", ref.sqrt),
    ("neg", ref.neg),
    ("abs", ref.abs_),
    ("exp", ref.exp),
    ("log", ref.log),
    ("sigmoid", ref.sigmoid),
    ("silu", ref.silu),
    ("tanh", ref.tanh),
    ("gelu_tanh", ref.gelu_tanh),
    ("reciprocal", ref.reciprocal),
    ("rsqrt", ref.rsqrt),
)
BINARY: tuple[tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]], ...] = (
    ("add", ref.add),
    ("sub", ref.sub),
    ("mul", ref.mul),
    ("div", ref.div),
    ("max", ref.maximum),
    ("min", ref.minimum),
)
COMPARISONS = (("eq", ref.eq), ("lt", ref.lt), ("le", ref.le))


def _le(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()


def _record(name: str, kind: str, **fields) -> dict:
    return {"spec_version": ref.SPEC_VERSION, "name": name, "kind": kind, **fields}


def _elementwise_records(rng: np.random.Generator) -> Iterator[dict]:
    for name, f in UNARY:
        x = _unary_inputs(rng, 1500)
        y = ref.to_bits(f(ref.from_bits(x)))
        yield _record(name, "elementwise", arity=1, inputs=[_le(x)], output=_le(y))
    for name, f in BINARY:
        a, b = _binary_inputs(rng, 1500)
        y = ref.to_bits(f(ref.from_bits(a), ref.from_bits(b)))
        yield _record(name, "elementwise", arity=2, inputs=[_le(a), _le(b)], output=_le(y))
    for name, f in COMPARISONS:
        a, b = _binary_inputs(rng, 500)
        y = f(ref.from_bits(a), ref.from_bits(b)).astype(U32)
        yield _record(
            name,
            "elementwise",
            arity=2,
            inputs=[_le(a), _le(b)],
            output=_le(y),
            output_dtype="bool",
        )
    c = rng.integers(0, 2, 2000).astype(U32)
    a, b = (v[: c.size] for v in _binary_inputs(rng, 500))
    y = ref.to_bits(ref.select(c, ref.from_bits(a), ref.from_bits(b)))
    yield _record(
        "select",
        "elementwise",
        arity=3,
        inputs=[_le(c), _le(a), _le(b)],
        output=_le(y),
        input_dtypes=["bool", "float32", "float32"],
    )
    halves = np.arange(1 << 16, dtype=np.uint16)  # every bf16 and fp16 pattern
    for name, f in (("from_bf16", ref.from_bf16), ("from_fp16", ref.from_fp16)):
        yield _record(
            name,
            "elementwise",
            arity=1,
            inputs=[_le(halves)],
            output=_le(ref.to_bits(f(halves))),
            input_dtype="uint16",
        )
    x = _unary_inputs(rng, 3000)
    ties = (rng.integers(0, 1 << 16, 2000).astype(U32) << U32(16)) | U32(0x8000)  # exact ties
    x = np.concatenate([x, ties, ties | U32(1), ties - U32(1)])
    yield _record(
        "to_bf16",
        "elementwise",
        arity=1,
        inputs=[_le(x)],
        output=_le(ref.to_bf16(ref.from_bits(x))),
        output_dtype="uint16",
    )


def _reduction_rows(rng: np.random.Generator) -> Iterator[np.ndarray]:
    special = ref.from_bits(np.array(SPECIAL_BITS, dtype=U32))
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 33, 100):
        yield rng.normal(0, 1, n).astype(np.float32)
        yield (rng.normal(0, 1, n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)
        yield rng.choice(special, n)
    yield np.array([-0.0], dtype=np.float32)
    yield np.array([-0.0, -0.0], dtype=np.float32)
    yield np.array([-0.0, -0.0, -0.0], dtype=np.float32)
    yield np.array([1.0, 2.0**-24, 2.0**-24, 2.0**-24], dtype=np.float32)
    yield np.array([3.0e38, 3.0e38, -3.0e38, -3.0e38], dtype=np.float32)
    yield np.array([0.0, -0.0, 0.0, -0.0, 5.0, 5.0, np.nan, 5.0], dtype=np.float32)
    yield np.array([-np.inf, -np.inf, -np.inf], dtype=np.float32)
    yield np.array([np.inf, -np.inf], dtype=np.float32)


def _reduction_records(rng: np.random.Generator) -> Iterator[dict]:
    rows = list(_reduction_rows(rng))
    for name, f, as_index in (
        ("tree_sum", ref.tree_sum, False),
        ("tree_max", ref.tree_max, False),
        ("argmax", ref.argmax, True),
    ):
        cases = []
        for x in rows:
            out = f(x)
            cases.append({"x": _le(x), "out": int(out) if as_index else int(ref.to_bits(out))})
        yield _record(name, "reduction", cases=cases)
    cases = []
    for k, n in ((1, 1), (3, 2), (4, 4), (5, 3), (17, 5), (64, 8), (100, 7)):
        x = rng.normal(0, 1, k).astype(np.float32)
        w = rng.normal(0, 1, (k, n)).astype(np.float32)
        if k > 3:
            w[rng.integers(0, k), 0] = np.float32(np.inf)
            x[rng.integers(0, k)] = np.float32(-0.0)
        cases.append(
            {"k": k, "n": n, "x": _le(x), "w": _le(w), "out": _le(ref.to_bits(ref.dot(x, w)))}
        )
    yield _record("dot", "dot", cases=cases)


def _sampling_records(rng: np.random.Generator) -> Iterator[dict]:
    cases = []
    for seed, position in ((0, 0), (1, 0), (42, 7), ((1 << 256) - 1, (1 << 64) + 3)):
        for index in (0, 1, 2, 1000, 31999, (1 << 256) - 1):
            u = ref.noise_uniform(seed, position, [index])
            g = ref.gumbel_noise(seed, position, [index])
            cases.append(
                {
                    "seed": seed.to_bytes(32, "big"),
                    "position": position.to_bytes(32, "big"),
                    "index": index.to_bytes(32, "big"),
                    "u": int(ref.to_bits(u)[0]),
                    "g": int(ref.to_bits(g)[0]),
                }
            )
    yield _record("noise", "noise", cases=cases)
    cases = []
    for i, temperature in enumerate((0.0, 0.5, 1.0, 1.0, 2.0)):
        logits = rng.normal(0, 3, 50).astype(np.float32)
        token = ref.sample(logits, temperature, seed=1234 + i, position=i)
        cases.append(
            {
                "logits": _le(logits),
                "temperature": int(ref.to_bits(temperature)),
                "seed": 1234 + i,
                "position": i,
                "token": token,
            }
        )
    yield _record("sample", "sample", cases=cases)


def generate(seed: int = 20261122) -> dict[str, dict]:
    """All conformance records, keyed by name; deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    records = {}
    for gen in (_elementwise_records, _reduction_records, _sampling_records):
        for rec in gen(rng):
            records[rec["name"]] = rec
    return records


def write(directory: Path, records: dict[str, dict]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rec in sorted(records.items()):
        path = directory / f"{name}.msgpack"
        path.write_bytes(msgpack.packb(rec, use_bin_type=True))
        paths.append(path)
    return paths


def load(directory: Path) -> dict[str, dict]:
    """Read every vector file of a directory; raise VectorFileError on anything unexpected."""
    files = sorted(Path(directory).glob("*.msgpack"))
    if not files:
        raise VectorFileError(f"no conformance vectors (*.msgpack) in {directory}")
    records = {}
    for path in files:
        try:
            rec = msgpack.unpackb(path.read_bytes(), raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise VectorFileError(f"{path}: not a msgpack vector file ({exc})") from exc
        if not isinstance(rec, dict) or rec.get("spec_version") != ref.SPEC_VERSION:
            raise VectorFileError(
                f"{path}: spec_version {rec.get('spec_version') if isinstance(rec, dict) else '?'}"
                f" but this reference implements {ref.SPEC_VERSION}"
            )
        records[rec["name"]] = rec
    return records


def u32s(data: bytes) -> np.ndarray:
    """Decode a little-endian uint32 field of a vector file."""
    return np.frombuffer(data, dtype="<u4").astype(U32)


def _f32s(data: bytes) -> np.ndarray:
    return ref.from_bits(u32s(data))


def _replay_elementwise(rec: dict) -> tuple[int, int]:
    fns = dict(UNARY) | dict(BINARY) | dict(COMPARISONS)
    fns |= {
        "select": ref.select,
        "from_bf16": ref.from_bf16,
        "from_fp16": ref.from_fp16,
        "to_bf16": ref.to_bf16,
    }
    name = rec["name"]
    if name in ("from_bf16", "from_fp16"):
        args = [np.frombuffer(rec["inputs"][0], "<u2")]
    elif name == "select":
        args = [u32s(rec["inputs"][0]).astype(bool)] + [_f32s(x) for x in rec["inputs"][1:]]
    else:
        args = [_f32s(x) for x in rec["inputs"]]
    out = fns[name](*args)
    if name == "to_bf16":
        got, want = out, np.frombuffer(rec["output"], "<u2")
    elif rec.get("output_dtype") == "bool":
        got, want = out.astype(U32), u32s(rec["output"])
    else:
        got, want = ref.to_bits(out), u32s(rec["output"])
    return int(np.sum(got == want)), int(want.size)


def _replay_cases(rec: dict) -> tuple[int, int]:
    kind, name, ok = rec["kind"], rec["name"], 0
    for c in rec["cases"]:
        if kind == "reduction":
            x = np.frombuffer(c["x"], "<f4")
            f = {"tree_sum": ref.tree_sum, "tree_max": ref.tree_max, "argmax": ref.argmax}[name]
            got = int(f(x)) if name == "argmax" else int(ref.to_bits(f(x)))
            ok += got == c["out"]
        elif kind == "dot":
            x = np.frombuffer(c["x"], "<f4")
            w = np.frombuffer(c["w"], "<f4").reshape(c["k"], c["n"])
            ok += bool(np.array_equal(ref.to_bits(ref.dot(x, w)), u32s(c["out"])))
        elif kind == "noise":
            seed, pos, idx = (int.from_bytes(c[k], "big") for k in ("seed", "position", "index"))
            ok += (
                int(ref.to_bits(ref.noise_uniform(seed, pos, [idx]))[0]) == c["u"]
                and int(ref.to_bits(ref.gumbel_noise(seed, pos, [idx]))[0]) == c["g"]
            )
        elif kind == "sample":
            t = float(ref.from_bits(np.array([c["temperature"]], U32))[0])
            token = ref.sample(np.frombuffer(c["logits"], "<f4"), t, c["seed"], c["position"])
            ok += token == c["token"]
    return ok, len(rec["cases"])


def replay(records: dict[str, dict]) -> dict[str, tuple[int, int]]:
    """Run every record through the reference: {name: (cases that match, cases)}."""
    return {
        name: _replay_elementwise(rec) if rec["kind"] == "elementwise" else _replay_cases(rec)
        for name, rec in sorted(records.items())
    }


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/vectors"))
    args = parser.parse_args(argv)
    for path in write(args.out, generate()):
        print(path)


if __name__ == "__main__":
    main()
