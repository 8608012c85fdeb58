"""One command for a machine with a CUDA GPU: is the Triton backend bit-exact there, and how fast?

    scripts/gpu_check.sh            # = python -m refute.gpu_check

Checks, one summary line each (`PASS`, `FAIL`, or `INFO` for figures without a threshold):

1. `kernels`: tests/test_triton_kernels.py on the device (REFUTE_TRITON_DEVICE=cuda), every
   kernel bit-exact against the reference;
2. `roots tiny-llama`, `roots llama-134m`: the trace root and tokens of a generation on the
   Triton backend equal the CPU backend's (the 134M model a bf16 checkpoint, held at 16 bits);
3. `gemv WxK`: decode GEMV bandwidth (weights + activations + partials / time) as a fraction of
   the device's peak (memory clock x bus width x 2, or --peak-gbps);
4. `decode llama-134m`: tokens/s of the Triton backend against torch eager (bf16 and fp32) on
   the same weights, on the same GPU.

The exit status is 1 if any check fails (a mismatch), 2 without a CUDA device, else 0. The
logic that needs no GPU (running and comparing generations, the summary lines, the verdict) is
in plain functions tested on CPU backends (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REQUEST = dict(prompt=(3, 141, 59, 26, 53, 58, 97, 93), max_new_tokens=8, temperature=0.0, seed=0)
GEMV_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096))  # (K in, N out)
LLAMA_134M = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
    num_attention_heads=12, num_key_value_heads=12, head_dim=64, max_position_embeddings=2048,
)  # fmt: skip


@dataclass(frozen=True)
class Check:
    """One check's outcome: ok True (PASS), False (FAIL) or None (INFO: a figure only)."""

    name: str
    ok: bool | None
    detail: str

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "INFO"}[self.ok]
        return f"{verdict} {self.name}: {self.detail}"


def exit_status(checks: list[Check]) -> int:
    """1 if any check failed, else 0."""
    return 1 if any(c.ok is False for c in checks) else 0


Runner = Callable[[], tuple[bytes, list[int]]]


def compare_roots(name: str, runners: dict[str, Runner]) -> Check:
    """Run each backend's generation; PASS when all trace roots and tokens are equal."""
    results = {label: run() for label, run in runners.items()}
    first_label, first = next(iter(results.items()))
    differ = [label for label, r in results.items() if r != first]
    labels = ", ".join(results)
    if differ:
        detail = "; ".join(
            f"{label} root {r[0].hex()[:16]} tokens {r[1]}" for label, r in results.items()
        )
        return Check(
            f"roots {name}", False, f"{', '.join(differ)} differ from {first_label}: {detail}"
        )
    return Check(
        f"roots {name}", True, f"{labels} agree: root {first[0].hex()[:16]}, tokens {first[1]}"
    )


def generation_runner(model, backend_factory: Callable[[], object], request: dict) -> Runner:
    """A runner: one generation of `request` on a fresh backend, its trace root and tokens."""
    from refute.engine.executor import Executor, Request

    def run() -> tuple[bytes, list[int]]:
        gen = Executor(model, backend_factory()).generate([Request(**request)])[0]
        return gen.trace.root(), list(gen.output_tokens)

    return run


def bandwidth(name: str, nbytes: int, seconds: float, peak_gbps: float | None) -> Check:
    gbps = nbytes / seconds / 1e9
    if not peak_gbps:
        return Check(name, None, f"{gbps:.0f} GB/s (peak unknown)")
    return Check(
        name, None, f"{gbps:.0f} GB/s = {gbps / peak_gbps:.0%} of {peak_gbps:.0f} GB/s peak"
    )


def decode_speed(name: str, ours: float, peers: dict[str, float]) -> Check:
    vs = ", ".join(f"{label} {tps:.1f} tok/s ({ours / tps:.2f}x)" for label, tps in peers.items())
    return Check(name, None, f"triton {ours:.1f} tok/s; {vs}")


# --- what needs the GPU -------------------------------------------------------------------------


def kernel_tests(timeout_s: int) -> Check:
    env = dict(os.environ, REFUTE_TRITON_DEVICE="cuda", CI="true")
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           "tests/test_triton_kernels.py"]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Check("kernels", False, f"tests did not finish in {timeout_s} s")
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    took = time.perf_counter() - start
    return Check("kernels", done.returncode == 0, f"{tail} ({took:.0f} s, on the device)")


def _peak_gbps(torch) -> float | None:
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def gemv_bandwidth(torch, peak: float | None, reps: int) -> list[Check]:
    from refute.kernels import gpu
    from refute.kernels.gpu import gemv_kernel

    checks = []
    for k, n in GEMV_SHAPES:
        w = torch.randn(k, n, device="cuda", dtype=torch.float32)
        x = torch.randn(k, device="cuda", dtype=torch.float32)
        gpu.gemv(x, w)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            gpu.gemv(x, w)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / reps
        partials = (k // min(gemv_kernel.BLOCK_K, k)) * n * 4 * 2
        checks.append(bandwidth(f"gemv {k}x{n}", 4 * (k * n + k + n) + partials, seconds, peak))
    return checks


def _hf_134m(torch, directory: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**LLAMA_134M, attn_implementation="eager")).eval()
    hf.to(torch.bfloat16).save_pretrained(directory)
    return hf


def _torch_tps(torch, hf, dtype, new: int) -> float:
    hf = hf.to(device="cuda", dtype=dtype)
    prompt = torch.tensor([list(REQUEST["prompt"])], device="cuda")
    with torch.inference_mode():
        out = hf(prompt, use_cache=True)
        token, cache = out.logits[0, -1].argmax().view(1, 1), out.past_key_values
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(new):
            out = hf(token, past_key_values=cache, use_cache=True)
            token, cache = out.logits[0, -1].argmax().view(1, 1), out.past_key_values
        torch.cuda.synchronize()
    return new / (time.perf_counter() - start)


def _refute_tps(model, backend, new: int) -> float:
    from refute.engine.executor import Executor, Request

    ex = Executor(model, backend)
    start, marks = time.perf_counter(), []
    ex.generate([Request(**dict(REQUEST, max_new_tokens=new + 1))],
                on_position=lambda _n: marks.append(time.perf_counter()))  # fmt: skip
    return new / (marks[-1] - marks[0]) if len(marks) > 1 else new / (marks[-1] - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-gbps", type=float, default=None)
    parser.add_argument("--reps", type=int, default=50, help="GEMV repetitions")
    parser.add_argument("--new", type=int, default=16, help="decode steps timed")
    parser.add_argument("--kernel-timeout", type=int, default=240)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("SKIP gpu_check: torch is not installed (pip install -e .[triton])")
        return 2
    if not torch.cuda.is_available():
        print("SKIP gpu_check: no CUDA device")
        return 2
    from refute.engine.checkpoint import load_model
    from refute.kernels.cpu import CPUBackend
    from refute.kernels.gpu.backend import TritonBackend

    checks = [kernel_tests(args.kernel_timeout)]
    print(checks[-1].line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf = _hf_134m(torch, Path(tmp))
        models = {"tiny-llama": load_model("tiny-llama"), "llama-134m": load_model(tmp)}
        for name, model in models.items():
            checks.append(compare_roots(name, {
                "cpu": generation_runner(model, CPUBackend, REQUEST),
                "triton": generation_runner(model, TritonBackend, REQUEST),
            }))  # fmt: skip
            print(checks[-1].line(), flush=True)
        peak = args.peak_gbps or _peak_gbps(torch)
        for check in gemv_bandwidth(torch, peak, args.reps):
            checks.append(check)
            print(check.line(), flush=True)
        ours = _refute_tps(models["llama-134m"], TritonBackend(), args.new)
        peers = {f"torch {d}": _torch_tps(torch, hf, getattr(torch, d), args.new)
                 for d in ("bfloat16", "float32")}  # fmt: skip
        checks.append(decode_speed("decode llama-134m", ours, peers))
        print(checks[-1].line(), flush=True)
    status = exit_status(checks)
    print(f"{'FAIL' if status else 'PASS'} gpu_check: {sum(c.ok is False for c in checks)} failed")
    return status


if __name__ == "__main__":
    sys.exit(main())
