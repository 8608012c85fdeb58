"""The challenger client: the watcher's game side.

    watcher = Challenger(game, model, "state/watcher", account)
    while ...:
        watcher.poll()      # new ClaimPosted events -> re-execute -> dispute or token proof;
                            # then one move in each dispute it plays

`poll()` reads `ClaimPosted` events from a block cursor kept on disk, re-executes each claim of
the model it holds (prompt, temperature, seed and token count all come from the event), compares
the trace root, and opens a dispute with its own root on a mismatch, or proves the token mismatch
directly when only the claimed tokens are wrong. It then plays the challenge side of its
disputes (levels 1-3 and the step) from chain state. Its directory keeps the cursor, each claim's
request and verdict, the disputes it plays and the moves it sent; after a restart it re-executes
only the claims it is still disputing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from refute.bisection.player import (
    CHALLENGE,
    Player,
    Side,
    bits_to_f32,
    request_from_json,
    request_to_json,
)
from refute.contracts.game import ClaimStatus, GameError
from refute.contracts.onestep import ListTree
from refute.engine import merkle
from refute.engine.executor import Request
from refute.errors import RefuteError


class Challenger(Player):
    """Re-executes every claim about `model` and challenges the wrong ones."""

    SIDE = CHALLENGE

    def side_for(self, claim_id: int) -> Side:
        """Its re-execution of claim `claim_id` (re-run from the stored request after a restart)."""
        if claim_id not in self._sides:
            request = request_from_json(self.store["claims"][str(claim_id)]["request"])
            self._side(claim_id, self._generate(request))
        return self._sides[claim_id]

    def verdict(self, claim_id: int) -> str | None:
        """What it concluded about a claim: match, dispute, token-mismatch, other-model, ..."""
        info = self.store["claims"].get(str(claim_id))
        return None if info is None else info["verdict"]

    def poll(self) -> list[dict[str, Any]]:
        """Check new claims, then make the moves due in every dispute it plays. Returns the
        transactions sent (dispute openings, token proofs and moves)."""
        g = self.game
        latest = g.w3.eth.block_number
        made = []
        posted = (
            g.events("ClaimPosted", self.store["cursor"]) if self.store["cursor"] <= latest else []
        )
        for e in posted:
            if str(e["claimId"]) not in self.store["claims"]:
                entry = self.check(e)
                if entry is not None:
                    made.append(entry)
        self.store["cursor"] = latest + 1
        self.store.save()
        return made + self.play_all()

    def check(self, e: dict[str, Any]) -> dict[str, Any] | None:
        """Re-execute one posted claim and act on the outcome."""
        g = self.game
        cid = int(e["claimId"])
        request = Request(tuple(int(x) for x in e["prompt"]), len(e["outputTokens"]),
                          bits_to_f32(e["temperature"]), int(e["seed"]))  # fmt: skip
        info: dict[str, Any] = {"request": request_to_json(request), "block": int(e["blockNumber"]),
                                "verdict": None}  # fmt: skip
        self.store["claims"][str(cid)] = info
        c = g.claim(cid)
        if bytes(e["modelRoot"]) != self.model.root:
            info["verdict"] = "other-model"
        elif c.status != ClaimStatus.PENDING or self.now() >= c.deadline:
            info["verdict"] = "closed"
        else:
            try:
                gen = self._generate(request)
            except RefuteError as exc:
                info["verdict"] = f"unexecutable: {exc}"
                gen = None
            if gen is not None:
                info["verdict"] = self._decide(cid, e, gen)
        self.store.save()
        if info["verdict"] == "dispute":
            block = g.w3.eth.block_number
            did = g.open_dispute(cid, self._sides[cid].gen.trace.root(), sender=self.account)
            self.disputes[str(did)] = {"claim": cid, "side": "challenge", "block": block,
                                       "winner": None}  # fmt: skip
            self.store.save()
            return {"fn": "openDispute", "claim": cid, "dispute": did,
                    "gas": g.gas_used[-1][1]}  # fmt: skip
        if info["verdict"] == "token-mismatch":
            return self._prove_tokens(cid, e)
        return None

    def _decide(self, cid: int, e: dict[str, Any], gen: Any) -> str:
        if gen.trace.root() != bytes(e["traceRoot"]):
            self._side(cid, gen)
            return "dispute"
        if list(gen.output_tokens) != [int(x) for x in e["outputTokens"]]:
            self._side(cid, gen)
            return "token-mismatch"
        return "match"

    def _prove_tokens(self, cid: int, e: dict[str, Any]) -> dict[str, Any]:
        """The direct proof of a claimed token that is not the trace's sample output."""
        gen = self._sides[cid].gen
        claimed = [int(x) for x in e["outputTokens"]]
        i = next(
            k for k, (a, b) in enumerate(zip(claimed, gen.output_tokens, strict=False)) if a != b
        )
        p = self.model.program
        t = len(gen.request.prompt) - 1 + i
        tree = ListTree(gen.trace.leaves())
        ep = merkle.prove_element(np.array([gen.tokens[t + 1]], dtype=np.uint32), 0)
        try:
            receipt = self.game.prove_token_mismatch(
                cid, claimed, i, gen.trace.roots[t][p.token_node],
                tree.proof(gen.trace.record_index(t, p.token_node)), ep.chunk,
                list(ep.siblings), sender=self.account,
            )  # fmt: skip
        except GameError as exc:
            if exc.name != "ClaimNotPending":
                raise
            return {"fn": "proveTokenMismatch", "claim": cid, "gas": 0, "reverted": exc.name}
        entry = {"fn": "proveTokenMismatch", "claim": cid, "output": i,
                 "gas": int(receipt["gasUsed"]), "block": int(receipt["blockNumber"]),
                 "mover": self.account}  # fmt: skip
        self.moves.append(entry)
        self.store.save()
        return entry
