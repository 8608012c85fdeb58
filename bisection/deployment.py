"""Where a game lives: `deployment.json`, written by the process that deploys it, read by those
that join (and by a restarted process, which must find the same game on the same chain)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from refute.contracts.errors import DeploymentError
from refute.contracts.game import GameClient


@dataclass(frozen=True)
class Deployment:
    """Where a game lives: written by the process that deploys it, read by those that join."""

    game: str
    registry: str
    verifier: str
    chain_id: int
    block: int
    rpc: str | None

    FILE = "deployment.json"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Deployment:
        path = Path(directory) / cls.FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise DeploymentError(f"{path} is not a deployment file: {exc}") from None

    @classmethod
    def of(cls, game: GameClient, rpc: str | None, block: int) -> Deployment:
        return cls(
            game.game.address, game.registry.address, game.verifier.address,
            int(game.w3.eth.chain_id), block, rpc,
        )  # fmt: skip
