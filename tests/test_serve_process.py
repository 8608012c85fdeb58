"""`refute serve` as an OS process on anvil, started and stopped as an operator does:

1. SIGKILLed (`REFUTE_CRASH_AT=prover:sent:postClaim`) after sending the claim of a request and
   before its receipt: the client's connection drops; restarted on the same `--state`, the server
   answers the request sent again with the same Idempotency-Key with that one claim.
2. SIGTERMed while a request it has queued is being generated: the waiting client gets a 503
   saying the request stays queued, the process exits 0 after its round ("exited", "stopped");
   restarted, the server posts that request's claim and answers it when sent again.
3. `refute check` finds the answers to be their claims, reading the node from ETH_RPC_URL.

Nothing is posted twice: ClaimPosted is counted on chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from web3 import Web3

from refute.contracts.game import GameClient
from tests.test_service import events

START_LIMIT = 90.0  # seconds a server may take to start serving


class Server:
    """One `refute serve` process; each start logs to its own file."""

    def __init__(self, rpc: str, state: Path, logs: Path) -> None:
        self.rpc, self.state, self.logs = rpc, state, logs
        self.starts = 0
        self.popen: subprocess.Popen | None = None
        self.url = ""

    @property
    def log(self) -> Path:
        return self.logs / f"serve{self.starts}.log"

    def start(self, crash: str | None = None) -> openai.OpenAI:
        self.starts += 1
        env = dict(os.environ)
        env.pop("REFUTE_CRASH_AT", None)
        if crash is not None:
            env["REFUTE_CRASH_AT"] = crash
        args = ["serve", "--rpc", self.rpc, "--model", "demo", "--backend", "reference"]
        args += ["--port", "0", "--interval", "0.5", "--state", str(self.state)]
        err = open(self.log.with_suffix(".stderr"), "w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "refute", *args, "--log-file", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        err.close()
        serving = self.wait_for("serving", START_LIMIT)
        self.url = serving["url"]
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def events(self) -> list[dict]:
        return events(self.log.read_text()) if self.log.exists() else []

    def wait_for(self, name: str, timeout: float, **fields) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e["event"] == name and all(e.get(k) == v for k, v in fields.items()):
                    return e
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        stderr = self.log.with_suffix(".stderr").read_text()[-3000:]
        pytest.fail(f"no {name} {fields} in start {self.starts} (rc {self.popen.poll()}): {stderr}")

    def exit_code(self, timeout: float = 60.0) -> int:
        return self.popen.wait(timeout=timeout)


def _rid(key: str) -> str:
    return "cmpl-ik-" + hashlib.sha256(key.encode()).hexdigest()[:32]


@pytest.fixture
def server(anvil_web3: Web3, tmp_path: Path):
    server = Server(anvil_web3.provider.endpoint_uri, tmp_path / "state", tmp_path)
    yield server
    if server.popen is not None and server.popen.poll() is None:  # a failed test's server
        server.popen.kill()
        server.popen.wait(10)


def test_served_requests_survive_sigkill_and_sigterm(
    anvil_web3: Web3, server: Server, tmp_path: Path
) -> None:
    client = server.start(crash="prover:sent:postClaim")
    game_address = server.wait_for("deployed", 5)["game"]
    game = GameClient.at(anvil_web3, game_address)
    first = {"model": "demo", "prompt": "Return a new", "max_tokens": 6, "seed": 4}
    first_key = {"Idempotency-Key": "app-request-1"}

    # 1. killed between sending postClaim and its receipt
    with pytest.raises(openai.APIConnectionError):
        client.completions.create(**first, extra_headers=first_key)
    assert server.exit_code() == -signal.SIGKILL
    assert len(game.events("ClaimPosted")) == 1  # the transaction went out before the kill
    client = server.start()
    answer = client.completions.create(**first, extra_headers=first_key)
    ext = answer.model_extra["refute"]
    assert answer.id == _rid("app-request-1") and ext["claim"] == 0
    assert len(game.events("ClaimPosted")) == 1  # adopted from the chain, not posted again
    (posted,) = game.events("ClaimPosted")
    receipt = anvil_web3.eth.get_transaction_receipt(ext["tx"])  # the first start's
    assert receipt["blockNumber"] == posted["blockNumber"]
    assert list(posted["outputTokens"]) == ext["tokens"]

    # 2. SIGTERM while a queued request is generated (120 tokens on the reference backend)
    second = {"model": "demo", "prompt": "This module", "max_tokens": 120, "seed": 9}
    second_key = {"Idempotency-Key": "app-request-2"}
    outcome: dict = {}

    def ask() -> None:
        try:
            outcome["answer"] = client.completions.create(**second, extra_headers=second_key)
        except openai.APIStatusError as exc:
            outcome["error"] = exc

    asker = threading.Thread(target=ask)
    asker.start()
    server.wait_for("request.accepted", 30, id=_rid("app-request-2"))
    server.popen.send_signal(signal.SIGTERM)
    asker.join(timeout=60)
    assert server.exit_code() == 0
    error = outcome["error"]
    assert error.status_code == 503 and "stays queued" in error.message
    assert "Idempotency-Key" in error.message
    assert server.events()[-1]["event"] == "exited"
    assert server.events()[-1]["reason"] == "stopped"
    assert len(game.events("ClaimPosted")) == 1
    client = server.start()
    again = client.completions.create(**second, extra_headers=second_key)
    assert again.model_extra["refute"]["claim"] == 1
    assert len(again.model_extra["refute"]["tokens"]) == 120
    assert len(game.events("ClaimPosted")) == 2

    # 3. `refute check` on both answers, the node from the environment
    for k, response in enumerate((answer, again)):
        path = tmp_path / f"answer{k}.json"
        path.write_text(json.dumps(response.to_dict()))
        env = {key: v for key, v in os.environ.items() if key != "REFUTE_RPC_URL"}
        env["ETH_RPC_URL"] = server.rpc
        checked = subprocess.run(
            [sys.executable, "-m", "refute", "check", str(path), "--model", "demo", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stderr
        result = json.loads(checked.stdout)
        assert result["claim"] == k and result["status"] == "pending" and result["matches"]
    server.popen.send_signal(signal.SIGTERM)
    assert server.exit_code() == 0
