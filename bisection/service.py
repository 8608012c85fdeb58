"""The long-running prover and watcher processes behind `refute prove` and `refute watch`.

A `Service` polls one or more clients (a `Prover`, a `Challenger`, or both on one chain) until it
is stopped: each round it takes the inference requests that arrived, lets every client make the
moves due from chain state, collects what the client is owed, and reports what changed as
structured log events (one JSON object per line) and on a one-line status display. All decisions
stay in the clients; this module only schedules them and says what happened, so a killed process
restarted on the same state directory resumes every claim and dispute from the chain.

    service = Service(game, [prover], EventLog(sys.stdout, "prover"), requests=queue)
    service.run(stop=threading.Event())
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm
from web3.exceptions import Web3Exception

from refute.bisection.challenger import Challenger
from refute.bisection.player import SIDE_NAMES, Player
from refute.bisection.prover import Prover
from refute.contracts.chain import is_embedded
from refute.contracts.errors import DeploymentError
from refute.contracts.game import GameClient, Stage
from refute.engine.executor import Request
from refute.engine.model import Model
from refute.errors import RefuteError


class RequestError(RefuteError, ValueError):
    """An inference request (a line of the request stream) is malformed."""


@dataclass(frozen=True)
class Deployment:
    """Where a game lives: written by the process that deploys it, read by those that join."""

    game: str
    registry: str
    verifier: str
    chain_id: int
    block: int
    rpc: str | None

    FILE = "deployment.json"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Deployment:
        path = Path(directory) / cls.FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise DeploymentError(f"{path} is not a deployment file: {exc}") from None

    @classmethod
    def of(cls, game: GameClient, rpc: str | None, block: int) -> Deployment:
        return cls(
            game.game.address, game.registry.address, game.verifier.address,
            int(game.w3.eth.chain_id), block, rpc,
        )  # fmt: skip


class EventLog:
    """Structured log: each event is one line, a JSON object (`fmt="json"`) or `key=value`
    pairs (`fmt="text"`), with a UTC timestamp, the role and the event name first."""

    def __init__(self, stream: IO[str], role: str, fmt: str = "json") -> None:
        self.stream = stream
        self.role = role
        self.fmt = fmt
        self.lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {"time": stamp, "role": self.role, "event": event} | fields
        if self.fmt == "json":
            line = json.dumps(record, default=_jsonable)
        else:
            line = " ".join(f"{k}={_text(v)}" for k, v in record.items())
        with self.lock:
            # tqdm.write keeps a status line drawn on the same terminal below the log
            tqdm.write(line, file=self.stream)
            self.stream.flush()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str) and " " not in value:
        return value
    return json.dumps(value, default=_jsonable)


def parse_request(
    line: str | dict[str, Any], model: Model, defaults: Request | None = None
) -> Request:
    """One inference request: {"prompt": text} or {"tokens": [ids]}, with optional
    max_new_tokens, temperature and seed. Raises RequestError naming what is wrong."""
    if isinstance(line, str):
        try:
            line = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RequestError(f"not JSON: {exc}") from None
    if not isinstance(line, dict):
        raise RequestError("a request is a JSON object")
    unknown = set(line) - {"prompt", "tokens", "max_new_tokens", "temperature", "seed"}
    if unknown:
        raise RequestError(f"unknown fields {sorted(unknown)}")
    if ("prompt" in line) == ("tokens" in line):
        raise RequestError('give exactly one of "prompt" (text) and "tokens" (ids)')
    if "prompt" in line:
        if model.tokenizer is None:
            raise RequestError(f'{model.name} has no tokenizer: send token ids as "tokens"')
        if not isinstance(line["prompt"], str) or not line["prompt"]:
            raise RequestError('"prompt" must be a non-empty string')
        tokens = tuple(model.tokenizer.encode(line["prompt"]).ids)
    else:
        tokens = line["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RequestError('"tokens" must be a list of integers')
        tokens = tuple(tokens)
    p = model.program
    if not tokens:
        raise RequestError("empty prompt")
    bad = [t for t in tokens if not 0 <= t < p.vocab_size]
    if bad:
        raise RequestError(f"token {bad[0]} is outside the vocabulary (0..{p.vocab_size - 1})")
    base = defaults or Request((), 8)
    new = line.get("max_new_tokens", base.max_new_tokens)
    temperature = line.get("temperature", base.temperature)
    seed = line.get("seed", base.seed)
    if not isinstance(new, int) or new < 1:
        raise RequestError('"max_new_tokens" must be an integer >= 1')
    if not isinstance(temperature, int | float) or not 0 <= temperature < float("inf"):
        raise RequestError('"temperature" must be a finite number >= 0')
    if not isinstance(seed, int) or not 0 <= seed < 2**256:
        raise RequestError('"seed" must be an integer in [0, 2^256)')
    request = Request(tokens, new, float(temperature), seed)
    if request.positions > p.max_positions:
        raise RequestError(f"{request.positions} positions exceed the model's {p.max_positions}")
    return request


def follow_lines(stream: IO[str], out: queue.Queue, stop: threading.Event, tail: bool) -> None:
    """Put each line of `stream` on `out` (a thread's target). `tail`: keep reading a file that
    grows (like `tail -f`) instead of stopping at its end."""
    while not stop.is_set():
        line = stream.readline()
        if line:
            if line.strip():
                out.put(line)
        elif tail:
            time.sleep(0.2)
        else:
            return


class Service:
    """Polls clients on one game until stopped, logging events and showing a status line."""

    def __init__(
        self,
        game: GameClient,
        clients: list[Player],
        log: EventLog,
        *,
        requests: queue.Queue | None = None,
        defaults: Request | None = None,
        interval: float = 2.0,
        status: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.game = game
        self.clients = clients
        self.log = log
        self.requests = requests
        self.defaults = defaults
        self.interval = interval
        self.status = status
        self.rounds = 0
        self.errors = 0
        self._seen = [self._snapshot(c) for c in clients]

    # --- one round ---------------------------------------------------------------------------

    def step(self) -> bool:
        """One round: claims for new requests, every client's moves, payouts. Returns whether
        anything happened (a claim, a move, a new verdict or outcome)."""
        busy = self._serve_requests()
        for k, client in enumerate(self.clients):
            try:
                made = client.poll()
                for move in made:
                    self._log_move(client, move)
                busy |= bool(made) | self._log_changes(k, client)
                withdrawn = client.collect()
            except (RefuteError, OSError, Web3Exception) as exc:
                # a node that is briefly unreachable, a reverted transaction: log, retry next round
                self.errors += 1
                self.log("error", client=_role(client), error=type(exc).__name__, detail=str(exc))
                continue
            if withdrawn:
                self.log("withdrawn", account=client.account, wei=withdrawn)
                busy = True
        self.rounds += 1
        self.status(self.status_line())
        return busy

    def _serve_requests(self) -> bool:
        provers = [c for c in self.clients if isinstance(c, Prover)]
        if self.requests is None or not provers:
            return False
        busy = False
        while True:
            try:
                line = self.requests.get_nowait()
            except queue.Empty:
                return busy
            busy = True
            prover = provers[0]
            try:
                request = parse_request(line, prover.model, self.defaults)
            except RequestError as exc:
                self.log("request.rejected", reason=str(exc), line=str(line).strip()[:200])
                continue
            self.claim(prover, request)

    def claim(self, prover: Prover, request: Request) -> int | None:
        """Run a request and post its claim, logging the outcome."""
        self.log("request.accepted", prompt=list(request.prompt),
                 max_new_tokens=request.max_new_tokens)  # fmt: skip
        done = [0]

        def progress(positions: int) -> None:
            done[0] += positions
            self.status(f"running request: position {done[0]} of {request.positions}")

        try:
            claim_id = prover.claim(request, on_position=progress)
        except RefuteError as exc:
            self.errors += 1
            self.log("claim.failed", error=type(exc).__name__, detail=str(exc))
            return None
        info = prover.store["claims"][str(claim_id)]
        tokenizer = prover.model.tokenizer
        c = self.game.claim(claim_id)
        self.log(
            "claim.posted", claim=claim_id, tokens=info["tokens"],
            text=tokenizer.decode(info["tokens"]) if tokenizer is not None else None,
            trace_root=c.trace_root, records=c.num_records, deadline=c.deadline,
            gas=self.game.gas_used[-1][1],
        )  # fmt: skip
        self._seen[self.clients.index(prover)]["claims"][str(claim_id)] = "pending"
        return claim_id

    # --- what changed -------------------------------------------------------------------------

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
            if isinstance(client, Prover):
                self.log(f"claim.{value}", claim=int(cid))
            else:
                info = client.store["claims"][cid]
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
        keys = ("dispute", "claim", "fn", "side", "stage", "level", "height", "index", "gas",
                "output", "values", "record", "step", "reverted")  # fmt: skip
        self.log("tx", client=_role(client), **{k: move[k] for k in keys if k in move})

    # --- the status line ----------------------------------------------------------------------

    def status_line(self) -> str:
        """One line: chain head, claims by state, active disputes with whose clock runs."""
        try:
            block = self.game.w3.eth.get_block("pending")
        except (RefuteError, OSError, Web3Exception):
            return f"round {self.rounds}: chain unreachable ({self.errors} errors)"
        parts = [f"block {block['number'] - 1}"]
        for client in self.clients:
            parts.append(self._client_status(client, int(block["timestamp"])))
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
        else:
            disputed = sum(1 for c in claims if c.get("verdict") == "dispute")
            head = f"{role}: {len(client.store['claims'])} claims checked, {disputed} disputed"
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
        """Nothing left to do: no queued request, no active dispute, no pending own claim."""
        if self.requests is not None and not self.requests.empty():
            return False
        for client in self.clients:
            if client.active():
                return False
            if isinstance(client, Prover) and any(
                c["status"] == "pending" for c in client.store["claims"].values()
            ):
                return False
        return True

    def _tick(self) -> None:
        """An embedded chain mines only on transactions, and its next block's timestamp is fixed
        when the previous one is mined: mine an empty block whenever the wall clock has passed
        it, so the chain's clock follows the wall clock as a live chain's does."""
        w3 = self.game.w3
        if is_embedded(w3) and time.time() >= w3.eth.get_block("pending")["timestamp"] + 1:
            w3.provider.ethereum_tester.mine_blocks(1)

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
            if not busy:
                stop.wait(self.interval)
                self._tick()
        self.log("exited", reason=reason, rounds=self.rounds, errors=self.errors)


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


class StatusLine:
    """A status line redrawn in place at the bottom of a terminal (nothing elsewhere)."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.bar = tqdm(total=0, bar_format="{desc}", file=stream, disable=not stream.isatty(),
                        dynamic_ncols=True, leave=False)  # fmt: skip

    def __call__(self, line: str) -> None:
        self.bar.set_description_str(line)

    def close(self) -> None:
        self.bar.close()
