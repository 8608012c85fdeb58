"""Metrics and a health endpoint for the prover and watcher processes.

A process keeps one `Metrics` (its own prometheus registry, so that two processes in one test
never share series) and updates it from its game loop; a `HealthServer` serves it on a loopback
port: `GET /metrics` in the Prometheus text format, `GET /health` as JSON, HTTP 200 when the
process is fine and 503, with the reasons, when an operator should look.

    metrics = Metrics()
    server = HealthServer(metrics, port=9464).start()     # http://127.0.0.1:9464/metrics
    metrics.observe_block(number, timestamp)               # every poll that read the head
    metrics.tx("openDispute", gas)                         # every transaction mined
    metrics.set_disputes(active=1, least_clock=412.0)      # every round
    ...
    server.close()

Ages (of the last block, of the last round, of an outage) are computed when they are read, not
when they were set, so a loop that hangs shows growing ages instead of frozen values.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from refute.errors import RefuteError

NAN = float("nan")


class MetricsError(RefuteError):
    """The health endpoint cannot be served (the port is taken, the host is not an address)."""


class Metrics:
    """Everything an operator needs to see about one process, in its own registry.

    Health thresholds (seconds; None turns a check off):
    `unreachable_limit`: the node has not answered for longer (default 30);
    `block_age_limit`: the newest block seen is older than this by the wall clock (default off:
    a development node such as anvil mines only when a transaction arrives, so an idle chain's
    head is old without anything being wrong; set it for a live network);
    `stall_limit`: the game loop has not completed a round for longer (default 60).
    `clock` is the wall clock (unix seconds), replaceable in tests."""

    def __init__(
        self,
        *,
        unreachable_limit: float | None = 30.0,
        block_age_limit: float | None = None,
        stall_limit: float | None = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.unreachable_limit = unreachable_limit
        self.block_age_limit = block_age_limit
        self.stall_limit = stall_limit
        self.clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._block: tuple[int, float] | None = None  # (number, timestamp) of the newest seen
        self._last_round = clock()
        self._values = {"disputes_active": 0, "least_clock_s": None, "reexecution_queue": 0,
                        "claims_at_risk": 0}  # fmt: skip
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.claims_pending = Gauge(
            "refute_claims_pending",
            "claims not yet finalised or overturned (prover: its own; watcher: those it checks)",
            ["role"],
            registry=r,
        )
        self.disputes_active = Gauge(
            "refute_disputes_active", "disputes this process plays that are not resolved",
            registry=r,
        )  # fmt: skip
        self.least_clock = Gauge(
            "refute_dispute_least_clock_seconds",
            "least remaining chess clock over the disputes this process plays (NaN: none)",
            registry=r,
        )
        self.queue_length = Gauge(
            "refute_reexecution_queue_length", "claims waiting to be re-executed", registry=r
        )
        self.queue_lag = Gauge(
            "refute_reexecution_lag_seconds",
            "seconds from the posting of the oldest claim waiting for re-execution to now",
            registry=r,
        )
        self.claims_at_risk = Gauge(
            "refute_claims_at_risk",
            "claims that cannot be re-executed before their challenge window closes",
            registry=r,
        )
        self.rpc_errors = Counter(
            "refute_rpc_errors", "failed calls to the node, by kind", ["kind"], registry=r
        )
        self.transactions = Counter(
            "refute_transactions", "transactions mined, by contract function", ["fn"], registry=r
        )
        self.gas_used = Counter(
            "refute_gas_used", "gas of the transactions mined, by contract function", ["fn"],
            registry=r,
        )  # fmt: skip
        self.last_block = Gauge(
            "refute_last_block_number", "newest block seen (-1: none yet)", registry=r
        )
        self.last_block_time = Gauge(
            "refute_last_block_timestamp_seconds", "timestamp of the newest block seen",
            registry=r,
        )  # fmt: skip
        Gauge(
            "refute_last_block_age_seconds",
            "wall-clock seconds since the timestamp of the newest block seen (NaN: none yet)",
            registry=r,
        ).set_function(self.block_age)
        Gauge(
            "refute_node_unreachable_seconds",
            "seconds the node has been unreachable (0: it answers)",
            registry=r,
        ).set_function(self.unreachable_for)
        Gauge(
            "refute_loop_round_age_seconds",
            "seconds since the game loop last completed a round",
            registry=r,
        ).set_function(self.round_age)
        self.last_block.set(-1)
        self.least_clock.set(NAN)

    # --- updates (called from the game loop; every one is thread-safe) -----------------------

    def observe_block(self, number: int, timestamp: float) -> None:
        """The head was read: block `number` with `timestamp`. The node answered, so it is
        reachable again."""
        with self._lock:
            if self._block is None or number >= self._block[0]:
                self._block = (int(number), float(timestamp))
                self.last_block.set(number)
                self.last_block_time.set(timestamp)
            self._down_since = None

    def node_unreachable(self) -> None:
        """A call could not reach the node (refused, reset, timed out); the outage starts at the
        first such call and lasts until `node_reachable` or `observe_block`."""
        with self._lock:
            if self._down_since is None:
                self._down_since = self.clock()

    def node_reachable(self) -> None:
        with self._lock:
            self._down_since = None

    def rpc_error(self, kind: str) -> None:
        """Count one failed node call, e.g. kind="timeout", "connection", "http-500",
        "rpc-error" (does not by itself mark the node unreachable: a JSON-RPC error is an
        answer)."""
        self.rpc_errors.labels(kind=kind).inc()

    def tx(self, fn: str, gas: int) -> None:
        """One transaction mined, calling contract function `fn`, using `gas`."""
        self.transactions.labels(fn=fn).inc()
        self.gas_used.labels(fn=fn).inc(gas)

    def set_claims_pending(self, count: int, role: str) -> None:
        self.claims_pending.labels(role=role).set(count)

    def set_disputes(self, active: int, least_clock: float | None) -> None:
        """Disputes played and the least remaining clock in seconds over them (None: none)."""
        self.disputes_active.set(active)
        self.least_clock.set(NAN if least_clock is None else least_clock)
        with self._lock:
            self._values["disputes_active"] = int(active)
            self._values["least_clock_s"] = None if least_clock is None else float(least_clock)

    def set_queue(self, length: int, lag: float) -> None:
        """Re-execution queue: claims waiting, and seconds since the oldest one was posted."""
        self.queue_length.set(length)
        self.queue_lag.set(lag if length else 0.0)
        with self._lock:
            self._values["reexecution_queue"] = int(length)

    def set_at_risk(self, count: int) -> None:
        """Claims the watcher cannot re-execute before their window closes (0: none)."""
        self.claims_at_risk.set(count)
        with self._lock:
            self._values["claims_at_risk"] = int(count)

    def heartbeat(self) -> None:
        """The game loop completed a round."""
        with self._lock:
            self._last_round = self.clock()

    # --- reads --------------------------------------------------------------------------------

    def unreachable_for(self) -> float:
        """Seconds since the node stopped answering; 0 while it answers."""
        with self._lock:
            since = self._down_since
        return 0.0 if since is None else max(0.0, self.clock() - since)

    def block_age(self) -> float:
        """Wall-clock seconds since the newest block's timestamp; NaN before any block."""
        with self._lock:
            block = self._block
        return NAN if block is None else self.clock() - block[1]

    def round_age(self) -> float:
        with self._lock:
            last = self._last_round
        return max(0.0, self.clock() - last)

    def health(self) -> dict[str, Any]:
        """{"status": "ok" | "degraded", "reasons": [...], and the values the checks read}."""
        reasons = []
        down = self.unreachable_for()
        if self.unreachable_limit is not None and down > self.unreachable_limit:
            reasons.append(
                f"node unreachable for {down:.0f} s (limit {self.unreachable_limit:g} s)"
            )
        with self._lock:
            block = self._block
            values = dict(self._values)
        age = self.block_age()
        if block is None:
            reasons.append("no block seen yet")
        elif self.block_age_limit is not None and age > self.block_age_limit:
            reasons.append(
                f"last block {block[0]} is {age:.0f} s old (limit {self.block_age_limit:g} s)"
            )
        stalled = self.round_age()
        if self.stall_limit is not None and stalled > self.stall_limit:
            reasons.append(
                f"no round of the game loop for {stalled:.0f} s (limit {self.stall_limit:g} s)"
            )
        at_risk = values["claims_at_risk"]
        if at_risk:
            reasons.append(
                f"{at_risk} claim{'s' if at_risk != 1 else ''} at risk: cannot be re-executed "
                "before the challenge window closes"
            )
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "last_block": None if block is None else block[0],
            "last_block_age_s": None if math.isnan(age) else round(age, 3),
            "node_unreachable_s": round(down, 3),
            "round_age_s": round(stalled, 3),
        } | values

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class HealthServer:
    """`GET /metrics` and `GET /health` for one `Metrics`, from a daemon thread, on loopback by
    default (`port=0`: a free port; read `.port` / `.url`)."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        handler = type("Handler", (_Handler,), {"metrics": metrics})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except (OSError, OverflowError) as exc:
            raise MetricsError(f"cannot serve metrics on {host}:{port}: {exc}") from None
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HealthServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="refute-health", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    server_version = "refute-health"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms stall

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.metrics.exposition())
        elif path == "/health":
            health = self.metrics.health()
            code = 200 if health["status"] == "ok" else 503
            self._send(code, "application/json", json.dumps(health).encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /health\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not events: keep them off stderr."""
