"""`refute demo`: the whole protocol on an embedded chain, with no set-up.

An honest prover and a cheating prover (one flipped bit deep in its trace, via
`Executor(model, tamper=...)`) claim the same request; a watcher (`Challenger`) re-executes both,
lets the honest claim finalise and disputes the other; the clients play the game move by move from
chain state; bonds are paid out as credits and withdrawn. `run_demo` returns the outcome as one
JSON-ready dict; `render` turns it into the readable transcript.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from refute.bisection.challenger import Challenger
from refute.bisection.player import bits_to_f32
from refute.bisection.prover import Prover
from refute.contracts.game import GameClient, GameParams
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.engine.ir import Op
from refute.engine.model import Model

FALLBACK_PROMPT = (5, 17, 250, 3)
ETH = 10**18


def demo_model() -> tuple[Model, tuple[int, ...], str | None]:
    """The trained demo checkpoint if it is installed, else tiny-llama; with a prompt."""
    try:
        from refute.demo_model import DEMO_MODEL_DIR, DEMO_PROMPT
    except ImportError:
        DEMO_MODEL_DIR, DEMO_PROMPT = None, None
    if DEMO_MODEL_DIR is not None and (Path(DEMO_MODEL_DIR) / "config.json").exists():
        model = load_model(str(DEMO_MODEL_DIR))
        if model.tokenizer is not None and DEMO_PROMPT:
            return model, tuple(model.tokenizer.encode(DEMO_PROMPT).ids), DEMO_PROMPT
        return model, FALLBACK_PROMPT, None
    return load_model("tiny-llama"), FALLBACK_PROMPT, None


def tamper_target(model: Model, request: Request, node: str | None) -> tuple[int, int, int]:
    """(position, node, element) of the flipped bit: by default the last layer's MLP down
    projection (a 4-level-deep reduction) at the second-to-last position."""
    p = model.program
    if node is not None:
        n = int(node) if node.isdigit() else p.node_index(node)
    else:
        reduces = [i for i, x in enumerate(p.nodes) if x.op == Op.REDUCE and "mlp.down" in x.name]
        n = reduces[-1] if reduces else p.logits_node
    t = max(request.positions - 2, 0)
    size = int(np.prod(p.resolve(p.nodes[n].shape, t)))
    return t, n, min(7, size - 1)


def flip_bit(target: tuple[int, int, int]) -> Callable[[int, int, np.ndarray], np.ndarray]:
    """A tamper hook flipping the lowest bit of one element of one record (the lowest mantissa
    bit of a float32 record; a uint32 record, e.g. a sampled token, changes by one)."""
    t0, n0, e0 = target

    def tamper(t: int, n: int, out: np.ndarray) -> np.ndarray:
        if (t, n) != (t0, n0):
            return out
        out = np.array(out, copy=True)
        bits = out.reshape(-1) if out.dtype == np.uint32 else out.reshape(-1).view(np.uint32)
        bits[e0] ^= 1
        return out

    return tamper


def run_demo(
    *,
    max_new_tokens: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
    tamper_node: str | None = None,
    state_dir: str | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Play the demo end to end; returns the outcome (claims, games, payouts, transcript)."""
    progress("loading the model")
    model, prompt, prompt_text = demo_model()
    request = Request(prompt, max_new_tokens, temperature, seed)
    progress("deploying ModelRegistry, OneStepVerifier, DisputeGame on an embedded chain")
    params = GameParams(claim_bond=ETH, challenge_bond=ETH // 2, move_bond=ETH // 1000)
    game = GameClient.deploy(params=params)
    game.register(model)
    acc = game.w3.eth.accounts
    names = {acc[1]: "honest prover", acc[2]: "cheating prover", acc[3]: "watcher"}
    target = tamper_target(model, request, tamper_node)
    directory = state_dir or tempfile.mkdtemp(prefix="refute-demo-")
    honest = Prover(game, model, f"{directory}/honest", acc[1])
    cheater = Prover(
        game,
        model,
        f"{directory}/cheater",
        acc[2],
        executor=Executor(model, tamper=flip_bit(target)),
        consistent_lies=True,
    )
    watcher = Challenger(game, model, f"{directory}/watcher", acc[3])
    progress(f"honest prover: generating {max_new_tokens} tokens and posting its claim")
    honest_id = honest.claim(request)
    progress("cheating prover: same request, one bit flipped at "
             f"(position {target[0]}, node {model.program.nodes[target[1]].name}, "
             f"element {target[2]}); posting its claim")  # fmt: skip
    cheat_id = cheater.claim(request)
    progress("watcher: re-executing every posted claim")
    opened = watcher.poll()
    polls = 0
    while watcher.active() or cheater.active() or honest.active():
        made = cheater.poll() + honest.poll() + watcher.poll()
        polls += 1
        if made:
            last = made[-1]
            progress(f"move {len(cheater.moves) + len(watcher.moves)}: {last.get('side')} side, "
                     f"{last['fn']} ({last.get('stage')})")  # fmt: skip
        if polls > 500:
            raise RuntimeError("the game did not end")
    deadline = max(game.claim(honest_id).deadline, game.claim(cheat_id).deadline)
    progress("advancing the embedded chain past the challenge window")
    game.w3.provider.ethereum_tester.time_travel(deadline + 1)
    honest.poll()
    cheater.poll()
    progress("settling move bonds and withdrawing credits")
    payouts = {names[a]: c.collect() for a, c in ((acc[1], honest), (acc[2], cheater),
                                                   (acc[3], watcher))}  # fmt: skip
    return _outcome(game, model, request, prompt_text, honest, cheater, watcher, honest_id,
                    cheat_id, target, opened, payouts, names)  # fmt: skip


def _text(model: Model, tokens: list[int]) -> str | None:
    return model.tokenizer.decode(tokens) if model.tokenizer is not None else None


def _outcome(game, model, request, prompt_text, honest, cheater, watcher, honest_id, cheat_id,
             target, opened, payouts, names) -> dict[str, Any]:  # fmt: skip
    p = model.program
    claims = []
    for who, client, cid in (("honest", honest, honest_id), ("cheating", cheater, cheat_id)):
        tokens = client.store["claims"][str(cid)]["tokens"]
        c = game.claim(cid)
        claims.append({
            "claim": cid, "prover": who, "status": c.status.name.lower(),
            "tokens": tokens, "text": _text(model, tokens), "trace_root": "0x" + c.trace_root.hex(),
            "records": c.num_records, "watcher_verdict": watcher.verdict(cid),
        })  # fmt: skip
    claims[1]["tamper"] = {"position": target[0], "node": p.nodes[target[1]].name,
                           "node_id": target[1], "element": target[2]}  # fmt: skip
    moves = sorted(cheater.moves + watcher.moves + honest.moves, key=lambda m: m.get("block", 0))
    games = []
    for key, info in watcher.disputes.items():
        did = int(key)
        mine = [m for m in moves if m.get("dispute") == did]
        count, gas = Counter(), Counter()
        for m in mine:
            count[m["side"]] += 1
            gas[m["side"]] += m["gas"]
        levels = [{"level": e["level"], "where": e["where"],
                   "claim": "0x" + bytes(e["claimValue"]).hex(),
                   "challenge": "0x" + bytes(e["challengeValue"]).hex()}
                  for e in game.events("LevelCompleted", disputeId=did)]  # fmt: skip
        step = [{"value": bits_to_f32(e["value"]), "index": e["index"],
                 "claim_correct": e["claimCorrect"]}
                for e in game.events("StepVerified", disputeId=did)]  # fmt: skip
        d = game.dispute(did)
        games.append({
            "dispute": did, "claim": info["claim"], "winner": info["winner"],
            "winner_account": names.get(d.challenger if info["winner"] == "challenge"
                                        else game.claim(info["claim"]).claimant),
            "moves": dict(count), "gas": dict(gas), "levels": levels, "step": step[0] if step
            else None, "disputed": info.get("end"),
        })  # fmt: skip
    if games and games[0]["disputed"] is not None:
        t = games[0]["disputed"]["position"]
        tok = request.prompt[t] if t < len(request.prompt) else claims[0]["tokens"][
            t - len(request.prompt)]  # fmt: skip
        games[0]["disputed"]["input_token"] = tok
        games[0]["disputed"]["input_text"] = _text(model, [tok])
    transcript = [
        {k: m.get(k) for k in ("dispute", "fn", "side", "level", "stage", "height", "index",
                               "gas", "values", "record", "step")} | {"mover": names[m["mover"]]}
        for m in moves
    ]  # fmt: skip
    return {
        "model": model.name, "nodes_per_position": len(p.nodes), "prompt": list(request.prompt),
        "prompt_text": prompt_text, "temperature": request.temperature, "seed": request.seed,
        "claims": claims, "games": games, "watcher_opened": opened,
        "payouts_wei": payouts, "transcript": transcript,
        "bonds_wei": {"claim": game.bonds[0], "challenge": game.bonds[1], "move": game.bonds[2],
                      "fee_per_position": game.fee_per_position},
        "burned_wei": game.burned(),
    }  # fmt: skip


def _what(m: dict[str, Any], model: Model, n_nodes: int) -> str:
    """What a move opened: the range still disagreed on."""
    h, i, stage = m["height"], m["index"], m["stage"]
    if stage == "TRACE":
        lo, hi = i << h, ((i + 1) << h) - 1
        return f"trace records {lo}..{hi} (positions {lo // n_nodes}..{hi // n_nodes})"
    if stage == "RECORD":
        t, n = m["record"]
        return f"record {t * n_nodes + n} = position {t}, {model.program.nodes[n].name}"
    if stage == "CHUNKS":
        return f"chunks {i << h}..{((i + 1) << h) - 1} of the output tensor"
    if stage == "CHUNK":
        return f"chunk {i} (elements {i * 256}..{i * 256 + 255})"
    if stage == "REDUCTION":
        lv, rv = m["values"]
        return f"tree leaves {i << h}..{((i + 1) << h) - 1}: children {lv:.6g} + {rv:.6g}"
    if stage == "STEP":
        return f"one step: {m['step']}"
    return ""


def render(out: dict[str, Any], model: Model | None = None) -> str:
    """The outcome as a readable transcript."""
    model = model if model is not None else demo_model()[0]
    n_nodes = out["nodes_per_position"]
    lines = [f"model     {out['model']} ({n_nodes} nodes per position)",
             f"prompt    {out['prompt']}" + (f"  {out['prompt_text']!r}" if out["prompt_text"]
                                             else "")]  # fmt: skip
    for c in out["claims"]:
        lines.append(
            f"claim {c['claim']}   {c['prover']} prover, {c['records']} records, tokens "
            f"{c['tokens']}" + (f"  {c['text']!r}" if c["text"] is not None else "")
        )
        lines.append(f"          watcher re-executed it: {c['watcher_verdict']}")
        if "tamper" in c:
            t = c["tamper"]
            lines.append(f"          (one bit flipped at position {t['position']}, {t['node']}, "
                         f"element {t['element']})")  # fmt: skip
    lines.append("")
    lines.append(f"{'#':>3} {'side':<9} {'lvl':>3} {'move':<16} {'gas':>8}  disagreement")
    moves = out["transcript"]
    for k, m in enumerate(moves, 1):
        what = _what(m, model, n_nodes)
        after = moves[k] if k < len(moves) else None
        if (
            m["side"] == "challenge"
            and m["stage"] in ("TRACE", "CHUNKS", "REDUCTION")
            and after is not None
            and after["dispute"] == m["dispute"]
        ):
            what += " -> the " + ("right" if after["index"] & 1 else "left") + " half differs"
        lines.append(f"{k:>3} {m['side']:<9} {m['level'] or '':>3} {m['fn']:<16} {m['gas']:>8,}  "
                     + what)  # fmt: skip
    for g in out["games"]:
        lines.append("")
        lines.append(f"dispute {g['dispute']} on claim {g['claim']}: won by the {g['winner']} "
                     f"side ({g['winner_account']})")  # fmt: skip
        for side in ("claim", "challenge"):
            lines.append(f"  {side:<9} side: {g['moves'].get(side, 0)} moves, "
                         f"{g['gas'].get(side, 0):,} gas")  # fmt: skip
        d = g["disputed"]
        if d is not None:
            layer = f"layer {d['layer']}, " if d["layer"] is not None else ""
            tok = f" (input token {d['input_token']}" + (
                f" {d['input_text']!r})" if d.get("input_text") is not None else ")"
            )
            lines.append(
                f"  disputed operation: position {d['position']}{tok}, {layer}node "
                f"{d['node_id']} {d['node']} ({d['op']} of {d['fn']}), element "
                f"{d['element']} {tuple(d['coords'])} of shape {tuple(d['shape'])}"
            )
            if "claim_value" in d:
                lines.append(f"  claimed {d['claim_value']!r}, watcher {d['challenge_value']!r}"
                             + (f"; the dispute ended on reduction leaf {d['leaf']}"
                                if "leaf" in d else ""))  # fmt: skip
        if g["step"] is not None:
            s = g["step"]
            lines.append(
                f"  one-step verifier recomputed {s['value']!r}: the claim is "
                + ("correct" if s["claim_correct"] else "WRONG")
            )
    lines.append("")
    for c in out["claims"]:
        lines.append(f"claim {c['claim']} ({c['prover']}): {c['status']}")
    lines.append(
        "paid out (withdrawn): "
        + ", ".join(f"{who} {wei / ETH:.3f} ETH" for who, wei in out["payouts_wei"].items())
    )
    return "\n".join(lines)
