"""A private anvil node on a loopback port, for tests, benchmarks and local demos.

    with start_anvil() as url:            # http://127.0.0.1:<free port>
        w3 = connect(url)
        ...                                # the node is stopped on leaving the block

anvil comes from the npm package @foundry-rs/anvil-linux-amd64, installed by
scripts/install_anvil.sh into node_modules/.bin/anvil; ``REFUTE_ANVIL`` may name another binary.
The node runs the Prague hardfork (EIP-7623 calldata floor included, as on mainnet), without the
contract-size and request-size limits (the benchmarks send whole 7B-sized proofs) and with a
block gas limit high enough that eth_call never runs short of gas.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from web3 import Web3

from refute.contracts.errors import ChainConnectionError
from refute.errors import RefuteError

SOURCE_ROOT = Path(__file__).resolve().parents[1]
"""The source tree (for node_modules/.bin/anvil when refute is installed in place)."""
INSTALL_SCRIPT = "scripts/install_anvil.sh"
GAS_LIMIT = 10**12
"""Block gas limit, and so the eth_call gas cap."""
START_TIMEOUT = 30.0
_PORT_ATTEMPTS = 3  # a free port can be taken between our probe and anvil's bind


class AnvilNotFoundError(RefuteError, FileNotFoundError):
    """No anvil binary: not in $REFUTE_ANVIL, node_modules/.bin or PATH."""


def find_anvil() -> str | None:
    """Path of the anvil binary: $REFUTE_ANVIL, then node_modules/.bin/anvil of the source tree,
    then PATH; None if there is none."""
    override = os.environ.get("REFUTE_ANVIL")
    if override:
        return override if os.access(override, os.X_OK) else None
    local = SOURCE_ROOT / "node_modules" / ".bin" / "anvil"
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which("anvil")


def require_anvil() -> str:
    """The anvil binary, or AnvilNotFoundError saying how to install it."""
    binary = find_anvil()
    if binary is None:
        raise AnvilNotFoundError(
            "anvil not found (looked at $REFUTE_ANVIL, node_modules/.bin/anvil, PATH): "
            f"run `bash {INSTALL_SCRIPT}`"
        )
    return binary


def anvil_version(binary: str | None = None) -> str:
    """The first line of `anvil --version` (e.g. "anvil Version: 1.7.1"), for reports."""
    out = subprocess.run(
        [binary or require_anvil(), "--version"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(binary: str, port: int, extra: Sequence[str]) -> list[str]:
    return [
        binary,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--gas-limit", str(GAS_LIMIT),
        "--disable-code-size-limit",
        "--no-request-size-limit",
        "--hardfork", "prague",
        "--quiet",
        *extra,
    ]  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def start_anvil(
    *,
    binary: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = START_TIMEOUT,
) -> Iterator[str]:
    """Run a private anvil node on 127.0.0.1 on a free port for the duration of the block and
    yield its URL. Raises AnvilNotFoundError if there is no anvil binary, ChainConnectionError if
    it exits or does not answer within `timeout` seconds (with its output)."""
    binary = binary or require_anvil()
    for attempt in range(_PORT_ATTEMPTS):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(
                _command(binary, port, extra_args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                probe = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 5}))
                deadline = time.monotonic() + timeout
                while not probe.is_connected():
                    if proc.poll() is not None:
                        break
                    if time.monotonic() > deadline:
                        raise ChainConnectionError(
                            f"anvil did not answer on port {port} within {timeout:.0f} s"
                        )
                    time.sleep(0.1)
                else:
                    yield url
                    return
                log.seek(0)
                output = log.read().decode(errors="replace")
                if attempt + 1 == _PORT_ATTEMPTS or "in use" not in output:
                    raise ChainConnectionError(f"anvil exited with {proc.returncode}:\n{output}")
            finally:
                if proc.poll() is None:
                    _stop(proc)
