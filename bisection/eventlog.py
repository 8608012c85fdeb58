"""What a process says: one structured event per line (JSON or key=value), and a status line
redrawn at the bottom of a terminal (nothing when stderr is not one)."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

from tqdm import tqdm

LEVELS = {
    "error": "error", "claim.failed": "error", "node.unreachable": "warning",
    "warning": "warning", "claim.at_risk": "warning", "reorg": "warning",
    "claim.undone": "warning", "dispute.undone": "warning", "tx.unknown": "warning",
    "request.rejected": "warning", "liveness": "warning", "round": "debug",
    "worker.actor_lost": "warning", "worker.failed": "error",
}  # fmt: skip
"""Severity of each event (`level` in the log); every other event is "info"."""
ORDER = ("debug", "info", "warning", "error")


class EventLog:
    """Structured log: each event is one line, a JSON object (`fmt="json"`) or `key=value`
    pairs (`fmt="text"`), with a UTC timestamp, the level, the role and the event name first."""

    def __init__(self, stream: IO[str], role: str, fmt: str = "json", level: str = "info") -> None:
        self.stream = stream
        self.role = role
        self.fmt = fmt
        self.level = level
        self.lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        level = LEVELS.get(event, "info")
        if ORDER.index(level) < ORDER.index(self.level):
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        head = {"time": stamp, "level": level, "role": self.role, "event": event}
        record = head | fields
        if self.fmt == "json":
            line = json.dumps(record, default=_jsonable)
        else:
            line = " ".join(f"{k}={_text(v)}" for k, v in record.items())
        with self.lock:
            # tqdm.write keeps a status line drawn on the same terminal below the log
            tqdm.write(line, file=self.stream)
            self.stream.flush()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str) and " " not in value:
        return value
    return json.dumps(value, default=_jsonable)


class StatusLine:
    """A status line redrawn in place at the bottom of a terminal (nothing elsewhere)."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.bar = tqdm(total=0, bar_format="{desc}", file=stream, disable=not stream.isatty(),
                        dynamic_ncols=True, leave=False)  # fmt: skip

    def __call__(self, line: str) -> None:
        self.bar.set_description_str(line)

    def close(self) -> None:
        self.bar.close()
