"""Choose a backend by name: `reference`, `cpu` (numba) or `triton` (a GPU).

All three compute the same bits (docs/spec.md); they differ in speed and in what they need.
The default is the fastest one that can run here: triton on a CUDA device, else cpu. Choosing
it imports neither torch nor triton (~1.3 s) unless the CUDA driver reports a device.
"""

from __future__ import annotations

import ctypes
import importlib.util

from refute.engine.backend import Backend, ReferenceBackend
from refute.errors import BackendUnavailableError

NAMES = ("reference", "cpu", "triton")


def unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run here, or None if it can."""
    if name == "reference":
        return None
    if name == "cpu":  # found, not imported: importing numba takes ~0.2 s
        if importlib.util.find_spec("numba") is None:
            return "numba is not installed"
        return None
    if name == "triton":
        try:
            from refute.kernels.gpu import unavailable_reason as triton_reason
        except ImportError as exc:
            return f"the Triton kernels cannot be imported ({exc})"
        return triton_reason()
    return f"unknown backend {name!r}; choose from {', '.join(NAMES)}"


def cuda_device_present() -> bool:
    """Whether the CUDA driver (libcuda) is installed and sees a device, asked without torch:
    torch and triton cannot use a GPU that this says is absent."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return (
            cuda.cuInit(0) == 0
            and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
            and count.value > 0
        )
    except (OSError, AttributeError):
        return False


def default_name() -> str:
    """triton when a CUDA device is present (not merely the interpreter), else cpu, else
    reference."""
    if not cuda_device_present():
        return "cpu" if unavailable_reason("cpu") is None else "reference"
    try:
        from refute.kernels.gpu import INTERPRETED

        if unavailable_reason("triton") is None and not INTERPRETED:
            return "triton"
    except ImportError:
        pass
    return "cpu" if unavailable_reason("cpu") is None else "reference"


def make(name: str | None = None) -> Backend:
    """The backend called `name` (the default one if None), or BackendUnavailableError.

    The default cpu backend loads its numba kernels only once a run has spent as long on numpy
    as loading them costs (`CPUBackend(load_after_s=...)`); `make("cpu")` loads them at once."""
    chosen = name or default_name()
    reason = unavailable_reason(chosen)
    if reason is not None:
        raise BackendUnavailableError(f"backend {chosen!r} cannot run here: {reason}")
    if chosen == "reference":
        return ReferenceBackend()
    if chosen == "cpu":
        from refute.kernels.cpu.backend import LOAD_COST_S, CPUBackend
        from refute.kernels.cpu.pack_cache import PackCache

        return CPUBackend(load_after_s=None if name else LOAD_COST_S, pack_cache=PackCache())
    from refute.kernels.gpu.backend import TritonBackend

    return TritonBackend()
