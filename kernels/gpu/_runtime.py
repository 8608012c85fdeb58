"""What every Triton kernel of refute shares: launch options, availability, tensor plumbing.

Triton decides, when a kernel module is imported, whether `@triton.jit` builds a GPU kernel or an
interpreted one (``TRITON_INTERPRET=1``, numpy underneath). That choice is recorded here once so
the wrappers can refuse clearly instead of failing deep inside the launcher.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from refute.errors import RefuteError

try:  # triton and torch are an optional extra: the reference path never needs them
    import torch
    import triton

    _IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    torch = None  # type: ignore[assignment]
    triton = None  # type: ignore[assignment]
    _IMPORT_ERROR = exc


class TritonUnavailableError(RefuteError):
    """Triton kernels cannot run here: triton/torch missing, or no GPU and no interpreter."""


LAUNCH_OPTIONS: dict[str, Any] = {"enable_fp_fusion": False, "num_warps": 4}
"""Options of every launch (and of the PTX audit). Fusion off, or a*b + c becomes one fma."""

INTERPRETED: bool = bool(triton is not None and triton.knobs.runtime.interpret)
"""Whether this process's kernels were built for Triton's CPU interpreter (fixed at import)."""


def unavailable_reason() -> str | None:
    """Why the kernels cannot run in this process, or None when they can."""
    if _IMPORT_ERROR is not None:
        return f"triton or torch is not installed ({_IMPORT_ERROR}); install refute[triton]"
    if INTERPRETED:
        return None
    if not torch.cuda.is_available():
        return (
            "no CUDA device and the Triton interpreter is off; set TRITON_INTERPRET=1 before "
            "importing refute.kernels.gpu to run the kernels on the CPU"
        )
    return None


def available() -> bool:
    """True when the Triton kernels can run in this process (on a GPU or in the interpreter)."""
    return unavailable_reason() is None


def require() -> None:
    """Raise TritonUnavailableError unless the kernels can run here."""
    reason = unavailable_reason()
    if reason is not None:
        raise TritonUnavailableError(reason)


def quiet() -> contextlib.AbstractContextManager:
    """Silence numpy's floating-point warnings: inf and NaN results are part of the spec."""
    return np.errstate(all="ignore")


def next_pow2(n: int) -> int:
    """Width of the canonical tree over n elements: the reference pads to this power of two."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


class Io:
    """Moves caller arrays to where the kernels run and results back, bits unchanged."""

    def __init__(self, first: Any) -> None:
        require()
        self.numpy = not isinstance(first, torch.Tensor)
        self.device = None if self.numpy else first.device
        self.run_device = torch.device("cpu") if INTERPRETED else torch.device("cuda")

    def put(self, x: Any, dtype: Any = None) -> torch.Tensor:
        """x as a contiguous tensor of dtype (default float32) on the kernels' device."""
        dtype = torch.float32 if dtype is None else dtype
        if isinstance(x, torch.Tensor):
            if x.dtype != dtype:
                raise TypeError(f"expected a {dtype} tensor, got {x.dtype}; convert explicitly")
            t = x
        else:
            np_dtype = {torch.float32: np.float32, torch.int32: np.int32}[dtype]
            t = torch.from_numpy(np.require(x, dtype=np_dtype, requirements=["C", "W"]))
        return t.to(self.run_device).contiguous()

    def empty(self, *shape: int, dtype: Any = None) -> torch.Tensor:
        return torch.empty(
            shape, dtype=torch.float32 if dtype is None else dtype, device=self.run_device
        )

    def full(self, shape: tuple[int, ...], value: float, dtype: Any = None) -> torch.Tensor:
        return torch.full(
            shape, value, dtype=torch.float32 if dtype is None else dtype, device=self.run_device
        )

    def out(self, t: torch.Tensor) -> Any:
        """A result in the kind of container (and on the device) the caller passed in."""
        if self.numpy:
            return t.cpu().numpy()
        return t.to(self.device)
