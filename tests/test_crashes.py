"""Fault injection on anvil (issue 10): `refute prove` and `refute watch` as separate OS
processes, one of them SIGKILLed by `REFUTE_CRASH_AT=ROLE:POINT:FN[:N]` (bisection/transactions.py)
after writing an intent and before sending (`intent`), after sending and before the receipt
(`sent`), or after the receipt and before any local write (`receipt`), then restarted with the
same command on the same `--state`.

Three games, each on its own deployment:

- `cheat`: a cheating prover (`--cheat`) and an honest watcher: a whole dispute (postClaim,
  openDispute, the moves, step, settle, collectReward, withdraw);
- `token`: a claim whose trace is honest and whose tokens are not (posted by the test through the
  library: the CLI has no token-only lie) and an honest watcher (commitTokenProof,
  proveTokenMismatch, collectReward, withdraw);
- `honest`: an honest prover and an honest watcher (postClaim, finalize, withdraw).

After the restart the honest side has won every dispute, the prover's claim is defended (or
finalised), nothing is posted twice (ClaimPosted / DisputeOpened counted on chain by account) and
what each account withdrew (Withdrawn events) is exactly what protocol draft 4 pays
(docs/protocol.md section 5, tests/test_incentives.py). The window W is long (no race with the
restarts); the test moves anvil's clock past it (evm_increaseTime) once the dispute is over.

A representative subset runs by default (each crash point, both roles); the whole sweep is
`pytest -m slow tests/test_crashes.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from web3 import Web3

from refute.contracts.anvil import AnvilNotFoundError, start_anvil
from refute.contracts.chain import connect
from refute.contracts.errors import ChainConnectionError
from refute.contracts.game import ClaimStatus, GameClient, GameParams
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from tests.test_service import events

PROMPT = (5, 17, 250, 3)
NEW_TOKENS = 4
POSITIONS = len(PROMPT) + NEW_TOKENS - 1
CHEAT = "3,layers.0.mlp.down,5"
WINDOW = 600
CLOCK = 600
BONDS = (10**18, 5 * 10**17, 10**15)  # the CLI's default --bonds
CHALLENGE_WON = 2  # Dispute.winner: 1 + the side (CLAIM 0, CHALLENGE 1)
RUN_LIMIT = 150.0  # seconds a scenario may take before it fails


@pytest.fixture(scope="module")
def node() -> Iterator[Web3]:
    """A private anvil for this module: the tests move its clock."""
    try:
        with start_anvil() as url:
            yield connect(url, timeout=60)
    except AnvilNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    except ChainConnectionError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


# --- processes ------------------------------------------------------------------------------------


@dataclass
class Proc:
    """One `refute prove|watch` command, started (and restarted) on the same state directory."""

    args: list[str]
    log: Path
    crash: str | None = None  # REFUTE_CRASH_AT of the first start
    popen: subprocess.Popen | None = None
    starts: int = 0
    killed: int = 0  # starts that ended by SIGKILL (the injected crash)
    done: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        env = os.environ | self.env
        env.pop("REFUTE_CRASH_AT", None)
        if self.crash is not None and self.starts == 0:
            env["REFUTE_CRASH_AT"] = self.crash
        err = open(self.log.with_suffix(f".stderr{self.starts}"), "w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "refute", *self.args, "--log-file", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )  # fmt: skip
        err.close()
        self.starts += 1

    def check(self) -> None:
        """Restart it after the injected SIGKILL (once); fail on any other unexpected exit."""
        if self.popen is None or self.done or self.popen.poll() is None:
            return
        rc = self.popen.returncode
        if rc == -9 and self.crash is not None and self.killed == 0:
            self.killed += 1
            self.start()
            return
        if rc == 0:
            self.done = True
            return
        stderr = self.log.with_suffix(f".stderr{self.starts - 1}").read_text()
        pytest.fail(f"{self.args[0]} exited {rc}:\n{stderr[-3000:]}\n{self.events()[-3:]}")

    def events(self) -> list[dict]:
        return events(self.log.read_text()) if self.log.exists() else []

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def _common(url: str, state: Path) -> list[str]:
    return ["--rpc", url, "--model", "tiny-llama", "--interval", "0.2", "--state", str(state),
            "--until-idle", "--max-seconds", str(int(RUN_LIMIT)), "--no-metrics",
            "--rpc-timeout", "20"]  # fmt: skip


def prover_args(url: str, state: Path, cheat: bool) -> list[str]:
    args = ["prove", *_common(url, state), "--prompt-tokens", ",".join(map(str, PROMPT)),
            "--max-new-tokens", str(NEW_TOKENS), "--window", str(WINDOW), "--clock",
            str(CLOCK), "--extension", "30"]  # fmt: skip
    return args + (["--cheat", CHEAT] if cheat else [])


def watcher_args(url: str, state: Path, game: str) -> list[str]:
    return ["watch", *_common(url, state), "--game", game]


def _wait_all(procs: list[Proc], step: Callable[[], None], limit: float = RUN_LIMIT) -> None:
    """Poll the processes (restarting the crashed one) and `step` until every one has exited."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for p in procs:
            p.check()
        step()
        if all(p.done for p in procs if p.popen is not None) and all(p.popen for p in procs):
            return
        time.sleep(0.2)
    pytest.fail("timed out: " + "; ".join(f"{p.args[:1]}: {p.events()[-3:]}" for p in procs))


def jump_past_window(w3: Web3) -> None:
    """Move anvil's clock past every claim's window (the next blocks carry the new time)."""
    w3.provider.make_request("evm_increaseTime", [WINDOW + 5])
    w3.provider.make_request("evm_mine", [])


# --- what the chain says ------------------------------------------------------------------------


def withdrawn(game: GameClient, account: str) -> int:
    return sum(e["amount"] for e in game.events("Withdrawn", account=account))


def posted_by(game: GameClient, account: str) -> int:
    return len(game.events("ClaimPosted", claimant=account))


def disputes_by(game: GameClient, account: str) -> int:
    return len(game.events("DisputeOpened", challenger=account))


def _assert_restart_reconciled(proc: Proc, point: str, fn: str) -> None:
    """The restarted process resumed and closed the intent the crash left open (or, after the
    receipt, found it closed from the chain)."""
    log = proc.events()
    assert [e["event"] for e in log].count("resumed") == 2
    assert log[-1]["event"] == "exited" and log[-1]["reason"] == "idle", log[-3:]
    closed = [e for e in log if e["event"] == "intent.closed" and e["fn"] == fn]
    expected = "dropped" if point == "intent" else "done"
    assert closed and closed[0]["state"] == expected, closed
    assert not any(e["event"] == "error" for e in log), [e for e in log if e["event"] == "error"]


# --- the scenarios ------------------------------------------------------------------------------


def run_cheat(node: Web3, tmp: Path, role: str, crash: str) -> None:
    """A cheating prover against an honest watcher, one of them crashed once."""
    url = node.provider.endpoint_uri
    prover = Proc(prover_args(url, tmp / "p", cheat=True), tmp / "prover.log",
                  crash if role == "prover" else None)  # fmt: skip
    prover.start()
    state: dict = {}

    def step() -> None:
        if "game" not in state:
            deployed = [e for e in prover.events() if e["event"] == "deployed"]
            if not deployed:
                return
            state["game"] = GameClient.at(node, deployed[0]["game"])
        game = state["game"]
        if watcher.popen is None and game.game.functions.claimCount().call() > 0:
            watcher.args = watcher_args(url, tmp / "w", game.game.address)
            watcher.start()
        if watcher.popen is not None and "jumped" not in state:
            if game.game.functions.disputeCount().call() and game.dispute(0).winner:
                jump_past_window(node)
                state["jumped"] = True

    watcher = Proc([], tmp / "watcher.log", crash if role == "watcher" else None)
    try:
        _wait_all([prover, watcher], step)
    finally:
        prover.kill()
        watcher.kill()
    crashed = prover if role == "prover" else watcher
    assert crashed.killed == 1, "the crash point was never reached"
    _, point, fn = crash.split(":")[:3]
    _assert_restart_reconciled(crashed, point, fn)
    game: GameClient = state["game"]
    p_acc = _account_of(prover)
    w_acc = _account_of(watcher)
    assert posted_by(game, p_acc) == 1 and disputes_by(game, w_acc) == 1
    assert game.game.functions.disputeCount().call() == 1
    d = game.dispute(0)
    assert d.winner == CHALLENGE_WON and d.challenger == w_acc
    assert game.claim(0).status == ClaimStatus.OVERTURNED
    claim_bond, challenge_bond, move_bond = BONDS
    # the watcher: its challenge bond, every move bond of the dispute (the loser's go to the
    # winning opener), the whole reward pool (the only successful challenge); the cheater: the
    # claim fee (it deployed the game: its account is the fee recipient)
    assert withdrawn(game, w_acc) == challenge_bond + d.moves * move_bond + claim_bond // 2
    assert withdrawn(game, p_acc) == game.params().fee_per_position * POSITIONS
    assert game.burned() == claim_bond // 2
    assert game.credit(w_acc) == game.credit(p_acc) == 0


def _account_of(proc: Proc) -> str:
    started = [e for e in proc.events() if e["event"] == "started"]
    return Web3.to_checksum_address(started[0]["accounts"][0])


def run_token(node: Web3, model, tmp: Path, crash: str) -> None:
    """A claim with an honest trace and one wrong token (posted here), and an honest watcher
    crashed once: it proves the token mismatch and collects the whole reward pool."""
    url = node.provider.endpoint_uri
    liar = node.eth.accounts[3]
    params = GameParams(claim_bond=BONDS[0], challenge_bond=BONDS[1], move_bond=BONDS[2],
                        window=WINDOW, clock=CLOCK, extension=30)  # fmt: skip
    game = GameClient.deploy(w3=node, params=params, sender=liar)
    game.register(model, sender=liar)
    (gen,) = Executor(model).generate([Request(PROMPT, NEW_TOKENS)])
    tokens = list(gen.output_tokens)
    tokens[1] = (tokens[1] + 1) % model.program.vocab_size
    cid = game.post_claim(model, gen, sender=liar, output_tokens=tokens)
    watcher = Proc(watcher_args(url, tmp / "w", game.game.address), tmp / "watcher.log", crash)
    watcher.start()
    state: dict = {}

    def step() -> None:
        if "jumped" not in state and game.claim(cid).status == ClaimStatus.OVERTURNED:
            jump_past_window(node)
            state["jumped"] = True

    try:
        _wait_all([watcher], step)
    finally:
        watcher.kill()
    assert watcher.killed == 1, "the crash point was never reached"
    _, point, fn = crash.split(":")[:3]
    _assert_restart_reconciled(watcher, point, fn)
    w_acc = _account_of(watcher)
    if fn == "proveTokenMismatch" and point != "intent":  # mined, not written down: read back
        assert "proof.adopted" in [e["event"] for e in watcher.events()]
    assert game.claim(cid).status == ClaimStatus.OVERTURNED
    assert len(game.events("TokenProofCommitted", sender=w_acc)) == 1
    assert disputes_by(game, w_acc) == 0
    assert withdrawn(game, w_acc) == BONDS[0] // 2  # the whole pool: the only proof
    assert game.burned() == BONDS[0] // 2 and game.credit(w_acc) == 0


def run_honest(node: Web3, tmp: Path, crash: str) -> None:
    """An honest prover crashed once, and an honest watcher: the claim is posted once,
    finalised after W, and the prover gets its bond back and the fee."""
    url = node.provider.endpoint_uri
    prover = Proc(prover_args(url, tmp / "p", cheat=False), tmp / "prover.log", crash)
    prover.start()
    watcher = Proc([], tmp / "watcher.log")
    state: dict = {}

    def step() -> None:
        if "game" not in state:
            deployed = [e for e in prover.events() if e["event"] == "deployed"]
            if not deployed:
                return
            state["game"] = GameClient.at(node, deployed[0]["game"])
        game = state["game"]
        if watcher.popen is None and game.game.functions.claimCount().call() > 0:
            watcher.args = watcher_args(url, tmp / "w", game.game.address)
            watcher.start()
        checked = [e for e in watcher.events() if e["event"] == "claim.checked"]
        if checked and "jumped" not in state:
            jump_past_window(node)
            state["jumped"] = True

    try:
        _wait_all([prover, watcher], step)
    finally:
        prover.kill()
        watcher.kill()
    assert prover.killed == 1, "the crash point was never reached"
    _, point, fn = crash.split(":")[:3]
    _assert_restart_reconciled(prover, point, fn)
    game: GameClient = state["game"]
    p_acc, w_acc = _account_of(prover), _account_of(watcher)
    assert [e["verdict"] for e in watcher.events() if e["event"] == "claim.checked"] == ["match"]
    assert posted_by(game, p_acc) == 1 and disputes_by(game, w_acc) == 0
    assert game.claim(0).status == ClaimStatus.FINALIZED
    assert withdrawn(game, p_acc) == BONDS[0] + game.params().fee_per_position * POSITIONS
    assert withdrawn(game, w_acc) == 0 and game.credit(p_acc) == 0


# --- the sweep --------------------------------------------------------------------------------

POINTS = ("intent", "sent", "receipt")
CHEAT_FNS = {
    "prover": ("postClaim", "revealChildren", "openRecord", "revealChunk", "revealReduction",
               "settle", "withdraw"),
    "watcher": ("openDispute", "revealChildren", "openRecord", "revealChunk", "revealReduction",
                "step", "settle", "collectReward", "withdraw"),
}  # fmt: skip
TOKEN_FNS = ("commitTokenProof", "proveTokenMismatch", "collectReward", "withdraw")
HONEST_FNS = ("postClaim", "finalize", "withdraw", "withdraw:2")

DEFAULT = {
    ("cheat", "watcher:receipt:openDispute"),
    ("cheat", "prover:sent:postClaim"),
    ("cheat", "watcher:intent:step"),
    ("cheat", "prover:receipt:revealChildren"),
    ("token", "watcher:receipt:proveTokenMismatch"),
    ("honest", "prover:intent:finalize"),
}


def _cases() -> list:
    cases = [("cheat", f"{role}:{point}:{fn}") for role, fns in CHEAT_FNS.items()
             for fn in fns for point in POINTS]  # fmt: skip
    cases += [("token", f"watcher:{point}:{fn}") for fn in TOKEN_FNS for point in POINTS]
    cases += [("honest", f"prover:{point}:{fn}") for fn in HONEST_FNS for point in POINTS]
    return [
        pytest.param(
            kind,
            crash,
            id=f"{kind}-{crash}",
            marks=() if (kind, crash) in DEFAULT else pytest.mark.slow,
        )
        for kind, crash in cases
    ]


@pytest.mark.parametrize(("kind", "crash"), _cases())
def test_crash_and_restart(node: Web3, model, tmp_path: Path, kind: str, crash: str) -> None:
    if kind == "cheat":
        run_cheat(node, tmp_path, crash.split(":")[0], crash)
    elif kind == "token":
        run_token(node, model, tmp_path, crash)
    else:
        run_honest(node, tmp_path, crash)
