"""How long a deployment's clocks must be for the model work one claim can need.

A watcher must have re-executed a claim before its window W closes, and a restarted prover (or
watcher) must have recomputed a claim's generation before its dispute clock C runs out (a move
needs the generation's caches). The longest claim fills the model's context (`max_positions`
positions), so with a re-execution speed of v positions per second a deployment needs

    W >= queue + max_positions / v          C >= max_positions / v + polling + confirmations

where `queue` is the time the re-executions ahead of it take (docs/protocol.md section 8 works
this out for a flood). `check_liveness` measures v on this machine with a short generation and
returns a warning for each bound the game does not meet.
"""

from __future__ import annotations

import time
from typing import Any

from refute.engine.executor import Executor, Request
from refute.engine.model import Model

MARGIN = 2.0
"""Safety factor on the measured time (machines are shared; a first compile is slower)."""


def measure_speed(executor: Executor, positions: int = 4) -> float:
    """Positions per second of this executor on a short generation of the model it runs."""
    program = executor.program
    positions = max(2, min(positions, program.max_positions))
    request = Request((1,), positions)  # 1 prompt token + (positions - 1) generated ones
    executor.generate([Request((1,), 1)])  # warm-up (kernel compiles, caches)
    start = time.perf_counter()
    executor.generate([request])
    return positions / max(time.perf_counter() - start, 1e-9)


def check_liveness(model: Model, executor: Executor, params: Any) -> list[dict[str, Any]]:
    """Warnings (as event fields) where the game's W or C is shorter than what the longest
    claim of `model` needs at this machine's measured speed, with the figures."""
    speed = measure_speed(executor)
    longest = model.program.max_positions
    needed = MARGIN * longest / speed
    out = []
    for name, have in (("window", params.window), ("clock", params.clock)):
        if have < needed:
            out.append({
                "detail": f"the game's {name} ({have} s) is shorter than {needed:.0f} s, "
                f"{MARGIN:g}x the time this machine needs to run the longest claim of "
                f"{model.name} ({longest} positions at {speed:.1f} positions/s)",
                "parameter": name, "seconds": have, "needed": round(needed, 1),
                "positions_per_second": round(speed, 2), "max_positions": longest,
            })  # fmt: skip
    return out
