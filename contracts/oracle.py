"""The inference oracle on a chain: deploy InferenceOracle beside a DisputeGame, post requests,
commit to and answer them with claims, deliver outputs, reopen and refund, read state and events.

Thin typed wrappers over contracts/sol/InferenceOracle.sol (docs/protocol.md section 9). Every
transaction goes through the game client's `transact`, so an oracle bound to a prover's
`TrackedGame` (`OracleClient.bound`) sends through that prover's intents.

    oracle = OracleClient.deploy(game)
    rid = oracle.request(model.root, prompt, 8, fee=10**16, sender=user)
    oracle.commit(oracle.commitment(prover, rid, trace_root), sender=prover)
    claim_id = game.post_claim(model, gen, sender=prover)
    oracle.answer(rid, claim_id, sender=prover)
    ...                                         # the claim finalises (game.finalize)
    oracle.deliver(rid, gen.output_tokens)      # fee credited to the prover, callback called
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
from eth_abi import encode as abi_encode
from eth_hash.auto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from refute.contracts import game as game_module
from refute.contracts.artifacts import load
from refute.contracts.chain import deploy
from refute.contracts.errors import DeploymentError
from refute.contracts.game import GameClient, decode_tokens, encode_tokens
from refute.contracts.onestep import f32_bits

DEFAULT_DEADLINE = 86_400
"""Seconds from now a request takes answers for when no deadline is given."""
DEFAULT_CALLBACK_GAS = 200_000
"""Callback gas limit `ExampleConsumerClient.ask` asks for by default."""


class RequestStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    ANSWERED = 2
    DELIVERED = 3
    REFUNDED = 4


class CallbackResult(enum.IntEnum):
    NONE = 0
    SUCCEEDED = 1
    FAILED = 2


def _register_errors() -> None:
    """Name the oracle's and the consumers' custom errors in the game's error table, so that a
    revert of an oracle transaction (sent through `GameClient.transact` or a `TrackedGame`)
    raises a GameError with the error's name."""
    for name in ("InferenceOracle", "ExampleConsumer", "HostileConsumer"):
        for e in load(name).abi:
            if e["type"] == "error":
                sig = e["name"] + "(" + ",".join(i["type"] for i in e["inputs"]) + ")"
                game_module.ERRORS.setdefault(keccak(sig.encode())[:4], e["name"])


_register_errors()


@dataclass
class RequestState:
    requester: str
    deadline: int
    status: RequestStatus
    callback_result: CallbackResult
    callback: str
    callback_gas: int
    max_new_tokens: int
    temperature: int  # float32 bits
    model_root: bytes
    prompt_root: bytes
    seed: int
    fee: int
    claim_id: int  # the answering claim (while answered or delivered)
    commit_block: int


class OracleClient:
    """A deployed InferenceOracle, sending through a GameClient (or a client's TrackedGame)."""

    def __init__(self, game: GameClient, contract: Contract) -> None:
        self.game = game
        self.w3 = game.w3
        self.contract = contract

    @classmethod
    def deploy(cls, game: GameClient, sender: str | None = None) -> OracleClient:
        """Deploy an oracle beside `game` (its registry is the game's)."""
        return cls(game, deploy(game.w3, "InferenceOracle", game.game.address, sender=sender))

    @classmethod
    def at(cls, game: GameClient, address: str) -> OracleClient:
        """The oracle at `address`; refused unless it serves `game`."""
        try:
            address = Web3.to_checksum_address(address)
        except ValueError:
            raise DeploymentError(f"{address!r} is not an address") from None
        if not game.w3.eth.get_code(address):
            raise DeploymentError(f"no contract at {address}")
        contract = game.w3.eth.contract(address=address, abi=load("InferenceOracle").abi)
        try:
            served = contract.functions.game().call()
        except (ContractLogicError, ValueError) as exc:
            raise DeploymentError(f"the contract at {address} is not an InferenceOracle") from exc
        if served != game.game.address:
            raise DeploymentError(
                f"the oracle at {address} serves the game at {served}, not {game.game.address}"
            )
        return cls(game, contract)

    def bound(self, game: GameClient) -> OracleClient:
        """The same oracle, sending through `game` (e.g. a prover's TrackedGame)."""
        return OracleClient(game, self.contract)

    @property
    def address(self) -> str:
        return self.contract.address

    def _send(self, fn: str, *args: Any, sender: str | None = None, value: int = 0):
        return self.game.transact(self.contract, fn, *args, sender=sender, value=value)

    def now(self) -> int:
        """The timestamp the next transaction will run at (the pending block's)."""
        return int(self.w3.eth.get_block("pending")["timestamp"])

    # --- transactions --------------------------------------------------------------------------

    def request(
        self,
        model_root: bytes,
        prompt: list[int],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        seed: int = 0,
        fee: int = 0,
        callback: str | None = None,
        callback_gas: int = 0,
        deadline: int | None = None,
        sender: str | None = None,
    ) -> int:
        """Post a request with `fee` wei; returns its id (read from the receipt's event).
        `deadline` is a timestamp (default: DEFAULT_DEADLINE seconds from now)."""
        if deadline is None:
            deadline = self.now() + DEFAULT_DEADLINE
        _, receipt = self._send(
            "request",
            model_root,
            encode_tokens(prompt),
            max_new_tokens,
            f32_bits(np.float32(temperature)),
            seed,
            Web3.to_checksum_address(callback) if callback else "0x" + "00" * 20,
            callback_gas,
            deadline,
            sender=sender,
            value=fee,
        )
        (log,) = self.contract.events.Requested().process_receipt(receipt, errors=DISCARD)
        return int(log["args"]["requestId"])

    def commitment(self, prover: str, request_id: int, trace_root: bytes) -> bytes:
        """keccak256(abi.encode(prover, requestId, traceRoot)): what `commit` takes."""
        return keccak(
            abi_encode(
                ["address", "uint256", "bytes32"],
                [Web3.to_checksum_address(prover), request_id, bytes(trace_root)],
            )
        )

    def commit(self, commitment: bytes, sender: str | None = None):
        return self._send("commit", commitment, sender=sender)[1]

    def answer(self, request_id: int, claim_id: int, sender: str | None = None):
        return self._send("answer", request_id, claim_id, sender=sender)[1]

    def deliver(self, request_id: int, tokens: list[int], sender: str | None = None):
        """Deliver the claim's output tokens; returns (what the callback did, the receipt)."""
        result, receipt = self._send("deliver", request_id, encode_tokens(tokens), sender=sender)
        return CallbackResult(result), receipt

    def reopen(self, request_id: int, sender: str | None = None):
        return self._send("reopen", request_id, sender=sender)[1]

    def refund(self, request_id: int, sender: str | None = None):
        return self._send("refund", request_id, sender=sender)[1]

    def withdraw(self, sender: str):
        return self._send("withdraw", sender=sender)[1]

    # --- state and events ------------------------------------------------------------------------

    def get(self, request_id: int) -> RequestState:
        r = list(self.contract.functions.getRequest(request_id).call())
        r[2], r[3] = RequestStatus(r[2]), CallbackResult(r[3])
        r[8], r[9] = bytes(r[8]), bytes(r[9])
        return RequestState(*r)

    def request_count(self) -> int:
        return int(self.contract.functions.requestCount().call())

    def escrowed(self) -> int:
        """Fees held for requests still open or answered."""
        return int(self.contract.functions.escrowed().call())

    def credit(self, account: str) -> int:
        return int(self.contract.functions.credit(account).call())

    def committed_at(self, commitment: bytes) -> int:
        """Block of the commitment (0: none)."""
        return int(self.contract.functions.committedAt(commitment).call())

    def balance(self) -> int:
        return int(self.w3.eth.get_balance(self.address))

    def events(
        self, name: str, from_block: int = 0, to_block: int | str = "latest", **filters: Any
    ) -> list[dict]:
        """Decoded logs of event `name`, oldest first (Requested: prompt as token ids)."""
        event = getattr(self.contract.events, name)
        logs = event.get_logs(
            from_block=from_block, to_block=to_block, argument_filters=filters or None
        )
        out = [
            dict(log["args"])
            | {"blockNumber": log["blockNumber"], "transactionHash": log["transactionHash"]}
            for log in logs
        ]
        if name == "Requested":
            for e in out:
                e["prompt"] = decode_tokens(e["prompt"])
        return out


class ExampleConsumerClient:
    """contracts/sol/ExampleConsumer.sol: a contract that asks the oracle and keeps the tokens."""

    def __init__(self, oracle: OracleClient, contract: Contract) -> None:
        self.oracle = oracle
        self.contract = contract

    @classmethod
    def deploy(cls, oracle: OracleClient, sender: str | None = None) -> ExampleConsumerClient:
        return cls(oracle, deploy(oracle.w3, "ExampleConsumer", oracle.address, sender=sender))

    @property
    def address(self) -> str:
        return self.contract.address

    def ask(
        self,
        model_root: bytes,
        prompt: list[int],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        seed: int = 0,
        fee: int = 0,
        callback_gas: int = DEFAULT_CALLBACK_GAS,
        deadline: int | None = None,
        sender: str | None = None,
    ) -> int:
        """The consumer posts a request (with `fee` sent along); returns the request id."""
        if deadline is None:
            deadline = self.oracle.now() + DEFAULT_DEADLINE
        _, receipt = self.oracle.game.transact(
            self.contract,
            "ask",
            model_root,
            encode_tokens(prompt),
            max_new_tokens,
            f32_bits(np.float32(temperature)),
            seed,
            callback_gas,
            deadline,
            sender=sender,
            value=fee,
        )
        (log,) = self.contract.events.Asked().process_receipt(receipt, errors=DISCARD)
        return int(log["args"]["requestId"])

    def received(self, request_id: int) -> bool:
        return bool(self.contract.functions.received(request_id).call())

    def tokens(self, request_id: int) -> list[int]:
        """The tokens delivered for a request (empty before delivery)."""
        return decode_tokens(self.contract.functions.tokensOf(request_id).call())
