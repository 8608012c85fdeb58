"""Connections to an EVM chain and contract deployment.

The default chain is embedded: web3.py's EthereumTesterProvider runs py-evm in this process, with
no server. Any JSON-RPC URL (anvil, a testnet node) works the same way through `connect(url)`.
"""

from __future__ import annotations

from typing import Any

from web3 import Web3
from web3.contract import Contract
from web3.providers.eth_tester import EthereumTesterProvider

from refute.contracts.artifacts import load
from refute.contracts.errors import ChainConnectionError


def embedded_chain() -> Web3:
    """A fresh in-process chain (py-evm) with funded, unlocked accounts."""
    return Web3(EthereumTesterProvider())


def connect(url: str | None = None, *, timeout: float = 60.0) -> Web3:
    """Web3 on the JSON-RPC node at `url` (http:// or https://), or an embedded chain if None."""
    if url is None:
        return embedded_chain()
    url = rpc_url(url)
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    if not w3.is_connected():
        raise ChainConnectionError(f"no JSON-RPC node answers at {url}")
    return w3


def rpc_url(url: str) -> str:
    """`url` with a scheme: `host:port` (as foundry's tools accept it) is taken as http://; a
    scheme other than http(s) is refused with a ChainConnectionError saying what is wrong."""
    if "://" not in url:
        return f"http://{url}"
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ChainConnectionError(
            f"{url}: only http:// and https:// JSON-RPC URLs are supported, not {scheme}://"
        )
    return url


def deploy(w3: Web3, name: str, *args: Any, sender: str | None = None) -> Contract:
    """Deploy the shipped contract `name` with constructor `args`; return the bound contract.

    `sender` defaults to the node's first unlocked account.
    """
    artifact = load(name)
    if sender is None:
        accounts = w3.eth.accounts
        if not accounts:
            raise ChainConnectionError("the node has no unlocked account to deploy from")
        sender = accounts[0]
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx_hash = factory.constructor(*args).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1 or receipt["contractAddress"] is None:
        raise ChainConnectionError(f"deployment of {name} failed (tx {tx_hash.hex()})")
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)


def is_embedded(w3: Web3) -> bool:
    """Whether `w3` is an in-process py-evm chain (no server)."""
    return isinstance(w3.provider, EthereumTesterProvider)


def set_next_timestamp(w3: Web3, timestamp: int) -> None:
    """Jump the chain's clock (test and demo chains only): the latest block gets `timestamp` - 1
    and the next transaction's block `timestamp`, on the embedded chain (eth-tester's
    time_travel) and on anvil (evm_mine at a timestamp, then evm_setNextBlockTimestamp)."""
    if is_embedded(w3):
        w3.provider.ethereum_tester.time_travel(timestamp)
        return
    for method, params in (
        ("evm_mine", [timestamp - 1]),
        ("evm_setNextBlockTimestamp", [timestamp]),
    ):
        response = w3.provider.make_request(method, params)
        if "error" in response:
            raise ChainConnectionError(f"{method} failed: {response['error']}")
