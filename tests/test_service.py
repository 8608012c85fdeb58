"""`refute prove` and `refute watch` as long-running processes (bisection/service.py,
refute/cli/service.py): in-process on the embedded chain, and as separate OS processes sharing an
anvil node, where the watcher is stopped mid-game and restarted from its state directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import Web3

from refute.bisection.requests import RequestError, parse_request
from refute.cli import main
from refute.contracts.game import GameParams
from refute.engine.checkpoint import load_model

PROMPT = "5,17,250,3"


def events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def names(log: list[dict]) -> list[str]:
    return [e["event"] for e in log]


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "a request is a JSON object"),
        ('{"tokens": [1], "prompt": "x"}', "exactly one of"),
        ('{"tokens": []}', "empty prompt"),
        ('{"tokens": [1, "a"]}', "list of integers"),
        ('{"tokens": [1, 320]}', "token 320 is outside the vocabulary"),
        ('{"prompt": "hello"}', "has no tokenizer"),
        ('{"tokens": [1], "max_new_tokens": 0}', "max_new_tokens"),
        ('{"tokens": [1], "temperature": -1}', "temperature"),
        ('{"tokens": [1], "seed": -3}', "seed"),
        ('{"tokens": [1], "max_new_tokens": 100000}', "exceed the model's"),
        ('{"tokens": [1], "top_p": 0.9}', "unknown fields ['top_p']"),
    ],
)
def test_bad_requests_are_named(model, line: str, message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_request(line, model)


def test_request_defaults_and_overrides(model) -> None:
    r = parse_request('{"tokens": [5, 17], "temperature": 0.5, "seed": 7}', model)
    assert (r.prompt, r.max_new_tokens, r.temperature, r.seed) == ((5, 17), 8, 0.5, 7)


def test_prove_with_watch_on_the_embedded_chain(tmp_path: Path) -> None:
    """One process: requests from a file (one malformed), claims posted, checked by the
    in-process watcher, finalised after the window, bond withdrawn, then exit when idle."""
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"tokens": [5, 17, 250], "max_new_tokens": 3}\n{"tokens": [999]}\n')
    args = [
        "prove",
        "--model",
        "tiny-llama",
        "--prompt-tokens",
        PROMPT,
        "--max-new-tokens",
        "3",
        "--requests",
        str(requests),
        "--window",
        "4",
        "--watch",
        "--until-idle",
        "--interval",
        "0.2",
        "--max-seconds",
        "120",
        "--state",
        str(tmp_path / "s"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    log = events(result.stdout)
    assert names(log)[0] == "deployed" and log[-1]["event"] == "exited"
    assert {"resumed", "metrics", "started"} <= set(names(log))
    assert log[-1]["reason"] == "idle" and log[-1]["errors"] == 0
    posted = [e for e in log if e["event"] == "claim.posted"]
    assert sorted(len(e["tokens"]) for e in posted) == [3, 3] and len(posted) == 2
    (rejected,) = [e for e in log if e["event"] == "request.rejected"]
    assert "token 999 is outside the vocabulary" in rejected["reason"]
    checked = [e for e in log if e["event"] == "claim.checked"]
    assert [e["verdict"] for e in checked] == ["match", "match"]
    finalized = sorted(e["claim"] for e in log if e["event"] == "claim.finalized")
    assert finalized == [0, 1]
    withdrawn = sum(e["wei"] for e in log if e["event"] == "withdrawn")
    # both claim bonds back, and the fees (11 positions): this prover deployed the game, so its
    # account is the fee recipient
    assert withdrawn == 2 * 10**18 + 11 * GameParams().fee_per_position
    deployment = json.loads((tmp_path / "s" / "deployment.json").read_text())
    assert deployment["game"] == log[0]["game"]
    # the embedded chain died with the process: its state directory cannot be reused
    again = CliRunner().invoke(main, [*args[:-2], "--state", str(tmp_path / "s")])
    assert again.exit_code == 2 and "belongs to an earlier chain" in again.output


def test_watch_bad_game_address_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["watch", "--model", "tiny-llama", "--game", "0x" + "11" * 20, "--state", str(tmp_path)],
    )
    assert result.exit_code == 1 and "no contract at 0x1111" in result.output
    result = CliRunner().invoke(main, ["watch", "--model", "tiny-llama", "--game", "0x12",
                                       "--state", str(tmp_path / "a")])  # fmt: skip
    assert result.exit_code == 1 and "'0x12' is not an address" in result.output
    result = CliRunner().invoke(
        main, ["watch", "--model", "tiny-llama", "--bonds", "1,2", "--state", str(tmp_path / "b")]
    )
    assert (
        result.exit_code == 2 and "expected three amounts (claim, challenge, move)" in result.output
    )


# --- separate processes on a real node ------------------------------------------------------------


def _start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "refute", *args, "--log-file", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def _read(log: Path) -> list[dict]:
    return events(log.read_text()) if log.exists() else []


def _wait(proc: subprocess.Popen, log: Path, done, timeout: float = 240.0) -> list[dict]:
    """Wait until `done(events)` holds; fail with the process's stderr if it dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = _read(log)
        if done(entries):
            return entries
        if proc.poll() is not None:
            pytest.fail(f"process exited {proc.returncode}:\n{proc.stderr.read()}\n{entries[-3:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out; last events {_read(log)[-3:]}")


def test_prover_and_watcher_processes_on_anvil(anvil_web3: Web3, tmp_path: Path) -> None:
    """A cheating `refute prove` and an honest `refute watch` (signing with a local key) share an
    anvil node; the watcher is stopped with SIGTERM in the middle of the game and restarted on
    its state directory; it wins, the claim is overturned, and the prover exits when idle."""
    url = anvil_web3.provider.endpoint_uri
    key = Account.create()
    funder = anvil_web3.eth.accounts[0]
    tx = anvil_web3.eth.send_transaction({"from": funder, "to": key.address, "value": 10**19})
    anvil_web3.eth.wait_for_transaction_receipt(tx)
    env = os.environ | {"REFUTE_TEST_WATCHER_KEY": key.key.hex()}
    plog, wlog = tmp_path / "prover.log", tmp_path / "watcher.log"
    prover = _start(
        [
            "prove",
            "--rpc",
            url,
            "--model",
            "tiny-llama",
            "--prompt-tokens",
            PROMPT,
            "--max-new-tokens",
            "4",
            "--cheat",
            "3,layers.0.mlp.down,5",
            "--window",
            "600",
            "--clock",
            "600",
            "--extension",
            "30",
            "--interval",
            "0.3",
            "--state",
            str(tmp_path / "p"),
            "--until-idle",
            "--max-seconds",
            "300",
        ],
        plog,
    )
    watcher = None
    try:
        log = _wait(prover, plog, lambda ev: "claim.posted" in names(ev))
        game = log[0]["game"]
        watch = [
            "watch",
            "--rpc",
            url,
            "--game",
            game,
            "--model",
            "tiny-llama",
            "--key-env",
            "REFUTE_TEST_WATCHER_KEY",
            "--interval",
            "0.3",
            "--state",
            str(tmp_path / "w"),
        ]
        watcher = _start(watch, wlog, env)
        _wait(watcher, wlog, lambda ev: any(e.get("stage") == "RECORD" for e in ev))
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(30) == 0
        assert _read(wlog)[-1] | {"time": None} == {
            "time": None,
            "level": "info",
            "role": "watcher",
            "event": "exited",
            "reason": "stopped",
            "rounds": _read(wlog)[-1]["rounds"],
            "errors": 0,
        }
        watcher = _start(watch, wlog, env)  # resumes from tmp_path / "w"
        _wait(watcher, wlog, lambda ev: {"claim.overturned", "dispute.resolved"} <= set(names(ev)))
        assert prover.wait(120) == 0
        watcher.send_signal(signal.SIGTERM)  # ends after the round (its payouts included)
        assert watcher.wait(30) == 0
        wl = _read(wlog)
    finally:
        for proc in (prover, watcher):
            if proc is not None and proc.poll() is None:
                proc.kill()
    pl = _read(plog)
    assert pl[-1]["event"] == "exited" and pl[-1]["reason"] == "idle"
    (resolved,) = [e for e in wl if e["event"] == "dispute.resolved"]
    assert resolved["won"] and resolved["winner"] == "challenge"
    assert (resolved["disputed"]["position"], resolved["disputed"]["node"]) == (
        3,
        "layers.0.mlp.down",
    )
    assert names(wl).count("joined") == 2 and names(wl).count("claim.checked") == 1
    assert [e["event"] for e in pl if e["event"].startswith("claim.")][-1] == "claim.overturned"
    # every move was made once across the restart: the chain counts them
    moves = [
        e for e in wl + pl if e["event"] == "tx" and e["fn"] not in ("openDispute", "postClaim")
    ]
    game_moves = sum(1 for e in moves if e["fn"] not in ("step", "timeout"))
    d = anvil_web3.eth.contract(address=game, abi=_game_abi()).functions.getDispute(0).call()
    assert d[-1] == game_moves  # Dispute.moves
    withdrawn = sum(e["wei"] for e in wl if e["event"] == "withdrawn")
    # its challenge bond and every move bond (the losing side's go to the winning opener); its
    # share of the forfeited claim bond is collectable once the claim settles, after W (600 s)
    assert withdrawn == 5 * 10**17 + game_moves * 10**15
    assert anvil_web3.eth.get_balance(key.address) > 10**19  # won more than it spent on gas


def _game_abi() -> list:
    from refute.contracts.artifacts import load

    return load("DisputeGame").abi


def test_service_logs_a_whole_dispute_and_shows_clocks(
    embedded_web3: Web3, model, tmp_path
) -> None:
    """A Service running a cheating prover and an honest watcher on one chain: the status line
    names the dispute, its stage and whose clock runs; the log has every transaction and the
    outcome, and the watcher's winnings are withdrawn."""
    import io
    import threading

    from refute.bisection.challenger import Challenger
    from refute.bisection.demo import flip_bit
    from refute.bisection.eventlog import EventLog
    from refute.bisection.prover import Prover
    from refute.bisection.service import Service
    from refute.contracts.game import GameClient, GameParams
    from refute.engine.executor import Executor, Request

    # a short window: the watcher's reward share is paid once the claim settles (W over)
    params = GameParams(claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15, window=8)
    game = GameClient.deploy(w3=embedded_web3, params=params)
    game.register(model)
    acc = embedded_web3.eth.accounts
    cheat = Executor(model, tamper=flip_bit((2, model.program.node_index("layers.1.mlp.down"), 3)))
    prover = Prover(game, model, tmp_path / "p", acc[1], executor=cheat, consistent_lies=True)
    watcher = Challenger(game, model, tmp_path / "w", acc[2])
    stream = io.StringIO()
    lines: list[str] = []
    service = Service(game, [prover, watcher], EventLog(stream, "test"), interval=0.05,
                      status=lines.append)  # fmt: skip
    service.submit(Request((5, 17, 250, 3), 3))
    service.run(threading.Event(), until_idle=True, max_seconds=120)
    log = events(stream.getvalue())
    assert log[-1]["reason"] == "idle" and service.errors == 0
    (did,) = (int(k) for k in watcher.disputes)
    mid = next(line for line in lines if f"#{did} trace (claim side" in line)
    assert f"#{did} trace (challenge side, " in mid and "clock 1" in mid
    assert "claims 1 overturned" in lines[-1] and "none active" in lines[-1]
    txs = [e for e in log if e["event"] == "tx" and e["fn"] != "postClaim"]
    assert {e["client"] for e in txs} == {"prover", "watcher"}
    assert txs[0]["fn"] == "openDispute" and txs[-1]["fn"] == "step"
    resolved = [e for e in log if e["event"] == "dispute.resolved"]
    assert [(e["winner"], e["won"]) for e in resolved] == [("challenge", False),
                                                            ("challenge", True)]  # fmt: skip
    assert resolved[1]["disputed"]["node"] == "layers.1.mlp.down"
    assert {e["event"] for e in log} >= {"claim.posted", "claim.checked", "claim.overturned"}
    moves = game.dispute(did).moves
    withdrawn = [e["wei"] for e in log if e["event"] == "withdrawn"]
    # the watcher: half the claim bond (the only successful challenge), its challenge bond, every
    # move bond; the cheating prover: nothing
    assert (
        sum(withdrawn) == params.claim_bond // 2 + params.challenge_bond + moves * params.move_bond
    )


def test_health_and_metrics_endpoints_of_a_running_prover(tmp_path: Path) -> None:
    """`refute prove --watch` serves /health and Prometheus /metrics on a loopback port named in
    its `metrics` event; the figures follow the game (claims pending, last block, transactions)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    plog = tmp_path / "p.log"
    proc = _start(["prove", "--model", "tiny-llama", "--prompt-tokens", PROMPT, "--watch",
                   "--window", "3600", "--interval", "0.2", "--max-seconds", "60",
                   "--state", str(tmp_path / "s")], plog)  # fmt: skip
    try:
        log = _wait(proc, plog, lambda ev: "claim.checked" in names(ev) and "metrics" in names(ev))
        (where,) = [e for e in log if e["event"] == "metrics"]
        assert where["url"].startswith("http://127.0.0.1:")
        time.sleep(1.0)  # a round after the check
        with urllib.request.urlopen(where["health"], timeout=5) as r:
            health = json.loads(r.read())
            assert r.status == 200 and health["status"] == "ok", health
        with urllib.request.urlopen(where["metrics"], timeout=5) as r:
            text = r.read().decode()
        samples = {
            (s.name, s.labels.get("role", s.labels.get("fn"))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("refute_claims_pending", "prover")] == 1  # posted, window open
        assert samples[("refute_last_block_number", None)] >= 3
        assert samples[("refute_transactions_total", "postClaim")] == 1
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(where["url"] + "/nothing", timeout=5)
        assert missing.value.code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.parametrize("retries", [(0.0, 3.0, 9.0), (0.0, 3.0, 10.5)])
def test_a_long_outage_is_reported_even_when_no_failed_retry_falls_past_the_threshold(
    retries: tuple[float, ...], monkeypatch
) -> None:
    """Failed polls at the given seconds, then one that succeeds at 12.6 s (a doubling backoff
    can jump from before UNREACHABLE_AFTER to after the node is back): `node.unreachable` is
    logged once, with the outage's length, before `node.reachable`; a short outage logs
    neither."""
    import io

    from refute.bisection import service as service_module
    from refute.bisection.eventlog import EventLog
    from refute.bisection.service import UNREACHABLE_AFTER, Service

    clock = {"now": 1000.0}
    monkeypatch.setattr(service_module.time, "monotonic", lambda: clock["now"])
    stream = io.StringIO()
    service = Service(None, [], EventLog(stream, "watcher"), interval=0.2)  # type: ignore[arg-type]
    for at in retries:
        clock["now"] = 1000.0 + at
        service._failed(object(), ConnectionRefusedError("refused"))  # type: ignore[arg-type]
    clock["now"] = 1012.6
    service._recovered()
    clock["now"] = 1020.0  # a short outage afterwards: nothing but the error
    service._failed(object(), ConnectionRefusedError("refused"))  # type: ignore[arg-type]
    clock["now"] = 1021.0
    service._recovered()
    names = [e["event"] for e in events(stream.getvalue())]
    assert names == ["error"] * len(retries) + ["node.unreachable", "node.reachable", "error"]
    (down,) = [e for e in events(stream.getvalue()) if e["event"] == "node.unreachable"]
    assert down["seconds"] == (12.6 if retries[-1] < UNREACHABLE_AFTER else retries[-1])


def test_a_claim_posted_and_finalised_in_one_round_is_logged_as_both(
    embedded_web3: Web3, model, tmp_path
) -> None:
    """Where the window passes while a round posts (a slow node, a clock jump), the claim is
    first seen finalised: its posting is still logged, before its outcome."""
    import io
    import threading

    from refute.bisection.eventlog import EventLog
    from refute.bisection.prover import Prover
    from refute.bisection.service import Service
    from refute.contracts.game import GameClient
    from refute.engine.executor import Request

    params = GameParams(claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15, window=8)
    game = GameClient.deploy(w3=embedded_web3, params=params)
    game.register(model)
    prover = Prover(game, model, tmp_path / "p", embedded_web3.eth.accounts[1])
    finalize = prover._finalize

    def window_passed_meanwhile() -> None:
        if prover.store["claims"]:
            tester = embedded_web3.provider.ethereum_tester
            tester.time_travel(embedded_web3.eth.get_block("latest")["timestamp"] + 20)
        finalize()

    prover._finalize = window_passed_meanwhile
    stream = io.StringIO()
    service = Service(game, [prover], EventLog(stream, "test"), interval=0.05)
    service.submit(Request((5, 17, 250, 3), 3), rid="r1")
    service.run(threading.Event(), until_idle=True, max_seconds=60)
    log = events(stream.getvalue())
    claims = [(e["event"], e.get("id")) for e in log if e["event"].startswith("claim.")]
    assert claims == [("claim.posted", "r1"), ("claim.finalized", "r1")]
    assert prover.status(0) == "finalized"
