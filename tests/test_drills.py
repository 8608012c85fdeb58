"""bisection/drills.py and the drill options of `refute prove --cheat` / `refute watch --lie`:
every refusal is named, a drill changes one element of one record (so the trace first differs
from the honest one there), and a cheating prover staged with --cheat loses to the watcher."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from refute.bisection.drills import DrillError, parse_cheat, parse_lie
from refute.cli import main
from refute.engine import backends
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.engine.ir import Op

REQUEST = Request((5, 17, 250, 3), 3)  # 6 positions


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def honest(model):
    """The honest run with every node's output at every position captured."""
    every = tuple(range(len(model.program.nodes)))
    executor = Executor(model, backend=backends.make("cpu"), capture=every)
    (gen,) = executor.generate([REQUEST])
    return gen


def test_targets_by_name_or_id(model) -> None:
    p = model.program
    down = p.node_index("layers.1.mlp.down")
    for text in ("3,layers.1.mlp.down,5", f"3,{down},5", " 3 , layers.1.mlp.down , 5 "):
        d = parse_cheat(text, model)
        assert (d.position, d.node_id, d.node, d.element) == (3, down, "layers.1.mlp.down", 5)
    assert parse_lie("0,embed,63", model).describe() == "element 63 of embed (node 0) at position 0"
    cache = parse_cheat("3,layers.0.attn.k_cache,127", model)  # the last of row 3 (32 per row)
    assert cache.element == 127


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3,layers.1.mlp.down", "expected POSITION,NODE,ELEMENT (e.g. 3,layers.1.mlp.down,5)"),
        ("3,,5", "expected POSITION,NODE,ELEMENT"),
        ("x,layers.1.mlp.down,5", "POSITION must be an integer, got 'x'"),
        ("3,layers.1.mlp.down,1.5", "ELEMENT must be an integer, got '1.5'"),
        ("256,lm_head,0", "position 256 is outside tiny-llama's 256 positions (0..255)"),
        ("-1,lm_head,0", "position -1 is outside tiny-llama's 256 positions"),
        (
            "3,layers.9.x,0",
            "node 'layers.9.x' is not in the program of tiny-llama; nodes are named like "
            "embed, layers.0.mlp.down, layers.1.mlp.down, lm_head, sample (87 nodes, ids 0..86)",
        ),
        ("3,87,0", "node id 87 is outside the program of tiny-llama (ids 0..86)"),
        ("3,layers.1.mlp.down,64", "element 64 is outside layers.1.mlp.down's 64 outputs at pos"),
        ("3,layers.1.mlp.down,5000", "element 5000 is outside layers.1.mlp.down's 64 outputs"),
        ("3,layers.1.mlp.down,-1", "element -1 is outside"),
        ("2,layers.0.attn.scores,12", "element 12 is outside layers.0.attn.scores's 12 outputs"),
        ("3,sample,1", "element 1 is outside sample's 1 outputs at position 3"),
        (
            "3,layers.0.attn.k_cache,40",
            "element 40 of layers.0.attn.k_cache at position 3 is cache row 1, written at "
            "position 1: at position 3 only elements 96..127 are written",
        ),
    ],
)
def test_every_bad_target_is_named(model, text: str, message: str) -> None:
    for parse in (parse_cheat, parse_lie):
        with pytest.raises(DrillError) as info:
            parse(text, model)
        assert message in str(info.value)


@given(data=st.data())
def test_a_drill_changes_one_element_of_one_record(model, honest, data) -> None:
    """Whatever the target: that record's output differs from the honest one in exactly that
    element (by the lowest bit; an index by +1 modulo its range), and the trace first differs
    from the honest trace at exactly that record."""
    p = model.program
    t = data.draw(st.integers(0, REQUEST.positions - 1), label="position")
    n = data.draw(st.integers(0, len(p.nodes) - 1), label="node")
    node = p.nodes[n]
    size = p.output_size(n, t)
    low = t * (size // (t + 1)) if node.op == Op.CACHE_APPEND else 0
    e = data.draw(st.integers(low, size - 1), label="element")
    _check_one_change(model, honest, t, n, e)


@pytest.mark.parametrize(
    ("t", "name", "e"),
    [(3, "layers.0.attn.k_cache", 100), (5, "layers.1.attn.v_cache", 191), (3, "sample", 0),
     (5, "sample", 0), (0, "embed", 0), (4, "lm_head", 319), (2, "layers.1.attn.scores", 11)],
)  # fmt: skip
def test_one_change_at_cache_rows_tokens_and_edges(model, honest, t, name, e) -> None:
    _check_one_change(model, honest, t, model.program.node_index(name), e)


def _check_one_change(model, honest, t: int, n: int, e: int) -> None:
    p = model.program
    node = p.nodes[n]
    size = p.output_size(n, t)
    drill = parse_cheat(f"{t},{node.name},{e}", model)
    executor = Executor(model, backend=backends.make("cpu"), tamper=drill, capture=(n,))
    (gen,) = executor.generate([REQUEST])
    assert drill.applied == 1
    assert honest.trace.first_difference(gen.trace) == (t, n)
    want, got = honest.captured[n][t].reshape(-1), gen.captured[n][t].reshape(-1)
    assert want.shape == got.shape == (size,)
    changed = np.flatnonzero(want.view(np.uint32) != got.view(np.uint32))
    assert changed.tolist() == [e]
    if node.outputs_index:
        bound = p.vocab_size if node.op == Op.SAMPLE else p.resolve((node.reduce_len,), t)[0]
        assert int(got[e]) == (int(want[e]) + 1) % bound
    else:
        assert int(want.view(np.uint32)[e] ^ got.view(np.uint32)[e]) == 1


def test_a_drill_past_the_request_never_fires(model, honest) -> None:
    drill = parse_cheat(f"{REQUEST.positions},layers.1.mlp.down,5", model)
    (gen,) = Executor(model, backend=backends.make("cpu"), tamper=drill).generate([REQUEST])
    assert drill.applied == 0 and gen.trace.root() == honest.trace.root()


# --- the CLI ---------------------------------------------------------------------------------


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_prove_cheat_is_caught_by_the_watcher(tmp_path: Path) -> None:
    """`refute prove --cheat ... --watch`: the in-process (honest) watcher disputes the claim,
    the bisection ends on the drilled record, the claim is overturned and the watcher wins."""
    result = CliRunner().invoke(main, [
        "prove", "--model", "tiny-llama", "--prompt-tokens", "5,17,250,3", "--max-new-tokens",
        "3", "--cheat", "3,layers.1.mlp.down,5", "--watch", "--until-idle", "--window", "20",
        "--interval", "0.1", "--max-seconds", "200", "--state", str(tmp_path / "s"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    log = _events(result.stdout)
    assert log[-1]["event"] == "exited" and log[-1]["reason"] == "idle"
    (checked,) = [e for e in log if e["event"] == "claim.checked"]
    assert checked["verdict"] == "dispute"
    resolved = [e for e in log if e["event"] == "dispute.resolved"]
    assert {(e["role"], e["winner"], e["won"]) for e in resolved} == {
        ("prover", "challenge", True),  # the watcher's entry (one process, one role name)
        ("prover", "challenge", False),  # the prover's entry
    }
    for e in resolved:
        assert (e["disputed"]["position"], e["disputed"]["node"]) == (3, "layers.1.mlp.down")
    assert "claim.overturned" in [e["event"] for e in log]
    assert "claim.finalized" not in [e["event"] for e in log]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--lie", "3,layers.1.mlp.down", "expected POSITION,NODE,ELEMENT"),
        ("--lie", "3,layers.9.x,0", "node 'layers.9.x' is not in the program of tiny-llama"),
        ("--lie", "3,layers.1.mlp.down,5000", "element 5000 is outside layers.1.mlp.down's 64"),
        ("--lie", "999,lm_head,0", "position 999 is outside tiny-llama's 256 positions"),
        ("--cheat", "3,87,0", "node id 87 is outside the program of tiny-llama"),
        ("--cheat", "a,b,c", "POSITION must be an integer, got 'a'"),
    ],
)
def test_bad_drill_values_are_refused(tmp_path: Path, option: str, value: str, message) -> None:
    command = "watch" if option == "--lie" else "prove"
    result = CliRunner().invoke(main, [command, "--model", "tiny-llama", option, value,
                                       "--state", str(tmp_path / "s")])  # fmt: skip
    assert result.exit_code == 2, result.output
    error = " ".join(result.output.split()).replace("'--", "--").replace(f"{option}'", option)
    assert f"Invalid value for {option}: " in error and message in error
    assert "Traceback" not in result.output


# --- a dishonest watcher against an honest prover, as separate processes on anvil --------------


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "refute", *args, "--log-file", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait(proc: subprocess.Popen, log: Path, done, timeout: float = 240.0) -> list[dict]:
    """Wait until `done(events)` holds; fail with the process's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = _events(log.read_text()) if log.exists() else []
        if done(entries):
            return entries
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode}:\n{proc.stderr.read()}\n{entries[-3:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out; last events {entries[-3:]}")


def test_watch_lie_disputes_an_honest_claim_and_loses(anvil_web3, tmp_path: Path) -> None:
    """The drill an operator runs on a node: `refute watch --lie` deploys a game and disputes
    the honest `refute prove` claim posted to it; the prover defends, the dispute ends on the
    drilled record with the claim side winning, and the claim is finalised."""
    url = anvil_web3.provider.endpoint_uri
    wlog, plog = tmp_path / "watcher.log", tmp_path / "prover.log"
    common = ["--rpc", url, "--model", "tiny-llama", "--interval", "0.3"]
    watcher = _start(["watch", *common, "--deploy", "--lie", "2,layers.0.attn.o,7",
                      "--window", "15", "--state", str(tmp_path / "w")], wlog)  # fmt: skip
    prover = None
    try:
        game = _wait(watcher, wlog, lambda ev: "started" in [e["event"] for e in ev])[0]["game"]
        prover = _start(["prove", *common, "--game", game, "--prompt-tokens", "5,17,250,3",
                         "--max-new-tokens", "3", "--until-idle", "--max-seconds", "200",
                         "--state", str(tmp_path / "p")], plog)  # fmt: skip
        _wait(prover, plog, lambda ev: ev and ev[-1]["event"] == "exited")
        assert prover.wait(30) == 0
        wl = _wait(watcher, wlog, lambda ev: "dispute.resolved" in [e["event"] for e in ev])
    finally:
        for proc in (watcher, prover):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    pl = _events(plog.read_text())
    assert pl[-1]["reason"] == "idle" and pl[-1]["errors"] == 0
    (checked,) = [e for e in wl if e["event"] == "claim.checked"]
    assert checked["verdict"] == "dispute"  # the lie: an honest claim disputed
    for entries, won in ((wl, False), (pl, True)):
        (resolved,) = [e for e in entries if e["event"] == "dispute.resolved"]
        assert (resolved["winner"], resolved["won"]) == ("claim", won)
        assert (resolved["disputed"]["position"], resolved["disputed"]["node"]) == (
            2,
            "layers.0.attn.o",
        )
    claims = [e["event"] for e in pl if e["event"].startswith("claim.")]
    assert claims == ["claim.posted", "claim.finalized"]
