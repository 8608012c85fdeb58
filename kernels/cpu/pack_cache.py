"""Packed weight panels kept on disk and memory-mapped: one copy per machine, not per process.

`CPUBackend` re-lays out every weight matrix into panels its kernels stream (`tree_dot.pack`):
a copy as large as the weights, 15 GB for an 8B model in bf16, in every process that runs the
model. A prover and a watcher of an 8B model on one 24 GB machine then do not fit, although the
checkpoint itself is mapped once from the page cache. With a `PackCache`, the panels of each
large weight are written once to a file and every process maps that file (copy-on-write, never
written), so the page cache holds them once and a process's own memory stays small.

A file is named by what its panels are made of: the tensor root of the weight's values
(docs/commitments.md, which every process computes anyway to check the model root), the stored
dtype, the slice and orientation a node reads, and the panel layout (`LANES`, `BLOCK`): the same
name always means the same panels. As with numba's cache of compiled kernels, the directory is
the operator's own: a file is checked for its dtype and shape when mapped, not hashed again.
Files are written under a temporary name and renamed, so processes packing the same weight at
once each leave a whole file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MIN_BYTES = 16 << 20
"""Weights smaller than this are packed in memory (a file would save little)."""


def default_directory() -> Path:
    """`$REFUTE_CACHE_DIR/packed`, else `$XDG_CACHE_HOME/refute/packed` (~/.cache)."""
    root = os.environ.get("REFUTE_CACHE_DIR")
    if root:
        return Path(root) / "packed"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "refute" / "packed"


class PackCache:
    """Panels of the weights of attached models, in `directory` (made on first write)."""

    def __init__(self, directory: Path | str | None = None, min_bytes: int = MIN_BYTES) -> None:
        self.directory = Path(directory) if directory is not None else default_directory()
        self.min_bytes = min_bytes
        self._weights: dict[int, tuple[np.ndarray, Any, int]] = {}  # id -> (array, model, i)
        self.mapped = 0  # panels read from a file this process did not write
        self.written = 0
        self.failed: str | None = None  # why the last write failed (then kept in memory)

    def attach(self, model: Any, flat_weights: Sequence[np.ndarray]) -> None:
        """Make the weights of `model` (the flat arrays an executor hands the backend) known."""
        for i, flat in enumerate(flat_weights):
            if flat.nbytes >= self.min_bytes:
                self._weights[id(flat)] = (flat, model, i)

    def panels(self, source: np.ndarray, layout: tuple, pack: Callable[[], Any]) -> Any | None:
        """The PackedWeight of `source` read as `layout` (offset, transposed, k, n), from its
        file, else packed by `pack()` and written; None for a weight not attached (or small)."""
        known = self._weights.get(id(source))
        if known is None or known[0] is not source:
            return None
        from refute.kernels.cpu.tree_dot import BLOCK, LANES, PackedWeight, panel_layout

        _, model, i = known
        stored = model.weights[i].dtype
        what = f"|{stored}|{layout}|lanes {LANES} block {BLOCK}".encode()
        key = hashlib.sha256(model.tensor_roots[i] + what).hexdigest()
        path = self.directory / f"{key}.npy"

        _, _, k, n = layout
        if path.exists():
            try:
                panels = np.load(path, mmap_mode="c")
            except (OSError, ValueError):
                panels = None
            if panels is not None and (panels.shape, panels.dtype) == panel_layout(k, n, stored):
                self.mapped += 1
                return PackedWeight(panels, k, n)
        weight = pack()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        except OSError as exc:  # a read-only or full disk: this process keeps its own copy
            self.failed = f"{self.directory}: {exc.strerror}"
            return weight
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, weight.panels)
            os.replace(tmp, path)
        except OSError as exc:
            self.failed = f"{path}: {exc.strerror}"
            return weight
        finally:
            Path(tmp).unlink(missing_ok=True)  # gone after the rename; a partial file otherwise
        self.written += 1
        return PackedWeight(np.load(path, mmap_mode="c"), k, n)
