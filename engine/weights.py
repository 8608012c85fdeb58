"""Weights at their stored width: float32, bfloat16 or float16 arrays, widened exactly on use.

A checkpoint's tensors stay in the dtype they were published in (memory-mapped from the
safetensors files by `engine.checkpoint`): a bf16 8B model is 16 GB in memory, not 32, and
processes on one machine share one copy through the page cache. Every consumer that needs
binary32 values calls `widen`, which is the spec's `from_bf16` / `from_fp16` (docs/spec.md §3):
numpy's float16 -> float32 cast and ml_dtypes' bfloat16 -> float32 cast are exact, and a NaN
keeps its payload, so stored NaNs are made canonical once, when a weight is admitted
(`admit`: 0x7FC0 for bf16 and 0x7E00 for fp16 widen to the canonical binary32 NaN 0x7FC00000).
After that a plain widening — a 16-bit shift for bf16 in the kernels — gives the spec's bits.

Weights are committed as the binary32 values the arithmetic uses, whatever their stored width
(docs/commitments.md), so the roots do not depend on how a checkpoint is stored.
"""

from __future__ import annotations

import numpy as np
from ml_dtypes import bfloat16

BF16 = np.dtype(bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
STORED = (F32, BF16, F16)
"""The dtypes a weight may be held in."""

_CANONICAL_BITS = {F32: 0x7FC00000, BF16: 0x7FC0, F16: 0x7E00}
_BLOCK = 1 << 24  # elements scanned or widened at a time (bounded temporaries)


def is_narrow(a: np.ndarray) -> bool:
    """Whether `a` is held at 16 bits (bf16 or fp16) and must be widened before arithmetic."""
    return a.dtype == BF16 or a.dtype == F16


def widen(a: np.ndarray) -> np.ndarray:
    """binary32 values of an admitted weight (or a view of one): exact (its NaNs are canonical
    already, `admit`); no copy for float32."""
    if a.dtype == F32:
        return a
    if a.dtype == BF16:  # a 16-bit shift (ml_dtypes' own cast is ~20x slower)
        return (a.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(F32)
    if a.dtype == F16:
        return a.astype(F32)
    raise TypeError(f"a weight is float32, bfloat16 or float16, not {a.dtype}")


def has_noncanonical_nan(a: np.ndarray) -> bool:
    """Whether any NaN in `a` has other bits than its dtype's canonical NaN (scanned in blocks,
    so a memory-mapped tensor is read once and never copied whole)."""
    flat = a.reshape(-1)
    canonical = _CANONICAL_BITS[a.dtype]
    uint = np.uint32 if a.dtype == F32 else np.uint16
    for lo in range(0, flat.size, _BLOCK):
        block = flat[lo : lo + _BLOCK]
        nan = np.isnan(block)
        if nan.any() and (block.view(uint)[nan] != canonical).any():
            return True
    return False


def admit(a: np.ndarray) -> np.ndarray:
    """`a` as a weight: kept as it is (a memory map stays one) unless it holds a NaN that is not
    canonical, in which case a private copy with canonical NaNs. Other dtypes become float32."""
    a = np.asarray(a)
    if a.dtype not in STORED:
        a = a.astype(F32)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    if not has_noncanonical_nan(a):
        return a
    out = np.array(a, copy=True)
    out[np.isnan(out)] = _nan_of(a.dtype)
    return out


def _nan_of(dtype: np.dtype) -> np.generic:
    uint = np.uint32 if dtype == F32 else np.uint16
    return np.array([_CANONICAL_BITS[dtype]], dtype=uint).view(dtype)[0]


def widened_blocks(a: np.ndarray, block: int = _BLOCK):
    """The binary32 values of `a`, flat, `block` elements at a time (for hashing a weight
    without materialising its widened copy)."""
    flat = a.reshape(-1)
    for lo in range(0, flat.size, block):
        yield widen(flat[lo : lo + block])
