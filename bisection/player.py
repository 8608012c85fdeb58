"""What prover and challenger share: one side's moves computed from its own generation, and a
dispute loop driven only by chain state (docs/protocol.md sections 3-5).

`Side` answers every move of a dispute from one generation (the prover's own, or the
challenger's re-execution): tree children at levels 1 and 2 from the trace and chunk trees,
record openings and chunks recomputed from the caches (`StepProver.outputs`, which calls
`Executor.recompute`), level-3 children from the element's reduction tree, and the one-step call.
`Player` is the client base: `play(dispute_id)` reads the dispute, decides whose turn it is, and
makes at most the one move due (or the step, or a timeout), logging it to the client's `Store`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from refute.bisection.follower import ChainFollower
from refute.bisection.store import Store
from refute.bisection.transactions import TrackedGame, TransactionUnknown
from refute.bisection.workers import URGENT, GenerateJob, ModelWorker
from refute.contracts.game import (
    CHALLENGE,
    CLAIM,
    ForeignPaths,
    GameClient,
    GameError,
    Stage,
)
from refute.contracts.onestep import ListTree, StepCall, StepProver, f32_bits
from refute.engine import merkle, steps
from refute.engine.executor import Executor, Generation, Request
from refute.engine.ir import Op, Reducer
from refute.engine.model import Model
from refute.kernels import reference as ref

LEVEL = {
    Stage.TRACE: 1, Stage.RECORD: 1, Stage.CHUNKS: 2, Stage.CHUNK: 2, Stage.REDUCTION: 3,
    Stage.STEP: 4,
}  # fmt: skip
SIDE_NAMES = ("claim", "challenge")


def request_to_json(r: Request) -> dict[str, Any]:
    return {"prompt": list(r.prompt), "max_new_tokens": r.max_new_tokens,
            "temperature": r.temperature, "seed": str(r.seed)}  # fmt: skip


def request_from_json(d: dict[str, Any]) -> Request:
    return Request(tuple(d["prompt"]), d["max_new_tokens"], d["temperature"], int(d["seed"]))


def bits_to_f32(bits: int) -> float:
    return float(np.array([bits], np.uint32).view(np.float32)[0])


class Side:
    """One side's knowledge for playing disputes: a model, an executor and one generation. With
    `consistent_lies`, a side whose own reduction tree does not reach the value it committed to
    fabricates level-3 children that do (a cheater who lies consistently down to the leaf)."""

    def __init__(
        self, model: Model, executor: Executor, gen: Generation, consistent_lies: bool = False
    ) -> None:
        self.model = model
        self.gen = gen
        self.prover = StepProver(model, executor, gen)
        self.consistent_lies = consistent_lies
        self._tensors: dict[tuple[int, int], tuple[int, bytes, ListTree]] = {}

    @staticmethod
    def children(tree: ListTree, height: int, index: int) -> tuple[bytes, bytes]:
        level = tree.levels[height - 1]
        pick = [level[i] if i < len(level) else merkle.ZERO[height - 1]
                for i in (2 * index, 2 * index + 1)]  # fmt: skip
        return pick[0], pick[1]

    def tensor(self, t: int, n: int) -> tuple[int, bytes, ListTree]:
        """Record (t, n)'s output encoded, with its chunk tree (recomputed from the caches)."""
        if (t, n) not in self._tensors:
            dtype, data = merkle.encode(self.prover.outputs(t)[n])
            data = bytes(data)
            self._tensors[(t, n)] = (dtype, data, ListTree(merkle.chunk_leaves(data)))
        return self._tensors[(t, n)]

    def record_open(self, t: int, n: int) -> tuple[int, int, bytes]:
        dtype, data, tree = self.tensor(t, n)
        return dtype, len(data) // 4, tree.levels[-1][0]

    def chunk(self, t: int, n: int, c: int) -> bytes:
        data = self.tensor(t, n)[1]
        piece = data[c * 1024 : (c + 1) * 1024]
        return piece + bytes(1024 - len(piece))

    def reduction(self, d: Any, side: int) -> tuple[int, int, int, int]:
        """Children of the current reduction-tree node, from this side's own tree."""
        levels, _ = self.prover.tree_levels(d.position, d.node_id, d.element)
        node = self.prover.program.nodes[d.node_id]
        left, right = levels[d.height - 1][2 * d.index], levels[d.height - 1][2 * d.index + 1]
        if node.op == Op.SAMPLE or node.reducer == Reducer.ARGMAX:
            if self.consistent_lies:
                left, right = _fabricate_argmax(d, side, left, right)
            return f32_bits(left[0]), int(left[1]), f32_bits(right[0]), int(right[1])
        lv, rv = f32_bits(left), f32_bits(right)
        if self.consistent_lies and _combine(node.reducer, lv, rv) != d.value[side]:
            lv, rv = _fabricate(node.reducer, d.value[side], lv, rv)
        return lv, 0, rv, 0

    def step_call(
        self, game: GameClient, dispute_id: int, d: Any, side: int, since: int
    ) -> StepCall:
        """The one-step call, with proofs against the CLAIM's trace root (for the challenge
        side: its own tree with the claim side's level-1 reveals, see `ForeignPaths`)."""
        prover = self.prover
        node = prover.program.nodes[d.node_id]
        saved = prover.trace_tree
        if side == CHALLENGE:
            r = d.position * len(prover.program.nodes) + d.node_id
            prover.trace_tree = ForeignPaths(saved, claim_reveals(game, dispute_id, since), r)
        try:
            if node.op in (Op.REDUCE, Op.SAMPLE):
                return prover.step(d.position, d.node_id, d.element, leaf=d.index)
            return prover.step(d.position, d.node_id, d.element)
        finally:
            prover.trace_tree = saved


def _combine(reducer: Reducer, lv: int, rv: int) -> int:
    a, b = (np.array([x], np.uint32).view(np.float32) for x in (lv, rv))
    out = ref.add(a, b) if reducer == Reducer.SUM else ref.maximum(a, b)
    return f32_bits(np.float32(out[0]))


def _fabricate(reducer: Reducer, parent: int, lv: int, rv: int) -> tuple[int, int]:
    """Children that combine to `parent`: one kept true, the other searched near parent - kept."""
    if reducer == Reducer.MAX:
        # one child is the parent; keep the other true if it does not exceed the parent
        for pair in ((parent, rv), (lv, parent), (parent, parent)):
            if _combine(reducer, *pair) == parent:
                return pair
    p = bits_to_f32(parent)
    for keep_right in (True, False):
        kept = rv if keep_right else lv
        guess = f32_bits(np.float32(p - bits_to_f32(kept)))
        for delta in range(64):
            for cand in (guess + delta, guess - delta):
                pair = (cand, kept) if keep_right else (kept, cand)
                if 0 <= cand < 2**32 and _combine(reducer, *pair) == parent:
                    return pair
    return parent, (0x80000000 if parent == 0x80000000 else 0)


def _fabricate_argmax(d: Any, side: int, left: tuple, right: tuple) -> tuple[tuple, tuple]:
    """(value, index) children whose argmax step gives the pair this side committed to (its
    value chosen to win where the chain knows only the index): the committed pair on one side,
    the other child true or pushed down to -inf."""
    index = d.value_index[side]
    value = (np.float32(bits_to_f32(d.value[side])) if d.value_known
             else steps.combine(Reducer.ARGMAX, left, right)[0])  # fmt: skip
    target = (value, index)
    sunk = [(np.float32(-np.inf), left[1]), (np.float32(-np.inf), right[1])]
    for pair in ((target, right), (left, target), (target, sunk[1]), (sunk[0], target)):
        v, i = steps.combine(Reducer.ARGMAX, *pair)
        if i == index and f32_bits(v) == f32_bits(value):
            return pair
    return left, right  # nothing combines (a NaN committed as the winner): the move loses


def claim_reveals(game: GameClient, dispute_id: int, since: int) -> dict[int, tuple[bytes, bytes]]:
    """height -> the (left, right) pair the claim side revealed on the level-1 path."""
    pairs = [
        bytes(m["data"]) for m in game.events("Moved", since, disputeId=dispute_id)
        if m["level"] == 1 and m["side"] == CLAIM and len(m["data"]) == 64
    ]  # fmt: skip
    return {len(pairs) - 1 - k: (p[:32], p[32:]) for k, p in enumerate(pairs)}


def describe(model: Model, d: Any) -> dict[str, Any]:
    """The disputed operation in model terms: token position, layer, node, element, values."""
    program = model.program
    node = program.nodes[d.node_id]
    shape = program.resolve(node.shape, d.position)
    layer = node.name.split(".")[1] if node.name.startswith("layers.") else None
    kind = node.op.name.lower()
    if node.op == Op.REDUCE:
        kind += f" {node.reducer.name.lower()}"
    out = {
        "position": d.position, "layer": None if layer is None else int(layer),
        "node_id": d.node_id, "node": node.name, "op": kind,
        "fn": node.fn.name.lower() if node.fn is not None else None,
        "element": d.element, "coords": list(steps.coords(tuple(shape), d.element)),
        "shape": list(shape),
    }  # fmt: skip
    if d.value_known or node.op not in (Op.SAMPLE,):
        out["claim_value"] = bits_to_f32(d.value[CLAIM])
        out["challenge_value"] = bits_to_f32(d.value[CHALLENGE])
    if node.op == Op.SAMPLE or node.reducer == Reducer.ARGMAX:
        out["claim_index"], out["challenge_index"] = d.value_index[CLAIM], d.value_index[CHALLENGE]
    if node.op in (Op.REDUCE, Op.SAMPLE) and d.stage in (Stage.STEP, Stage.RESOLVED):
        out["leaf"] = d.index
    return out


class Player:
    """Base of the clients: plays side `SIDE` of its disputes from chain state alone.

    Every poll starts with `reconcile()`: intents closed from the chain, a reset chain refused,
    a reorg undone, and what this client did (its claims, its disputes) rebuilt from events, so
    nothing depends on a local write having happened after a transaction. Model work goes to
    `worker` (a `ModelWorker`; by default one that runs each job at once, in the caller)."""

    SIDE = CLAIM
    ROLE = "player"

    def __init__(
        self, game: GameClient, model: Model, directory: Any, account: str,
        executor: Executor | None = None, consistent_lies: bool = False, *,
        worker: ModelWorker | None = None, confirmations: int = 0,
    ) -> None:  # fmt: skip
        self.model = model
        self.executor = executor if executor is not None else Executor(model)
        self.account = account
        self.consistent_lies = consistent_lies
        self.store = Store(directory, {"account": account, "claims": {}, "disputes": {},
                                       "moves": [], "cursor": 0, "cursors": {},
                                       "heads": []})  # fmt: skip
        self.game = TrackedGame.of(game, self.store, self.ROLE)
        if "first_block" not in self.store.data:  # what it did before it existed is not its
            self.store["first_block"] = int(game.w3.eth.block_number)
            self.store.save()
        self.follower = ChainFollower(game.w3, game.game.address, self.store, confirmations)
        self.worker = worker if worker is not None else ModelWorker(threads=0)
        self.notes: list[tuple[str, dict[str, Any]]] = []  # what the service should log
        self._sides: dict[int, Side] = {}

    # --- to implement -----------------------------------------------------------------------

    def _rebuild_job(self, claim_id: int) -> Any:
        """The job recomputing this client's generation for a claim (its own, or its
        re-execution) from the request its store holds (model work: runs on the worker)."""
        return self._job(request_from_json(self.store["claims"][str(claim_id)]["request"]))

    def _rebuilt(self, claim_id: int, gen: Generation) -> Generation:
        """Check a recomputed generation against what the chain says (a hook; as is here)."""
        return gen

    def _from_events(self, head: int) -> None:
        """Adopt from events up to `head` what this client did on chain but may not have
        written down (a crash between a receipt and the write)."""

    def _undo_after(self, fork: int) -> None:
        """Forget what a reorg from block `fork` undid (it is re-read and, if due, re-sent)."""

    # --- helpers ----------------------------------------------------------------------------

    def _job(self, request: Request) -> Any:
        """The model job generating `request` (a picklable description: the local pool runs it
        with this client's executor, Ray actors with theirs)."""
        return GenerateJob(request)

    def _generate(self, request: Request) -> Generation:
        (gen,) = self.executor.generate([request])
        return gen

    def _side(self, claim_id: int, gen: Generation) -> Side:
        side = Side(self.model, self.executor, gen, self.consistent_lies)
        self._sides[claim_id] = side
        return side

    def ready_side(self, claim_id: int, priority: float = URGENT) -> Side | None:
        """The Side of a claim if its generation is at hand; else its (re)computation is
        queued on the worker at `priority` and None is returned (ask again next poll)."""
        if claim_id in self._sides:
            return self._sides[claim_id]
        key = ("side", claim_id)
        if not self.worker.ready(key):
            self.worker.submit(key, priority, self._rebuild_job(claim_id), executor=self.executor)
            if not self.worker.ready(key):
                return None
        return self._side(claim_id, self._rebuilt(claim_id, self.worker.take(key)))

    def side_for(self, claim_id: int) -> Side:
        """The Side of a claim, computed now if need be (waits for the worker)."""
        while (side := self.ready_side(claim_id)) is None:
            time.sleep(0.01)
        return side

    def first_block(self) -> int:
        """Where this client starts reading its own events: the head when its store was made."""
        return int(self.store["first_block"])

    def now(self) -> int:
        """The time the next transaction will run at: the pending block's timestamp (the
        latest block's can be far behind on a chain that mines only on transactions)."""
        return int(self.game.w3.eth.get_block("pending")["timestamp"])

    @property
    def disputes(self) -> dict[str, dict[str, Any]]:
        return self.store["disputes"]

    @property
    def moves(self) -> list[dict[str, Any]]:
        """Every transaction this client sent in its games, with its gas (persisted)."""
        return self.store["moves"]

    def note(self, event: str, **fields: Any) -> None:
        self.notes.append((event, fields))

    def _log(self, dispute_id: int, d: Any, fn: str, receipt: Any, **extra: Any) -> dict:
        entry = {
            "dispute": dispute_id, "claim": d.claim_id, "fn": fn, "side": SIDE_NAMES[self.SIDE],
            "stage": d.stage.name, "level": LEVEL.get(d.stage), "height": d.height,
            "index": d.index, "gas": int(receipt["gasUsed"]), "block": int(receipt["blockNumber"]),
            "tx": "0x" + bytes(receipt["transactionHash"]).hex(), "mover": self.account,
            "time": time.time(),
        } | extra  # fmt: skip
        self.moves.append(entry)
        self.store.save()
        return entry

    # --- reconciliation -----------------------------------------------------------------------

    def reconcile(self) -> int:
        """Close the intents whose outcome the chain now tells, refuse a reset chain
        (StoreError), undo a reorg, and adopt from events what this client did. Returns the
        confirmed head (the newest block whose events are acted on)."""
        self.follower.check()
        for intent in self.game.reconcile():
            self.note("intent.closed", fn=intent.fn, subject=intent.subject, state=intent.state,
                      nonce=intent.nonce, tx=intent.tx_hash)  # fmt: skip
        fork = self.follower.reorg()
        if fork is not None:
            self._undo_after(fork)
            self.note("reorg", fork_block=fork)
        head = self.follower.head()
        self._from_events(head)
        self.store.save()
        return head

    def resume(self) -> dict[str, Any]:
        """What a (re)started client picks up: its unfinished claims, disputes and intents."""
        self.follower.bind()
        self.reconcile()
        return {
            "claims": sorted(int(k) for k, v in self.store["claims"].items()
                             if v.get("status", "pending") == "pending"
                             and v.get("verdict") not in ("match", "other-model", "closed")),
            "disputes": self.active(),
            "intents": [{"fn": i.fn, "subject": i.subject, "state": i.state}
                        for i in self.store.intents()],
        }  # fmt: skip

    # --- the game loop ------------------------------------------------------------------------

    def play(self, dispute_id: int, d: Any = None) -> dict[str, Any] | None:
        """Make the move due in one dispute, if any (this side's move, the step it wins, or the
        opponent's timeout); record the outcome once resolved. Returns the move made, if any."""
        info = self.disputes[str(dispute_id)]
        if info.get("winner") is not None:
            return None
        if f"dispute:{dispute_id}" in self.game.in_flight():
            return None  # a transaction of ours is still on its way: wait for it
        g = self.game
        d = d if d is not None else g.dispute(dispute_id)
        me = self.SIDE
        if d.stage == Stage.RESOLVED:
            info["winner"] = SIDE_NAMES[d.winner - 1]
            levels = [e["level"] for e in self.game.events(
                "LevelCompleted", info["block"], disputeId=dispute_id)]  # fmt: skip
            info["levels"] = levels
            info["end"] = describe(self.model, d) if 2 in levels else None
            self.store.save()
            return None
        if d.stage != Stage.STEP and d.to_move != me:
            if self.now() > d.turn_start + d.clock[d.to_move]:
                return self._try(dispute_id, d, "timeout", lambda: g.timeout(dispute_id,
                                 sender=self.account))  # fmt: skip
            return None
        side = self.ready_side(d.claim_id, URGENT)
        if side is None:
            return None  # its generation is being recomputed on the worker
        if d.stage == Stage.STEP:
            return self._maybe_step(dispute_id, d, side)
        send = self.account
        if d.stage in (Stage.TRACE, Stage.CHUNKS):
            tree = (side.prover.trace_tree if d.stage == Stage.TRACE
                    else side.tensor(d.position, d.node_id)[2])  # fmt: skip
            left, right = Side.children(tree, d.height, d.index)
            return self._try(
                dispute_id,
                d,
                "revealChildren",
                lambda: g.reveal_children(dispute_id, left, right, sender=send),
            )
        if d.stage == Stage.RECORD:
            dtype, length, root = side.record_open(d.position, d.node_id)
            proof = side.prover.node_proof(d.node_id) if me == CLAIM else None
            return self._try(dispute_id, d, "openRecord", lambda: g.open_record(
                dispute_id, dtype, length, root, proof, sender=send), record=[d.position,
                d.node_id])  # fmt: skip
        if d.stage == Stage.CHUNK:
            chunk = side.chunk(d.position, d.node_id, d.index)
            other = b""
            if me == CHALLENGE:  # re-send the claim side's chunk, from its Moved event
                mine = [m for m in g.events("Moved", info["block"], disputeId=dispute_id)
                        if m["side"] == CLAIM]  # fmt: skip
                other = bytes(mine[-1]["data"])
            return self._try(
                dispute_id,
                d,
                "revealChunk",
                lambda: g.reveal_chunk(dispute_id, chunk, other, sender=send),
            )
        if d.stage == Stage.REDUCTION:
            lv, li, rv, ri = side.reduction(d, me)
            return self._try(dispute_id, d, "revealReduction", lambda: g.reveal_reduction(
                dispute_id, lv, li, rv, ri, sender=send), values=[bits_to_f32(lv),
                bits_to_f32(rv)])  # fmt: skip
        return None

    def _maybe_step(self, dispute_id: int, d: Any, side: Side) -> dict[str, Any] | None:
        """Call the one step if this side's data says it wins it; else let the other side call
        it (or the claim side's clock run out: it runs while the step is awaited)."""
        if d.to_move != self.SIDE and self.now() > d.turn_start + d.clock[d.to_move]:
            # too late for the step (it reverts ClockExpired): the timeout wins it instead
            timeout = lambda: self.game.timeout(dispute_id, sender=self.account)  # noqa: E731
            return self._try(dispute_id, d, "timeout", timeout)
        call = side.step_call(self.game, dispute_id, d, self.SIDE, self.disputes[str(dispute_id)]
                              ["block"])  # fmt: skip
        node = side.prover.program.nodes[d.node_id]
        if node.op == Op.SAMPLE or node.reducer == Reducer.ARGMAX:
            claim_ok = call.index == d.value_index[CLAIM] and (
                not d.value_known or call.value == d.value[CLAIM]
            )
        else:
            claim_ok = call.value == d.value[CLAIM]
        if claim_ok != (self.SIDE == CLAIM):
            if d.to_move != self.SIDE and self.now() > d.turn_start + d.clock[d.to_move]:
                return self._try(
                    dispute_id,
                    d,
                    "timeout",
                    lambda: self.game.timeout(dispute_id, sender=self.account),
                )
            return None
        weights = len(side.prover.program.weights)
        return self._try(dispute_id, d, "step", lambda: self.game.step(
            dispute_id, call, weights, sender=self.account), step=call.label)  # fmt: skip

    def _try(self, dispute_id: int, d: Any, fn: str, send: Any, **extra: Any) -> dict | None:
        """Send a move; a revert because someone else moved first is not an error (anyone may
        move for either side at levels 1-2, and the step and timeouts are open to all)."""
        try:
            receipt = send()
        except GameError as exc:
            if exc.name in (
                "ChildrenMismatch",
                "RecordMismatch",
                "WrongStage",
                "DisputeNotActive",
                "ClockNotExpired",
                "ChunkMismatch",
                "ClockExpired",  # too late: the opponent (or anyone) will call the timeout
            ):
                return None  # fmt: skip
            raise
        return self._log(dispute_id, d, fn, receipt, **extra)

    def turn_deadline(self, d: Any) -> int:
        """When the side to move runs out of time (the step: the claim side's clock)."""
        return int(d.turn_start + d.clock[d.to_move])

    def play_all(self) -> list[dict[str, Any]]:
        """One pass over every active dispute this client plays, least remaining clock first.
        A move whose outcome is unknown (the node did not answer) does not hold up the others."""
        states = [(int(k), self.game.dispute(int(k))) for k in self.active()]
        states.sort(key=lambda kd: (kd[1].stage == Stage.RESOLVED, self.turn_deadline(kd[1])))
        made = []
        for did, d in states:
            try:
                move = self.play(did, d)
            except TransactionUnknown as exc:
                self.note("tx.unknown", dispute=did, detail=str(exc))
                continue
            if move is not None:
                made.append(move)
        return made

    def least_clock(self) -> int | None:
        """Seconds left on the running clock of the most urgent dispute this client plays, on
        its own turn (None when no dispute waits for it)."""
        now, left = self.now(), []
        for did in self.active():
            d = self.game.dispute(did)
            if d.stage != Stage.RESOLVED and (d.to_move == self.SIDE or d.stage == Stage.STEP):
                left.append(max(0, self.turn_deadline(d) - now))
        return min(left) if left else None

    def active(self) -> list[int]:
        """Disputes this client plays that have not resolved yet (as last seen)."""
        return [int(k) for k, v in self.disputes.items() if v.get("winner") is None]

    def collect(self) -> int:
        """Settle this client's move bonds in every resolved dispute (once each), collect its
        reward shares of overturned claims once they are settled (disputes it won, token proofs
        accepted: docs/protocol.md section 5), then withdraw its whole credit. Returns the
        amount withdrawn (wei)."""
        for key, info in self.disputes.items():
            if info.get("winner") is not None and not info.get("settled"):
                self.game.settle(int(key), self.account, sender=self.account)
                info["settled"] = True
                self.store.save()
        won = [info for info in self.disputes.values()
               if info.get("side") == "challenge" == info.get("winner")]  # fmt: skip
        proved = [m for m in self.moves
                  if m.get("fn") == "proveTokenMismatch" and not m.get("reverted")]  # fmt: skip
        for cid in sorted({int(e["claim"]) for e in won + proved if not e.get("rewarded")}):
            if self.game.reward(cid, self.account):  # settled: W over, no dispute open
                self.game.collect_reward(cid, self.account, sender=self.account)
            if self.game.reward_shares(cid, self.account) == 0:  # collected, now or before
                for e in won + proved:
                    if int(e["claim"]) == cid:
                        e["rewarded"] = True
                self.store.save()
        amount = self.game.credit(self.account)
        if amount:
            self.game.withdraw(self.account)
            self.store["withdrawn"] = self.store.data.get("withdrawn", 0) + amount
            self.store.save()
        return amount
