"""Flooding a watcher: re-execution speed, reaction time under load, the N it falls behind at,
and what that flood costs in claim fees (issue 10, item 1; docs/dispute.md "Flooding and
reaction time"; docs/protocol.md section 5 for the fee bound).

    python bench/flood.py [--floods 10,40,100] [--window 120] [--clock 60]

1. Re-execution speed: positions per second of `Executor.generate` on a claim filling the
   model's context (max_positions positions), for tiny-llama and the demo model, after a warm-up.
2. For each N: a private anvil, a cheating prover (one flipped bit) and an honest watcher in one
   `Service` (the watcher's model work on a `ModelWorker(threads=1)`); once the watcher has opened
   its dispute an attacker posts N honest claims of max_positions positions. Measured: the
   watcher's reaction times (block timestamp of the move that began its turn to the block of its
   answer), whether it won, and how many claims it reported `claim.at_risk` (it cannot
   re-execute them before their window W closes at its measured speed).
3. The fee arithmetic with `GameParams().fee_per_position`.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refute.bisection.challenger import Challenger
from refute.bisection.demo import flip_bit
from refute.bisection.eventlog import EventLog
from refute.bisection.prover import Prover
from refute.bisection.service import Service
from refute.bisection.workers import ModelWorker
from refute.contracts.anvil import start_anvil
from refute.contracts.chain import connect
from refute.contracts.game import CHALLENGE, GameClient, GameParams, Stage
from refute.demo_model import DEMO_MODEL_DIR
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Generation, Request
from refute.engine.model import Model

ETH = 10**18


def speed(model: Model, runs: int = 2) -> tuple[float, Generation]:
    """Best positions/s of a whole-context generation (after a warm-up), and one such run."""
    ex = Executor(model)
    ex.generate([Request((1,), 2)])
    best, gen = 0.0, None
    for _ in range(runs):
        start = time.perf_counter()
        (gen,) = ex.generate([Request((1,), model.program.max_positions)])
        best = max(best, gen.trace.positions / (time.perf_counter() - start))
    return best, gen


def reactions(game: GameClient, did: int) -> list[int]:
    """Seconds from the block that began each of the watcher's turns to its answer's block."""
    w3 = game.w3
    opened = game.events("DisputeOpened", disputeId=did)
    moved = game.events("Moved", disputeId=did)
    stamp = {b: w3.eth.get_block(b)["timestamp"] for b in
             {e["blockNumber"] for e in opened + moved}}  # fmt: skip
    out, previous = [], (opened[0]["blockNumber"], CHALLENGE)
    for e in moved:
        if e["side"] == CHALLENGE and previous[1] != CHALLENGE:
            out.append(stamp[e["blockNumber"]] - stamp[previous[0]])
        previous = (e["blockNumber"], e["side"])
    return out


def flood_run(model: Model, flood: Generation, n: int, window: int, clock: int) -> dict:
    """One dispute with a flood of `n` claims posted once it is open."""
    params = GameParams(claim_bond=ETH, challenge_bond=ETH // 2, move_bond=10**15,
                        window=window, clock=clock, extension=min(120, clock))  # fmt: skip
    with start_anvil() as url, tempfile.TemporaryDirectory() as tmp:
        w3 = connect(url)
        acc = w3.eth.accounts
        game = GameClient.deploy(w3=w3, params=params, sender=acc[0])
        game.register(model, sender=acc[0])
        cheat = Executor(model, tamper=flip_bit((2, model.program.node_index("layers.1.mlp.down"),
                                                 3)))  # fmt: skip
        prover = Prover(game, model, Path(tmp) / "p", acc[1], executor=cheat,
                        consistent_lies=True)  # fmt: skip
        worker = ModelWorker(threads=1)
        watcher = Challenger(game, model, Path(tmp) / "w", acc[2], worker=worker)
        stream = io.StringIO()
        service = Service(game, [prover, watcher], EventLog(stream, "bench"), interval=0.1)
        service.resume()
        try:
            prover.claim(Request((5, 17, 250, 3), 3))
            while not watcher.disputes:
                service.step()
            t0 = time.perf_counter()
            for _ in range(n):
                game.post_claim(model, flood, sender=acc[5])
            posting = time.perf_counter() - t0
            start = time.monotonic()
            # until the dispute is over and two flood claims are re-executed (the speed the
            # at-risk estimate uses is then that of whole-context claims)
            while time.monotonic() - start < 600:
                done = sum(1 for c in watcher.store["claims"].values() if c["verdict"] == "match")
                if game.dispute(0).stage == Stage.RESOLVED and done >= min(n, 2):
                    service.step()
                    break
                if not service.step():
                    time.sleep(0.02)
            elapsed = time.monotonic() - start
        finally:
            worker.close()
        log = [json.loads(line) for line in stream.getvalue().splitlines()]
        at_risk = {e["claim"] for e in log if e["event"] == "claim.at_risk"}
        waits = reactions(game, 0)
        return {
            "n": n, "won": game.dispute(0).winner == 2, "reactions": waits,
            "max": max(waits), "median": statistics.median(waits), "posting": posting,
            "elapsed": elapsed, "at_risk": len(at_risk), "speed": watcher.speed,
        }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--floods", default="10,40,100")
    ap.add_argument("--window", type=int, default=120, help="W of the flood games (s)")
    ap.add_argument("--clock", type=int, default=60, help="C of the flood games (s)")
    args = ap.parse_args()
    tiny = load_model("tiny-llama")
    demo = load_model(DEMO_MODEL_DIR)
    speeds = {}
    flood = None
    for name, m in (("tiny-llama", tiny), ("demo", demo)):
        v, gen = speed(m)
        speeds[name] = (v, m.program.max_positions)
        if name == "tiny-llama":
            flood = gen
        print(f"re-execution {name}: {v:.1f} positions/s "
              f"({m.program.max_positions} positions per longest claim: "
              f"{m.program.max_positions / v:.2f} s)")  # fmt: skip
    v, positions = speeds["tiny-llama"]
    rows = []
    for n in (int(x) for x in args.floods.split(",")):
        r = flood_run(tiny, flood, n, args.window, args.clock)
        rows.append(r)
        print(f"N={n}: won={r['won']} reactions max {r['max']} s median {r['median']} s over "
              f"{len(r['reactions'])} turns; claims at risk {r['at_risk']}; posting the flood "
              f"{r['posting']:.1f} s; watcher speed {r['speed']:.1f} positions/s")  # fmt: skip
    behind = int(args.window * v // positions)
    print(
        f"falls behind W={args.window} s beyond N = {behind} claims of {positions} positions "
        f"(W * v / positions at {v:.1f} positions/s)"
    )
    p = GameParams()
    f = p.fee_per_position
    bond = max(p.claim_bond, p.challenge_bond)
    print(f"\nfees: feePerPosition {f} wei; largest bond at stake {bond / ETH:g} ETH")
    for w in (args.window, 3600):
        n_w = int(w * v // positions)
        cost = (n_w + 1) * positions * f
        print(
            f"  W={w} s: the watcher falls behind beyond N={n_w}; N+1 claims of {positions} "
            f"positions pay {cost / ETH:.4f} ETH in fees = {cost / bond:.2f} x the bond"
        )
    for r in rows:
        cost = r["n"] * positions * f
        print(f"  N={r['n']}: {cost / ETH:.4f} ETH of fees ({cost / bond:.3f} x the bond)")
    for name, (vm, _pm) in speeds.items():
        print(f"  f needed for W=3600 s ({name}): > {bond / (vm * 3600):.3g} wei per position")


if __name__ == "__main__":
    main()
