"""A stateful test of the clients under adversarial play with crashes and restarts (issue 10).

One claim on the embedded chain and the real clients playing it: a cheating prover against an
honest watcher, or an honest prover (serving a queued request) against a lying watcher. Rules
poll either client, let time pass (never past an honest party's clock: it is online), collect
payouts, and crash a client: between polls (the Python object dropped, its database closed) or
inside a transaction, at the intent (written, not sent), after the send (mined, receipt not
read) or after the receipt (before any local write), by a `crash_point` patched to raise
`Crash` where the process tests (tests/test_service.py) SIGKILL. The crashed client is recreated
from its state directory at once, as a supervisor restarts a process.

Invariants: the honest side never loses a dispute; the claim never finalises wrongly or before
its window, nor is it overturned when honest; nothing is posted twice (one claim, at most one
dispute per watcher); the game's ETH balance is exactly the credits + outstanding bonds + unpaid
rewards + burned (G5, tests/test_incentives.py). Teardown plays every dispute to its end and
checks the final outcome and that everything is paid out.

Budget: a few examples in the `ci` profile; `HYPOTHESIS_PROFILE=thorough` runs ten times more.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from web3 import Web3

from refute.bisection import transactions
from refute.bisection.challenger import Challenger
from refute.bisection.player import Player
from refute.bisection.prover import Prover
from refute.contracts.chain import embedded_chain, set_next_timestamp
from refute.contracts.game import CHALLENGE, CLAIM, ClaimStatus, Stage
from refute.errors import RefuteError
from tests.adversaries import (
    CheatingProver,
    LyingChallenger,
    new_game,
    pending_time,
    settle_everything,
    tiny_llama,
)
from tests.test_adversarial import LIES, REQUEST_T, budget, lie

MARGIN = 300  # seconds: how close to a deadline an honest party lets it come
POINTS = ("intent", "sent", "receipt")
FNS = ("*", "*", "*", "postClaim", "openDispute", "revealChildren", "openRecord", "revealChunk",
       "revealReduction", "step", "timeout", "settle", "withdraw", "collectReward",
       "finalize")  # fmt: skip


class Crash(BaseException):
    """The process 'dies' at a crash point (BaseException: nothing in the clients catches it)."""


@functools.cache
def crash_chain() -> Web3:
    return embedded_chain()


class CrashMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w3 = crash_chain()
        self.acc = self.w3.eth.accounts
        self.game = new_game(self.w3)
        self.model = tiny_llama()
        self.tmp = Path(tempfile.mkdtemp(prefix="refute-crash-"))
        self.armed: tuple[str, str, str, int] | None = None
        self.passages = 0
        self.crashes: list[str] = []
        self._saved = transactions.crash_point
        transactions.crash_point = self._crash_point
        self.clients: dict[str, Player] = {}
        self.start_block = self.w3.eth.block_number

    # --- crashing ----------------------------------------------------------------------------

    def _crash_point(self, role: str, point: str, fn: str) -> None:
        if self.armed is None:
            return
        want_role, want_point, want_fn, nth = self.armed
        if (want_role, want_point) != (role, point) or want_fn not in ("*", fn):
            return
        self.passages += 1
        if self.passages == nth:
            self.armed = None
            self.crashes.append(f"{role}:{point}:{fn}")
            event(f"crash at {point} of {fn}")
            raise Crash(f"{role}:{point}:{fn}")

    def _make(self, role: str) -> Player:
        directory = self.tmp / role
        if role == "prover":
            if self.honest_claim:
                return Prover(self.game, self.model, directory, self.acc[1])
            return CheatingProver(self.game, self.model, directory, self.acc[1], lie(self.lie))
        if self.honest_claim:
            client = LyingChallenger(self.game, self.model, directory, self.acc[2], lie(self.lie))
        else:
            client = Challenger(self.game, self.model, directory, self.acc[2])
        if client.store["cursor"] == 0:
            client.store["cursor"] = self.start_block
            client.store.save()
        return client

    def _restart(self, role: str) -> None:
        """The process died: drop the object, close its database, start again from it."""
        self.clients[role].store.close()
        self.clients[role] = self._make(role)
        self.clients[role].resume()

    def _honest(self, role: str) -> bool:
        return (role == "prover") == self.honest_claim

    def _poll(self, role: str) -> None:
        """One poll of a client; a crash restarts it (and the restarted one polls again, as a
        restarted process does at once)."""
        for _ in range(2):
            try:
                self.clients[role].poll()
                return
            except Crash:
                self._restart(role)
            except RefuteError:
                if self._honest(role):
                    raise
                return

    def _collect(self, role: str) -> None:
        for _ in range(3):
            try:
                self.clients[role].collect()
                return
            except Crash:
                self._restart(role)
            except RefuteError:
                if self._honest(role):
                    raise
                return

    # --- time ----------------------------------------------------------------------------------

    def _disputes(self) -> list[Any]:
        n = int(self.game.game.functions.disputeCount().call())
        return [self.game.dispute(i) for i in range(n)]

    def _honest_side(self) -> int:
        return CLAIM if self.honest_claim else CHALLENGE

    def _honest_deadline(self) -> float:
        limit = float("inf")
        for d in self._disputes():
            side = CLAIM if d.stage == Stage.STEP else d.to_move
            if d.stage != Stage.RESOLVED and side == self._honest_side():
                limit = min(limit, d.turn_start + d.clock[d.to_move])
        if not self.honest_claim and not self._disputes():
            c = self.game.claim(0)  # the honest watcher must dispute within the window
            if c.status == ClaimStatus.PENDING:
                limit = min(limit, c.deadline)
        return limit

    def _honest_on_time(self) -> None:
        """The honest party is online: within MARGIN of its deadline it polls."""
        if pending_time(self.w3) + MARGIN > self._honest_deadline():
            self._poll("prover" if self.honest_claim else "watcher")

    def _travel(self, target: float) -> None:
        target = min(target, self._honest_deadline() - MARGIN)
        if target > pending_time(self.w3):
            set_next_timestamp(self.w3, int(target))

    # --- rules ---------------------------------------------------------------------------------

    @initialize(honest_claim=st.booleans(), which=st.integers(0, LIES - 1))
    def start(self, honest_claim: bool, which: int) -> None:
        self.honest_claim, self.lie = honest_claim, which
        for role in ("prover", "watcher"):
            self.clients[role] = self._make(role)
            self.clients[role].resume()
        prover = self.clients["prover"]
        if honest_claim:
            assert prover.enqueue("id:one", REQUEST_T)  # posted by a poll (crashable)
        else:
            assert prover.claim_cheat(REQUEST_T) == 0

    @rule(role=st.sampled_from(("prover", "watcher")), times=st.integers(1, 6),
          crash=st.none() | st.tuples(st.sampled_from(POINTS), st.just("*") | st.sampled_from(FNS),
                                      st.integers(1, 2)))  # fmt: skip
    def poll(self, role: str, times: int, crash: tuple[str, str, int] | None) -> None:
        """The client polls `times` times; with `crash`, the `nth` passage of its crash point
        for that function (or any: '*') kills it, and it is restarted."""
        self._honest_on_time()
        if crash is not None:
            self.armed, self.passages = (role, *crash), 0
        for _ in range(times):
            self._poll(role)
        self.armed = None

    @rule(role=st.sampled_from(("prover", "watcher")))
    def crash_between_polls(self, role: str) -> None:
        self._honest_on_time()
        self.crashes.append(f"{role}:between")
        self._restart(role)

    @rule(fraction=st.floats(0, 1), beyond=st.booleans(), extra=st.integers(1, 4000))
    def time_passes(self, fraction: float, beyond: bool, extra: int) -> None:
        self._honest_on_time()
        now = pending_time(self.w3)
        active = [d for d in self._disputes() if d.stage != Stage.RESOLVED]
        if active and beyond:
            d = active[0]
            self._travel(d.turn_start + d.clock[d.to_move] + extra)
        elif active:
            d = active[0]
            self._travel(now + fraction * max(0, d.turn_start + d.clock[d.to_move] - now))
        else:
            self._travel(now + extra * fraction * 2)

    @rule(role=st.sampled_from(("prover", "watcher")))
    def collect(self, role: str) -> None:
        self._honest_on_time()
        self._collect(role)

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def honest_side_never_loses(self) -> None:
        for did, d in enumerate(self._disputes()):
            if d.stage == Stage.RESOLVED:
                assert d.winner == self._honest_side() + 1, f"dispute {did}: the honest side lost"

    @invariant()
    def claim_is_right(self) -> None:
        count = int(self.game.game.functions.claimCount().call())
        assert count <= 1, f"{count} claims: posted twice"
        if count == 0:
            return
        c = self.game.claim(0)
        disputes = self._disputes()
        assert len(disputes) <= 1, f"{len(disputes)} disputes: one watcher opened two"
        assert c.open_disputes == sum(d.stage != Stage.RESOLVED for d in disputes)
        if self.honest_claim:
            assert c.status != ClaimStatus.OVERTURNED
        else:
            assert c.status != ClaimStatus.FINALIZED
        if c.status == ClaimStatus.FINALIZED:
            (e,) = self.game.events("ClaimFinalized")
            assert self.w3.eth.get_block(e["blockNumber"])["timestamp"] >= c.deadline

    @invariant()
    def conservation(self) -> None:
        """G5: credits + outstanding bonds + unpaid rewards + burned."""
        g, p = self.game, self.game.params()
        acc = list(self.acc)
        held = sum(g.credit(a) for a in acc) + g.burned()
        for cid in range(int(g.game.functions.claimCount().call())):
            c = g.claim(cid)
            if c.status == ClaimStatus.PENDING:
                held += p.claim_bond
            elif c.status == ClaimStatus.OVERTURNED:
                pool = p.claim_bond // 2
                held += (sum(g.reward_shares(cid, a) for a in acc) * (pool // c.wins)
                         if c.dust_burned else pool)  # fmt: skip
        for did, d in enumerate(self._disputes()):
            if d.stage == Stage.RESOLVED:
                held += sum(g.owed(did, a) for a in acc)
            else:
                held += p.challenge_bond + d.moves * p.move_bond
        assert self.w3.eth.get_balance(g.game.address) == held

    # --- the end -------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self._play_to_the_end()
        finally:
            transactions.crash_point = self._saved
            for client in self.clients.values():
                client.store.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _play_to_the_end(self) -> None:
        if not self.clients:
            return
        self.armed = None
        honest = "prover" if self.honest_claim else "watcher"
        other = "watcher" if self.honest_claim else "prover"
        g = self.game
        for _ in range(400):
            self._poll(honest)
            self._poll(other)
            c = g.claim(0) if int(g.game.functions.claimCount().call()) else None
            active = [d for d in self._disputes() if d.stage != Stage.RESOLVED]
            if c is not None and c.status != ClaimStatus.PENDING and not active:
                break
            if active:
                d = active[0]
                self._travel(d.turn_start + d.clock[d.to_move] + 1)
            elif c is not None:
                self._travel(c.deadline)
        else:
            w = self.clients[honest]
            raise AssertionError(
                f"the game did not end: {self._disputes()}; crashes "
                f"{self.crashes}; {honest} disputes {w.disputes}, intents "
                f"{w.store.intents()}"
            )
        self.honest_side_never_loses()
        final = g.claim(0).status
        assert final == (ClaimStatus.FINALIZED if self.honest_claim else ClaimStatus.OVERTURNED)
        if not self.honest_claim:
            assert len(self._disputes()) == 1, "the honest watcher did not dispute the cheat"
        self._collect(honest)
        self.conservation()
        settle_everything(g, list(self.acc[1:]))
        event(f"crashes: {len(self.crashes)}")


CrashMachine.TestCase.settings = settings(
    max_examples=budget(4),
    stateful_step_count=25,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestCrashMachine = CrashMachine.TestCase
