"""PTX/SASS audit of every Triton kernel, compiled for sm_80 and sm_90 without a GPU.

Each kernel is compiled exactly as its wrapper launches it (refute.kernels.gpu._runtime.
LAUNCH_OPTIONS: enable_fp_fusion=False) and must contain only correctly rounded fp32 arithmetic:
no fma, no .approx, no .ftz, no tensor-core mma/wgmma, every fp32 add/sub/mul with an explicit
.rn, and the .rn operations the kernel is made of. Together with the interpreter's bit-equality
(tests/test_triton_kernels.py) this is the evidence of GPU bit-exactness available on a CPU.

The compilation runs once, in a subprocess with the interpreter off (Triton fixes the mode of a
kernel when its module is imported; the kernel tests import them in interpreter mode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

from refute.kernels.gpu import audit

REPO = Path(__file__).resolve().parents[1]
NAMES = [s.name for s in audit.specializations()]


@pytest.fixture(scope="module")
def report() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "refute.kernels.gpu.audit", "--controls"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    try:
        data = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"audit did not run (exit {run.returncode}):\n{run.stderr[-4000:]}")
    data["by_key"] = {(f["name"], f["target"]): f for f in data["findings"]}
    return data


@pytest.mark.parametrize("target", audit.TARGETS)
@pytest.mark.parametrize("name", NAMES)
def test_kernel_ptx_is_canonical(report: dict, name: str, target: int) -> None:
    finding = report["by_key"][(name, target)]
    assert not finding["violations"], f"sm_{target} {name}: {finding['violations']}"
    assert not finding["missing"], (
        f"sm_{target} {name}: expected {finding['missing']} in the PTX; has {finding['opcodes']}"
    )


def test_every_kernel_is_audited(report: dict) -> None:
    kernels = {name.split("[", 1)[0] for name in NAMES}
    assert kernels == {
        "unary_kernel",
        "binary_kernel",
        "tree_sum_kernel",
        "tree_max_kernel",
        "argmax_kernel",
        "gemv_kernel",
        "gemm_kernel",
        "rmsnorm_kernel",
        "layernorm_kernel",
        "softmax_kernel",
        "attention_kernel",
    }
    assert len(report["findings"]) == len(NAMES) * len(audit.TARGETS)


def test_sass_was_checked_too(report: dict) -> None:
    """ptxas (bundled with triton) produced a cubin and cuobjdump disassembled every one."""
    unchecked = [f["name"] for f in report["findings"] if not f["sass_checked"]]
    assert not unchecked, f"no SASS listing for {unchecked}"


def test_the_audit_sees_what_it_forbids(report: dict) -> None:
    """A control kernel with a*b + c, tl.exp and `/` is flagged: the audit is not vacuous."""
    fused = " ".join(report["controls"]["enable_fp_fusion=True"])
    unfused = " ".join(report["controls"]["enable_fp_fusion=False"])
    assert "ptx fma" in fused and "sass FFMA" in fused
    assert "ptx approx" in unfused and "div.full" in unfused
    assert "ptx fma" not in unfused
