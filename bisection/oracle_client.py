"""A prover that also serves an InferenceOracle's requests (`refute prove --oracle ADDRESS`).

`OracleProver` is a `Prover` (so the Service polls, logs and meters it as one) that follows the
oracle's `Requested` events for its model and, for each request (docs/protocol.md section 9):

    request seen            -> queued in the prover's durable queue under key "oracle:<id>"
                               (only while no live answer stands: a request answered by someone
                               else's pending or final claim is left to it, and served if that
                               claim is overturned before the deadline)
    generation finished     -> commit(keccak(prover, id, trace root)) before the claim is posted
                               (a copier can then never take the request), then postClaim
    postClaim mined         -> answer(id, claim), re-sent whenever the chain says it would now
                               be taken (open, the standing claim overturned, or a pending one
                               committed later than ours)
    claim finalised         -> deliver(id, tokens): the fee is credited, the callback called
    credit on the oracle    -> withdrawn with the game's credit (`collect`)

Every decision is made from the oracle's and the game's state read in that poll; the store only
remembers which requests were seen (and the stream cursor), so a restart at any point neither
answers twice nor misses a step: the commitment is looked up before it is sent, the claim comes
back through the prover's own adoption of its ClaimPosted events, and an answer or delivery that
already happened shows in the request's state. Every transaction goes through the prover's
intents (subject "oracle:<id>").
"""

from __future__ import annotations

from typing import Any

from refute.bisection.follower import deployment_block
from refute.bisection.player import bits_to_f32
from refute.bisection.prover import Prover
from refute.contracts.game import ClaimStatus, GameError
from refute.contracts.oracle import OracleClient, RequestStatus
from refute.engine.executor import Generation, Request

STREAM = "oracle.Requested"
"""The follower's cursor name for the oracle's request events."""
RETRY_LATER = ("AlreadyAnswered", "NotAnswered", "ClaimNotFinal", "NotAnswerable")
"""Reverts that only mean the chain moved on since it was read: decided again next poll."""


def oracle_key(request_id: int) -> str:
    """The prover's request-queue key of an oracle request."""
    return f"oracle:{request_id}"


def _request_id(key: str | None) -> int | None:
    if key is None or not key.startswith("oracle:"):
        return None
    return int(key.split(":", 1)[1])


class OracleProver(Prover):
    """A Prover serving the requests of `oracle` for its model (fee at least `min_fee` wei)."""

    def __init__(
        self,
        *args: Any,
        oracle: OracleClient,
        min_fee: int = 0,
        from_block: int | None = None,
        **kwargs: Any,
    ) -> None:
        """`from_block`: where to start reading requests (default: the oracle's deployment
        block, since requests posted before this prover started may still be open)."""
        super().__init__(*args, **kwargs)
        self.oracle = oracle.bound(self.game)  # its transactions go through this prover's intents
        self.min_fee = min_fee
        self.store.data.setdefault("oracle", {})
        if "oracle_from" not in self.store.data:
            self.store["oracle_from"] = (
                deployment_block(self.game.w3, oracle.address) if from_block is None else from_block
            )
        self.store.save()

    @property
    def requests_seen(self) -> dict[str, dict[str, Any]]:
        """Oracle request id -> what this prover knows of it ("state": seen, queued, skipped,
        closed)."""
        return self.store["oracle"]

    # --- the loop ----------------------------------------------------------------------------

    def poll(self) -> list[dict[str, Any]]:
        """The prover's round (disputes, claims, finality), then the oracle's: new requests
        followed, answers sent, finalised answers delivered."""
        made = super().poll()
        self._follow()
        made += self._serve_oracle()
        return made

    def post(
        self,
        request: Request,
        gen: Generation,
        *,
        output_tokens: list[int] | None = None,
        key: str | None = None,
    ) -> int:
        """Commit to the answer before the claim makes its trace root public, then post it."""
        rid = _request_id(key)
        if rid is not None:
            commitment = self.oracle.commitment(self.account, rid, gen.trace.root())
            if self.oracle.committed_at(commitment) == 0:
                with self.game.labelled(f"oracle:{rid}", {"request": rid}):
                    receipt = self.oracle.commit(commitment, sender=self.account)
                self.note(
                    "oracle.committed",
                    request=rid,
                    commitment=commitment,
                    tx=self.game.last_tx,
                    gas=int(receipt["gasUsed"]),
                )
        return super().post(request, gen, output_tokens=output_tokens, key=key)

    def collect(self) -> int:
        """The game's payouts, then the fees credited on the oracle."""
        amount = super().collect()
        owed = self.oracle.credit(self.account)
        if owed:
            self.oracle.withdraw(self.account)
            self.store["withdrawn"] = self.store.data.get("withdrawn", 0) + owed
            self.store.save()
        return amount + owed

    # --- following requests ------------------------------------------------------------------

    def _follow(self) -> None:
        """Write down every new request for this prover's model (cursor kept by the follower,
        so a reorg rewinds it with the others)."""
        start = self.follower.cursor(STREAM, int(self.store["oracle_from"]))
        head = self.follower.head()
        if start > head:
            return
        seen = self.requests_seen
        for e in self.oracle.events("Requested", start, head, modelRoot=self.model.root):
            rid = str(e["requestId"])
            if rid in seen:
                continue
            seen[rid] = {
                "state": "seen" if e["fee"] >= self.min_fee else "skipped",
                "prompt": e["prompt"],
                "max_new_tokens": int(e["maxNewTokens"]),
                "temperature": int(e["temperature"]),
                "seed": str(e["seed"]),
                "fee": str(e["fee"]),
                "deadline": int(e["deadline"]),
                "block": int(e["blockNumber"]),
            }
            self.note(
                "oracle.requested",
                request=int(rid),
                fee=int(e["fee"]),
                deadline=int(e["deadline"]),
                served=seen[rid]["state"] == "seen",
            )
        self.follower.advance(STREAM, head)
        self.store.save()

    # --- answering and delivering --------------------------------------------------------------

    def _serve_oracle(self) -> list[dict[str, Any]]:
        made: list[dict[str, Any]] = []
        in_flight = self.game.in_flight()
        now = self.now()
        for rid_text, info in self.requests_seen.items():
            if info["state"] in ("skipped", "closed"):
                continue
            rid = int(rid_text)
            if f"oracle:{rid}" in in_flight:
                continue  # a transaction about it is on its way: reconciliation tells
            r = self.oracle.get(rid)
            if r.status in (RequestStatus.DELIVERED, RequestStatus.REFUNDED):
                self._close(info, rid, r.status.name.lower())
                continue
            mine = self.store["requests"].get(oracle_key(rid))
            if mine is None:
                self._maybe_enqueue(info, rid, r, now)
                continue
            if mine["status"] == "failed":
                self._close(info, rid, "failed")
                continue
            if mine["status"] != "served":
                continue  # queued or generating
            move = self._answer_or_deliver(info, rid, r, int(mine["claim"]), now)
            if move is not None:
                made.append(move)
        self.store.save()
        return made

    def _standing_overturned(self, r: Any) -> bool:
        return (
            r.status == RequestStatus.ANSWERED
            and self.game.claim(r.claim_id).status == ClaimStatus.OVERTURNED
        )

    def _maybe_enqueue(self, info: dict[str, Any], rid: int, r: Any, now: int) -> None:
        """Queue a request nobody answers (open, or its answer overturned) before its deadline;
        leave one that a live claim answers to that claim (asked again every poll)."""
        if now > r.deadline:
            self._close(info, rid, "late")
            return
        if r.status != RequestStatus.OPEN and not self._standing_overturned(r):
            return
        request = Request(
            tuple(info["prompt"]),
            info["max_new_tokens"],
            bits_to_f32(info["temperature"]),
            int(info["seed"]),
        )
        if self.enqueue(oracle_key(rid), request, id=f"oracle:{rid}", oracle=rid):
            info["state"] = "queued"
            self.note(
                "request.accepted",
                request=oracle_key(rid),
                id=f"oracle:{rid}",
                prompt=list(request.prompt),
                max_new_tokens=request.max_new_tokens,
            )

    def _answer_or_deliver(
        self, info: dict[str, Any], rid: int, r: Any, claim_id: int, now: int
    ) -> dict[str, Any] | None:
        c = self.game.claim(claim_id)
        if r.status == RequestStatus.ANSWERED and r.claim_id == claim_id:
            if c.status == ClaimStatus.FINALIZED:
                tokens = self.store["claims"][str(claim_id)]["tokens"]
                return self._send(
                    rid,
                    claim_id,
                    "deliver",
                    lambda: self.oracle.deliver(rid, tokens, sender=self.account),
                )
            if c.status == ClaimStatus.OVERTURNED:
                self._close(info, rid, "overturned")  # our claim lost: nothing more to gain
            return None
        if c.status == ClaimStatus.OVERTURNED:
            self._close(info, rid, "overturned")
            return None
        if now > r.deadline:
            self._close(info, rid, "late")
            return None
        if r.status == RequestStatus.ANSWERED and not self._standing_overturned(r):
            standing = self.game.claim(r.claim_id)
            ours = self.oracle.committed_at(self.oracle.commitment(self.account, rid, c.trace_root))
            if standing.status != ClaimStatus.PENDING or not 0 < ours < r.commit_block:
                return None  # the standing answer keeps it (protocol section 9, priority)
        return self._send(
            rid, claim_id, "answer", lambda: self.oracle.answer(rid, claim_id, sender=self.account)
        )

    def _send(self, rid: int, claim_id: int, fn: str, send: Any) -> dict[str, Any] | None:
        try:
            with self.game.labelled(f"oracle:{rid}", {"request": rid, "claim": claim_id}):
                out = send()
        except GameError as exc:
            if exc.name in RETRY_LATER:
                return None
            raise
        receipt = out[1] if fn == "deliver" else out
        fields: dict[str, Any] = {"request": oracle_key(rid), "claim": claim_id}
        if fn == "deliver":
            fields["callback"] = out[0].name.lower()
        self.note(f"oracle.{fn}ed" if fn == "answer" else "oracle.delivered", **fields)
        return {
            "fn": fn,
            **fields,
            "gas": int(receipt["gasUsed"]),
            "id": f"oracle:{rid}",
            "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
        }

    def _close(self, info: dict[str, Any], rid: int, why: str) -> None:
        info["state"] = "closed"
        info["outcome"] = why
        self.note("oracle.closed", request=rid, outcome=why)
