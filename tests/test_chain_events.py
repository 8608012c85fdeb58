"""Chain events the clients must survive (issue 10, item 3): a node reset with the game
redeployed at the same address, another chain, reorganisations that remove blocks a client had
acted on, and the confirmation depth.

Every test runs a private anvil node (refute/contracts/anvil.py) because it resets or reorganises
it: `anvil_reset` (the chain back to genesis; the deployer's nonces too, so the redeployed game
gets the same address), `anvil_reorg` (the last `depth` blocks replaced by empty ones: what they
held is gone, the senders' nonces rewound). The clients run in-process, poll by poll, with their
model work inline (`ModelWorker(threads=0)`), or as the CLI (`refute watch` / `refute prove` in
process, through click), so that each step is controlled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from web3 import Web3

from refute.bisection.challenger import Challenger
from refute.bisection.demo import flip_bit
from refute.bisection.prover import Prover
from refute.bisection.store import StoreError
from refute.cli import main
from refute.contracts.anvil import start_anvil
from refute.contracts.chain import connect
from refute.contracts.game import ClaimStatus, GameClient, GameParams, Stage
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.engine.model import Model

PARAMS = GameParams(claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15,
                    window=900, clock=600, extension=60)  # fmt: skip
REQUEST = Request((5, 17, 250, 3), 3)
TAMPER = ("layers.1.mlp.down", 2, 3)  # node, position, element: a MAP record, levels 1 and 2


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("tiny-llama")


@pytest.fixture
def node() -> Iterator[Web3]:
    """A private anvil node for one test (it is reset or reorganised)."""
    with start_anvil() as url:
        yield connect(url)


def deploy(w3: Web3, model: Model, params: GameParams = PARAMS) -> GameClient:
    game = GameClient.deploy(w3=w3, params=params, sender=w3.eth.accounts[0])
    game.register(model, sender=w3.eth.accounts[0])
    return game


def cheater(game: GameClient, model: Model, directory: Path, **kw) -> Prover:
    node, t, e = TAMPER
    tamper = flip_bit((t, model.program.node_index(node), e))
    return Prover(game, model, directory, game.w3.eth.accounts[1],
                  executor=Executor(model, tamper=tamper), consistent_lies=True, **kw)  # fmt: skip


def reorg(w3: Web3, depth: int) -> None:
    """Replace the last `depth` blocks by empty ones (their transactions are gone)."""
    w3.provider.make_request("anvil_reorg", [depth, []])


def mine(w3: Web3, n: int = 1) -> None:
    w3.provider.make_request("anvil_mine", [hex(n)])


def travel(w3: Web3, seconds: int) -> None:
    w3.provider.make_request("evm_increaseTime", [seconds])
    mine(w3)


def notes(client, event: str) -> list[dict]:
    """The notes `event` of a client since the last call (and clear them)."""
    out = [fields for name, fields in client.notes if name == event]
    client.notes.clear()
    return out


def play_out(game: GameClient, prover: Prover, watcher: Challenger, did: int, limit: int = 400):
    """Both clients poll until dispute `did` resolves; returns its final state."""
    for _ in range(limit):
        d = game.dispute(did)
        if d.stage == Stage.RESOLVED:
            return d
        prover.poll()
        watcher.poll()
    raise AssertionError(f"dispute {did} did not end: {game.dispute(did)}")


def claim_count(game: GameClient) -> int:
    return int(game.game.functions.claimCount().call())


def dispute_count(game: GameClient) -> int:
    return int(game.game.functions.disputeCount().call())


# --- reorganisations -------------------------------------------------------------------------


@pytest.mark.parametrize("polled", [False, True], ids=["before-next-poll", "after-a-poll"])
def test_reorg_removes_the_watchers_open_dispute(node: Web3, model: Model, tmp_path: Path,
                                                 polled: bool) -> None:  # fmt: skip
    """The block with the watcher's openDispute is replaced (before the watcher polled again,
    or after it had read past it): the watcher sees the reorg, forgets the dispute that is no
    longer on the chain, opens it again, and wins it against the cheater."""
    game = deploy(node, model)
    prover = cheater(game, model, tmp_path / "p")
    watcher = Challenger(game, model, tmp_path / "w", node.eth.accounts[2])
    prover.resume(), watcher.resume()
    cid = prover.claim(REQUEST)
    watcher.poll()
    assert watcher.verdict(cid) == "dispute" and game.dispute(0).challenger == watcher.account
    opened = node.eth.block_number
    if polled:
        watcher.poll()
    reorg(node, 1)
    assert node.eth.block_number == opened and game.dispute(0).stage == Stage.NONE
    assert dispute_count(game) == 0 and game.claim(cid).open_disputes == 0
    watcher.notes.clear()
    watcher.poll()
    names = [n for n, _ in watcher.notes]
    assert "reorg" in names and "dispute.undone" in names, watcher.notes
    assert dispute_count(game) == 1 and game.dispute(0).challenger == watcher.account
    assert list(watcher.disputes) == ["0"]
    d = play_out(game, prover, watcher, 0)
    assert d.winner == 2 and game.claim(cid).status == ClaimStatus.OVERTURNED
    watcher.poll()
    assert watcher.disputes["0"]["winner"] == "challenge"


def test_reorg_removes_the_provers_claim(node: Web3, model: Model, tmp_path: Path) -> None:
    """The block with an honest prover's postClaim is replaced after it recorded the claim:
    the claim is undone, its request queued again and posted again (once), and it finalises."""
    game = deploy(node, model)
    prover = Prover(game, model, tmp_path / "p", node.eth.accounts[1])
    watcher = Challenger(game, model, tmp_path / "w", node.eth.accounts[2])
    prover.resume(), watcher.resume()
    assert prover.enqueue("id:r1", REQUEST)
    prover.poll()  # generates (inline)
    prover.poll()  # posts
    assert prover.store["requests"]["id:r1"]["status"] == "served"
    assert claim_count(game) == 1 and list(prover.store["claims"]) == ["0"]
    reorg(node, 1)
    assert claim_count(game) == 0
    prover.notes.clear()
    prover.poll()
    undone = [f for n, f in prover.notes if n == "claim.undone"]
    assert undone == [{"claim": 0, "request": "id:r1"}], prover.notes
    assert "reorg" in [n for n, _ in prover.notes]
    for _ in range(3):
        if claim_count(game):
            break
        prover.poll()
    assert claim_count(game) == 1 and game.claim(0).claimant == prover.account
    assert prover.store["requests"]["id:r1"] | {"time": 0} == prover.store["requests"][
        "id:r1"] | {"status": "served", "claim": 0, "time": 0}  # fmt: skip
    watcher.poll()
    assert watcher.verdict(0) == "match"
    travel(node, PARAMS.window + 1)
    prover.poll()
    assert prover.status(0) == "finalized" and claim_count(game) == 1  # posted once


@pytest.mark.parametrize("whose", ["watcher", "prover"])
def test_reorg_removes_a_move(node: Web3, model: Model, tmp_path: Path, whose: str) -> None:
    """A mined move (the watcher's or the cheating prover's) is replaced by a reorg: the
    dispute on chain is back where it was, the same client sends the move again, and the
    honest watcher still wins."""
    game = deploy(node, model)
    prover = cheater(game, model, tmp_path / "p")
    watcher = Challenger(game, model, tmp_path / "w", node.eth.accounts[2])
    prover.resume(), watcher.resume()
    cid = prover.claim(REQUEST)
    watcher.poll()
    mover = watcher if whose == "watcher" else prover
    for _ in range(40):  # a few moves in, one of `mover`'s was just mined
        before = game.dispute(0)
        made = mover.poll()
        if made and before.moves >= 3:
            break
        (prover if mover is watcher else watcher).poll()
    else:
        raise AssertionError("no move")
    after = game.dispute(0)
    assert after.moves == before.moves + 1
    mover.poll()  # reads past the move (no move is due: the other side's turn)
    reorg(node, 1)
    assert game.dispute(0) == before
    mover.notes.clear()
    again = mover.poll()
    assert "reorg" in [n for n, _ in mover.notes]
    assert [m["fn"] for m in again] == [made[0]["fn"]]
    assert game.dispute(0).moves == after.moves and game.dispute(0).stage == after.stage
    d = play_out(game, prover, watcher, 0)
    assert d.winner == 2 and game.claim(cid).status == ClaimStatus.OVERTURNED


def test_confirmations(node: Web3, model: Model, tmp_path: Path) -> None:
    """With --confirmations 2 a claim is looked at, and a dispute against the prover's claim
    adopted, only once its block is 2 deep (blocks mined by hand); a shallow reorg of an
    unconfirmed claim is never acted on."""
    game = deploy(node, model)
    prover = cheater(game, model, tmp_path / "p", confirmations=2)
    watcher = Challenger(game, model, tmp_path / "w", node.eth.accounts[2], confirmations=2)
    prover.resume(), watcher.resume()
    # a claim that a reorg removes before it is confirmed: the watcher never sees it
    prover.claim(REQUEST)
    watcher.poll()
    assert watcher.store["claims"] == {}
    reorg(node, 1)
    watcher.poll()
    assert watcher.store["claims"] == {} and watcher.disputes == {}
    assert {n for n, _ in watcher.notes} <= {"reorg"}  # (its own-dispute reads go to the head)
    cid = prover.claim(REQUEST)  # the same id: the first one is gone
    posted = node.eth.block_number
    assert cid == 0
    for depth in range(2):
        assert node.eth.block_number - posted == depth
        watcher.poll()
        assert watcher.store["claims"] == {}, f"acted on at depth {depth}"
        mine(node)
    watcher.poll()  # 2 deep: re-executed, disputed
    assert watcher.verdict(cid) == "dispute" and dispute_count(game) == 1
    opened = node.eth.block_number
    for _ in range(2):
        prover.poll()
        assert prover.disputes == {}, f"adopted at depth {node.eth.block_number - opened}"
        mine(node)
    prover.poll()
    assert list(prover.disputes) == ["0"]
    d = play_out(game, prover, watcher, 0)
    assert d.winner == 2


# --- chain identity --------------------------------------------------------------------------


def _watch(url: str, game: str, state: Path) -> list[str]:
    return ["watch", "--rpc", url, "--game", game, "--model", "tiny-llama", "--state",
            str(state), "--until-idle", "--max-seconds", "60", "--interval", "0.1",
            "--no-metrics"]  # fmt: skip


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_reset_chain_is_refused(model: Model, tmp_path: Path) -> None:
    """anvil reset and the game redeployed at the same address, with a cheat as the new claim
    0: a watcher and a prover restarted on their old state directories refuse to run, naming
    the deployment block hash that changed (never skipping the new claim 0 as already seen);
    a running watcher stops at its next poll the same way."""
    with start_anvil() as url:
        w3 = connect(url)
        game = deploy(w3, model)
        address = game.game.address
        honest = Prover(game, model, tmp_path / "honest", w3.eth.accounts[3])
        honest.claim(REQUEST)  # the old chain's claim 0: honest
        wstate = tmp_path / "w"
        first = CliRunner().invoke(main, _watch(url, address, wstate))
        assert first.exit_code == 0, first.output
        checked = [e for e in _events(first.stdout) if e["event"] == "claim.checked"]
        assert [(e["claim"], e["verdict"]) for e in checked] == [(0, "match")]
        pstate = tmp_path / "p"
        prove = ["prove", "--rpc", url, "--game", address, "--model", "tiny-llama",
                 "--prompt-tokens", "5,17", "--max-new-tokens", "2", "--state", str(pstate),
                 "--max-seconds", "5", "--no-metrics", "--interval", "0.1"]  # fmt: skip
        # a prover that served one request and still waits for its claim's window
        first_p = CliRunner().invoke(main, prove)
        assert first_p.exit_code == 0, first_p.output
        assert "claim.posted" in [e["event"] for e in _events(first_p.stdout)]
        running = Challenger(game, model, tmp_path / "running", w3.eth.accounts[4])
        running.resume()
        old_hash = running.store.identity().deploy_hash

        w3.provider.make_request("anvil_reset", [])
        again = deploy(w3, model)
        assert again.game.address == address
        cheat = cheater(again, model, tmp_path / "cheat")
        assert cheat.claim(REQUEST) == 0  # the new claim 0: a cheat

        with pytest.raises(StoreError, match="reset") as info:
            running.poll()
        assert old_hash in str(info.value)
        result = CliRunner().invoke(main, _watch(url, address, wstate))
        assert result.exit_code == 1, result.output
        assert "the chain was reset" in result.output and "deploy_hash was " + old_hash in (
            result.output)  # fmt: skip
        assert not any(e["event"] in ("claim.checked", "tx") for e in _events(result.stdout))
        result = CliRunner().invoke(main, prove)
        assert result.exit_code == 1 and "the chain was reset" in result.output, result.output
        assert dispute_count(again) == 0 and claim_count(again) == 1
        # a new state directory is the way on: the cheat is disputed
        fresh = CliRunner().invoke(main, [*_watch(url, address, tmp_path / "w2")[:-5],
                                          "--max-seconds", "6", "--no-metrics"])  # fmt: skip
        assert fresh.exit_code == 0, fresh.output
        assert [e["verdict"] for e in _events(fresh.stdout) if e["event"] == "claim.checked"] == [
            "dispute"]  # fmt: skip


def test_another_chain_is_refused(model: Model, tmp_path: Path) -> None:
    """A state directory of chain 31337 given a node of chain 4242 where the same deployer put
    the game at the same address: the CLI and the library refuse it, naming the chain ids."""
    with start_anvil() as url:
        w3 = connect(url)
        game = deploy(w3, model)
        address = game.game.address
        result = CliRunner().invoke(main, _watch(url, address, tmp_path / "w"))
        assert result.exit_code == 0, result.output
        watcher = Challenger(game, model, tmp_path / "lib", w3.eth.accounts[2])
        watcher.resume()
    with start_anvil(extra_args=["--chain-id", "4242"]) as url:
        w3 = connect(url)
        other = deploy(w3, model)
        assert other.game.address == address and w3.eth.chain_id == 4242
        result = CliRunner().invoke(main, _watch(url, address, tmp_path / "w"))
        assert result.exit_code != 0
        assert "on chain 31337" in result.output, result.output
        moved = Challenger(other, model, tmp_path / "lib", w3.eth.accounts[2])
        with pytest.raises(StoreError, match="another chain: chain_id was 31337, is now 4242"):
            moved.resume()
