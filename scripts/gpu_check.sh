#!/usr/bin/env bash
# On a machine with a CUDA GPU: the Triton kernels' tests on the device, trace roots of
# tiny-llama and a 134M Llama (bf16) on the GPU against the CPU backend, decode GEMV bandwidth
# against the device's peak, decode tokens/s against torch bf16 and fp32 (refute/gpu_check.py).
# One summary line per check; exit 1 on any mismatch, 2 without a CUDA device. ~3-5 minutes on
# an H100/H200 (bounded: the kernel tests stop at 240 s).
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
unset TRITON_INTERPRET
exec timeout 480 "$py" -m refute.gpu_check "$@"
