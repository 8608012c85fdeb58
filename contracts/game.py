"""The dispute game on a chain: deploy ModelRegistry + OneStepVerifier + DisputeGame, register a
model, post a claim from a generation, open disputes, make moves, read state and events.

Thin typed wrappers over the contracts (contracts/sol/DisputeGame.sol, docs/protocol.md); the
watcher and prover clients build on them. Chain: embedded py-evm by default, any JSON-RPC URL.

    game = GameClient.deploy()                         # embedded chain, default parameters
    root = game.register(model)
    claim_id = game.post_claim(model, gen)             # the claim bond from accounts[0]
    dispute_id = game.open_dispute(claim_id, other_root, sender=watcher)
    game.reveal_children(dispute_id, left, right, sender=...)
    game.dispute(dispute_id).stage                     # Stage.TRACE, ...
    game.collect_reward(claim_id, watcher)             # its share, once the claim is settled

Payouts are those of protocol draft 4 (docs/protocol.md section 5): `post_claim` sends the claim
bond plus the non-refundable per-position fee (`claim_value`), a token-mismatch proof is a
commitment and then, in a later block, the proof, and an overturned claim's reward pool is
collected per account once the claim is settled.
"""

from __future__ import annotations

import ast
import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
from eth_abi import encode as abi_encode
from eth_hash.auto import keccak
from eth_tester.exceptions import TransactionFailed
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, ContractLogicError

from refute.contracts.artifacts import load
from refute.contracts.chain import connect, deploy
from refute.contracts.errors import DeploymentError
from refute.contracts.onestep import EMPTY_SOURCE, StepCall, f32_bits
from refute.engine import merkle
from refute.engine.executor import Generation
from refute.engine.model import Model
from refute.errors import RefuteError
from refute.kernels.reference import SPEC_VERSION

CLAIM, CHALLENGE = 0, 1
TX_GAS = 2_000_000


class Stage(enum.IntEnum):
    NONE = 0
    TRACE = 1
    RECORD = 2
    CHUNKS = 3
    CHUNK = 4
    REDUCTION = 5
    STEP = 6
    RESOLVED = 7


class ClaimStatus(enum.IntEnum):
    NONE = 0
    PENDING = 1
    FINALIZED = 2
    OVERTURNED = 3


@dataclass(frozen=True)
class GameParams:
    """Deployment parameters (docs/protocol.md): bonds in wei, times in seconds."""

    spec_version: int = SPEC_VERSION
    claim_bond: int = 10**18
    challenge_bond: int = 10**18
    move_bond: int = 10**16
    window: int = 3600
    clock: int = 1800
    extension: int = 120
    # non-refundable; 10**13 wei makes flooding tiny-llama watchers for W = 3600 s cost several
    # times B_c (docs/protocol.md section 5: f > max(B_c, B_x) / (v * W))
    fee_per_position: int = 10**13
    fee_recipient: str | None = None  # the watchers' fund; None: the deployer


class GameError(RefuteError):
    """A game transaction reverted; `name` is the contract's custom error."""

    def __init__(self, name: str, data: bytes) -> None:
        super().__init__(f"reverted with {name}")
        self.name = name
        self.data = data


def encode_tokens(tokens: Any) -> bytes:
    """Token ids as the contract takes them: 4-byte little-endian uint32 each, the data of the
    uint32 tensor (docs/commitments.md), so the prompt root is a hash of the calldata as sent."""
    return np.asarray(list(tokens), dtype="<u4").tobytes()


def decode_tokens(data: bytes) -> list[int]:
    """Inverse of `encode_tokens`."""
    return [int(x) for x in np.frombuffer(bytes(data), dtype="<u4")]


def _error_table() -> dict[bytes, str]:
    table = {}
    for name in ("DisputeGame", "ModelRegistry", "OneStepVerifier", "NodeReader", "ProofHarness"):
        for e in load(name).abi:
            if e["type"] == "error":
                sig = e["name"] + "(" + ",".join(i["type"] for i in e["inputs"]) + ")"
                table[keccak(sig.encode())[:4]] = e["name"]
    return table


ERRORS = _error_table()


def error_name(data: bytes) -> str:
    """Name of the custom error whose ABI-encoded revert data is `data`."""
    return ERRORS.get(bytes(data[:4]), f"<unknown revert {bytes(data[:4]).hex()}>")


def revert_data(exc: Exception) -> bytes:
    """The revert data of a failed call: web3's errors carry it as hex; the embedded tester's
    TransactionFailed only as the repr of the bytes in its message."""
    data = getattr(exc, "data", None)
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and data.startswith("0x"):
        return Web3.to_bytes(hexstr=data)
    message = str(exc.args[0]) if exc.args else ""
    tail = message.split("execution reverted: ", 1)[-1]
    if tail[:2] in ("b'", 'b"'):
        try:
            value = ast.literal_eval(tail)
        except (ValueError, SyntaxError):
            return b""
        return value if isinstance(value, bytes) else b""
    return b""


@dataclass
class ClaimState:
    claimant: str
    deadline: int
    open_disputes: int
    status: ClaimStatus
    overturn_block: int
    wins: int  # successful challenges: shares of the reward pool
    dust_burned: bool
    model_root: bytes
    prompt_root: bytes
    trace_root: bytes
    tokens_hash: bytes
    num_records: int
    prompt_length: int
    output_length: int
    nodes_per_position: int
    token_node: int
    temperature: int
    seed: int


@dataclass
class DisputeState:
    claim_id: int
    challenger: str
    stage: Stage
    to_move: int
    winner: int  # 0 none, 1 claim side, 2 challenge side
    value_known: bool
    op: int
    reducer: int
    turn_start: int
    clock: list[int]
    node: list[bytes]
    pending: list[bytes]
    height: int
    index: int
    position: int
    node_id: int
    length: int
    width: int
    element: int
    value: list[int]
    value_index: list[int]
    moves: int


class GameClient:
    """A deployed registry, verifier and game, with one method per contract entry point."""

    def __init__(self, w3: Web3, registry: Contract, verifier: Contract, game: Contract) -> None:
        self.w3 = w3
        self.registry = registry
        self.verifier = verifier
        self.game = game
        self.gas_used: list[tuple[str, int]] = []  # (function, gas) of every transaction sent
        f = game.functions
        self.bonds = (f.claimBond().call(), f.challengeBond().call(), f.moveBond().call())
        """(B_c, B_x, b) in wei."""
        self.fee_per_position = int(f.feePerPosition().call())
        """The non-refundable claim fee per position (wei)."""

    @classmethod
    def deploy(
        cls,
        url: str | None = None,
        *,
        w3: Web3 | None = None,
        params: GameParams = GameParams(),
        sender: str | None = None,
    ) -> GameClient:
        """Deploy the three contracts (embedded chain unless `url` or `w3` is given)."""
        w3 = w3 if w3 is not None else connect(url)
        deployer = sender if sender is not None else w3.eth.accounts[0]
        recipient = params.fee_recipient if params.fee_recipient is not None else deployer
        registry = deploy(w3, "ModelRegistry", sender=sender)
        verifier = deploy(w3, "OneStepVerifier", sender=sender)
        game = deploy(
            w3,
            "DisputeGame",
            registry.address,
            verifier.address,
            params.spec_version,
            params.claim_bond,
            params.challenge_bond,
            params.move_bond,
            params.window,
            params.clock,
            params.extension,
            params.fee_per_position,
            Web3.to_checksum_address(recipient),
            sender=sender,
        )
        return cls(w3, registry, verifier, game)

    @classmethod
    def at(cls, w3: Web3, address: str) -> GameClient:
        """The game deployed at `address` (with the registry and verifier it was built on)."""
        try:
            address = Web3.to_checksum_address(address)
        except ValueError:
            raise DeploymentError(f"{address!r} is not an address") from None
        if not w3.eth.get_code(address):
            raise DeploymentError(f"no contract at {address}")
        game = w3.eth.contract(address=address, abi=load("DisputeGame").abi)
        try:
            registry, verifier = game.functions.registry().call(), game.functions.verifier().call()
        except (ContractLogicError, ValueError) as exc:
            raise DeploymentError(f"the contract at {address} is not a DisputeGame") from exc
        return cls(
            w3,
            w3.eth.contract(address=registry, abi=load("ModelRegistry").abi),
            w3.eth.contract(address=verifier, abi=load("OneStepVerifier").abi),
            game,
        )

    # --- plumbing ------------------------------------------------------------------------------

    def _sender(self, sender: str | None) -> str:
        return sender if sender is not None else self.w3.eth.accounts[0]

    def transact(
        self, contract: Contract, fn: str, *args: Any, sender=None, value: int = 0,
    ):  # fmt: skip
        """Send a transaction; raise GameError (with the custom error's name) if it reverts.
        Returns (the function's return value, the receipt). Errors are found by a call on the
        pending block, where the transaction will run (a call on "latest" sees an older
        timestamp); the gas limit is TX_GAS (every game transaction needs less than 1M)."""
        tx = {"from": self._sender(sender), "value": value}
        call = getattr(contract.functions, fn)(*args)
        try:
            result = call.call(tx, block_identifier="pending")
        except (ContractCustomError, ContractLogicError, TransactionFailed) as exc:
            raw = revert_data(exc)
            raise GameError(error_name(raw), raw) from None
        receipt = self.w3.eth.wait_for_transaction_receipt(call.transact({**tx, "gas": TX_GAS}))
        if receipt["status"] != 1:
            raise GameError("<reverted>", b"")
        self.gas_used.append((fn, int(receipt["gasUsed"])))
        return result, receipt

    def params(self) -> GameParams:
        f = self.game.functions
        return GameParams(
            f.specVersion().call(),
            f.claimBond().call(),
            f.challengeBond().call(),
            f.moveBond().call(),
            f.window().call(),
            f.clock().call(),
            f.extension().call(),
            f.feePerPosition().call(),
            f.feeRecipient().call(),
        )

    # --- registry and claims -------------------------------------------------------------------

    def register(self, model: Model, sender: str | None = None) -> bytes:
        """Register `model` (idempotent); returns its model root, computed on chain."""
        if self.registry.functions.isRegistered(model.root).call():
            return model.root
        p = model.program
        (root, _) = self.transact(
            self.registry,
            "register",
            model.weights_root,
            model.program_root,
            model.config_hash,
            SPEC_VERSION,
            len(p.nodes),
            p.max_positions,
            p.vocab_size,
            p.logits_node,
            p.token_node,
            sender=sender,
        )
        return bytes(root)

    def claim_value(self, positions: int) -> int:
        """msg.value of `postClaim` for a claim of `positions` positions (len(prompt) +
        len(output) - 1): the claim bond plus the non-refundable fee."""
        return self.bonds[0] + self.fee_per_position * positions

    def post_claim(
        self,
        model: Model,
        gen: Generation,
        *,
        sender: str | None = None,
        output_tokens: list[int] | None = None,
        trace_root: bytes | None = None,
        prompt: list[int] | None = None,
    ) -> int:
        """Post the claim of a generation with the claim bond and fee; returns the claim id.
        The overrides (tokens, trace root, prompt) post something else than the generation:
        they exist to play cheating provers."""
        req = gen.request
        tokens = list(gen.output_tokens) if output_tokens is None else list(output_tokens)
        prompt = list(req.prompt) if prompt is None else list(prompt)
        claim_id, _ = self.transact(
            self.game,
            "postClaim",
            model.root,
            encode_tokens(prompt),
            f32_bits(np.float32(req.temperature)),
            req.seed,
            encode_tokens(tokens),
            gen.trace.root() if trace_root is None else trace_root,
            gen.trace.num_records,
            sender=sender,
            value=self.claim_value(len(prompt) + len(tokens) - 1),
        )
        return int(claim_id)

    def finalize(self, claim_id: int, sender: str | None = None):
        return self.transact(self.game, "finalize", claim_id, sender=sender)[1]

    @staticmethod
    def token_commitment(sender: str, claim_id: int, i: int, record_root: bytes) -> bytes:
        """keccak256(abi.encode(sender, claimId, i, recordRoot)): what `commitTokenProof` takes."""
        return keccak(
            abi_encode(
                ["address", "uint256", "uint256", "bytes32"],
                [Web3.to_checksum_address(sender), claim_id, i, bytes(record_root)],
            )
        )

    def commit_token_proof(self, commitment: bytes, sender: str | None = None):
        return self.transact(self.game, "commitTokenProof", commitment, sender=sender)[1]

    def committed_at(self, commitment: bytes) -> int:
        """Block of the commitment (0: none)."""
        return int(self.game.functions.committedAt(commitment).call())

    def prove_token_mismatch(
        self, claim_id: int, tokens: list[int], i: int, record_root: bytes, record_path, chunk,
        chunk_path, sender: str | None = None,
    ):  # fmt: skip
        """Commit to the proof (unless already committed) and, in a later block, send it: the
        commitment binds the sender, so copying the proof's calldata pays nobody else. The
        proof is sent after the commitment's receipt, so it is mined in a later block on any
        chain. Returns the proof's receipt."""
        sender = self._sender(sender)
        commitment = self.token_commitment(sender, claim_id, i, record_root)
        if self.committed_at(commitment) == 0:
            self.commit_token_proof(commitment, sender=sender)
        return self.transact(
            self.game, "proveTokenMismatch", claim_id, encode_tokens(tokens), i, record_root,
            record_path, chunk, chunk_path, sender=sender,
        )[1]  # fmt: skip

    def collect_reward(self, claim_id: int, account: str, sender: str | None = None):
        """Credit `account` its share of an overturned claim's reward pool (once settled)."""
        return self.transact(self.game, "collectReward", claim_id, account, sender=sender)[1]

    def reward(self, claim_id: int, account: str) -> int:
        """What `collect_reward` would credit now (0 until the claim is settled), read on the
        pending block as `transact` does (on a chain that mines only on transactions the latest
        block's time can be far behind)."""
        return int(self.game.functions.reward(claim_id, account).call(block_identifier="pending"))

    def reward_shares(self, claim_id: int, account: str) -> int:
        """Uncollected shares of `account` in the claim's reward pool."""
        return int(self.game.functions.rewardShares(claim_id, account).call())

    def burned(self) -> int:
        return int(self.game.functions.burned().call())

    # --- disputes ----------------------------------------------------------------------------

    def open_dispute(self, claim_id: int, root: bytes, sender: str | None = None) -> int:
        dispute_id, _ = self.transact(
            self.game, "openDispute", claim_id, root, sender=sender, value=self.bonds[1],
        )  # fmt: skip
        return int(dispute_id)

    def _move(self, fn: str, *args, sender=None):
        return self.transact(self.game, fn, *args, sender=sender, value=self.bonds[2])[1]

    def reveal_children(self, dispute_id: int, left: bytes, right: bytes, sender=None):
        return self._move("revealChildren", dispute_id, left, right, sender=sender)

    def open_record(self, dispute_id, dtype, length, tree, node_proof=None, sender=None):
        node_proof = node_proof if node_proof is not None else (0, b"", [])
        return self._move("openRecord", dispute_id, dtype, length, tree, node_proof, sender=sender)

    def reveal_chunk(self, dispute_id: int, chunk: bytes, claim_chunk: bytes = b"", sender=None):
        return self._move("revealChunk", dispute_id, chunk, claim_chunk, sender=sender)

    def reveal_reduction(self, dispute_id, lv: int, li: int, rv: int, ri: int, sender=None):
        return self._move("revealReduction", dispute_id, lv, li, rv, ri, sender=sender)

    def step(self, dispute_id: int, call: StepCall, weight_count: int, sender=None):
        """Level 4 with a StepProver call's node proof, sources and token proof."""
        _, node_proof, _, sources, token = call.args
        return self.transact(
            self.game, "step", dispute_id, node_proof, sources, token or EMPTY_SOURCE,
            weight_count, sender=sender,
        )[1]  # fmt: skip

    def timeout(self, dispute_id: int, sender=None):
        return self.transact(self.game, "timeout", dispute_id, sender=sender)[1]

    def settle(self, dispute_id: int, account: str, sender=None):
        return self.transact(self.game, "settle", dispute_id, account, sender=sender)[1]

    def withdraw(self, sender: str):
        return self.transact(self.game, "withdraw", sender=sender)[1]

    # --- state and events ------------------------------------------------------------------------

    def claim(self, claim_id: int) -> ClaimState:
        c = self.game.functions.getClaim(claim_id).call()
        return ClaimState(*c[:3], ClaimStatus(c[3]), *c[4:7], *[bytes(x) for x in c[7:11]], *c[11:])

    def dispute(self, dispute_id: int) -> DisputeState:
        d = list(self.game.functions.getDispute(dispute_id).call())
        d[2] = Stage(d[2])
        d[10] = [bytes(x) for x in d[10]]
        d[11] = [bytes(x) for x in d[11]]
        return DisputeState(*d)

    def credit(self, account: str) -> int:
        return int(self.game.functions.credit(account).call())

    def owed(self, dispute_id: int, account: str) -> int:
        return int(self.game.functions.owed(dispute_id, account).call())

    def events(self, name: str, from_block: int = 0, **filters) -> list[dict]:
        """Decoded logs of event `name` of the game (or registry), oldest first."""
        contract = self.registry if name == "ModelRegistered" else self.game
        event = getattr(contract.events, name)
        logs = event.get_logs(from_block=from_block, argument_filters=filters or None)
        out = [dict(log["args"]) | {"blockNumber": log["blockNumber"]} for log in logs]
        if name == "ClaimPosted":  # token lists as ids
            for e in out:
                e["prompt"] = decode_tokens(e["prompt"])
                e["outputTokens"] = decode_tokens(e["outputTokens"])
        return out


class ForeignPaths:
    """Trace-record paths against ANOTHER party's trace root, for records left of the disputed
    record r, from one's own trace tree and the other side's level-1 reveals (docs/protocol.md
    section 3: records before r are identical in both traces, and every sibling on their paths
    is either left of r's path, identical, or one of the pairs the other side revealed)."""

    def __init__(self, own: Any, revealed: dict[int, tuple[bytes, bytes]], r: int) -> None:
        """`own`: a `refute.contracts.onestep.ListTree` of one's own record leaves; `revealed`:
        height h -> the (left, right) pair the other side revealed at height h on r's path."""
        self.own = own
        self.revealed = revealed
        self.r = r
        self.count = own.count

    def proof(self, index: int) -> list[bytes]:
        if not 0 <= index < self.r:
            raise RefuteError(f"record {index} is not left of the disputed record {self.r}")
        out = []
        for h in range(len(self.own.levels) - 1):
            s = (index >> h) ^ 1
            if s >> 1 == (self.r >> h) >> 1:
                out.append(self.revealed[h][s & 1])
            else:
                level = self.own.levels[h]
                out.append(level[s] if s < len(level) else merkle.ZERO[h])
        return out
