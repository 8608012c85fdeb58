"""The prover client: posts claims about its own generations and defends them.

    prover = Prover(game, model, "state/prover", account)
    claim_id = prover.claim(Request(prompt, 8))
    while ...:
        prover.poll()          # answers every dispute opened against its claims, one move each

Everything the prover does is decided by `poll()` from chain state (claims, disputes, events)
and its directory: the request of each claim (the generation is re-run from it on a restart: the
executor is deterministic, and the prover keeps roots, not tensors, recomputing any record's
tensor from the caches with `Executor.recompute`), the disputes it defends, the moves it sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from refute.bisection.player import CLAIM, Player, Side, request_from_json, request_to_json
from refute.contracts.game import ClaimStatus, GameError
from refute.engine.executor import Generation, Request
from refute.errors import RefuteError


class Prover(Player):
    """Claims generations of `model` (run by `executor`, possibly a tampered one) and plays the
    claim side of every dispute against them."""

    SIDE = CLAIM

    def claim(
        self,
        request: Request,
        *,
        on_position: Callable[[int], None] | None = None,
        output_tokens: list[int] | None = None,
    ) -> int:
        """Run `request`, post the claim with the claim bond and remember it on disk.
        `output_tokens` overrides the tokens claimed (a prover lying about its tokens only)."""
        (gen,) = self.executor.generate([request], on_position=on_position)
        block = self.game.w3.eth.block_number
        claim_id = self.game.post_claim(
            self.model, gen, sender=self.account, output_tokens=output_tokens
        )
        self.store["claims"][str(claim_id)] = {
            "request": request_to_json(request), "block": block, "status": "pending",
            "tokens": list(output_tokens if output_tokens is not None else gen.output_tokens),
        }  # fmt: skip
        self.store.save()
        self._side(claim_id, gen)
        return claim_id

    def generation(self, claim_id: int) -> Generation:
        return self.side_for(claim_id).gen

    def side_for(self, claim_id: int) -> Side:
        """The generation of claim `claim_id`, re-run from its stored request after a restart."""
        if claim_id not in self._sides:
            request = request_from_json(self.store["claims"][str(claim_id)]["request"])
            gen = self._generate(request)
            if gen.trace.root() != self.game.claim(claim_id).trace_root:
                raise RefuteError(f"re-running claim {claim_id} does not give its trace root")
            self._side(claim_id, gen)
        return self._sides[claim_id]

    def poll(self) -> list[dict[str, Any]]:
        """Find new disputes against this prover's claims, make the moves due in each, and
        finalise claims whose window has passed with no dispute open. Returns the moves made."""
        g = self.game
        for key, info in self.store["claims"].items():
            if info["status"] != "pending":
                continue
            # read only blocks not read before (a per-claim cursor, kept on disk)
            start = info.get("cursor", info["block"])
            latest = g.w3.eth.block_number
            opened = g.events("DisputeOpened", start, claimId=int(key)) if start <= latest else []
            info["cursor"] = latest + 1
            for e in opened:
                did = str(e["disputeId"])
                if did not in self.disputes:
                    self.disputes[did] = {"claim": int(key), "side": "claim",
                                          "block": int(e["blockNumber"]), "winner": None,
                                          "challenger": e["challenger"]}  # fmt: skip
                    self.store.save()
        made = self.play_all()
        for key, info in self.store["claims"].items():
            if info["status"] != "pending":
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
        return made

    def status(self, claim_id: int) -> str:
        """pending, finalized or overturned (as last seen by `poll`)."""
        return self.store["claims"][str(claim_id)]["status"]
