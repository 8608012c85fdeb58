"""Following a game's events safely: chain identity, confirmation depth and reorgs.

A client's state belongs to one game on one chain. `ChainFollower.bind()` ties the store to the
chain id, the game's address and the hash of the block the game was deployed in; a node that was
reset (anvil restarted, the game redeployed at the same deterministic address) or another chain
is refused with a StoreError naming what changed, instead of silently skipping the new chain's
claims.

Events are read only up to `latest - confirmations` (0 on the embedded chain, which never
reorganises). The follower remembers the hashes of the heads it has read up to; when one of
them is no longer on the chain, the blocks after the newest one still there were reorganised
away: `reorg()` returns that fork block, the clients rewind their cursors to it and re-check
what they did after it (a claim, a dispute or a move undone by the reorg is sent again).
"""

from __future__ import annotations

from typing import Any

from refute.bisection.store import Identity, Store
from refute.contracts.chain import is_embedded

KEPT_HEADS = 64
"""Read heads whose hashes are remembered (past a deeper reorg, everything is read again)."""


def deployment_block(w3: Any, address: str) -> int:
    """The block the contract at `address` was created in: the first block with its code
    (binary search over eth_getCode; 0 where the node keeps no history)."""
    lo, hi = 0, int(w3.eth.block_number)
    try:
        if not w3.eth.get_code(address, block_identifier=lo):
            while lo < hi:
                mid = (lo + hi) // 2
                if w3.eth.get_code(address, block_identifier=mid):
                    hi = mid
                else:
                    lo = mid + 1
    except ValueError:  # a pruned node: history not available
        return 0
    return lo


def _hash(block: Any) -> str:
    return "0x" + bytes(block["hash"]).hex()


def remember_block(store: Store, number: int, block_hash: Any) -> None:
    """Remember a block the client's own transaction was mined in (from its receipt), as a head
    `reorg()` checks: a reorg replacing it before the client read past it is then seen too."""
    heads = store.data.setdefault("heads", [])
    if not heads or heads[-1][0] < number:
        heads.append([number, "0x" + bytes(block_hash).hex()])
        del heads[:-KEPT_HEADS]


class ChainFollower:
    """The confirmed head, block cursors per event stream, and reorg detection for one store."""

    def __init__(self, w3: Any, game_address: str, store: Store, confirmations: int = 0) -> None:
        self.w3 = w3
        self.address = game_address
        self.store = store
        self.confirmations = 0 if is_embedded(w3) else confirmations
        self.last_block: int | None = None
        self.last_timestamp: int | None = None
        self.store.data.setdefault("cursors", {})
        self.store.data.setdefault("heads", [])

    def identity(self) -> Identity:
        block = deployment_block(self.w3, self.address)
        return Identity(int(self.w3.eth.chain_id), self.address, block,
                        _hash(self.w3.eth.get_block(block)))  # fmt: skip

    def bind(self) -> Identity:
        """Bind the store to this chain and game, or refuse it (StoreError)."""
        identity = self.identity()
        self.store.bind(identity)
        return identity

    def check(self) -> None:
        """Raise StoreError if the chain under the store was reset (cheap: one block read)."""
        old = self.store.identity()
        if old is None:
            return
        try:
            block = self.w3.eth.get_block(old.deploy_block)
        except Exception:  # a reset chain may be shorter than the old one
            block = None
        now = None if block is None else _hash(block)
        if now != old.deploy_hash:
            self.store.bind(self.identity())  # raises, naming what changed

    def head(self) -> int:
        """The newest block whose events may be acted on (latest - confirmations)."""
        latest = self.w3.eth.get_block("latest")
        self.last_block, self.last_timestamp = int(latest["number"]), int(latest["timestamp"])
        return max(-1, self.last_block - self.confirmations)

    def cursor(self, stream: str, default: int = 0) -> int:
        return int(self.store["cursors"].get(stream, default))

    def advance(self, stream: str, head: int) -> None:
        """Everything up to `head` of `stream` was read (saved with the caller's next save)."""
        self.store["cursors"][stream] = head + 1
        heads = self.store["heads"]
        if head >= 0 and (not heads or heads[-1][0] < head):
            heads.append([head, _hash(self.w3.eth.get_block(head))])
            del heads[:-KEPT_HEADS]

    def reorg(self) -> int | None:
        """The first block that changed since it was read (and the cursors rewound to it),
        or None when every remembered head is still on the chain."""
        heads = self.store["heads"]
        fork = None
        while heads:
            number, expected = heads[-1]
            try:
                now = _hash(self.w3.eth.get_block(number))
            except Exception:  # the chain is now shorter than that head
                now = None
            if now == expected:
                break
            fork = number
            heads.pop()
        if fork is None:
            return None
        if heads:
            fork = heads[-1][0] + 1
        else:  # deeper than every remembered head: read again from the game's deployment
            identity = self.store.identity()
            fork = identity.deploy_block if identity is not None else 0
        cursors = self.store["cursors"]
        for stream, value in cursors.items():
            cursors[stream] = min(int(value), fork)
        self.store.save()
        return fork
