"""A watcher fleet's capacity: claims re-executed per minute against the number of Ray actors,
Ray's overhead against the local pool, and the coordinator's own rate (issue 14, item 4;
docs/fleet.md).

    python bench/fleet.py [--models tiny-llama,demo] [--claims 12] [--new-tokens 60] [--cpus 2]
                          [--json out.json]

Every executor uses the cpu backend (numba kernels, loaded at once), local and on the actors.

1. Per model (tiny-llama, the demo model; `llama-134m`: a random-init 134.2M Llama, hidden 768,
   12 layers, written by transformers as a bf16 checkpoint in a temporary directory): one
   claim's re-execution time on the local executor
   (best of 3 after a warm-up; a claim is a 4-token prompt and --new-tokens generated tokens).
2. Throughput: --claims such claims submitted at once to (a) the local pool, one thread; (b) the
   local pool, two threads; (c) a RayWorker with 1 actor; (d) with 2 actors, on a local Ray
   cluster of --cpus CPUs started here. Claims per minute = claims / wall time until all are
   done; every result's trace root is checked against the local executor's. The jobs are the
   watcher's: whole generations from the local pool, `Reexecution`s (no caches) from actors.
3. The coordinator's own rate: a watcher on an embedded chain reading claims of another model
   (no model work: event, one claim read and one store write per claim), claims per second.

Not part of CI. The machine is shared with other agents: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refute.bisection.challenger import Challenger
from refute.bisection.prover import Prover
from refute.bisection.ray_worker import RayWorker, connect
from refute.bisection.workers import GenerateJob, ModelWorker, ReexecutionJob
from refute.contracts.game import GameClient, GameParams
from refute.demo_model import DEMO_MODEL_DIR
from refute.engine import backends
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from tests.chain_fixtures import embedded_chain

MODELS = {"tiny-llama": "tiny-llama", "demo": str(DEMO_MODEL_DIR), "llama-134m": None}


def llama_134m(directory: Path) -> str:
    """A random-init 134.2M-parameter Llama checkpoint (bench/kernels.py's decode shapes), bf16,
    as transformers writes it: every actor loads it from this path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                         max_position_embeddings=512, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
    return str(directory)


def claims(n: int, new_tokens: int) -> list[Request]:
    return [Request((5 + i % 7, 17, 250 - i, 3), new_tokens, 0.0, i) for i in range(n)]


def per_claim(model, request: Request) -> float:
    ex = Executor(model, backend=backends.make("cpu"))
    ex.generate([Request((1,), 2)])  # warm-up (numba kernels load on first use)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        ex.generate([request])
        best = min(best, time.perf_counter() - start)
    return best


def throughput(worker, requests: list[Request], executor: Executor, roots: list[bytes]) -> float:
    """Claims per minute through `worker`; every root must be the local executor's."""
    start = time.perf_counter()
    for i, r in enumerate(requests):
        job = ReexecutionJob(GenerateJob(r)) if worker.REMOTE else GenerateJob(r)
        worker.submit(i, float(i), job, executor=executor)
    pending = set(range(len(requests)))
    while pending:
        for i in [i for i in pending if worker.ready(i)]:
            got = worker.take(i)
            root = got.trace_root if worker.REMOTE else got.trace.root()
            assert root == roots[i], f"claim {i}: root differs"
            pending.discard(i)
        time.sleep(0.005)
    return len(requests) / (time.perf_counter() - start) * 60


def coordinator_rate(n: int) -> float:
    """Claims per second a watcher handles when no model work is due (another model's claims):
    the chain reads and store writes of the game loop alone, on an embedded chain."""
    llama, gpt2 = load_model("tiny-llama"), load_model("tiny-gpt2")
    w3 = embedded_chain()
    game = GameClient.deploy(w3=w3, params=GameParams(window=3600))
    game.register(llama)
    acc = w3.eth.accounts
    with tempfile.TemporaryDirectory() as tmp:
        prover = Prover(game, llama, Path(tmp) / "p", acc[1])
        for r in claims(n, 2):
            prover.claim(r)
        watcher = Challenger(game, gpt2, Path(tmp) / "w", acc[2])
        start = time.perf_counter()
        watcher.poll()
        elapsed = time.perf_counter() - start
        assert sum(c["verdict"] == "other-model" for c in watcher.store["claims"].values()) == n
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny-llama,demo", help="of: " + ",".join(MODELS))
    ap.add_argument("--claims", type=int, default=12)
    ap.add_argument("--new-tokens", type=int, default=60)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    start = time.monotonic()
    connect("auto", num_cpus=args.cpus)
    out: dict = {"ray_init_s": round(time.monotonic() - start, 2), "models": {}}
    print(f"ray start-up: {out['ray_init_s']} s", flush=True)
    scratch = tempfile.TemporaryDirectory()
    for name in args.models.split(","):
        ref = MODELS[name] or llama_134m(Path(scratch.name) / name)
        model = load_model(ref)
        requests = claims(args.claims, args.new_tokens)
        executor = Executor(model, backend=backends.make("cpu"))  # the actors' backend too
        roots = [executor.generate([r])[0].trace.root() for r in requests]
        row = {"positions": requests[0].positions,
               "claim_s": round(per_claim(model, requests[0]), 4)}  # fmt: skip
        for label, make in (
            ("local_1", lambda: ModelWorker(threads=1)),
            ("local_2", lambda: ModelWorker(threads=2)),
            ("ray_1", lambda m=model, r=ref: RayWorker(r, m.root, actors=1, backend="cpu")),
            ("ray_2", lambda m=model, r=ref: RayWorker(r, m.root, actors=2, backend="cpu")),
        ):
            t0 = time.monotonic()
            worker = make()
            startup = time.monotonic() - t0
            try:
                throughput(worker, requests[:2], executor, roots)  # warm-up (kernels)
                row[label] = round(throughput(worker, requests, executor, roots), 1)
            finally:
                worker.close()
            row[label + "_start_s"] = round(startup, 2)
            print(f"{name} {label}: {row[label]} claims/min (start {startup:.2f} s)", flush=True)
        row["ray_overhead_1"] = round(row["local_1"] / row["ray_1"] - 1, 3)
        out["models"][name] = row
        print(name, row, flush=True)
    out["coordinator_claims_per_s"] = round(coordinator_rate(40), 1)
    print(f"coordinator: {out['coordinator_claims_per_s']} claims/s (embedded chain)")
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
