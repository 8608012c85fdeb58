"""The prover client: serves inference requests as claims and defends them.

    prover = Prover(game, model, "state/prover", account)
    prover.enqueue("req-1", Request(prompt, 8))     # durable: served once, even across crashes
    while ...:
        prover.poll()      # disputes first (least clock first), then requests, then finality

`poll()` decides everything from chain state and the prover's database. Every claim it posts
goes through an intent that names the request it serves; on a restart the claims it posted are
adopted from `ClaimPosted` events (claimant = this account; the request is rebuilt from the
event, the request key from the intent whose nonce the transaction used), so a kill at any point
neither loses a claim (an orphan never defended) nor posts one twice. The disputes against its
claims are found from `DisputeOpened` events. Generations run on the model worker: a request
never holds up a dispute move. The prover keeps roots, not tensors: a generation is re-run from
its request after a restart (the executor is deterministic) and any record's tensor recomputed
from the caches with `Executor.recompute`.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

from refute.bisection.player import (
    CLAIM,
    Player,
    bits_to_f32,
    request_from_json,
    request_to_json,
)
from refute.contracts.game import ClaimStatus, GameError, decode_tokens
from refute.engine.executor import Generation, Request
from refute.errors import RefuteError

REQUESTS_AFTER = 1e12
"""Priority of new requests on the model worker: after every deadline-bound job (times)."""


class Prover(Player):
    """Claims generations of `model` (run by `executor`, possibly a tampered one) and plays the
    claim side of every dispute against them."""

    SIDE = CLAIM
    ROLE = "prover"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store.data.setdefault("requests", {})
        self.progress: dict[str, int] = {}  # request key -> positions done (while generating)
        self._generated: dict[str, Generation] = {}  # finished, not yet posted
        self._order = itertools.count()

    # --- requests ----------------------------------------------------------------------------

    def enqueue(self, key: str, request: Request, **extra: Any) -> bool:
        """Accept a request under `key` (its id, or where it was read); False if that key was
        accepted before (a restarted prover re-reading its inputs serves nothing twice)."""
        requests = self.store["requests"]
        if key in requests:
            return False
        requests[key] = {"request": request_to_json(request), "status": "queued",
                         "time": time.time()} | extra  # fmt: skip
        self.store.save()
        return True

    def queued(self) -> list[str]:
        return [k for k, v in self.store["requests"].items() if v["status"] == "queued"]

    def claim(
        self,
        request: Request,
        *,
        on_position: Callable[[int], None] | None = None,
        output_tokens: list[int] | None = None,
        key: str | None = None,
    ) -> int:
        """Run `request` now, post the claim with the claim bond and remember it on disk.
        `output_tokens` overrides the tokens claimed (a prover lying about its tokens only)."""
        (gen,) = self.executor.generate([request], on_position=on_position)
        return self.post(request, gen, output_tokens=output_tokens, key=key)

    def post(
        self,
        request: Request,
        gen: Generation,
        *,
        output_tokens: list[int] | None = None,
        key: str | None = None,
    ) -> int:
        """Post the claim of a finished generation, through an intent naming its request."""
        key = key if key is not None else f"local:{uuid.uuid4().hex}"
        tokens = list(output_tokens if output_tokens is not None else gen.output_tokens)
        block = self.game.w3.eth.block_number
        with self.game.labelled(f"request:{key}", {"key": key, "tokens": tokens}):
            claim_id = self.game.post_claim(
                self.model, gen, sender=self.account, output_tokens=output_tokens
            )
        self._record(claim_id, request, block, tokens, gen.trace.root(), key, self.game.last_tx)
        self._side(claim_id, gen)
        return claim_id

    def _record(
        self, claim_id: int, request: Request, block: int, tokens: list[int], root: bytes,
        key: str | None, tx: str | None = None,
    ) -> None:  # fmt: skip
        self.store["claims"][str(claim_id)] = {
            "request": request_to_json(request), "block": block, "status": "pending",
            "tokens": tokens, "trace_root": root.hex(), "key": key, "tx": tx,
        }  # fmt: skip
        if key is not None and key in self.store["requests"]:
            self.store["requests"][key].update(status="served", claim=claim_id)
        self.store.save()

    def _serve(self) -> list[dict[str, Any]]:
        """Post the generations that finished; queue the requests not yet running."""
        posted = []
        in_flight = self.game.in_flight()
        for key in self.queued():
            if f"request:{key}" in in_flight:
                continue  # posted, outcome unknown: reconciliation will tell
            info = self.store["requests"][key]
            job = ("generate", key)
            if self.worker.ready(job):
                try:
                    self._generated[key] = self.worker.take(job)
                except RefuteError as exc:  # the request cannot be run: say so, go on
                    info.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
                    self.store.save()
                    self.note("claim.failed", request=key, error=type(exc).__name__,
                              detail=str(exc), id=info.get("id"))  # fmt: skip
                    continue
                finally:
                    self.progress.pop(key, None)
            if key in self._generated:
                request = request_from_json(info["request"])
                claim_id = self.post(request, self._generated[key], key=key,
                                     output_tokens=info.get("output_tokens"))  # fmt: skip
                del self._generated[key]
                posted.append({"fn": "postClaim", "claim": claim_id, "request": key,
                               "id": info.get("id"), "tx": self.game.last_tx,
                               "gas": self.game.gas_used[-1][1]})  # fmt: skip
            elif not self.worker.busy(job):
                request = request_from_json(info["request"])
                self.worker.submit(job, REQUESTS_AFTER + next(self._order), self._job(request),
                                   executor=self.executor,
                                   on_position=self._advance(key))  # fmt: skip
        return posted

    def _advance(self, key: str) -> Callable[[int], None]:
        """The progress report of a local generation (a Ray actor's reports none)."""

        def advance(n: int) -> None:
            self.progress[key] = self.progress.get(key, 0) + n

        return advance

    # --- reconciliation ----------------------------------------------------------------------

    def _from_events(self, head: int) -> None:
        self._adopt_claims()
        claims = self.store["claims"]
        start = self.follower.cursor("DisputeOpened", self.first_block())
        if start <= head and claims:
            for e in self.game.events("DisputeOpened", start):
                if e["blockNumber"] > head:
                    break
                did, cid = str(e["disputeId"]), str(e["claimId"])
                if cid in claims and did not in self.disputes:
                    self.disputes[did] = {"claim": int(cid), "side": "claim",
                                          "block": int(e["blockNumber"]), "winner": None,
                                          "challenger": e["challenger"]}  # fmt: skip
        self.follower.advance("DisputeOpened", head)

    def _adopt_claims(self) -> None:
        """Every ClaimPosted of this account, written down if a crash kept it from being;
        postClaim intents closed with the claim they made (matched by the transaction's nonce)."""
        start = self.follower.cursor("ClaimPosted", self.first_block())
        latest = self.follower.last_block
        event = self.game.game.events.ClaimPosted
        logs = (
            []
            if latest is None or start > latest
            else event.get_logs(
                from_block=start, to_block=latest, argument_filters={"claimant": self.account}
            )
        )
        posting = {i.nonce: i for i in self.store.intents(("open", "sent", "done"), "postClaim")}
        claims = self.store["claims"]
        for log in logs:
            cid = str(log["args"]["claimId"])
            if cid in claims:
                continue
            nonce = int(self.game.w3.eth.get_transaction(log["transactionHash"])["nonce"])
            intent = posting.get(nonce)
            key = intent.args.get("key") if intent is not None else None
            a = log["args"]
            tokens = decode_tokens(a["outputTokens"])
            c = self.game.claim(int(cid))
            request = Request(tuple(decode_tokens(a["prompt"])), len(tokens),
                              bits_to_f32(a["temperature"]), int(a["seed"]))  # fmt: skip
            tx = "0x" + bytes(log["transactionHash"]).hex()
            self._record(int(cid), request, int(log["blockNumber"]), tokens, c.trace_root, key, tx)
            if intent is not None:
                self.store.update_intent(intent.id, state="done", result={"claim": int(cid)})
            self.note("claim.adopted", claim=int(cid), request=key)
        if latest is not None and latest >= start:
            self.follower.advance("ClaimPosted", latest)
        # a postClaim whose nonce was used, but by no claim of ours: it did not happen
        served = {v.get("key") for v in claims.values()}
        for intent in self.store.intents(("done",), "postClaim"):
            if intent.result == "nonce used" and intent.args.get("key") not in served:
                self.store.update_intent(intent.id, state="dropped",
                                         result="nonce used by another transaction")  # fmt: skip

    def _undo_after(self, fork: int) -> None:
        """Claims and disputes read from blocks a reorg replaced are checked against the chain
        again; a claim that is gone puts its request back in the queue (it is posted again)."""
        for cid, info in list(self.store["claims"].items()):
            if info["block"] + 1 < fork or info["status"] != "pending":
                continue
            try:
                c = self.game.claim(int(cid))
                gone = c.claimant != self.account or c.trace_root.hex() != info["trace_root"]
            except Exception:  # a claim id past claimCount reverts on some nodes
                gone = True
            if gone:
                del self.store["claims"][cid]
                self._sides.pop(int(cid), None)
                key = info.get("key")
                if key in self.store["requests"]:
                    self.store["requests"][key]["status"] = "queued"
                self.note("claim.undone", claim=int(cid), request=key)
        for did, info in list(self.disputes.items()):
            if info["block"] >= fork:
                d = self.game.dispute(int(did))
                if str(d.claim_id) not in self.store["claims"] or d.challenger != info.get(
                    "challenger", d.challenger
                ):
                    del self.disputes[did]
        self.store.save()

    # --- the loop ----------------------------------------------------------------------------

    def generation(self, claim_id: int) -> Generation:
        return self.side_for(claim_id).gen

    def _rebuilt(self, claim_id: int, gen: Generation) -> Generation:
        """The generation of claim `claim_id`, re-run from its stored request: it must give the
        claim's trace root."""
        if gen.trace.root() != self.game.claim(claim_id).trace_root:
            raise RefuteError(f"re-running claim {claim_id} does not give its trace root")
        return gen

    def poll(self) -> list[dict[str, Any]]:
        """Reconcile, make the moves due in every dispute against this prover's claims, post
        the generations that finished, and finalise claims whose window has passed with no
        dispute open. Returns the transactions made."""
        self.reconcile()
        made = self.play_all()
        made += self._serve()
        self._finalize()
        return made

    def _finalize(self) -> None:
        g = self.game
        in_flight = g.in_flight()
        for key, info in self.store["claims"].items():
            if info["status"] != "pending" or f"claim:{key}" in in_flight:
                continue
            c = g.claim(int(key))
            if (
                c.status == ClaimStatus.PENDING
                and c.open_disputes == 0
                and self.now() >= c.deadline
            ):
                try:
                    g.finalize(int(key), sender=self.account)
                except GameError as exc:
                    if exc.name not in ("WindowOpen", "ClaimNotPending", "DisputesOpen"):
                        raise
                c = g.claim(int(key))
            if c.status != ClaimStatus.PENDING:
                info["status"] = c.status.name.lower()
                self.store.save()

    def status(self, claim_id: int) -> str:
        """pending, finalized or overturned (as last seen by `poll`)."""
        return self.store["claims"][str(claim_id)]["status"]
