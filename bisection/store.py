"""A client's durable state: one JSON file in a directory given to the client.

A client may be killed at any moment and recreated from its directory: everything it cannot
re-derive from the chain (which generation it claimed, which claims and disputes it plays, the
moves it sent and their gas) is written here after every change, atomically (write, then rename),
so a restart never sees a half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Store:
    """A JSON document on disk, loaded once and rewritten whole on every `save()`."""

    FILE = "state.json"

    def __init__(self, directory: str | os.PathLike[str], defaults: dict[str, Any]) -> None:
        self.path = Path(directory) / self.FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = json.loads(json.dumps(defaults))
        if self.path.exists():
            self.data.update(json.loads(self.path.read_text()))

    def save(self) -> None:
        """Write the whole document atomically."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
