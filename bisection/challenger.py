"""The challenger client: the watcher's game side.

    watcher = Challenger(game, model, "state/watcher", account)
    while ...:
        watcher.poll()      # disputes first (least clock first); new ClaimPosted events ->
                            # re-execution queued in deadline order -> dispute or token proof

`poll()` reads `ClaimPosted` events from a block cursor kept in its database, and queues a
re-execution of each claim of the model it holds (prompt, temperature, seed and token count all
come from the event) on the model worker, most urgent window first. When one finishes it compares
the trace root and opens a dispute with its own root on a mismatch, or proves the token mismatch
directly when only the claimed tokens are wrong. Every dispute it plays (rebuilt from
`DisputeOpened` events where it is the challenger, so a crash after `openDispute` was mined loses
nothing) is played before any new claim is looked at. A verdict "dispute" with no dispute of its
own open is acted on again at every poll while the window lasts: an RPC error, a receipt timeout,
a crash or a reorg between the verdict and the dispute only delays it. A claim it cannot
re-execute before its window closes is reported (`claim.at_risk`), never skipped silently.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from refute.bisection.player import (
    CHALLENGE,
    Player,
    bits_to_f32,
    request_from_json,
    request_to_json,
)
from refute.bisection.workers import Reexecution, ReexecutionJob
from refute.contracts.game import ClaimStatus, GameError
from refute.contracts.onestep import ListTree
from refute.engine import merkle
from refute.engine.executor import Generation, Request
from refute.errors import RefuteError

SETTLED = ("match", "other-model", "closed")
TOKEN_PROOF = 2**256 - 1
"""The dispute id of a token proof's RewardShare event (the contract's NONE)."""


class Challenger(Player):
    """Re-executes every claim about `model` and challenges the wrong ones."""

    SIDE = CHALLENGE
    ROLE = "watcher"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.speed: float | None = None  # positions per second of its re-executions (measured)
        self._at_risk: set[int] = set()

    def verdict(self, claim_id: int) -> str | None:
        """What it concluded about a claim: match, dispute, token-mismatch, other-model, ...
        (None while the re-execution is queued)."""
        info = self.store["claims"].get(str(claim_id))
        return None if info is None else info["verdict"]

    # --- the poll ------------------------------------------------------------------------------

    def poll(self) -> list[dict[str, Any]]:
        """Reconcile, make the moves due in every dispute it plays, then look at new claims and
        act on finished re-executions. Returns the transactions sent."""
        head = self.reconcile()
        made = self.play_all()
        self._read_claims(head)
        made += self._act()
        return made

    def _read_claims(self, head: int) -> None:
        start = self.store["cursor"]
        if start > head:
            return
        for e in self.game.events("ClaimPosted", start):
            if e["blockNumber"] > head:
                break
            if str(e["claimId"]) not in self.store["claims"]:
                self.check(e)
        self.store["cursor"] = head + 1
        self.follower.advance("ClaimPosted", head)
        self.store.save()

    def check(self, e: dict[str, Any]) -> None:
        """Take one posted claim: settle at once what needs no model (another model, a closed
        claim), queue the re-execution of the rest (most urgent deadline first)."""
        cid = int(e["claimId"])
        request = Request(tuple(int(x) for x in e["prompt"]), len(e["outputTokens"]),
                          bits_to_f32(e["temperature"]), int(e["seed"]))  # fmt: skip
        c = self.game.claim(cid)
        info: dict[str, Any] = {"request": request_to_json(request), "block": int(e["blockNumber"]),
                                "verdict": None, "deadline": int(c.deadline),
                                "trace_root": bytes(e["traceRoot"]).hex(),
                                "tokens": [int(x) for x in e["outputTokens"]],
                                "seen": time.time()}  # fmt: skip
        self.store["claims"][str(cid)] = info
        if bytes(e["modelRoot"]) != self.model.root:
            info["verdict"] = "other-model"
        elif c.status != ClaimStatus.PENDING or self.now() >= c.deadline:
            info["verdict"] = "closed"
        else:
            job = self._reexecution_job(request)
            self.worker.submit(("reexecute", cid), float(c.deadline), job, executor=self.executor)
        self.store.save()

    def _act(self) -> list[dict[str, Any]]:
        """Verdicts of the re-executions that finished; then the dispute or token proof each
        wrong claim still needs (again after a fault, while the window lasts)."""
        made = []
        for cid_s, info in self.store["claims"].items():
            cid = int(cid_s)
            if info["verdict"] is None:
                self._take_reexecution(cid, info)
        self._note_at_risk()
        in_flight = self.game.in_flight()
        for cid_s, info in list(self.store["claims"].items()):
            cid = int(cid_s)
            if info["verdict"] not in ("dispute", "token-mismatch") or info.get("acted"):
                continue
            if f"claim:{cid}" in in_flight:
                continue
            c = self.game.claim(cid)
            if c.status != ClaimStatus.PENDING or self.now() >= c.deadline:
                info["acted"] = "closed"
                self.store.save()
                continue
            if info["verdict"] == "dispute":
                if any(d["claim"] == cid for d in self.disputes.values()):
                    info["acted"] = "disputed"
                    self.store.save()
                    continue
                entry = self._open(cid, info)
            else:
                side = self.ready_side(cid, float(c.deadline))
                if side is None:
                    continue
                entry = self._prove_tokens(cid, {"outputTokens": info["tokens"]})
                info["acted"] = "proved"
                self.store.save()
            if entry is not None:
                made.append(entry)
        return made

    def _take_reexecution(self, cid: int, info: dict[str, Any]) -> None:
        key = ("reexecute", cid)
        if not self.worker.ready(key):
            if not self.worker.busy(key):  # after a restart: queue it again
                request = request_from_json(info["request"])
                job = self._reexecution_job(request)
                self.worker.submit(key, float(info.get("deadline", 0)), job, executor=self.executor)
            return
        try:
            result = self.worker.take(key)
        except RefuteError as exc:
            info["verdict"] = f"unexecutable: {exc}"
            self.store.save()
            return
        full = result if isinstance(result, Generation) else None  # from the local pool
        summary = Reexecution.of(full) if full is not None else result
        seconds = self.worker.seconds.get(key)
        if seconds:
            rate = summary.positions / seconds
            self.speed = rate if self.speed is None else 0.7 * self.speed + 0.3 * rate
        info["verdict"] = self._decide(cid, info, summary, full)
        info["reexecuted"] = time.time()
        self.store.save()

    def _reexecution_job(self, request: Request) -> Any:
        """The re-execution of a claim's request: from a remote worker, its `Reexecution`
        only (a disputed claim's Side is then recomputed by a job of its own)."""
        job = self._job(request)
        return ReexecutionJob(job) if self.worker.REMOTE else job

    def _decide(
        self, cid: int, info: dict[str, Any], summary: Reexecution, full: Generation | None
    ) -> str:
        info["own_root"] = summary.trace_root.hex()
        if info["own_root"] != info["trace_root"]:
            verdict = "dispute"
        elif summary.output_tokens != info["tokens"]:
            verdict = "token-mismatch"
        else:
            return "match"
        if full is not None:  # its caches are here: the Side is ready
            self._side(cid, full)
        return verdict

    def _open(self, cid: int, info: dict[str, Any]) -> dict[str, Any] | None:
        """Open the dispute of a wrong claim with its own trace root."""
        block = self.game.w3.eth.block_number
        try:
            did = self.game.open_dispute(cid, bytes.fromhex(info["own_root"]),
                                         sender=self.account)  # fmt: skip
        except GameError as exc:
            if exc.name in ("ClaimNotPending", "WindowClosed"):
                info["acted"] = "closed"
                self.store.save()
                return None
            raise
        self.disputes[str(did)] = {"claim": cid, "side": "challenge", "block": block,
                                   "winner": None}  # fmt: skip
        info["acted"] = "disputed"
        self.store.save()
        return {"fn": "openDispute", "claim": cid, "dispute": did,
                "gas": self.game.gas_used[-1][1], "tx": self.game.last_tx}  # fmt: skip

    # --- liveness --------------------------------------------------------------------------------

    def backlog(self) -> list[tuple[int, int, int]]:
        """(claim, deadline, positions) of the claims waiting for re-execution, by deadline."""
        out = [(int(k), int(v.get("deadline", 0)), len(v["request"]["prompt"])
                + v["request"]["max_new_tokens"] - 1)
               for k, v in self.store["claims"].items() if v["verdict"] is None]  # fmt: skip
        return sorted(out, key=lambda x: x[1])

    def at_risk(self) -> list[int]:
        """Claims it will not have re-executed before their window closes, at its measured
        speed, if the queue is worked in deadline order."""
        if not self.speed:
            return []
        now, risky = self.now(), []
        for cid, deadline, positions in self.backlog():
            now += positions / self.speed
            if now >= deadline:
                risky.append(cid)
        return risky

    def _note_at_risk(self) -> None:
        for cid in self.at_risk():
            if cid not in self._at_risk:
                self._at_risk.add(cid)
                self.note("claim.at_risk", claim=cid, speed=round(self.speed or 0, 2),
                          queue=len(self.backlog()))  # fmt: skip

    # --- reconciliation ----------------------------------------------------------------------

    def _from_events(self, head: int) -> None:
        """Its own disputes, from DisputeOpened events where it is the challenger."""
        start = self.follower.cursor("DisputeOpened", self.first_block())
        latest = self.follower.last_block
        if latest is None or start > latest:
            return
        event = self.game.game.events.DisputeOpened
        for log in event.get_logs(from_block=start, to_block=latest,
                                  argument_filters={"challenger": self.account}):  # fmt: skip
            did, cid = str(log["args"]["disputeId"]), int(log["args"]["claimId"])
            if did not in self.disputes:
                self.disputes[did] = {"claim": cid, "side": "challenge",
                                      "block": int(log["blockNumber"]), "winner": None}  # fmt: skip
                self.note("dispute.adopted", dispute=int(did), claim=cid)
        self.follower.advance("DisputeOpened", latest)
        self._adopt_token_proofs(latest)

    def _adopt_token_proofs(self, latest: int) -> None:
        """Its accepted token proofs, from RewardShare events (dispute id NONE) for its account:
        a crash after the proof was mined and before it was written down would otherwise leave
        its reward share uncollected (`collect` pays the proofs in `moves`)."""
        start = self.follower.cursor("RewardShare", self.first_block())
        if start > latest:
            return
        event = self.game.game.events.RewardShare
        for log in event.get_logs(from_block=start, to_block=latest,
                                  argument_filters={"account": self.account}):  # fmt: skip
            cid = int(log["args"]["claimId"])
            if log["args"]["disputeId"] != TOKEN_PROOF or any(
                m.get("fn") == "proveTokenMismatch" and m.get("claim") == cid
                and not m.get("reverted") for m in self.moves
            ):  # fmt: skip
                continue
            self.moves.append({"fn": "proveTokenMismatch", "claim": cid, "adopted": True,
                               "block": int(log["blockNumber"]),
                               "mover": self.account})  # fmt: skip
            info = self.store["claims"].get(str(cid))
            if info is not None:
                info["acted"] = "proved"
            self.note("proof.adopted", claim=cid)
        self.follower.advance("RewardShare", latest)

    def _undo_after(self, fork: int) -> None:
        """Claims read from replaced blocks are read (and re-executed) again; its disputes from
        those blocks are kept only if the chain still has them."""
        for cid, info in list(self.store["claims"].items()):
            if info["block"] >= fork:
                del self.store["claims"][cid]
                self._sides.pop(int(cid), None)
        for did, info in list(self.disputes.items()):
            if info["block"] + 1 >= fork:
                d = self.game.dispute(int(did))
                if d.challenger != self.account or d.claim_id != info["claim"]:
                    del self.disputes[did]
                    claim = self.store["claims"].get(str(info["claim"]))
                    if claim is not None:
                        claim.pop("acted", None)
                    self.note("dispute.undone", dispute=int(did), claim=info["claim"])
        self.store["cursor"] = min(self.store["cursor"], fork)
        self.store.save()

    def _prove_tokens(self, cid: int, e: dict[str, Any]) -> dict[str, Any]:
        """The direct proof of a claimed token that is not the trace's sample output: a
        commitment, then the proof in a later block (`GameClient.prove_token_mismatch`); it
        earns a share of the claim's reward pool, collected by `collect`."""
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
            # too late to count (the claim finalised, W over, or overturned before the
            # commitment's block), or already proved by this account
            if exc.name not in ("ClaimNotPending", "WindowClosed", "CommittedTooLate",
                                "AlreadyProved"):  # fmt: skip
                raise
            return {"fn": "proveTokenMismatch", "claim": cid, "gas": 0, "reverted": exc.name}
        entry = {"fn": "proveTokenMismatch", "claim": cid, "output": i,
                 "gas": int(receipt["gasUsed"]), "block": int(receipt["blockNumber"]),
                 "mover": self.account}  # fmt: skip
        self.moves.append(entry)
        self.store.save()
        return entry
