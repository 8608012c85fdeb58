"""Inference requests: parsing one (a JSON object naming what is wrong when it is malformed) and
reading them from a JSON-lines file with a persisted offset, so that a restarted prover neither
serves a line twice nor skips one.

A request is {"prompt": text} or {"tokens": [ids]}, with optional max_new_tokens, temperature,
seed and id. The `id` (a string or integer of the client's choosing) names the request in every
event about the claim that serves it, and is the key a restarted prover recognises it by; without
one the key is where the line was read (file and byte offset).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from pathlib import Path
from typing import IO, Any

from refute.engine.executor import Request
from refute.engine.model import Model
from refute.errors import RefuteError


class RequestError(RefuteError, ValueError):
    """An inference request (a line of the request stream) is malformed."""


def parse_request(
    line: str | dict[str, Any], model: Model, defaults: Request | None = None
) -> Request:
    """One inference request: {"prompt": text} or {"tokens": [ids]}, with optional
    max_new_tokens, temperature and seed. Raises RequestError naming what is wrong."""
    if isinstance(line, str):
        try:
            line = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RequestError(f"not JSON: {exc}") from None
    if not isinstance(line, dict):
        raise RequestError("a request is a JSON object")
    unknown = set(line) - {"prompt", "tokens", "max_new_tokens", "temperature", "seed", "id"}
    if unknown:
        raise RequestError(f"unknown fields {sorted(unknown)}")
    if ("prompt" in line) == ("tokens" in line):
        raise RequestError('give exactly one of "prompt" (text) and "tokens" (ids)')
    if "prompt" in line:
        if model.tokenizer is None:
            raise RequestError(f'{model.name} has no tokenizer: send token ids as "tokens"')
        if not isinstance(line["prompt"], str) or not line["prompt"]:
            raise RequestError('"prompt" must be a non-empty string')
        tokens = tuple(model.tokenizer.encode(line["prompt"]).ids)
    else:
        tokens = line["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RequestError('"tokens" must be a list of integers')
        tokens = tuple(tokens)
    p = model.program
    if not tokens:
        raise RequestError("empty prompt")
    bad = [t for t in tokens if not 0 <= t < p.vocab_size]
    if bad:
        raise RequestError(f"token {bad[0]} is outside the vocabulary (0..{p.vocab_size - 1})")
    base = defaults or Request((), 8)
    new = line.get("max_new_tokens", base.max_new_tokens)
    temperature = line.get("temperature", base.temperature)
    seed = line.get("seed", base.seed)
    if not isinstance(new, int) or new < 1:
        raise RequestError('"max_new_tokens" must be an integer >= 1')
    if not isinstance(temperature, int | float) or not 0 <= temperature < float("inf"):
        raise RequestError('"temperature" must be a finite number >= 0')
    if not isinstance(seed, int) or not 0 <= seed < 2**256:
        raise RequestError('"seed" must be an integer in [0, 2^256)')
    if "id" in line and (
        not isinstance(line["id"], str | int) or isinstance(line["id"], bool)
        or not 0 < len(str(line["id"])) <= 200
    ):  # fmt: skip
        raise RequestError('"id" must be a string or an integer (1 to 200 characters)')
    request = Request(tokens, new, float(temperature), seed)
    if request.positions > p.max_positions:
        raise RequestError(f"{request.positions} positions exceed the model's {p.max_positions}")
    return request


def request_id(line: str | dict[str, Any]) -> str | None:
    """The client's `id` of a request line, if it has one (None for a malformed line)."""
    try:
        obj = json.loads(line) if isinstance(line, str) else line
    except json.JSONDecodeError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return None if value is None else str(value)


class RequestFile:
    """A JSON-lines file read from a byte offset that the prover persists with each request it
    accepts; a file that grows is read further at every call (like `tail -f`)."""

    def __init__(self, path: str | Path, offset: int = 0) -> None:
        self.path = str(path)
        try:
            self.stream: IO[bytes] = open(path, "rb")
        except OSError as exc:
            raise RequestError(f"cannot read requests from {path}: {exc.strerror}") from None
        self.offset = offset
        self.stream.seek(offset)

    def lines(self) -> list[tuple[str, str, int]]:
        """(key, line, offset after it) for each complete line now in the file; a last line
        without its newline is left for the next call."""
        out = []
        while True:
            raw = self.stream.readline()
            if not raw.endswith(b"\n"):
                self.stream.seek(self.offset)
                return out
            start, self.offset = self.offset, self.offset + len(raw)
            text = raw.decode("utf-8", errors="replace")
            if text.strip():
                out.append((f"{self.path}@{start}", text, self.offset))

    def close(self) -> None:
        self.stream.close()


class StreamRequests:
    """Lines of a stream that cannot be re-read (stdin), from a reader thread; they are keyed by
    their `id` if they have one (the only way a restarted prover can recognise them)."""

    def __init__(self, stream: IO[str], name: str = "stdin") -> None:
        self.name = name
        self.queue: queue.Queue[str] = queue.Queue()
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        while not self._stop.is_set():
            line = stream.readline()
            if not line:
                return
            if line.strip():
                self.queue.put(line)

    def lines(self) -> list[tuple[str, str, int]]:
        out = []
        while True:
            try:
                line = self.queue.get_nowait()
            except queue.Empty:
                return out
            self.count += 1
            out.append((f"{self.name}#{self.count}", line, 0))

    def close(self) -> None:
        self._stop.set()


class FixedRequests:
    """Requests given on the command line (`--prompt`, `--prompt-tokens`), each keyed by its
    place and content, so that a prover restarted with the same command serves none again."""

    path = "command line"

    def __init__(self, requests: list[dict[str, Any]]) -> None:
        self.pending = [
            (f"arg:{i}:{hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:16]}",
             json.dumps(r), 0)
            for i, r in enumerate(requests)
        ]  # fmt: skip

    def lines(self) -> list[tuple[str, str, int]]:
        out, self.pending = self.pending, []
        return out

    def close(self) -> None:
        pass
