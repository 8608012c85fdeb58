"""Transactions sent through intents: written before sending, reconciled with the chain after.

`TrackedGame` is the `GameClient` a client plays through. Each transaction it sends follows:

    simulate on the pending block (a revert is a GameError: nothing is written or sent)
    -> intent written and committed, with the nonce the transaction will use
    -> sent with that explicit nonce (so a resend can never be a second transaction)
    -> tx hash recorded -> receipt awaited (a bounded wait) -> intent closed

Anything that goes wrong between the intent and the receipt (a connection refused, a timeout, an
HTTP 5xx, a dropped answer, the process killed) leaves the intent open: the outcome is unknown,
never "failed". `reconcile()` (every poll, and at start) looks each open intent up again: its
receipt by hash, else whether its nonce has been used, and closes it as done, failed or dropped.
What a done transaction did (a claim posted, a dispute opened) the clients read from the chain's
events, not from the intent, so a crash after the receipt loses nothing either.

`REFUTE_CRASH_AT=ROLE:POINT:FN[:N]` kills the process with SIGKILL at the N-th (default first)
passage of POINT (`intent`: written, not sent; `sent`: sent, before the receipt; `receipt`:
receipt seen, before any local write) for function FN (or `*`): the fault-injection tests use it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from eth_tester.exceptions import TransactionFailed
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)

from refute.bisection.follower import remember_block
from refute.bisection.store import Intent, Store
from refute.contracts.game import TX_GAS, GameClient, GameError, error_name, revert_data
from refute.errors import RefuteError

RECEIPT_WAIT = 30.0
"""Seconds a send waits for its receipt before leaving the intent open ("unknown")."""


class TransactionUnknown(RefuteError):
    """A transaction may or may not have been mined: its intent stays open until reconciled."""


def subject_of(fn: str, args: tuple[Any, ...], sender: str) -> str:
    """What a transaction acts on, for intents (one transaction in flight per subject)."""
    if fn == "commitTokenProof":
        return f"commitment:0x{bytes(args[0]).hex()}"
    if fn in ("finalize", "openDispute", "proveTokenMismatch", "collectReward"):
        return f"claim:{args[0]}"
    if fn in ("withdraw", "register"):
        return f"{fn}:{sender}"
    if fn == "postClaim":
        return "claim:new"
    return f"dispute:{args[0]}"


class TrackedGame(GameClient):
    """A GameClient whose transactions go through the intents of one client's store."""

    store: Store
    role: str
    subject: str | None = None  # set by `labelled` for the transaction sent inside it
    intent_args: dict[str, Any] | None = None

    @classmethod
    def of(cls, game: GameClient, store: Store, role: str) -> TrackedGame:
        tracked = cls.__new__(cls)
        tracked.__dict__.update(game.__dict__)
        tracked.gas_used = game.gas_used  # one list of gas figures per chain connection
        tracked.store = store
        tracked.role = role
        tracked.receipt_wait = RECEIPT_WAIT
        tracked.last_tx = None
        return tracked

    @contextmanager
    def labelled(self, subject: str, args: dict[str, Any]) -> Iterator[None]:
        """Transactions sent inside get this intent subject and arguments (e.g. the request a
        postClaim serves, so that a restart can tell which requests were served)."""
        self.subject, self.intent_args = subject, args
        try:
            yield
        finally:
            self.subject = self.intent_args = None

    def transact(self, contract: Any, fn: str, *args: Any, sender=None, value: int = 0):
        sender = self._sender(sender)
        tx = {"from": sender, "value": value}
        call = getattr(contract.functions, fn)(*args)
        result = self.simulate(call, tx)
        subject = self.subject or subject_of(fn, args, sender)
        nonce = self.w3.eth.get_transaction_count(sender, "pending")
        intent = self.store.open_intent(fn, subject, self.intent_args or {}, nonce)
        crash_point(self.role, "intent", fn)
        try:
            tx_hash = call.transact({**tx, "gas": TX_GAS, "nonce": nonce})
        except Web3RPCError as exc:  # the node answered, and refused it: nothing was sent
            self.store.update_intent(intent.id, state="dropped", result=f"refused: {exc}")
            raise
        except Exception as exc:  # the node may have taken it: unknown until reconciled
            raise TransactionUnknown(f"{fn}: sending failed ({type(exc).__name__}: {exc}); "
                                     "it will be looked up again") from exc  # fmt: skip
        self.last_tx = "0x" + bytes(tx_hash).hex()
        self.store.update_intent(intent.id, state="sent", tx_hash=self.last_tx)
        crash_point(self.role, "sent", fn)
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_wait)
        except TimeExhausted as exc:
            raise TransactionUnknown(f"{fn}: no receipt for {self.last_tx} yet") from exc
        except Exception as exc:
            raise TransactionUnknown(f"{fn}: receipt of {self.last_tx} not read "
                                     f"({type(exc).__name__})") from exc  # fmt: skip
        crash_point(self.role, "receipt", fn)
        self._close(intent, receipt)
        if receipt["status"] != 1:
            raise GameError("<reverted>", b"")
        self.gas_used.append((fn, int(receipt["gasUsed"])))
        return result, receipt

    @staticmethod
    def simulate(call: Any, tx: dict[str, Any]) -> Any:
        """The call on the pending block (where the transaction will run): its return value, or
        the revert as a GameError naming the contract's custom error."""
        try:
            return call.call(tx, block_identifier="pending")
        except (ContractCustomError, ContractLogicError, TransactionFailed) as exc:
            raw = revert_data(exc)
            raise GameError(error_name(raw), raw) from None

    def _close(self, intent: Intent, receipt: Any) -> None:
        ok = receipt["status"] == 1
        remember_block(self.store, int(receipt["blockNumber"]), receipt["blockHash"])
        self.store.update_intent(
            intent.id, state="done" if ok else "failed",
            result={"block": int(receipt["blockNumber"]), "gas": int(receipt["gasUsed"]),
                    "tx": "0x" + bytes(receipt["transactionHash"]).hex()},
        )  # fmt: skip

    # --- reconciliation ----------------------------------------------------------------------

    def reconcile(self) -> list[Intent]:
        """Look every open intent up on the chain and close those whose outcome is now known.
        Returns the intents closed (with their new state)."""
        closed = []
        for intent in self.store.intents():
            state = self._lookup(intent)
            if state is not None:
                closed.append(self.store.intent(intent.id))
        return closed

    def _lookup(self, intent: Intent) -> str | None:
        eth = self.w3.eth
        if intent.tx_hash is not None:
            try:
                receipt = eth.get_transaction_receipt(intent.tx_hash)
            except TransactionNotFound:
                receipt = None
            if receipt is not None:
                self._close(intent, receipt)
                return "done" if receipt["status"] == 1 else "failed"
        if intent.nonce is None:
            self.store.update_intent(intent.id, state="dropped", result="never sent")
            return "dropped"
        account = self.store.get("account") or self.w3.eth.accounts[0]
        mined = eth.get_transaction_count(account, "latest")
        if mined > intent.nonce:
            # its nonce was used: by this transaction (its hash was never recorded) or, if it
            # never reached the node, by a later one; the clients read the effect from events
            self.store.update_intent(intent.id, state="done", result="nonce used")
            return "done"
        if eth.get_transaction_count(account, "pending") > intent.nonce:
            return None  # still waiting in the node's pool
        self.store.update_intent(intent.id, state="dropped", result="nonce unused")
        return "dropped"

    def in_flight(self) -> set[str]:
        """Subjects of transactions still open after the last reconciliation."""
        return self.store.open_subjects()


_passages: dict[tuple[str, str, str], int] = {}


def crash_point(role: str, point: str, fn: str) -> None:
    """SIGKILL this process here if REFUTE_CRASH_AT names this passage (fault-injection tests)."""
    spec = os.environ.get("REFUTE_CRASH_AT")
    if not spec:
        return
    parts = spec.split(":")
    want_role, want_point, want_fn = parts[:3]
    nth = int(parts[3]) if len(parts) > 3 else 1
    if want_role != role or want_point != point or want_fn not in ("*", fn):
        return
    key = (role, point, fn)
    _passages[key] = _passages.get(key, 0) + 1
    if _passages[key] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
