"""An 8B-class dispute played for real on one machine (issue 11, item 5; docs/dispute.md).

    python bench/llama8b.py [--dir /var/tmp/refute-llama8b] [--json out.json]

1. Writes once (kept in --dir) a random-init checkpoint with Llama-3-8B's shapes: hidden 4096,
   32 layers, 32 heads, 8 KV heads, SwiGLU 14336, vocab 128256, untied head, default RoPE with
   theta 500000, 8192 positions; bf16 in four safetensors shards with an index (~16 GB).
2. Measures in this process: load time (memory-mapped), weights-root time, prefill and decode
   tokens/s of the default backend, peak RSS.
3. Plays the game on a private anvil with three `refute` processes, each loading the
   checkpoint itself: a cheating prover (`refute prove --cheat`, one element of a late layer's
   MLP output flipped; it deploys the game), an honest prover posting the same request, and a
   watcher (`refute watch`). The watcher re-executes both claims, disputes the wrong one and
   plays the whole dispute — every move and the one step real — then anvil's clock is moved past
   the window so the honest claim finalises. Reports each process's peak RSS (VmHWM), every
   transaction's gas, moves per side, and the wall time of the dispute.

Not part of CI: it needs ~17 GB of disk, ~20 GB of memory and tens of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 4096, 32, 32, 8, 14336, 128256
HEAD_DIM = HIDDEN // HEADS
PROMPT = (1280, 791, 432, 315, 982, 374)  # six token ids (below the vocabulary, also --small's)
NEW_TOKENS = 3
CHEAT = "{position},layers.{layer}.mlp.down,123"  # the last position, the last layer but one
WINDOW, CLOCK = 7200, 3600


# --- the checkpoint -----------------------------------------------------------------------------


def shapes() -> list[tuple[str, tuple[int, ...]]]:
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (FFN, HIDDEN)),
            (p + "mlp.up_proj.weight", (FFN, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, FFN)),
        ]
    return [*out, ("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def write_checkpoint(directory: Path, shards: int = 4) -> float:
    """The checkpoint, unless --dir holds it already (config.json is written last). Returns
    the seconds spent writing (0 when it was there)."""
    import ml_dtypes
    from safetensors.numpy import save_file

    if (directory / "config.json").exists():
        return 0.0
    start = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(8)
    tensors = shapes()
    total = sum(int(np.prod(s)) for _, s in tensors)
    per_shard, groups, group, size = total / shards, [], [], 0
    for name, shape in tensors:
        group.append((name, shape))
        size += int(np.prod(shape))
        if size >= per_shard * (len(groups) + 1) and len(groups) < shards - 1:
            groups.append(group)
            group = []
    groups.append(group)
    index = {}
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        arrays = {}
        for name, shape in group:
            if len(shape) == 1:
                arrays[name] = np.ones(shape, dtype=ml_dtypes.bfloat16)
            else:
                values = rng.standard_normal(shape, dtype=np.float32)
                values *= 0.02
                arrays[name] = values.astype(ml_dtypes.bfloat16)
                del values
            index[name] = file
        save_file(arrays, str(directory / file), metadata={"format": "pt"})
        del arrays
        print(f"wrote {file} ({k + 1}/{len(groups)}), {time.monotonic() - start:.0f} s", flush=True)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total * 2}, "weight_map": index}, indent=1)
    )
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "attention_bias": False, "mlp_bias": False, "bos_token_id": VOCAB - 2,
        "eos_token_id": VOCAB - 1,
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return time.monotonic() - start


# --- measurements in this process --------------------------------------------------------------


def peak_rss_mb(pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _timed(executor, request) -> tuple[float, float, float]:
    """Seconds of a generation, of its prefill, and per decoded token."""
    marks: list[float] = []
    t0 = time.perf_counter()
    executor.generate([request], on_position=lambda n: marks.append(time.perf_counter()))
    decode = (marks[-1] - marks[0]) / max(1, len(marks) - 1)
    return time.perf_counter() - t0, marks[0] - t0, decode


def measure(directory: Path) -> dict:
    from refute.engine import backends
    from refute.engine.checkpoint import load_model
    from refute.engine.executor import Executor, Request

    t0 = time.perf_counter()
    model = load_model(directory)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    root = model.root
    root_s = time.perf_counter() - t0
    print(f"loaded in {load_s:.1f} s, weights root in {root_s:.1f} s", flush=True)
    executor = Executor(model, backend=backends.make(None))
    cold = _timed(executor, Request(PROMPT, NEW_TOKENS))  # packs (or maps) every weight
    total, prefill, decode = _timed(executor, Request(PROMPT[::-1], NEW_TOKENS))
    cache = executor.backend.pack_cache
    return {
        "first_generate_s": round(cold[0], 2), "first_prefill_s": round(cold[1], 2),
        "panels_written": cache.written, "panels_mapped": cache.mapped,
        "model_root": root.hex(), "params": sum(int(w.size) for w in model.weights),
        "load_s": round(load_s, 2), "weights_root_s": round(root_s, 1),
        "prefill_positions": len(PROMPT), "prefill_s": round(prefill, 2),
        "prefill_tokens_per_s": round(len(PROMPT) / prefill, 3),
        "decode_s_per_token": round(decode, 2), "decode_tokens_per_s": round(1 / decode, 3),
        "generate_s": round(total, 2), "evaluate_s": round(executor.seconds["evaluate"], 2),
        "commit_s": round(executor.seconds["commit"], 2),
        "commit_background_s": round(executor.seconds["commit_background"], 2),
        "backend": type(executor.backend).__name__, "peak_rss_mb": peak_rss_mb(),
    }  # fmt: skip


# --- the game ------------------------------------------------------------------------------------


class Proc:
    def __init__(self, name: str, args: list[str], logs: Path) -> None:
        self.name, self.args, self.log = name, args, logs / f"{name}.log"
        err = open(logs / f"{name}.stderr", "w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "refute", *args, "--log-file", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=err, env=os.environ,
        )  # fmt: skip
        err.close()
        self.rss: float | None = None
        self.started = time.monotonic()

    def poll(self) -> int | None:
        rss = peak_rss_mb(self.popen.pid)
        if rss is not None:
            self.rss = rss
        return self.popen.poll()

    def events(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.startswith("{")]

    def first(self, name: str) -> dict | None:
        return next((e for e in self.events() if e["event"] == name), None)


MOVES = ("revealChildren", "openRecord", "revealChunk", "revealReduction", "step", "timeout")


def transactions(w3, game, names: dict[str, str]) -> list[dict]:
    """Every transaction of the run, from the chain: sender, function, gas."""
    contracts = [game.game, game.registry]
    out = []
    for number in range(w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            fn = "deploy"
            for c in contracts:
                if tx["to"] is not None and tx["to"].lower() == c.address.lower():
                    fn = c.decode_function_input(tx["input"])[0].fn_name
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            out.append({"block": number, "from": names.get(tx["from"].lower(), tx["from"]),
                        "fn": fn, "gas": int(receipt["gasUsed"]),
                        "calldata_bytes": len(tx["input"])})  # fmt: skip
    return out


def play(directory: Path, logs: Path) -> dict:
    from refute.contracts.anvil import start_anvil
    from refute.contracts.chain import connect
    from refute.contracts.game import GameClient

    logs.mkdir(parents=True, exist_ok=True)
    common = ["--model", str(directory), "--interval", "1", "--until-idle", "--no-metrics",
              "--rpc-timeout", "120", "--workers", "1"]  # fmt: skip
    request = ["--prompt-tokens", ",".join(map(str, PROMPT)), "--max-new-tokens", str(NEW_TOKENS)]
    clocks = ["--window", str(WINDOW), "--clock", str(CLOCK), "--extension", "600"]
    cheat = CHEAT.format(position=len(PROMPT) + NEW_TOKENS - 2, layer=LAYERS - 2)
    out: dict = {"cheat": cheat}
    with start_anvil() as url:
        w3 = connect(url, timeout=600)
        procs: dict[str, Proc] = {}
        start = time.monotonic()

        def wait(what: str, until, limit: float = 7200.0) -> None:
            deadline = time.monotonic() + limit
            while not until():
                for p in procs.values():
                    rc = p.poll()
                    if rc not in (None, 0):
                        err = (logs / f"{p.name}.stderr").read_text()[-3000:]
                        raise SystemExit(f"{p.name} exited {rc} waiting for {what}:\n{err}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                time.sleep(0.5)
            print(f"{time.monotonic() - start:7.1f} s  {what}", flush=True)

        # one at a time through the weights root: three roots at once would not share memory
        procs["cheater"] = Proc("cheater", ["prove", "--rpc", url, *common, *request, *clocks,
                                            "--cheat", cheat, "--state", str(logs / "c"),
                                            "--account", "1"], logs)  # fmt: skip
        wait("cheater started", lambda: procs["cheater"].first("started"))
        game = GameClient.at(w3, procs["cheater"].first("deployed")["game"])
        procs["honest"] = Proc("honest", ["prove", "--rpc", url, *common, *request, "--game",
                                          game.game.address, "--state", str(logs / "h"),
                                          "--account", "3"], logs)  # fmt: skip
        wait("honest prover started", lambda: procs["honest"].first("started"))
        watch = ["watch", "--rpc", url, *common, "--game", game.game.address, "--state",
                 str(logs / "w"), "--account", "2", "--from-block", "0"]  # fmt: skip
        procs["watcher"] = Proc("watcher", watch, logs)
        wait("two claims posted", lambda: game.game.functions.claimCount().call() >= 2)
        wait("dispute opened", lambda: game.game.functions.disputeCount().call() >= 1)
        opened = time.monotonic()
        wait("dispute resolved", lambda: game.dispute(0).winner != 0)
        out["dispute_wall_s"] = round(time.monotonic() - opened, 1)
        w3.provider.make_request("evm_increaseTime", [WINDOW + 5])
        w3.provider.make_request("evm_mine", [])
        wait("every process exited", lambda: all(p.poll() == 0 for p in procs.values()))
        out["game_wall_s"] = round(time.monotonic() - start, 1)
        d = game.dispute(0)
        out["winner"] = "challenge" if d.winner == 2 else "claim"
        out["claims"] = [game.claim(i).status.name for i in range(2)]
        out["processes"] = {name: {"peak_rss_mb": round(p.rss or 0)} for name, p in procs.items()}
        names = {p.first("started")["accounts"][0].lower(): n for n, p in procs.items()}
        out["transactions"] = transactions(w3, game, names)
        moves = [t for t in out["transactions"] if t["fn"] in MOVES]
        out["moves"] = {side: sum(1 for t in moves if t["from"] == side)
                        for side in ("cheater", "watcher")}  # fmt: skip
        out["dispute_gas"] = {side: sum(t["gas"] for t in moves if t["from"] == side)
                              for side in ("cheater", "watcher")}  # fmt: skip
        ended = [e for e in procs["watcher"].events() if e["event"] == "dispute.resolved"]
        out["end"] = ended[-1] if ended else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/refute-llama8b"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip-measure", action="store_true")
    ap.add_argument("--small", action="store_true", help="Llama-3 shapes scaled down (a dry run)")
    args = ap.parse_args()
    # the CPU backend's packed panels, written once and mapped by every process (15 GB for 8B)
    os.environ.setdefault("REFUTE_CACHE_DIR", str(args.dir / "cache"))
    if args.small:
        global HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB, HEAD_DIM
        HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 256, 4, 4, 2, 1536, 2000
        HEAD_DIM = HIDDEN // HEADS
    out: dict = {"cpu": _cpu(), "write_s": round(write_checkpoint(args.dir / "ckpt"), 1)}
    if not args.skip_measure:
        out["measured"] = measure(args.dir / "ckpt")
        print(json.dumps(out["measured"]), flush=True)
        gc.collect()  # the model's maps and caches go before the game's processes map it
    out["game"] = play(args.dir / "ckpt", args.dir / "game")
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


def _cpu() -> str:
    info = Path("/proc/cpuinfo").read_text()
    name = next((x.split(":", 1)[1].strip() for x in info.splitlines() if "model name" in x), "?")
    isa = "AVX-512" if " avx512f" in info else "AVX2" if " avx2" in info else "no AVX2"
    return f"{name}, {os.cpu_count()} cores, {isa}"


if __name__ == "__main__":
    main()
