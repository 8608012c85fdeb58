"""bisection/metrics.py: the values a process reports, scraped over HTTP from its health server
on 127.0.0.1 and read back with prometheus_client's own text parser."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from refute.bisection.metrics import HealthServer, Metrics, MetricsError


class Clock:
    """A wall clock the test moves by hand (ages are computed at scrape time)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(server: HealthServer) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of /metrics."""
    status, ctype, text = get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def health(server: HealthServer) -> tuple[int, dict]:
    status, ctype, text = get(server.url + "/health")
    assert ctype == "application/json"
    return status, json.loads(text)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def served(clock):
    metrics = Metrics(clock=clock)
    with HealthServer(metrics) as server:
        yield metrics, server


def test_every_value_is_scraped_as_set(served, clock) -> None:
    metrics, server = served
    assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0
    metrics.observe_block(41, clock.now - 5)
    metrics.observe_block(40, clock.now - 9)  # an older head (another node behind): kept out
    metrics.set_claims_pending(3, role="prover")
    metrics.set_claims_pending(7, role="watcher")
    metrics.set_disputes(2, least_clock=412.5)
    metrics.set_queue(4, lag=37.25)
    metrics.set_at_risk(0)
    for fn, gas in [("postClaim", 250_000), ("move", 90_000), ("move", 91_000)]:
        metrics.tx(fn, gas)
    metrics.rpc_error("timeout")
    metrics.rpc_error("timeout")
    metrics.rpc_error("http-500")
    clock.now += 2
    v = scrape(server)
    assert v[("refute_claims_pending", (("role", "prover"),))] == 3
    assert v[("refute_claims_pending", (("role", "watcher"),))] == 7
    assert v[("refute_disputes_active", ())] == 2
    assert v[("refute_dispute_least_clock_seconds", ())] == 412.5
    assert v[("refute_reexecution_queue_length", ())] == 4
    assert v[("refute_reexecution_lag_seconds", ())] == 37.25
    assert v[("refute_claims_at_risk", ())] == 0
    assert v[("refute_transactions_total", (("fn", "move"),))] == 2
    assert v[("refute_transactions_total", (("fn", "postClaim"),))] == 1
    assert v[("refute_gas_used_total", (("fn", "move"),))] == 181_000
    assert v[("refute_gas_used_total", (("fn", "postClaim"),))] == 250_000
    assert v[("refute_rpc_errors_total", (("kind", "timeout"),))] == 2
    assert v[("refute_rpc_errors_total", (("kind", "http-500"),))] == 1
    assert v[("refute_last_block_number", ())] == 41
    assert v[("refute_last_block_timestamp_seconds", ())] == clock.now - 7
    assert v[("refute_last_block_age_seconds", ())] == 7  # computed when scraped
    assert v[("refute_node_unreachable_seconds", ())] == 0
    assert v[("refute_loop_round_age_seconds", ())] == 2
    status, h = health(server)
    assert status == 200 and h["status"] == "ok" and h["reasons"] == []
    assert (h["last_block"], h["disputes_active"], h["least_clock_s"]) == (41, 2, 412.5)
    assert h["reexecution_queue"] == 4


def test_no_dispute_means_no_clock_and_an_empty_queue_no_lag(served, clock) -> None:
    metrics, server = served
    assert math.isnan(scrape(server)[("refute_dispute_least_clock_seconds", ())])
    metrics.set_disputes(1, least_clock=30)
    metrics.set_disputes(0, least_clock=None)
    metrics.set_queue(0, lag=99.0)
    v = scrape(server)
    assert math.isnan(v[("refute_dispute_least_clock_seconds", ())])
    assert v[("refute_reexecution_lag_seconds", ())] == 0
    assert v[("refute_last_block_number", ())] == -1
    assert math.isnan(v[("refute_last_block_age_seconds", ())])
    metrics.observe_block(1, clock.now)
    assert health(server)[1]["least_clock_s"] is None


def test_health_before_the_first_block_is_degraded(served, clock) -> None:
    metrics, server = served
    status, h = health(server)
    assert status == 503 and h["status"] == "degraded" and h["reasons"] == ["no block seen yet"]
    metrics.observe_block(0, clock.now)
    assert health(server)[0] == 200


def test_node_unreachable_is_timed_until_it_answers(served, clock) -> None:
    metrics, server = served
    metrics.observe_block(10, clock.now)
    metrics.node_unreachable()
    clock.now += 20
    metrics.node_unreachable()  # still the same outage: it started 20 s ago
    assert scrape(server)[("refute_node_unreachable_seconds", ())] == 20
    assert health(server)[0] == 200  # under the 30 s limit
    clock.now += 11
    status, h = health(server)
    assert status == 503 and h["reasons"] == ["node unreachable for 31 s (limit 30 s)"]
    assert h["node_unreachable_s"] == 31
    metrics.observe_block(11, clock.now)  # an answer ends the outage
    assert scrape(server)[("refute_node_unreachable_seconds", ())] == 0
    assert health(server)[0] == 200
    metrics.node_unreachable()
    clock.now += 40
    metrics.node_reachable()
    status, h = health(server)  # 71 s without a round of the loop (limit 60 s): that shows
    assert status == 503 and h["reasons"] == ["no round of the game loop for 71 s (limit 60 s)"]
    metrics.heartbeat()
    assert health(server)[0] == 200


def test_stale_head_stalled_loop_and_claims_at_risk_degrade(clock) -> None:
    metrics = Metrics(block_age_limit=60, stall_limit=10, clock=clock)
    with HealthServer(metrics) as server:
        metrics.observe_block(5, clock.now - 61)
        metrics.set_at_risk(2)
        clock.now += 11
        status, h = health(server)
        assert status == 503 and h["reasons"] == [
            "last block 5 is 72 s old (limit 60 s)",
            "no round of the game loop for 11 s (limit 10 s)",
            "2 claims at risk: cannot be re-executed before the challenge window closes",
        ]
        assert h["claims_at_risk"] == 2 and h["round_age_s"] == 11
        metrics.heartbeat()
        metrics.set_at_risk(0)
        metrics.observe_block(6, clock.now)
        assert health(server)[0] == 200


def test_other_paths_are_404_and_two_processes_do_not_share_series(clock) -> None:
    a, b = Metrics(clock=clock), Metrics(clock=clock)
    with HealthServer(a) as sa, HealthServer(b) as sb:
        assert sa.port != sb.port
        a.tx("step", 1_000_000)
        assert scrape(sa)[("refute_transactions_total", (("fn", "step"),))] == 1
        assert ("refute_transactions_total", (("fn", "step"),)) not in scrape(sb)
        status, _, text = get(sa.url + "/nothing")
        assert status == 404 and "/metrics" in text
        assert get(sa.url + "/metrics?x=1")[0] == 200


def test_a_taken_port_is_a_clear_error() -> None:
    with HealthServer(Metrics()) as server:
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"):
            HealthServer(Metrics(), port=server.port)
