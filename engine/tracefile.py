"""Trace files: a msgpack stream of a header, one item per position, and a footer.

    header   {"format": "refute-trace", "version": 1, "spec_version", "model", "config",
              "model_root", "weights_root", "program_root", "prompt", "prompt_root",
              "max_new_tokens", "temperature" (float32 bits), "seed" (32 bytes), "nodes"}
    position [position, [output root of node 0, node 1, ...]]      (one per executed position)
    footer   {"end": true, "positions", "records", "tokens", "trace_root"}

Positions are written as they complete, so a long generation streams to disk; the footer's
trace root must equal the root recomputed from the position items, so a corrupt or truncated
file is detected rather than half-read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgpack
import numpy as np

from refute.engine.executor import Generation, Request
from refute.engine.model import Model
from refute.engine.trace import Trace, prompt_root
from refute.errors import TraceFileError
from refute.kernels.reference import SPEC_VERSION

FORMAT = "refute-trace"
VERSION = 1


def _f32_bits(x: float) -> int:
    return int(np.float32(x).view(np.uint32))


@dataclass
class TraceFile:
    header: dict
    trace: Trace
    tokens: list[int]

    @property
    def request(self) -> Request:
        h = self.header
        temperature = float(np.uint32(h["temperature"]).view(np.float32))
        return Request(
            tuple(h["prompt"]), h["max_new_tokens"], temperature, int.from_bytes(h["seed"], "big")
        )


def header_for(model: Model, request: Request) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "spec_version": SPEC_VERSION,
        "model": model.name,
        "config": model.config_json,
        "model_root": model.root,
        "weights_root": model.weights_root,
        "program_root": model.program_root,
        "prompt": list(request.prompt),
        "prompt_root": prompt_root(list(request.prompt)),
        "max_new_tokens": request.max_new_tokens,
        "temperature": _f32_bits(request.temperature),
        "seed": request.seed.to_bytes(32, "big"),
        "nodes": len(model.program.nodes),
    }


class TraceWriter:
    """Streams one generation's trace: call `position` as positions complete, then `close`."""

    def __init__(self, stream: BinaryIO, model: Model, request: Request) -> None:
        self.stream = stream
        self.packer = msgpack.Packer(use_bin_type=True)
        self.written = 0
        stream.write(self.packer.pack(header_for(model, request)))

    def position(self, roots: list[bytes]) -> None:
        self.stream.write(self.packer.pack([self.written, roots]))
        self.written += 1

    def close(self, gen: Generation) -> None:
        for roots in gen.trace.roots[self.written :]:
            self.position(roots)
        self.stream.write(
            self.packer.pack(
                {
                    "end": True,
                    "positions": gen.trace.positions,
                    "records": gen.trace.num_records,
                    "tokens": gen.output_tokens,
                    "trace_root": gen.trace.root(),
                }
            )
        )
        self.stream.flush()


def write(path: Path, model: Model, gen: Generation) -> None:
    with open(path, "wb") as fh:
        TraceWriter(fh, model, gen.request).close(gen)


def _items(stream: BinaryIO) -> Iterator[object]:
    unpacker = msgpack.Unpacker(stream, raw=False, max_buffer_size=1 << 30)
    try:
        yield from unpacker
    except (ValueError, msgpack.UnpackException) as exc:
        raise TraceFileError(f"corrupt trace file: {exc}") from exc


def read(path: Path) -> TraceFile:
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise TraceFileError(f"cannot open trace file {path}: {exc}") from exc
    with stream:
        items = _items(stream)
        header = next(items, None)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise TraceFileError(f"{path} is not a refute trace file")
        if header.get("version") != VERSION:
            raise TraceFileError(
                f"trace format version {header.get('version')}, expected {VERSION}"
            )
        trace = Trace(header["nodes"])
        footer = None
        for item in items:
            if isinstance(item, dict) and item.get("end"):
                footer = item
                break
            if (
                not isinstance(item, list)
                or len(item) != 2
                or item[0] != trace.positions
                or not isinstance(item[1], list)
                or any(not isinstance(r, bytes) or len(r) != 32 for r in item[1])
            ):
                raise TraceFileError(
                    f"corrupt trace file: bad record at position {trace.positions}"
                )
            try:
                trace.add_position(item[1])
            except ValueError as exc:
                raise TraceFileError(f"corrupt trace file: {exc}") from exc
        if footer is None:
            raise TraceFileError(
                f"truncated trace file: no footer after {trace.positions} positions"
            )
        if next(items, None) is not None:
            raise TraceFileError("corrupt trace file: data after the footer")
    if footer.get("positions") != trace.positions or footer.get("trace_root") != trace.root():
        raise TraceFileError("corrupt trace file: records do not match the footer's trace root")
    return TraceFile(header, trace, list(footer["tokens"]))
