"""The long-running prover and watcher processes behind `refute prove` and `refute watch`.

A `Service` polls one or more clients (a `Prover`, a `Challenger`, or both on one chain) until it
is stopped. Each round: the requests that arrived are accepted into the prover's database (with
the read offset of their file, in one write), every client reconciles with the chain and makes
the moves due (disputes first, least remaining clock first), collects what it is owed, and what
changed is reported as structured log events (one JSON object per line) and on a status line.
Model work (generations, re-executions) runs on a `ModelWorker` thread, so a round never waits
for an inference: the time from a turn starting on chain to the move being sent is one polling
interval plus the node's answer plus, for a record opening, one position's recomputation.

Any exception from the node (connection refused, timeout, HTTP 5xx, a dropped answer) ends the
round, is logged and retried after a backoff that doubles up to `MAX_BACKOFF`; after
`UNREACHABLE_AFTER` seconds without an answer a `node.unreachable` event says so (at the first
failed retry past that time, or, when the backoff's next retry already finds the node back, just
before `node.reachable`: an outage that long is always reported). Only a chain
that is no longer the one the state belongs to (StoreError) ends the process.

    service = Service(game, [prover], EventLog(sys.stdout, "prover"), sources=[RequestFile(p)])
    service.run(stop=threading.Event())
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from refute.bisection.challenger import Challenger
from refute.bisection.eventlog import EventLog
from refute.bisection.player import SIDE_NAMES, Player
from refute.bisection.prover import Prover
from refute.bisection.requests import RequestError, parse_request, request_id
from refute.bisection.store import StoreError
from refute.contracts.chain import is_embedded
from refute.contracts.game import GameClient, Stage
from refute.engine.executor import Request

MAX_BACKOFF = 30.0
"""Longest wait between rounds after node errors (seconds)."""
UNREACHABLE_AFTER = 10.0
"""Seconds of node errors after which a `node.unreachable` event is logged."""


class Service:
    """Polls clients on one game until stopped, logging events and showing a status line."""

    def __init__(
        self,
        game: GameClient,
        clients: list[Player],
        log: EventLog,
        *,
        sources: list[Any] | None = None,
        defaults: Request | None = None,
        interval: float = 2.0,
        status: Callable[[str], None] = lambda _line: None,
        metrics: Any = None,
    ) -> None:
        self.game = game
        self.clients = clients
        self.log = log
        self.sources = sources or []
        self.defaults = defaults
        self.interval = interval
        self.status = status
        self.metrics = metrics
        self.rounds = 0
        self.errors = 0
        self.failing_since: float | None = None
        self.backoff = 0.0
        self._unreachable_logged = False
        self._seen = [self._snapshot(c) for c in clients]

    @property
    def prover(self) -> Prover | None:
        return next((c for c in self.clients if isinstance(c, Prover)), None)

    # --- one round ---------------------------------------------------------------------------

    def step(self) -> bool:
        """One round: new requests accepted, every client's moves, payouts. Returns whether
        anything happened (a claim, a move, a new verdict or outcome)."""
        busy = self._accept_requests()
        ok = True
        for k, client in enumerate(self.clients):
            try:
                made = client.poll()
                if self._unreachable_logged:  # it answered: say so before what it did
                    self._recovered()
                busy |= self._report(k, client, made)
                withdrawn = client.collect()
            except StoreError:
                raise
            except Exception as exc:  # the node, a revert, a dropped answer: retried
                try:  # what it did before the error (reporting reads the chain too)
                    busy |= self._report(k, client, [])
                except Exception:  # the node again: the next round reports it
                    pass
                self._failed(client, exc)
                ok = False
                continue
            if withdrawn:
                self.log("withdrawn", account=client.account, wei=withdrawn)
                busy = True
        busy |= self._worker_notes()
        if ok:
            self._recovered()
        self.rounds += 1
        self.log("round", round=self.rounds, busy=busy, errors=self.errors)
        self._observe()
        self.status(self.status_line())
        return busy

    def _worker_notes(self) -> bool:
        """What the model workers report (a Ray actor lost, its job retried), logged once."""
        workers = {id(c.worker): c.worker for c in self.clients}.values()
        notes = [n for w in workers for n in w.take_notes()]
        for event, fields in notes:
            self.log(event, **fields)
        return bool(notes)

    def _failed(self, client: Player, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        self.failing_since = self.failing_since or now
        self.backoff = min(MAX_BACKOFF, max(self.interval, 2 * self.backoff))
        kind = type(exc).__name__
        if self.metrics is not None:
            self.metrics.rpc_error(kind)
            if isinstance(exc, OSError | TimeoutError) or "Connection" in kind:
                self.metrics.node_unreachable()
        self.log("error", client=_role(client), error=kind, detail=str(exc)[:500],
                 retry_in=round(self.backoff, 2))  # fmt: skip
        down = now - self.failing_since
        if down >= UNREACHABLE_AFTER and not self._unreachable_logged:
            self._unreachable_logged = True
            self.log("node.unreachable", seconds=round(down, 1), errors=self.errors)

    def _recovered(self) -> None:
        if self.failing_since is not None:
            down = time.monotonic() - self.failing_since
            if not self._unreachable_logged and down >= UNREACHABLE_AFTER:
                # the retries straddled the threshold: the outage was long all the same
                self._unreachable_logged = True
                self.log("node.unreachable", seconds=round(down, 1), errors=self.errors)
            if self._unreachable_logged:
                self.log("node.reachable", after=round(down, 1))
        self.failing_since = None
        self._unreachable_logged = False
        self.backoff = 0.0

    def _accept_requests(self) -> bool:
        """Every new line of the request sources goes into the prover's database (or is
        rejected, naming the problem); the offset it was read to is saved with it."""
        prover = self.prover
        if prover is None or not self.sources:
            return False
        busy = False
        for source in self.sources:
            for key, line, offset in source.lines():
                busy = True
                rid = request_id(line)
                if rid is not None:
                    key = f"id:{rid}"
                if offset:
                    prover.store.data.setdefault("offsets", {})[source.path] = offset
                try:
                    request = parse_request(line, prover.model, self.defaults)
                except RequestError as exc:
                    prover.store.save()
                    self.log("request.rejected", reason=str(exc), line=str(line).strip()[:200],
                             id=rid)  # fmt: skip
                    continue
                if prover.enqueue(key, request, id=rid):
                    self.log("request.accepted", request=key, id=rid, prompt=list(request.prompt),
                             max_new_tokens=request.max_new_tokens)  # fmt: skip
                else:
                    prover.store.save()
                    self.log("request.duplicate", request=key, id=rid)
        return busy

    def submit(self, request: Request, key: str | None = None, rid: str | None = None) -> str:
        """Accept one request for the prover (the library way; the CLI reads sources)."""
        prover = self.prover
        assert prover is not None, "a Service without a Prover takes no requests"
        key = key or f"api:{time.time_ns()}"
        if prover.enqueue(key, request, id=rid):
            self.log("request.accepted", request=key, id=rid, prompt=list(request.prompt),
                     max_new_tokens=request.max_new_tokens)  # fmt: skip
        return key

    # --- what changed -------------------------------------------------------------------------

    def _report(self, k: int, client: Player, made: list[dict[str, Any]]) -> bool:
        for move in made:
            self._log_move(client, move)
        for event, fields in client.notes:
            self.log(event, client=_role(client), **fields)
        busy = bool(made) or bool(client.notes)
        client.notes.clear()
        return self._log_changes(k, client) or busy

    @staticmethod
    def _snapshot(client: Player) -> dict[str, dict[str, Any]]:
        claims = client.store["claims"]
        key = "status" if isinstance(client, Prover) else "verdict"
        return {
            "claims": {k: v.get(key) for k, v in claims.items()},
            "disputes": {k: v.get("winner") for k, v in client.disputes.items()},
        }

    def _log_changes(self, k: int, client: Player) -> bool:
        before, now = self._seen[k], self._snapshot(client)
        self._seen[k] = now
        changed = False
        for cid, value in now["claims"].items():
            if before["claims"].get(cid) == value:
                continue
            changed = True
            info = client.store["claims"][cid]
            if isinstance(client, Prover):
                if cid not in before["claims"]:  # new, whatever it became within the round
                    self._log_posted(client, int(cid), info)
                if value != "pending":
                    self.log(f"claim.{value}", claim=int(cid), request=info.get("key"),
                             id=_rid(client, info))  # fmt: skip
            elif value is not None:
                self.log("claim.checked", claim=int(cid), verdict=value,
                         prompt=info["request"]["prompt"])  # fmt: skip
        for did, winner in now["disputes"].items():
            if did not in before["disputes"]:
                info = client.disputes[did]
                self.log("dispute.joined", dispute=int(did), claim=info["claim"],
                         side=info["side"])  # fmt: skip
                changed = True
            if winner is not None and before["disputes"].get(did) is None:
                info = client.disputes[did]
                self.log(
                    "dispute.resolved", dispute=int(did), claim=info["claim"], winner=winner,
                    won=winner == info["side"], levels=info.get("levels"),
                    disputed=info.get("end"),
                )  # fmt: skip
                changed = True
        if isinstance(client, Challenger):
            changed |= self._log_outcomes(client)
        return changed

    def _log_posted(self, prover: Prover, cid: int, info: dict[str, Any]) -> None:
        tokenizer = prover.model.tokenizer
        c = self.game.claim(cid)
        self.log(
            "claim.posted", claim=cid, request=info.get("key"), id=_rid(prover, info),
            tokens=info["tokens"],
            text=tokenizer.decode(info["tokens"]) if tokenizer is not None else None,
            trace_root=c.trace_root, records=c.num_records, deadline=c.deadline, tx=info.get("tx"),
        )  # fmt: skip

    def _log_outcomes(self, client: Challenger) -> bool:
        """A watcher also reports how the claims it disputed ended (finalised or overturned)."""
        changed = False
        for cid, info in client.store["claims"].items():
            if info.get("verdict") not in ("dispute", "token-mismatch") or info.get("outcome"):
                continue
            status = self.game.claim(int(cid)).status
            if status.name != "PENDING":
                info["outcome"] = status.name.lower()
                client.store.save()
                self.log(f"claim.{info['outcome']}", claim=int(cid))
                changed = True
        return changed

    def _log_move(self, client: Player, move: dict[str, Any]) -> None:
        keys = ("dispute", "claim", "fn", "side", "stage", "height", "index", "gas", "tx",
                "output", "values", "record", "step", "reverted", "request", "id")  # fmt: skip
        fields = {k: move[k] for k in keys if k in move}
        if move.get("level") is not None:
            fields["game_level"] = move["level"]
        if self.metrics is not None and "gas" in move:
            self.metrics.tx(move["fn"], int(move["gas"]))
        self.log("tx", client=_role(client), **fields)

    # --- status and metrics -------------------------------------------------------------------

    def _observe(self) -> None:
        if self.metrics is None:
            return
        try:
            block = self.game.w3.eth.get_block("latest")
        except Exception:  # the node: already counted as an error
            return
        m = self.metrics
        m.observe_block(int(block["number"]), int(block["timestamp"]))
        m.heartbeat()
        for client in self.clients:
            role = _role(client)
            if isinstance(client, Prover):
                pending = sum(1 for c in client.store["claims"].values()
                              if c["status"] == "pending")  # fmt: skip
                m.set_claims_pending(pending, role)
                m.set_queue(len(client.queued()), _lag(client.store["requests"].values(),
                                                       "time", "queued"))  # fmt: skip
            else:
                backlog = [c for c in client.store["claims"].values() if c["verdict"] is None]
                m.set_claims_pending(len(backlog), role)
                m.set_queue(len(backlog), _lag(backlog, "seen", None))
                m.set_at_risk(len(client.at_risk()))
            try:
                m.set_disputes(len(client.active()), client.least_clock())
            except Exception:  # the node
                pass

    def status_line(self) -> str:
        """One line: chain head, claims by state, active disputes with whose clock runs."""
        try:
            block = self.game.w3.eth.get_block("pending")
        except Exception:
            return f"round {self.rounds}: chain unreachable ({self.errors} errors)"
        parts = [f"block {block['number'] - 1}"]
        for client in self.clients:
            try:
                parts.append(self._client_status(client, int(block["timestamp"])))
            except Exception:
                parts.append(f"{_role(client)}: chain unreachable")
        if self.errors:
            parts.append(f"{self.errors} errors")
        return " | ".join(parts)

    def _client_status(self, client: Player, now: int) -> str:
        role = _role(client)
        claims = client.store["claims"].values()
        if isinstance(client, Prover):
            counts: dict[str, int] = {}
            for info in claims:
                counts[info["status"]] = counts.get(info["status"], 0) + 1
            head = f"{role}: claims " + (
                ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
            )
            for key, done in client.progress.items():
                total = client.store["requests"][key]["request"]
                positions = len(total["prompt"]) + total["max_new_tokens"] - 1
                head += f"; running {key}: position {done} of {positions}"
            if client.queued():
                head += f"; {len(client.queued())} requests queued"
        else:
            disputed = sum(1 for c in claims if c.get("verdict") == "dispute")
            waiting = sum(1 for c in claims if c.get("verdict") is None)
            head = f"{role}: {len(client.store['claims'])} claims seen, {disputed} disputed"
            if waiting:
                head += f", {waiting} queued for re-execution"
            risky = client.at_risk()
            if risky:
                head += f", {len(risky)} AT RISK"
        active = []
        for did in client.active():
            d = self.game.dispute(did)
            if d.stage == Stage.RESOLVED:
                continue
            mine = SIDE_NAMES[client.SIDE]
            turn = "our" if d.to_move == client.SIDE else "their"
            left = max(0, d.turn_start + d.clock[d.to_move] - now)
            active.append(f"#{did} {d.stage.name.lower()} ({mine} side, {turn} clock {left}s)")
        gas = sum(m.get("gas", 0) for m in client.moves)
        tail = f"disputes: {', '.join(active) if active else 'none active'}; " \
            f"{len(client.moves)} tx, {gas:,} gas"  # fmt: skip
        return f"{head}; {tail}"

    # --- the loop -----------------------------------------------------------------------------

    def idle(self) -> bool:
        """Nothing left to do: no queued request, no active dispute, no pending own claim, no
        claim waiting for re-execution, no transaction in flight, no credit left to withdraw."""
        for client in self.clients:
            if client.active() or client.game.in_flight():
                return False
            if isinstance(client, Prover) and (client.queued() or any(
                c["status"] == "pending" for c in client.store["claims"].values()
            )):  # fmt: skip
                return False
            if isinstance(client, Challenger) and any(
                c["verdict"] is None
                or (c["verdict"] in ("dispute", "token-mismatch") and not c.get("acted"))
                for c in client.store["claims"].values()
            ):
                return False  # a wrong claim not yet disputed (e.g. the node refused it)
            if any(d.get("side") == "challenge" == d.get("winner") and not d.get("rewarded")
                   for d in client.disputes.values()):  # fmt: skip
                return False  # its share of the claim bond is paid once the claim settles
            if any(m.get("fn") == "proveTokenMismatch" and not m.get("reverted")
                   and not m.get("rewarded") for m in client.moves):  # fmt: skip
                return False  # so is the share a token proof earned
        try:  # credit left by a round that failed between crediting and withdrawing
            return not any(client.game.credit(client.account) for client in self.clients)
        except Exception:  # the node: not known to be idle
            return False

    def _tick(self) -> None:
        """An embedded chain mines only on transactions, and its next block's timestamp is fixed
        when the previous one is mined: mine an empty block whenever the wall clock has passed
        it, so the chain's clock follows the wall clock as a live chain's does."""
        w3 = self.game.w3
        if is_embedded(w3) and time.time() >= w3.eth.get_block("pending")["timestamp"] + 1:
            w3.provider.ethereum_tester.mine_blocks(1)

    def resume(self) -> None:
        """Bind every client to the chain (refusing another or a reset one) and log what each
        picks up: claims, disputes and transactions whose outcome it still has to learn."""
        for client in self.clients:
            picked = client.resume()
            self.log("resumed", client=_role(client), **picked)
        for k, client in enumerate(self.clients):
            self._seen[k] = self._snapshot(client)

    def run(
        self,
        stop: threading.Event,
        *,
        max_seconds: float | None = None,
        until_idle: bool = False,
    ) -> None:
        """Poll until `stop` is set (SIGINT / SIGTERM set it in the CLI), `max_seconds` have
        passed, or, with `until_idle`, nothing is left to do."""
        start = time.monotonic()
        roles = [_role(c) for c in self.clients]
        accounts = [c.account for c in self.clients]
        self.log("started", clients=roles, accounts=accounts, game=self.game.game.address)
        reason = "stopped"
        while not stop.is_set():
            busy = self.step()
            if until_idle and self.idle():
                reason = "idle"
                break
            if max_seconds is not None and time.monotonic() - start >= max_seconds:
                reason = "time limit"
                break
            if self.backoff:
                stop.wait(self.backoff)
            elif not busy:
                stop.wait(self._wait())
            try:
                self._tick()
            except Exception:  # the node: the next round says so
                pass
        self.log("exited", reason=reason, rounds=self.rounds, errors=self.errors)

    def _wait(self) -> float:
        """The idle wait: the polling interval, shorter while model work is running (its result
        is picked up within a tenth of the interval)."""
        working = any(c.worker.running() or c.worker.queue() for c in self.clients)
        return self.interval / 10 if working else self.interval


def _rid(client: Player, info: dict[str, Any]) -> Any:
    request = client.store.get("requests", {}).get(info.get("key"))
    return None if request is None else request.get("id")


def _lag(items: Iterable[dict[str, Any]], field: str, status: str | None) -> float:
    times = [i[field] for i in items if field in i and (status is None or i["status"] == status)]
    return max(0.0, time.time() - min(times)) if times else 0.0


def _role(client: Player) -> str:
    return "prover" if isinstance(client, Prover) else "watcher"


def stop_on_signals(
    stop: threading.Event, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)
) -> Callable[[], None]:
    """Make SIGINT / SIGTERM end the loop after the current round (state is saved by then).
    Returns a function that puts the previous handlers back."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
