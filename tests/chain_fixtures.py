"""pytest fixtures for EVM chains: the embedded py-evm chain and a real anvil node.

Use from a test module with ``from tests.chain_fixtures import anvil_web3, embedded_web3``
(or register the module once in tests/conftest.py: ``pytest_plugins = ["tests.chain_fixtures"]``).

The anvil node is started by `refute.contracts.anvil.start_anvil` (binary from
scripts/install_anvil.sh, or ``REFUTE_ANVIL``). Without anvil the anvil fixture skips the test,
or fails it when ``CI`` is set, so that CI cannot pass by skipping the real-node tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from web3 import Web3

from refute.contracts.anvil import AnvilNotFoundError, find_anvil, start_anvil
from refute.contracts.chain import connect, embedded_chain
from refute.contracts.errors import ChainConnectionError

__all__ = ["anvil_web3", "embedded_web3", "find_anvil"]

RPC_TIMEOUT = 600  # seconds per request: the exhaustive soft-float checks send long calls


def _missing_anvil(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def anvil_web3() -> Iterator[Web3]:
    """Web3 on a private anvil node at 127.0.0.1 on a free port, stopped after the session."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(start_anvil())
        except (AnvilNotFoundError, ChainConnectionError) as exc:
            problem = exc  # reported outside the handler, without the chained traceback
        else:
            yield connect(url, timeout=RPC_TIMEOUT)
            return
    if isinstance(problem, AnvilNotFoundError):
        _missing_anvil(str(problem))
    pytest.fail(str(problem), pytrace=False)


@pytest.fixture(scope="module")
def embedded_web3() -> Web3:
    """Web3 on an in-process py-evm chain (EthereumTesterProvider), one per test module: the
    embedded chain's eth_getLogs decodes every transaction in the block range, so a chain that
    earlier modules filled with thousands of games makes later event queries crawl."""
    return embedded_chain()
