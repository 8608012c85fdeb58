"""A loopback JSON-RPC fault proxy, for tests: put it between a client and a node (anvil) and make
the node slow, silent, erroneous or gone on command.

    with RpcProxy(anvil_url, seed=1) as proxy:          # listens on 127.0.0.1:<free port>
        w3 = Web3(Web3.HTTPProvider(proxy.url))
        proxy.drop_answer("eth_sendRawTransaction")      # the node mines it; the client never hears
        proxy.delay(5, "eth_getTransactionReceipt", times=3)
        proxy.rpc_error(method="eth_call", probability=0.2)   # from the seeded random.Random
        proxy.down(2.0)                                   # connections refused for 2 s
        ...
        proxy.stats[("eth_sendRawTransaction", "drop_answer")]   # what it did, per method

Each HTTP POST is one exchange: its body (a JSON-RPC call, or a batch: a JSON list of calls) is
matched against the rules in the order they were added. Every DELAY rule that fires adds its
seconds before forwarding; the first other rule that fires decides the exchange's fate:

- DROP: close the connection before forwarding (the node never sees the call);
- DROP_ANSWER: forward, then close the connection without answering (the node did it: the
  "sent, receipt unknown" case);
- HTTP_ERROR: answer an HTTP error status (500 by default) without forwarding;
- RPC_ERROR: answer a JSON-RPC error object (one per call of a batch) without forwarding.

A rule selects by JSON-RPC method (a batch matches when any of its calls has it; None: any),
fires for the next `times` matching exchanges (None: until cleared) and, with `probability` < 1,
only when the proxy's seeded random.Random says so. `down()` makes the node unreachable for a
period: its port refuses connections (or, with `refuse=False`, accepts and cuts them), and open
keep-alive connections are cut at their next request. Rules can be added and cleared while
clients run; everything is guarded by one lock.

`stats` counts, per (method, outcome), what happened: "forwarded" for every call the node
received, plus the fault applied ("delay", "drop", "drop_answer", "http_error", "rpc_error",
"cut"; "upstream_error" when the node itself could not be reached, answered as HTTP 502).

Bounded: the proxy listens on 127.0.0.1 only and only ever connects to the loopback upstream URL
it was given.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, replace
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
ANY = "*"
"""The method name under which connections cut before a request was read are counted."""


class Fault(StrEnum):
    DELAY = "delay"
    DROP = "drop"
    DROP_ANSWER = "drop_answer"
    HTTP_ERROR = "http_error"
    RPC_ERROR = "rpc_error"


@dataclass
class Rule:
    """One fault to inject; `times` counts down as it fires (the rule goes at 0)."""

    fault: Fault
    method: str | None = None
    times: int | None = 1
    probability: float = 1.0
    seconds: float = 0.0  # DELAY
    status: int = 500  # HTTP_ERROR
    code: int = -32000  # RPC_ERROR
    message: str = "injected fault"  # RPC_ERROR

    def __post_init__(self) -> None:
        self.fault = Fault(self.fault)
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 (or None: until cleared)")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be in [0, 1]")
        if self.seconds < 0:
            raise ValueError("a delay cannot be negative")


class RpcProxy:
    """The proxy; see the module docstring. Starts listening when constructed."""

    def __init__(self, upstream: str, *, seed: int = 0, upstream_timeout: float = 120.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in LOOPBACK or parts.port is None:
            raise ValueError(f"the upstream must be http://<loopback host>:<port>, not {upstream}")
        self.upstream = upstream
        self._target = (parts.hostname, parts.port, parts.path or "/")
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rules: list[Rule] = []
        self._stats: Counter[tuple[str, str]] = Counter()
        self._down = False
        self._refusing = False
        self._timer: threading.Timer | None = None
        self._closing = threading.Event()
        self._server = self._listen(0)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"

    # --- rules ---------------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Add a rule (a copy is kept; it is returned, so its remaining `times` can be read)."""
        rule = replace(rule)
        with self._lock:
            self._rules.append(rule)
        return rule

    def delay(self, seconds: float, method: str | None = None, **kw: Any) -> Rule:
        return self.add(Rule(Fault.DELAY, method, seconds=seconds, **kw))

    def drop(self, method: str | None = None, **kw: Any) -> Rule:
        return self.add(Rule(Fault.DROP, method, **kw))

    def drop_answer(self, method: str | None = None, **kw: Any) -> Rule:
        return self.add(Rule(Fault.DROP_ANSWER, method, **kw))

    def http_error(self, status: int = 500, method: str | None = None, **kw: Any) -> Rule:
        return self.add(Rule(Fault.HTTP_ERROR, method, status=status, **kw))

    def rpc_error(
        self,
        code: int = -32000,
        message: str = "injected fault",
        method: str | None = None,
        **kw: Any,
    ) -> Rule:
        return self.add(Rule(Fault.RPC_ERROR, method, code=code, message=message, **kw))

    def clear(self) -> None:
        """Remove every rule (faults already under way finish)."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    # --- the node going away -------------------------------------------------------------------

    def down(self, seconds: float | None = None, *, refuse: bool = True) -> None:
        """Make the node unreachable: new connections are refused (the port closes; `refuse=False`:
        accepted and cut at once) and open ones are cut at their next request; back after
        `seconds` (None: until `up()`)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._down = True
            stop = refuse and not self._refusing
            self._refusing = self._refusing or refuse
        if stop:
            self._server.shutdown()
            self._server.server_close()
        if seconds is not None:
            timer = threading.Timer(seconds, self.up)
            timer.daemon = True
            with self._lock:
                self._timer = timer
            timer.start()

    def up(self) -> None:
        """The node is reachable again (on the same port)."""
        with self._lock:
            if self._closing.is_set():
                return
            reopen = self._refusing
            self._down = self._refusing = False
            if reopen:
                self._server = self._listen(self.port)

    @property
    def is_down(self) -> bool:
        with self._lock:
            return self._down

    # --- what it did ---------------------------------------------------------------------------

    @property
    def stats(self) -> Counter[tuple[str, str]]:
        """{(method, outcome): count}; a copy."""
        with self._lock:
            return Counter(self._stats)

    def count(self, method: str | None = None, outcome: str | None = None) -> int:
        """How many times `outcome` happened to `method` (None: any)."""
        return sum(
            n
            for (m, o), n in self.stats.items()
            if (method is None or m == method) and (outcome is None or o == outcome)
        )

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    # --- life cycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            refusing = self._refusing
        if not refusing:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> RpcProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------------

    def _listen(self, port: int) -> ThreadingHTTPServer:
        handler = type("Handler", (_Handler,), {"proxy": self})
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        server.daemon_threads = True
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"rpc-proxy-{port}",
        ).start()  # fmt: skip
        return server

    def _record(self, methods: list[str], outcome: str) -> None:
        with self._lock:
            for m in methods:
                self._stats[(m, str(outcome))] += 1

    def _decide(self, methods: list[str]) -> tuple[float, Rule | None]:
        """The total delay and the deciding rule (or None) of one exchange; consumes `times`."""
        delay, decided = 0.0, None
        with self._lock:
            for rule in list(self._rules):
                if decided is not None and rule.fault != Fault.DELAY:
                    continue
                if rule.method is not None and rule.method not in methods:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
                if rule.fault == Fault.DELAY:
                    delay += rule.seconds
                else:
                    decided = rule
        return delay, decided

    def _forward(self, body: bytes) -> tuple[int, str, bytes]:
        host, port, path = self._target
        conn = http.client.HTTPConnection(host, port, timeout=self.upstream_timeout)
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, r.getheader("Content-Type", "application/json"), r.read()
        finally:
            conn.close()


def _methods(body: bytes) -> tuple[list[str], list[Any]]:
    """The methods and ids of the calls in a request body (a call or a batch)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return ["<invalid>"], [None]
    calls = parsed if isinstance(parsed, list) else [parsed]
    methods = [str(c.get("method")) if isinstance(c, dict) else "<invalid>" for c in calls]
    ids = [c.get("id") if isinstance(c, dict) else None for c in calls]
    return methods or ["<empty batch>"], ids or [None]


class _Handler(BaseHTTPRequestHandler):
    proxy: RpcProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as web3's requests session expects
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms stall

    def handle(self) -> None:
        if self.proxy.is_down:
            self.proxy._record([ANY], "cut")
            return  # closed at once, nothing read, nothing answered
        super().handle()

    def do_POST(self) -> None:
        proxy = self.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        methods, ids = _methods(body)
        if proxy.is_down:
            proxy._record(methods, "cut")
            self.close_connection = True
            return
        delay, rule = proxy._decide(methods)
        if delay:
            proxy._record(methods, Fault.DELAY)
            if proxy._closing.wait(delay):
                self.close_connection = True
                return
        fault = rule.fault if rule is not None else None
        if fault is not None:
            proxy._record(methods, fault)
        if fault == Fault.DROP:
            self.close_connection = True
            return
        if fault == Fault.HTTP_ERROR:
            self._answer(rule.status, "text/plain", f"injected HTTP {rule.status}\n".encode())
            return
        if fault == Fault.RPC_ERROR:
            errors = [
                {"jsonrpc": "2.0", "id": i, "error": {"code": rule.code, "message": rule.message}}
                for i in ids
            ]
            batch = body.lstrip().startswith(b"[")
            self._answer(200, "application/json", json.dumps(errors if batch else errors[0]))
            return
        try:
            status, ctype, answer = proxy._forward(body)
        except OSError as exc:
            proxy._record(methods, "upstream_error")
            self._answer(502, "text/plain", f"upstream unreachable: {exc}\n".encode())
            return
        proxy._record(methods, "forwarded")
        if fault == Fault.DROP_ANSWER:
            self.close_connection = True
            return
        self._answer(status, ctype, answer)

    def do_GET(self) -> None:
        self._answer(405, "text/plain", b"JSON-RPC over HTTP POST only\n")

    def _answer(self, status: int, ctype: str, body: bytes | str) -> None:
        data = body.encode() if isinstance(body, str) else body
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client gave up (its timeout passed during a delay)
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the stats say what happened."""
