"""The CLI follows the conventions its users know from foundry and vLLM: the node from
REFUTE_RPC_URL / ETH_RPC_URL, host:port URLs, amounts with units, a TOML config file that the
command line overrides, the demo model by name, one spelling of the state directory, --json,
-q, and every input checked before anything is deployed."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from web3 import Web3

from refute.cli import main
from refute.cli.options import parse_amount
from refute.contracts.chain import rpc_url
from refute.contracts.errors import ChainConnectionError


@pytest.mark.parametrize(
    ("text", "wei"),
    [("1ether", 10**18), ("0.05ether", 5 * 10**16), ("20gwei", 20 * 10**9), ("1e18", 10**18),
     ("1000", 1000), ("3 wei", 3), ("1.5ETH", 15 * 10**17)],
)  # fmt: skip
def test_amounts_take_units(text: str, wei: int) -> None:
    assert parse_amount(text, "--bonds") == wei


@pytest.mark.parametrize(("text", "message"), [("1.5wei", "whole number"), ("abc", "not an amount"),
                                               ("-1ether", "whole number")])  # fmt: skip
def test_bad_amounts_are_named(text: str, message: str) -> None:
    with pytest.raises(click.BadParameter, match=message):
        parse_amount(text, "--bonds")


def test_urls_without_a_scheme_are_http() -> None:
    assert rpc_url("127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert rpc_url("https://node.example:443") == "https://node.example:443"
    with pytest.raises(ChainConnectionError, match="not ws://"):
        rpc_url("ws://127.0.0.1:8545")


def test_node_from_the_environment_and_watch_needs_a_game(anvil_web3: Web3, tmp_path) -> None:
    """ETH_RPC_URL given as host:port reaches the node; `watch` then refuses to deploy an empty
    game of its own unless told to."""
    host = anvil_web3.provider.endpoint_uri.removeprefix("http://")
    result = CliRunner().invoke(main, ["watch", "--model", "tiny-llama", "--state",
                                       str(tmp_path / "w")], env={"ETH_RPC_URL": host})  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "give --game ADDRESS" in result.output and "--deploy" in result.output
    assert not (tmp_path / "w" / "deployment.json").exists()


def test_config_file_and_command_line_precedence(tmp_path: Path) -> None:
    config = tmp_path / "refute.toml"
    config.write_text('[watch]\nmodel = "tiny-llama"\nclock = 100\nextension = 500\n')
    state = ["--state", str(tmp_path / "s")]
    refused = CliRunner().invoke(main, ["--config", str(config), "watch", *state])
    assert refused.exit_code == 2 and "extension must not exceed the clock" in refused.output
    ran = CliRunner().invoke(main, ["--config", str(config), "watch", "--clock", "1000",
                                    "--max-seconds", "0", "--no-metrics", *state])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    joined = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    assert joined[0]["event"] == "deployed" and joined[0]["params"]["clock"] == 1000
    bad = tmp_path / "bad.toml"
    bad.write_text("[watch]\nwindows = 3\n")
    result = CliRunner().invoke(main, ["--config", str(bad), "watch"])
    assert result.exit_code == 2 and "[watch] has no option 'windows'" in result.output
    bad.write_text("[nope]\n")
    result = CliRunner().invoke(main, ["--config", str(bad), "watch"])
    assert result.exit_code == 2 and "[nope] is not a command" in result.output


def test_inputs_are_checked_before_anything_is_deployed(tmp_path: Path) -> None:
    for args, message in [
        (["--requests", str(tmp_path / "missing.jsonl")], "is not a file"),
        (["--cheat", "1,layers.99.mlp.down,0"], "layers.99.mlp.down"),
        (["--bonds", "1ether,2ether"], "expected three amounts"),
        (["--fee", "1.5wei"], "whole number"),
    ]:
        state = tmp_path / str(len(message))
        result = CliRunner().invoke(main, ["prove", "--model", "tiny-llama", *args,
                                           "--state", str(state)])  # fmt: skip
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert not (state / "deployment.json").exists()


def test_demo_model_by_name_quiet_log_and_json_verify(tmp_path: Path) -> None:
    trace = tmp_path / "run.msgpack"
    args = ["run", "--model", "demo", "--prompt", "Return a new", "--max-new-tokens", "2"]
    run = CliRunner().invoke(main, [*args, "--trace", str(trace), "--json"])
    assert run.exit_code == 0, run.output
    verified = CliRunner().invoke(main, ["verify-trace", str(trace), "--json"])
    assert verified.exit_code == 0, verified.output
    out = json.loads(verified.stdout)
    assert (
        out["ok"] and out["trace_root"] == out["claimed_root"] and out["first_difference"] is None
    )
    quiet = CliRunner().invoke(main, ["watch", "--model", "tiny-llama", "-q", "--max-seconds", "0",
                                      "--no-metrics", "--state", str(tmp_path / "q")])  # fmt: skip
    assert quiet.exit_code == 0, quiet.output
    levels = {
        json.loads(line)["level"] for line in quiet.stdout.splitlines() if line.startswith("{")
    }
    assert levels <= {"warning", "error"} and levels  # the embedded-chain warning is kept
    help_text = CliRunner().invoke(main, ["prove", "--help"]).output
    assert "[0, 2^256)" in help_text and str(2**256 - 1) not in help_text
