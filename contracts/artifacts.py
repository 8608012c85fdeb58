"""Compiled contracts shipped as package data (contracts/artifacts/*.json, see build.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from refute.contracts.errors import ArtifactNotFoundError

_PACKAGE = "refute.contracts"


@dataclass(frozen=True)
class Artifact:
    """ABI and bytecode of one compiled contract or library."""

    name: str
    source_name: str
    abi: list[dict[str, Any]]
    bytecode: str
    """Creation bytecode, 0x-prefixed hex."""
    deployed_bytecode: str
    """Runtime bytecode, 0x-prefixed hex."""
    compiler_version: str


def names() -> list[str]:
    """Names of all shipped artifacts, sorted."""
    folder = resources.files(_PACKAGE) / "artifacts"
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


@cache
def load(name: str) -> Artifact:
    """The artifact of contract `name` (e.g. "FloatHarness")."""
    resource = resources.files(_PACKAGE) / "artifacts" / f"{name}.json"
    if not resource.is_file():
        raise ArtifactNotFoundError(f"no artifact {name!r}; shipped: {', '.join(names())}")
    data = json.loads(resource.read_text(encoding="utf-8"))
    return Artifact(
        name=data["contractName"],
        source_name=data["sourceName"],
        abi=data["abi"],
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
        compiler_version=data["compiler"]["version"],
    )
