"""Trace files round-trip, and damage is reported rather than half-read."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from refute.cli import main
from refute.engine import tracefile
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.errors import TraceFileError


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, object, object]:
    model = load_model("tiny-llama")
    (gen,) = Executor(model).generate([Request((4, 8, 15), 5, temperature=0.5, seed=99)])
    path = tmp_path_factory.mktemp("trace") / "run.msgpack"
    tracefile.write(path, model, gen)
    return path, model, gen


def test_roundtrip(written) -> None:
    path, model, gen = written
    got = tracefile.read(path)
    assert got.trace.root() == gen.trace.root()
    assert got.tokens == gen.output_tokens
    assert got.request == gen.request
    assert got.header["model_root"] == model.root


def test_truncated_file_is_reported(written, tmp_path: Path) -> None:
    path = written[0]
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 10):
        bad = tmp_path / f"cut{cut}.msgpack"
        bad.write_bytes(data[:cut])
        with pytest.raises(TraceFileError, match=r"truncated|not a refute|corrupt"):
            tracefile.read(bad)


def test_corruption_is_reported(written, tmp_path: Path) -> None:
    path = written[0]
    unpacker = msgpack.Unpacker(open(path, "rb"), raw=False)
    items = list(unpacker)
    items[3][1][7] = bytes(32)  # one record root replaced
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"".join(msgpack.packb(i, use_bin_type=True) for i in items))
    with pytest.raises(TraceFileError, match="footer's trace root"):
        tracefile.read(bad)
    (tmp_path / "junk").write_bytes(b"\x93\x01\x02")
    with pytest.raises(TraceFileError, match="not a refute trace"):
        tracefile.read(tmp_path / "junk")
    with pytest.raises(TraceFileError, match="cannot open"):
        tracefile.read(tmp_path / "missing")


def test_verify_trace_confirms_and_names_the_first_bad_record(written, tmp_path: Path) -> None:
    path, model, _ = written
    runner = CliRunner()
    ok = runner.invoke(main, ["verify-trace", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "confirmed" in ok.output
    # a self-consistent file whose record (2, 30) is wrong: re-execution finds exactly it
    items = list(msgpack.Unpacker(open(path, "rb"), raw=False))
    items[3][1][30] = bytes(32)  # items[0] is the header, so items[3] is position 2
    trace = tracefile.Trace(items[0]["nodes"])
    for _, roots in items[1:-1]:
        trace.add_position(roots)
    items[-1]["trace_root"] = trace.root()
    forged = tmp_path / "forged.msgpack"
    forged.write_bytes(b"".join(msgpack.packb(i, use_bin_type=True) for i in items))
    bad = runner.invoke(main, ["verify-trace", str(forged)])
    assert bad.exit_code == 1
    node = model.program.nodes[30]
    assert f"position 2, node 30 ({node.name}" in bad.output
