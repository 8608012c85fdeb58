"""`refute serve` against `refute run`: latency, time to first token and requests per second on
the demo model, the same prompts and parameters (the overhead of the HTTP layer, the durable
queue and posting each answer as a claim).

    python bench/serve.py [--chain embedded|anvil] [--requests 12] [--max-tokens 16]

`run`: the engine as `refute run` uses it (one `Executor` in this process, the model loaded and
warmed once): per request the generation time, and the time to the first generated token
(prefill + its sampling, from the executor's `on_position` callback).
`serve`: `refute serve` in this process (refute.cli.serve.start; its game loop in a thread,
uvicorn in another) called with the official openai client, one request at a time: the latency
of a plain completion (until the claim is posted: the answer names it), the time to the first
streamed text delta, and requests per second; then the same requests from `--concurrency`
clients at once (they queue: one model worker answers them in order).
The chain is the embedded py-evm one (its transactions run in this process, under the GIL that
the generation needs too) or a private anvil node (`--chain anvil`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refute.demo_model import DEMO_MODEL_DIR, DEMO_PROMPTS


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(1000 * statistics.median(values), 1),
        "min_ms": round(1000 * min(values), 1),
        "max_ms": round(1000 * max(values), 1),
    }


def bench_run(prompts: list[str], max_tokens: int) -> dict:
    from refute.engine import backends
    from refute.engine.checkpoint import load_model
    from refute.engine.executor import Executor, Request

    model = load_model(DEMO_MODEL_DIR)
    executor = Executor(model, backend=backends.make(None))
    executor.generate([Request((1, 2), max_tokens)])  # warm-up (kernel compiles)
    total, first, tokens = [], [], []
    for prompt in prompts:
        request = Request(tuple(model.tokenizer.encode(prompt).ids), max_tokens)
        start = time.perf_counter()
        seen: list[float] = []
        (gen,) = executor.generate(
            [request], on_position=lambda _n, s=seen: s.append(time.perf_counter())
        )
        total.append(time.perf_counter() - start)
        first.append(seen[0] - start)
        tokens.append(gen.output_tokens)
    return {
        "latency": _ms(total),
        "ttft": _ms(first),
        "requests_per_s": round(len(prompts) / sum(total), 2),
        "tokens": tokens,
    }


def bench_serve(prompts: list[str], max_tokens: int, rpc: str | None, concurrency: int) -> dict:
    import openai

    from refute.cli.serve import start

    state = tempfile.mkdtemp(prefix="refute-bench-serve-")
    args = ["--port", "0", "--state", state, "--log-file", os.devnull]
    if rpc is not None:
        args += ["--rpc", rpc]
    serving = start(args)
    try:
        client = openai.OpenAI(base_url=serving.url + "/v1", api_key="none", max_retries=0)
        client.completions.create(model="demo", prompt="If the", max_tokens=2)  # warm-up
        total, tokens = [], []
        t0 = time.perf_counter()
        for prompt in prompts:
            start_t = time.perf_counter()
            r = client.completions.create(model="demo", prompt=prompt, max_tokens=max_tokens)
            total.append(time.perf_counter() - start_t)
            tokens.append(r.model_extra["refute"]["tokens"])
        sequential = len(prompts) / (time.perf_counter() - t0)
        first = []
        for prompt in prompts:
            start_t = time.perf_counter()
            stream = client.completions.create(
                model="demo", prompt=prompt, max_tokens=max_tokens, stream=True
            )
            got = None
            for chunk in stream:
                if got is None and chunk.choices and chunk.choices[0].text:
                    got = time.perf_counter() - start_t
            first.append(got)
        t0 = time.perf_counter()
        threads = [
            threading.Thread(
                target=lambda ps=prompts[k::concurrency]: [
                    client.completions.create(model="demo", prompt=p, max_tokens=max_tokens)
                    for p in ps
                ]
            )
            for k in range(concurrency)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent = len(prompts) / (time.perf_counter() - t0)
    finally:
        serving.close()
    return {
        "latency": _ms(total),
        "ttft": _ms([f for f in first if f is not None]),
        "requests_per_s": round(sequential, 2),
        f"requests_per_s_{concurrency}_clients": round(concurrent, 2),
        "tokens": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", choices=["embedded", "anvil"], default="embedded")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    prompts = [DEMO_PROMPTS[i % len(DEMO_PROMPTS)] for i in range(args.requests)]
    with ExitStack() as stack:
        rpc = None
        if args.chain == "anvil":
            from refute.contracts.anvil import start_anvil

            rpc = stack.enter_context(start_anvil())
        run = bench_run(prompts, args.max_tokens)
        serve = bench_serve(prompts, args.max_tokens, rpc, args.concurrency)
    same = run.pop("tokens") == serve.pop("tokens")
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "chain": args.chain,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "same_tokens": same,
        "run": run,
        "serve": serve,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
