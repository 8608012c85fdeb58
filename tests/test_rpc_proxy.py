"""tests/rpc_proxy.py against a real anvil node, every fault as web3.py sees it."""

from __future__ import annotations

import random
import threading
import time

import pytest
import requests
from eth_account import Account
from web3 import Web3
from web3.exceptions import Web3RPCError

from refute.contracts.anvil import free_port
from tests.rpc_proxy import ANY, Fault, RpcProxy, Rule

TIMEOUT = 0.5  # seconds: web3's request timeout in the tests that time out


def client(url: str, timeout: float = 10.0, retry: bool = False) -> Web3:
    """web3 on `url`; `retry=False` turns off web3's own retries so each fault shows."""
    kw = {} if retry else {"exception_retry_configuration": None}
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}, **kw))


@pytest.fixture
def proxy(anvil_web3: Web3):
    with RpcProxy(anvil_web3.provider.endpoint_uri, seed=3) as p:
        yield p


@pytest.fixture
def key(anvil_web3: Web3):
    """A fresh funded local key (its nonces are this test's alone)."""
    acct = Account.create()
    tx = anvil_web3.eth.send_transaction(
        {"from": anvil_web3.eth.accounts[0], "to": acct.address, "value": 10**18}
    )
    anvil_web3.eth.wait_for_transaction_receipt(tx)
    return acct


def signed_transfer(w3: Web3, acct, value: int = 1):
    return acct.sign_transaction({
        "to": w3.eth.accounts[1], "value": value, "gas": 21_000, "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 1, "chainId": w3.eth.chain_id,
        "nonce": w3.eth.get_transaction_count(acct.address),
    })  # fmt: skip


def post(url: str, body: object) -> requests.Response:
    return requests.post(url, json=body, timeout=10)


def test_calls_and_batches_are_forwarded(anvil_web3: Web3, proxy: RpcProxy) -> None:
    w3 = client(proxy.url)
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"
    assert w3.eth.chain_id == anvil_web3.eth.chain_id
    assert w3.eth.get_block_number() == anvil_web3.eth.block_number
    account = anvil_web3.eth.accounts[0]
    with w3.batch_requests() as batch:
        batch.add(w3.eth.get_block(0))
        batch.add(w3.eth.get_balance(account))
        block, balance = batch.execute()
    assert block["hash"] == anvil_web3.eth.get_block(0)["hash"]
    assert balance == anvil_web3.eth.get_balance(account)
    answer = post(proxy.url, [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in (7, 8)])
    assert sorted(r["id"] for r in answer.json()) == [7, 8]
    s = proxy.stats
    assert s[("eth_chainId", "forwarded")] == 3  # web3's one, then the batch of two
    assert s[("eth_getBlockByNumber", "forwarded")] == 1
    assert s[("eth_getBalance", "forwarded")] == 1
    assert proxy.count(outcome="forwarded") == sum(s.values())  # no fault yet


def test_drop_closes_before_forwarding_the_node_never_sees_it(proxy: RpcProxy, key) -> None:
    w3 = client(proxy.url)
    nonce = w3.eth.get_transaction_count(key.address)
    proxy.drop("eth_sendRawTransaction")
    with pytest.raises(requests.ConnectionError, match="without response"):
        w3.eth.send_raw_transaction(signed_transfer(w3, key).raw_transaction)
    assert w3.eth.get_transaction_count(key.address) == nonce  # nothing was sent
    assert proxy.stats[("eth_sendRawTransaction", "drop")] == 1
    assert proxy.stats[("eth_sendRawTransaction", "forwarded")] == 0
    assert proxy.rules == []  # times=1: used up


def test_a_dropped_answer_is_a_transaction_mined_all_the_same(
    anvil_web3: Web3, proxy: RpcProxy, key
) -> None:
    """The "sent, receipt unknown" case: the client gets no answer, the node mined it; it is
    found by the hash the client can compute itself, and by the sender's nonce."""
    w3 = client(proxy.url)
    nonce = w3.eth.get_transaction_count(key.address)
    tx = signed_transfer(w3, key, value=12345)
    proxy.drop_answer("eth_sendRawTransaction")
    with pytest.raises(requests.ConnectionError):
        w3.eth.send_raw_transaction(tx.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx.hash, timeout=10)
    assert receipt["status"] == 1
    assert w3.eth.get_transaction_count(key.address) == nonce + 1
    mined = w3.eth.get_transaction(tx.hash)
    assert (mined["from"], mined["nonce"], mined["value"]) == (key.address, nonce, 12345)
    s = proxy.stats
    assert s[("eth_sendRawTransaction", "forwarded")] == 1
    assert s[("eth_sendRawTransaction", "drop_answer")] == 1
    # an unlocked account's transaction: found by its nonce in the newest block
    sender = anvil_web3.eth.accounts[3]
    before = w3.eth.get_transaction_count(sender)
    proxy.drop_answer("eth_sendTransaction")
    with pytest.raises(requests.ConnectionError):
        w3.eth.send_transaction({"from": sender, "to": sender, "value": 1})
    assert w3.eth.get_transaction_count(sender) == before + 1
    block = w3.eth.get_block("latest", full_transactions=True)
    assert [(t["from"], t["nonce"]) for t in block["transactions"]] == [(sender, before)]


def test_a_delay_past_the_timeout_is_a_timeout(proxy: RpcProxy) -> None:
    w3 = client(proxy.url, timeout=TIMEOUT)
    w3.eth.get_block_number()
    proxy.delay(0.2, "eth_blockNumber")
    start = time.monotonic()
    w3.eth.get_block_number()  # a delay under the timeout: only slower
    assert time.monotonic() - start >= 0.2
    proxy.delay(3 * TIMEOUT, "eth_blockNumber")
    start = time.monotonic()
    with pytest.raises(requests.Timeout):
        w3.eth.get_block_number()
    assert TIMEOUT <= time.monotonic() - start < 3 * TIMEOUT
    assert proxy.stats[("eth_blockNumber", "delay")] == 2


def test_web3_resends_a_timed_out_transaction_and_the_node_gets_it_twice(
    proxy: RpcProxy, key
) -> None:
    """web3's default retries cover eth_sendRawTransaction on a timeout: the send returns the
    hash, and the delayed first copy reaches the node later; the transaction is mined once."""
    w3 = client(proxy.url, timeout=TIMEOUT, retry=True)
    nonce = w3.eth.get_transaction_count(key.address)
    tx = signed_transfer(w3, key)
    proxy.delay(3 * TIMEOUT, "eth_sendRawTransaction")
    assert w3.eth.send_raw_transaction(tx.raw_transaction) == tx.hash
    deadline = time.monotonic() + 10
    while proxy.stats[("eth_sendRawTransaction", "forwarded")] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert w3.eth.wait_for_transaction_receipt(tx.hash, timeout=10)["status"] == 1
    assert w3.eth.get_transaction_count(key.address) == nonce + 1


def test_http_500_and_json_rpc_errors(proxy: RpcProxy) -> None:
    w3 = client(proxy.url)
    proxy.http_error(500, "eth_blockNumber")
    with pytest.raises(requests.HTTPError) as info:
        w3.eth.get_block_number()
    assert info.value.response.status_code == 500
    proxy.http_error(503, "eth_blockNumber", times=2)
    number = client(proxy.url, retry=True).eth.get_block_number()  # web3 retries 5xx
    assert number == w3.eth.get_block_number()
    assert proxy.stats[("eth_blockNumber", "http_error")] == 3
    proxy.rpc_error(-32005, "limit exceeded", method="eth_getBalance")
    with pytest.raises(Web3RPCError) as err:
        w3.eth.get_balance(w3.eth.accounts[0])
    assert err.value.rpc_response["error"] == {"code": -32005, "message": "limit exceeded"}
    proxy.rpc_error(-32000, "busy")  # any method: a batch gets one error per call
    calls = [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in (1, 2)]
    assert post(proxy.url, calls).json() == [
        {"jsonrpc": "2.0", "id": i, "error": {"code": -32000, "message": "busy"}} for i in (1, 2)
    ]
    assert proxy.stats[("eth_chainId", "rpc_error")] == 2
    assert proxy.stats[("eth_chainId", "forwarded")] == 0


def test_node_down_refuses_then_cuts_then_returns_on_the_same_port(proxy: RpcProxy) -> None:
    kept = client(proxy.url)  # a keep-alive connection, open before the outage
    number = kept.eth.get_block_number()
    proxy.down(1.0)
    assert proxy.is_down
    with pytest.raises(requests.ConnectionError, match="refused"):
        client(proxy.url).eth.get_block_number()  # a new connection: refused
    with pytest.raises(requests.ConnectionError):
        kept.eth.get_block_number()  # the open one: cut at its next request
    assert proxy.stats[("eth_blockNumber", "cut")] == 1
    deadline = time.monotonic() + 5
    while proxy.is_down:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client(proxy.url).eth.get_block_number() == number
    proxy.down(refuse=False)  # accepted and closed at once, until up()
    with pytest.raises(requests.ConnectionError, match="without response"):
        client(proxy.url).eth.get_block_number()
    assert proxy.stats[(ANY, "cut")] >= 1
    proxy.up()
    assert kept.eth.get_block_number() == number


def test_probabilities_come_from_the_seeded_random(anvil_web3: Web3) -> None:
    """Which calls fail is a function of the seed: the same as random.Random(seed) predicts."""
    url = anvil_web3.provider.endpoint_uri
    patterns = []
    for _ in range(2):
        with RpcProxy(url, seed=11) as p:
            p.rpc_error(method="eth_blockNumber", probability=0.3, times=None)
            w3 = client(p.url)
            failed = []
            for _ in range(30):
                try:
                    w3.eth.get_block_number()
                    failed.append(False)
                except Web3RPCError:
                    failed.append(True)
            assert p.stats[("eth_blockNumber", "rpc_error")] == sum(failed)
            patterns.append(failed)
    rng = random.Random(11)
    assert patterns[0] == patterns[1] == [rng.random() < 0.3 for _ in range(30)]
    assert 0 < sum(patterns[0]) < 30


def test_rules_count_exactly_under_concurrent_clients_and_clear(proxy: RpcProxy) -> None:
    proxy.drop(times=13)
    failures = []

    def calls() -> None:
        w3 = client(proxy.url)
        for _ in range(10):
            try:
                w3.eth.get_block_number()
            except requests.ConnectionError:
                failures.append(1)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(failures) == 13
    assert proxy.stats[("eth_blockNumber", "drop")] == 13
    assert proxy.stats[("eth_blockNumber", "forwarded")] == 80 - 13
    proxy.add(Rule(Fault.HTTP_ERROR, times=None))
    with pytest.raises(requests.HTTPError):
        client(proxy.url).eth.get_block_number()
    proxy.clear()
    client(proxy.url).eth.get_block_number()
    proxy.reset_stats()
    assert proxy.stats == {}


def test_an_unreachable_upstream_is_a_502_and_only_loopback_is_allowed() -> None:
    with RpcProxy(f"http://127.0.0.1:{free_port()}") as p:
        with pytest.raises(requests.HTTPError) as info:
            client(p.url).eth.get_block_number()
        assert info.value.response.status_code == 502
        assert p.stats == {("eth_blockNumber", "upstream_error"): 1}
    for url in ("http://10.0.0.1:8545", "https://127.0.0.1:8545", "http://127.0.0.1"):
        with pytest.raises(ValueError, match="loopback"):
            RpcProxy(url)
    with pytest.raises(ValueError, match="times"):
        Rule(Fault.DROP, times=0)
