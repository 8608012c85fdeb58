"""Start-up of the default backend: no torch or triton without a GPU, numba kernels loaded from
the on-disk cache by a second process (with a notice on the first compile), and numba left
unloaded by a run too short to gain from it — every path with the reference's trace root."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from refute.engine import backends
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.kernels.cpu import sha256
from refute.kernels.cpu.backend import COMPILE_NOTICE, CPUBackend

RUN = ["run", "--model", "tiny-llama", "--max-new-tokens", "1", "--json"]

# runs the CLI in a fresh process, then reports what it imported and what numba compiled
PROBE = """
import json, sys
from refute.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    stats = None
    if "numba" in sys.modules:
        from refute.kernels.cpu.backend import compile_stats
        stats = compile_stats()
    loaded = sorted(m for m in ("torch", "triton", "numba") if m in sys.modules)
    print(json.dumps({"loaded": loaded, "stats": stats}), file=sys.stderr)
"""


def _probe(*args: str, env: dict[str, str] | None = None) -> tuple[dict, dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return json.loads(proc.stdout), report, proc.stderr


def test_default_backend_imports_neither_torch_nor_triton() -> None:
    if backends.cuda_device_present():
        pytest.skip("a CUDA device is present: the default backend is triton")
    out, report, _ = _probe(*RUN)
    assert out["backend"] == "cpu"
    assert "torch" not in report["loaded"] and "triton" not in report["loaded"]
    # a one-token run of a tiny model is over long before loading numba would pay off
    assert "numba" not in report["loaded"]
    reference, _, _ = _probe(*RUN, "--backend", "reference")
    assert out["trace_root"] == reference["trace_root"] and out["tokens"] == reference["tokens"]


def test_second_process_loads_the_kernels_from_the_disk_cache(tmp_path) -> None:
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}  # empty: the first process must compile
    args = [*RUN[:-2], "3", "--json", "--backend", "cpu"]
    first, report1, stderr1 = _probe(*args, env=env)
    assert COMPILE_NOTICE in stderr1
    assert sum(misses for _, misses in report1["stats"].values()) > 0
    second, report2, stderr2 = _probe(*args, env=env)
    assert COMPILE_NOTICE not in stderr2
    assert all(misses == 0 for _, misses in report2["stats"].values()), report2["stats"]
    assert sum(hits for hits, _ in report2["stats"].values()) >= 2  # the dot and silu kernels
    assert report2["stats"]["_evaluate"][0] >= 1  # the non-dot node loop (kernels/cpu/nodes.py)
    if not sha256.UNAVAILABLE:  # the step commitments' kernels (libcrypto found) load too
        hashing = ("_roots_in_parts_serial", "_append_records", "_grow")
        assert all(report2["stats"][name][0] >= 1 for name in hashing), report2["stats"]
    assert second["trace_root"] == first["trace_root"]


@pytest.mark.parametrize("load_after_s", [None, 1e-4, 3600.0])
def test_deferred_kernels_give_the_reference_roots(load_after_s: float | None) -> None:
    """Kernels from the start, from a few nodes in, or never: the same trace."""
    model = load_model("tiny-llama")
    requests = [Request((1, 2, 3), 4), Request((5,), 3, temperature=0.7, seed=9)]
    want = [g.trace.roots for g in Executor(model).generate(requests)]
    backend = CPUBackend(load_after_s=load_after_s)
    got = [g.trace.roots for g in Executor(model, backend=backend).generate(requests)]
    assert got == want
    assert backend.loaded == (load_after_s != 3600.0)
    assert (backend.numpy_s > 0) == (load_after_s is not None)


def test_default_backend_defers_and_named_cpu_does_not() -> None:
    if backends.cuda_device_present():
        pytest.skip("a CUDA device is present: the default backend is triton")
    default, named = backends.make(), backends.make("cpu")
    assert isinstance(default, CPUBackend) and isinstance(named, CPUBackend)
    assert default.load_after_s is not None and named.load_after_s is None
