"""pytest fixtures for EVM chains: the embedded py-evm chain and a real anvil node.

Use from a test module with ``from tests.chain_fixtures import anvil_web3, embedded_web3``
(or register the module once in tests/conftest.py: ``pytest_plugins = ["tests.chain_fixtures"]``).

anvil comes from the npm package @foundry-rs/anvil-linux-amd64, installed by
scripts/install_anvil.sh into node_modules/.bin/anvil; ``REFUTE_ANVIL`` may name another binary.
Without anvil the anvil fixture skips the test, or fails it when ``CI`` is set, so that CI
cannot pass by skipping the real-node tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from refute.contracts.chain import embedded_chain

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = "scripts/install_anvil.sh"
ANVIL_GAS_LIMIT = 10**12  # block gas limit, and so the eth_call gas cap
ANVIL_START_TIMEOUT = 30.0


def find_anvil() -> str | None:
    """Path of the anvil binary: $REFUTE_ANVIL, then node_modules/.bin/anvil, then PATH."""
    override = os.environ.get("REFUTE_ANVIL")
    if override:
        return override if os.access(override, os.X_OK) else None
    local = REPO_ROOT / "node_modules" / ".bin" / "anvil"
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which("anvil")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing_anvil() -> None:
    message = (
        f"anvil not found (looked at $REFUTE_ANVIL, node_modules/.bin/anvil, PATH): "
        f"run `bash {INSTALL_SCRIPT}`"
    )
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def anvil_web3() -> Iterator[Web3]:
    """Web3 on a private anvil node at 127.0.0.1 on a free port, stopped after the session."""
    binary = find_anvil()
    if binary is None:
        _missing_anvil()
        return
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [
            binary,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--gas-limit", str(ANVIL_GAS_LIMIT),
            "--disable-code-size-limit",
            "--no-request-size-limit",
            "--hardfork", "prague",
            "--quiet",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 600}))
        deadline = time.monotonic() + ANVIL_START_TIMEOUT
        while not w3.is_connected():
            if proc.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")
                pytest.fail(f"anvil exited with {proc.returncode}:\n{output}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"anvil did not answer on port {port} within "
                            f"{ANVIL_START_TIMEOUT:.0f} s", pytrace=False)  # fmt: skip
            time.sleep(0.1)
        yield w3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def embedded_web3() -> Web3:
    """Web3 on an in-process py-evm chain (EthereumTesterProvider), shared by the session."""
    return embedded_chain()
