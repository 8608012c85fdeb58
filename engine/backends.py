"""Choose a backend by name: `reference`, `cpu` (numba) or `triton` (a GPU).

All three compute the same bits (docs/spec.md); they differ in speed and in what they need.
The default is the fastest one that can run here: triton on a CUDA device, else cpu.
"""

from __future__ import annotations

from refute.engine.backend import Backend, ReferenceBackend
from refute.errors import BackendUnavailableError

NAMES = ("reference", "cpu", "triton")


def unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run here, or None if it can."""
    if name == "reference":
        return None
    if name == "cpu":
        try:
            import numba  # noqa: F401
        except ImportError as exc:
            return f"numba is not installed ({exc})"
        return None
    if name == "triton":
        try:
            from refute.kernels.gpu import unavailable_reason as triton_reason
        except ImportError as exc:
            return f"the Triton kernels cannot be imported ({exc})"
        return triton_reason()
    return f"unknown backend {name!r}; choose from {', '.join(NAMES)}"


def default_name() -> str:
    """triton when a CUDA device is present (not merely the interpreter), else cpu, else
    reference."""
    try:
        from refute.kernels.gpu import INTERPRETED

        if unavailable_reason("triton") is None and not INTERPRETED:
            return "triton"
    except ImportError:
        pass
    return "cpu" if unavailable_reason("cpu") is None else "reference"


def make(name: str | None = None) -> Backend:
    """The backend called `name` (the default one if None), or BackendUnavailableError."""
    name = name or default_name()
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {reason}")
    if name == "reference":
        return ReferenceBackend()
    if name == "cpu":
        from refute.kernels.cpu import CPUBackend

        return CPUBackend()
    from refute.kernels.gpu.backend import TritonBackend

    return TritonBackend()
