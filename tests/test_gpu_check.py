"""refute/gpu_check.py's logic without a GPU: root comparison on CPU backends, the summary lines
and the exit status (the GPU parts run on a device: scripts/gpu_check.sh)."""

from __future__ import annotations

import numpy as np

from refute import gpu_check
from refute.engine.backend import ReferenceBackend
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.kernels.cpu import CPUBackend


def test_equal_roots_pass_and_a_flipped_bit_fails() -> None:
    model = load_model("tiny-llama")
    request = dict(gpu_check.REQUEST, max_new_tokens=3)
    honest = gpu_check.compare_roots("tiny-llama", {
        "reference": gpu_check.generation_runner(model, ReferenceBackend, request),
        "cpu": gpu_check.generation_runner(model, lambda: CPUBackend(parallel=False), request),
    })  # fmt: skip
    assert honest.ok is True and honest.line().startswith("PASS roots tiny-llama: ")

    def flipped() -> tuple[bytes, list[int]]:  # one bit of one node output at position 5
        def tamper(t: int, node: int, out: np.ndarray) -> np.ndarray:
            if (t, node) != (5, 7):
                return out
            out = np.array(out, dtype=np.float32)
            out.view(np.uint32)[0] ^= 1
            return out

        gen = Executor(model, CPUBackend(parallel=False), tamper=tamper).generate(
            [Request(**request)]
        )[0]
        return gen.trace.root(), list(gen.output_tokens)

    cheat = gpu_check.compare_roots("tiny-llama", {
        "cpu": gpu_check.generation_runner(model, lambda: CPUBackend(parallel=False), request),
        "gpu": flipped,
    })  # fmt: skip
    assert cheat.ok is False and cheat.line().startswith("FAIL roots tiny-llama: gpu differ")
    assert gpu_check.exit_status([honest, cheat]) == 1
    assert gpu_check.exit_status([honest]) == 0


def test_figures_are_info_lines() -> None:
    bw = gpu_check.bandwidth("gemv 4096x4096", 4 * 2**24, 1e-4, 4800.0)
    assert bw.ok is None and bw.line() == "INFO gemv 4096x4096: 671 GB/s = 14% of 4800 GB/s peak"
    assert gpu_check.bandwidth("g", 10**9, 1.0, None).detail == "1 GB/s (peak unknown)"
    speed = gpu_check.decode_speed("decode", 50.0, {"torch bfloat16": 100.0})
    assert speed.line() == "INFO decode: triton 50.0 tok/s; torch bfloat16 100.0 tok/s (0.50x)"
    assert gpu_check.exit_status([bw, speed]) == 0


def test_without_a_device_it_says_so(capsys) -> None:
    import torch

    if torch.cuda.is_available():  # pragma: no cover - a GPU machine runs the real thing
        return
    assert gpu_check.main([]) == 2
    assert capsys.readouterr().out.strip() == "SKIP gpu_check: no CUDA device"
