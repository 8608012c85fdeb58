"""PTX/SASS audit: compile every kernel as the wrappers launch it, for a real GPU, without one.

The canonical arithmetic holds on a GPU only if the compiled code uses correctly rounded fp32
instructions and nothing else: no fma (one rounding instead of two), no ``.approx`` (hardware
exp/rcp/sqrt), no ``.ftz`` (subnormals flushed), no ``mma``/``wgmma`` (tensor cores), and every
fp32 add/sub/mul carrying an explicit ``.rn`` (a bare ``mul.f32``/``add.f32`` pair may be
contracted into an fma by ptxas). Run ``python -m refute.kernels.gpu.audit [--controls]``
with TRITON_INTERPRET unset; it prints the findings for sm_80 and sm_90 as JSON and exits 1 if
any kernel fails.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import triton
import triton.language as tl

from refute.kernels.gpu import (
    argmax_kernel,
    attention_kernel,
    binary_kernel,
    gemm_kernel,
    gemv_kernel,
    layernorm_kernel,
    rmsnorm_kernel,
    softmax_kernel,
    tree_max_kernel,
    tree_sum_kernel,
    unary_kernel,
)
from refute.kernels.gpu._runtime import INTERPRETED, LAUNCH_OPTIONS

TARGETS = (80, 90)
"""Compute capabilities audited: Ampere (A100) and Hopper (H100)."""

FORBIDDEN_PTX = {
    "fma": re.compile(r"\bfma\.|\bmad\.[\w.]*f(16|32|64)\b"),
    "approx": re.compile(r"\.approx\b"),
    "ftz": re.compile(r"\.ftz\b"),
    "mma": re.compile(r"\b(wg)?mma\b|\bmma\.|\bwgmma\."),
    "fp32 add/sub/mul without .rn": re.compile(r"\b(add|sub|mul)\.f32\b"),
    "div.full/div.approx": re.compile(r"\bdiv\.(full|approx)"),
}
FORBIDDEN_SASS = {
    "tensor core": re.compile(r"\b(HMMA|IMMA|DMMA|HGMMA|QGMMA|IGMMA)\b"),
}
FORBIDDEN_SASS_WITHOUT_DIV_SQRT = {
    # ptxas expands div.rn/sqrt.rn into NVIDIA's correctly rounded sequences (MUFU estimate,
    # FFMA refinement, .FTZ on the guarded fast path, a slow-path subroutine for the rest).
    # Anywhere else an FFMA could only be a contracted mul+add.
    "FFMA": re.compile(r"\bFFMA\b"),
    "MUFU": re.compile(r"\bMUFU\b"),
    "FTZ": re.compile(r"\.FTZ\b"),
}
_OPCODE = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)", re.M)


@dataclass
class Specialization:
    """One compiled variant of a kernel: what `kernel[grid](...)` in a wrapper builds."""

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    expected: tuple[str, ...]
    """PTX opcodes that must appear (the .rn operations this kernel is made of)."""


_ADD, _MUL, _DIV, _SQRT = "add.rn.f32", "mul.rn.f32", "div.rn.f32", "sqrt.rn.f32"
_UNARY_EXPECTED = {
    "sqrt": (_SQRT,),
    "exp": (_ADD, _MUL),
    "log": (_ADD, _MUL, _DIV),
    "reciprocal": (_DIV,),
    "rsqrt": (_SQRT, _DIV),
    "sigmoid": (_ADD, _MUL, _DIV),
    "silu": (_ADD, _MUL, _DIV),
    "tanh": (_ADD, _MUL, _DIV),
    "gelu_tanh": (_ADD, _MUL, _DIV),
    "round_to_int": (_ADD,),
}
_BINARY_EXPECTED = {"add": (_ADD,), "sub": ("sub.rn.f32",), "mul": (_MUL,), "div": (_DIV,)}
_FUSED_EXPECTED = {
    rmsnorm_kernel: (_ADD, _MUL, _DIV, _SQRT),
    layernorm_kernel: (_ADD, "sub.rn.f32", _MUL, _DIV, _SQRT),
    softmax_kernel: (_ADD, "sub.rn.f32", _MUL, _DIV),  # exp's steps, the probs division
    attention_kernel: (_ADD, "sub.rn.f32", _MUL, _DIV),
}


def specializations() -> list[Specialization]:
    """Every kernel variant the wrappers launch (reductions: representative block plans)."""
    out = []

    def named(kernel: Any, cx: dict[str, Any]) -> str:
        return kernel.__name__ + "[" + ",".join(f"{k}={v}" for k, v in cx.items()) + "]"

    for kernel, sig, cx in unary_kernel.specializations():
        out.append(
            Specialization(named(kernel, cx), kernel, sig, cx, _UNARY_EXPECTED.get(cx["FN"], ()))
        )
    for kernel, sig, cx in binary_kernel.specializations():
        out.append(
            Specialization(named(kernel, cx), kernel, sig, cx, _BINARY_EXPECTED.get(cx["FN"], ()))
        )
    for kernel, sig, cx in tree_sum_kernel.specializations():
        out.append(
            Specialization(named(kernel, cx), kernel, sig, cx, (_ADD,) if cx["BLOCK"] > 1 else ())
        )
    for module in (tree_max_kernel, argmax_kernel):
        for kernel, sig, cx in module.specializations():
            out.append(Specialization(named(kernel, cx), kernel, sig, cx, ()))
    for module in (gemv_kernel, gemm_kernel):
        for kernel, sig, cx in module.specializations():
            exp = (_MUL, _ADD) if cx["BLOCK_K"] > 1 else (_MUL,)
            out.append(Specialization(named(kernel, cx), kernel, sig, cx, exp))
    for module, expected in _FUSED_EXPECTED.items():
        for kernel, sig, cx in module.specializations():
            out.append(Specialization(named(kernel, cx), kernel, sig, cx, expected))
    return out


def code_lines(ptx: str) -> str:
    """The instructions of a PTX listing, without comments and debug-info sections."""
    keep = []
    in_debug = False
    for line in ptx.splitlines():
        s = line.strip()
        if s.startswith(".section") and ".debug" in s:
            in_debug = True
            continue
        if in_debug:
            if s == "}":
                in_debug = False
            continue
        s = s.split("//", 1)[0].strip()
        if s and not s.startswith(".loc"):
            keep.append(s)
    return "\n".join(keep)


def sass(cubin: bytes) -> str | None:
    """SASS of a cubin via Triton's bundled cuobjdump, or None if it cannot be run."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        run = subprocess.run(
            [str(tool), "-sass", f.name], capture_output=True, text=True, check=False
        )
    return run.stdout if run.returncode == 0 else None


@dataclass
class Finding:
    """The audit of one specialization on one target."""

    name: str
    target: int
    opcodes: list[str]
    violations: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    sass_checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations and not self.missing


def audit_one(
    spec: Specialization, capability: int, options: dict[str, Any] | None = None
) -> Finding:
    """Compile one specialization for sm_<capability> with the wrappers' options; check it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(spec.kernel, signature=spec.signature, constexprs=spec.constexprs)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", capability, 32), options=dict(options or LAUNCH_OPTIONS)
    )
    code = code_lines(compiled.asm["ptx"])
    opcodes = sorted(set(_OPCODE.findall(code)))
    finding = Finding(spec.name, capability, opcodes)
    for what, pattern in FORBIDDEN_PTX.items():
        hits = sorted({m.group(0) for m in pattern.finditer(code)})
        if hits:
            finding.violations.append(f"ptx {what}: {hits}")
    finding.missing = [op for op in spec.expected if op not in opcodes]
    listing = sass(compiled.asm["cubin"]) if "cubin" in compiled.asm else None
    if listing is not None:
        finding.sass_checked = True
        rules = dict(FORBIDDEN_SASS)
        if not any(op.startswith(("div.rn", "sqrt.rn")) for op in opcodes):
            rules.update(FORBIDDEN_SASS_WITHOUT_DIV_SQRT)
        for what, pattern in rules.items():
            if pattern.search(listing):
                finding.violations.append(f"sass {what}")
    return finding


@triton.jit
def control_kernel(a_ptr, b_ptr, c_ptr, y_ptr, BLOCK: tl.constexpr):
    """What the kernels must never compile to: fma (fusion on), ex2.approx (tl.exp), div.full."""
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs)
    b = tl.load(b_ptr + offs)
    c = tl.load(c_ptr + offs)
    tl.store(y_ptr + offs, tl.exp(a * b + c) / c)


def controls(capability: int = 90) -> dict[str, list[str]]:
    """Violations the audit reports on `control_kernel`: evidence the audit can see them."""
    spec = Specialization(
        "control_kernel",
        control_kernel,
        {
            "a_ptr": "*fp32",
            "b_ptr": "*fp32",
            "c_ptr": "*fp32",
            "y_ptr": "*fp32",
            "BLOCK": "constexpr",
        },
        {"BLOCK": 128},
        (),
    )
    out = {}
    for fusion in (True, False):
        f = audit_one(spec, capability, {**LAUNCH_OPTIONS, "enable_fp_fusion": fusion})
        out[f"enable_fp_fusion={fusion}"] = f.violations
    return out


def run(targets: tuple[int, ...] = TARGETS) -> list[Finding]:
    """Audit every specialization on every target (the interpreter must be off)."""
    if INTERPRETED:
        raise RuntimeError(
            "the PTX audit needs compiled kernels: run it with TRITON_INTERPRET unset (Triton "
            "fixes a kernel's mode when its module is imported)"
        )
    return [audit_one(s, cc) for s in specializations() for cc in targets]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, action="append", help="compute capability")
    parser.add_argument("--controls", action="store_true", help="also audit control_kernel")
    args = parser.parse_args(argv)
    findings = run(tuple(args.target or TARGETS))
    report: dict[str, Any] = {"findings": [f.__dict__ for f in findings]}
    if args.controls:
        report["controls"] = controls()
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if all(f.ok for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
