"""Engine throughput: refute's reference backend next to torch on the same weights, commitment
overhead, and weights-commitment throughput — every ratio measured in one run.

    python bench/engine.py [--quick] [--new-tokens 16] [--big-new-tokens 8]

For each model (the built-in tiny-llama, and unless --quick a ~100M-parameter random Llama) it
prints:

- decode tokens/s of refute's reference backend (greedy, trace recorded, one sequence) and of
  torch's fp32 eager forward (`LlamaForCausalLM`, `attn_implementation="eager"`, KV cache) run on
  the *same* weights — refute's random weights copied into the transformers model — and their
  ratio (torch: best of --repeats runs; refute: one run). torch runs on one thread by default
  (--threads), like the numpy reference; on a loaded machine more OpenMP threads than free cores
  make torch much slower, not faster. Decode is timed from the end of the prompt's prefill to
  the last token: the first new token comes out of the prefill, each further one costs one
  decode step.
- commitment overhead: `Executor.seconds["commit"]` (hashing every node output of every
  position) over `Executor.seconds["evaluate"]` (computing them), both accumulated over the run.
- weights commitment throughput: the model's weights root computed from scratch (every tensor's
  Merkle root, its leaf, the list root) over the weights' float32 bytes, best of --repeats.

Targets: commitment overhead <= 25% of inference, weights commitment >= 0.5 GB/s. PASS/FAIL is
printed next to each; the exit status does not depend on them. Needs torch and transformers.

    python bench/engine.py --commitments [--threads 1 2] [--repeats 3]

measures instead what committing costs the watchers' backend (`CPUBackend`), without torch: on
tiny-llama, the demo checkpoint (refute/data/demo) and a 134.2M-parameter random Llama (the
shapes of bench/kernels.py) with float32 weights and with bf16 weights, at each numba thread
count, it runs the same greedy generation with the trace recorded and without (alternating,
--repeats pairs, after a warm-up) and prints the executor's split of the recorded runs (hashing
every node output, the cache commitments and the trace records, against computing the outputs):
the commitments' time on the evaluating thread, and the hashing's own time on the commit thread
where the executor hashes beside the evaluation (engine/committer.py: where numba's threads
leave a core free). What committing costs the run is the last column, the wall time of each
recorded run over the unrecorded run beside it (the median of the pairs), minus 1; the target
is checked on it. Target: commitments <= 10% of evaluation.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from refute.engine import merkle
from refute.engine.checkpoint import build, builtin_model, random_weights
from refute.engine.executor import Executor, Request
from refute.engine.model import Model
from refute.engine.models import LlamaConfig
from refute.engine.weights import BF16

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

# ~100M parameters: 12 layers of width 768 (12 heads of 64), SwiGLU 1792, vocab 32000, tied
# embeddings — 102.5M parameters, about 410 MB of float32.
LLAMA_100M = LlamaConfig(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=1792,
    num_layers=12,
    num_heads=12,
    num_kv_heads=12,
    head_dim=64,
    max_positions=256,
    tie_embeddings=True,
)

# bench/kernels.py's decode model: untied head, SwiGLU 2048 — 134.2M parameters
LLAMA_134M = LlamaConfig(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=2048,
    num_layers=12,
    num_heads=12,
    num_kv_heads=12,
    head_dim=64,
    max_positions=512,
)

COMMIT_OVERHEAD_TARGET = 0.25
CPU_COMMIT_TARGET = 0.10
WEIGHTS_GBPS_TARGET = 0.5


@dataclass
class Result:
    name: str
    params: int
    prompt: int
    new_tokens: int
    refute_tps: float
    torch_tps: float
    tokens_agree: bool
    evaluate_s: float
    commit_s: float
    weights_gb: float
    weights_s: float
    encode_s: float

    @property
    def speed_ratio(self) -> float:
        return self.torch_tps / self.refute_tps

    @property
    def commit_overhead(self) -> float:
        return self.commit_s / self.evaluate_s

    @property
    def weights_gbps(self) -> float:
        return self.weights_gb / self.weights_s


def hf_model(model: Model) -> LlamaForCausalLM:
    """A transformers Llama holding exactly refute's weights (float32)."""
    import torch
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    c = model.config
    config = HFLlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.max_positions,
        rms_norm_eps=c.rms_eps,
        rope_theta=c.rope_theta,
        tie_word_embeddings=c.tie_embeddings,
        bos_token_id=None,
        eos_token_id=None,
    )
    config._attn_implementation = "eager"
    hf = LlamaForCausalLM(config)
    state = {
        spec.name: torch.from_numpy(w)
        for spec, w in zip(model.program.weights, model.weights, strict=True)
        if not spec.name.startswith("rope.")
    }
    if c.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    with torch.no_grad():
        hf.load_state_dict(state, strict=True)
    return hf.eval()


def time_refute(model: Model, prompt: tuple[int, ...], new: int) -> tuple[float, list[int], dict]:
    ex = Executor(model)  # records the trace: the commitment cost is part of the run
    marks: list[float] = []
    (gen,) = ex.generate(
        [Request(prompt, new)], on_position=lambda _: marks.append(time.perf_counter())
    )
    decode_s = marks[-1] - marks[0]  # marks[0]: prefill done, first new token out
    return (new - 1) / decode_s, gen.output_tokens, dict(ex.seconds)


def time_torch(hf: LlamaForCausalLM, prompt: tuple[int, ...], new: int) -> tuple[float, list[int]]:
    import torch

    with torch.inference_mode():
        return _time_torch(torch, hf, prompt, new)


def _time_torch(
    torch, hf: LlamaForCausalLM, prompt: tuple[int, ...], new: int
) -> tuple[float, list[int]]:
    out = hf(torch.tensor([prompt]), use_cache=True)
    past, token = out.past_key_values, int(out.logits[0, -1].argmax())
    tokens = [token]
    start = time.perf_counter()
    for _ in range(new - 1):
        out = hf(torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past, token = out.past_key_values, int(out.logits[0, -1].argmax())
        tokens.append(token)
    return (new - 1) / (time.perf_counter() - start), tokens


def time_encode(model: Model, repeats: int) -> float:
    """The part of the weights commitment spent encoding (canonical little-endian bytes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for w in model.weights:
            merkle.encode(w)
        best = min(best, time.perf_counter() - start)
    return best


def time_weights_root(model: Model, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        model._tensor_roots = None
        for key in ("weight_leaves", "weights_root", "root"):
            model.__dict__.pop(key, None)
        start = time.perf_counter()
        _ = model.weights_root
        best = min(best, time.perf_counter() - start)
    return best


def bench(name: str, model: Model, prompt_len: int, new: int, repeats: int) -> Result:
    print(f"\n{name}: {model.num_parameters / 1e6:.2f}M parameters", flush=True)
    prompt = tuple(int(t) for t in np.arange(1, prompt_len + 1) * 7 % model.config.vocab_size)
    weights_s = time_weights_root(model, repeats)
    weights_gb = sum(w.nbytes for w in model.weights) / 1e9
    hf = hf_model(model)
    time_torch(hf, prompt, 2)  # warm-up: first calls allocate and dispatch slowly
    runs = [time_torch(hf, prompt, new) for _ in range(repeats)]  # best of: the machine is shared
    torch_tps, torch_tokens = max(runs)
    del hf
    refute_tps, tokens, seconds = time_refute(model, prompt, new)
    return Result(
        name,
        model.num_parameters,
        prompt_len,
        new,
        refute_tps,
        torch_tps,
        tokens == torch_tokens,
        seconds["evaluate"],
        seconds["commit"],
        weights_gb,
        weights_s,
        time_encode(model, repeats),
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: list[Result]) -> None:
    import torch

    print(
        f"\nmachine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, numpy {np.__version__}"
    )
    head = (
        f"{'model':<11} {'params':>7} {'prompt+new':>10} {'refute tok/s':>12} "
        f"{'torch tok/s':>11} {'torch/refute':>12} {'same tokens':>11} "
        f"{'commit/infer':>17} {'weights GB/s':>17}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        overhead = (
            f"{r.commit_overhead:6.1%} {verdict(r.commit_overhead <= COMMIT_OVERHEAD_TARGET)}"
        )
        gbps = f"{r.weights_gbps:6.2f} {verdict(r.weights_gbps >= WEIGHTS_GBPS_TARGET)}"
        print(
            f"{r.name:<11} {r.params / 1e6:6.1f}M {f'{r.prompt}+{r.new_tokens}':>10} "
            f"{r.refute_tps:12.3f} {r.torch_tps:11.1f} {r.speed_ratio:11.3g}x "
            f"{'yes' if r.tokens_agree else 'NO':>11} {overhead:>17} {gbps:>17}"
        )
    print(
        f"targets: commitment <= {COMMIT_OVERHEAD_TARGET:.0%} of inference time "
        f"(commit_s / evaluate_s), weights commitment >= {WEIGHTS_GBPS_TARGET} GB/s"
    )
    for r in results:
        print(
            f"  {r.name}: evaluate {r.evaluate_s:.2f} s, commit {r.commit_s:.2f} s; "
            f"weights root {r.weights_s:.3f} s over {r.weights_gb * 1e3:.1f} MB "
            f"(of which encoding, without hashing, ~{r.encode_s:.3f} s)"
        )


def commit_runs(model: Model, prompt: tuple[int, ...], new: int, repeats: int) -> dict:
    """CPUBackend generations recorded and unrecorded, alternating; the executors' seconds."""
    from refute.kernels.cpu import CPUBackend

    backend = CPUBackend()  # kernels at once; one backend, so weights are packed once
    rec, plain = Executor(model, backend=backend), Executor(model, backend=backend, record=False)
    for ex in (rec, plain):  # warm-up at the measured length: pack the weights, load every
        ex.generate([Request(prompt, new)])  # kernel variant (a cache past one chunk uses more)
        ex.seconds = dict.fromkeys(ex.seconds, 0.0)
    ratios = []
    for _ in range(repeats):
        wall = []
        for ex in (rec, plain):
            start = time.perf_counter()
            ex.generate([Request(prompt, new)])
            wall.append(time.perf_counter() - start)
        ratios.append(wall[0] / wall[1])
    return {**rec.seconds, "wall": float(np.median(ratios)) - 1}


def commitments(threads: list[int], repeats: int, new: int, big_new: int) -> None:
    """Commitment cost on the CPU backend: tiny-llama, the demo checkpoint, a 134M Llama."""
    import os

    import numba

    from refute.demo_model import DEMO_MODEL_DIR
    from refute.engine.checkpoint import load_model

    start = time.perf_counter()
    weights = random_weights(LLAMA_134M, 0)
    models = [
        ("tiny-llama", builtin_model("tiny-llama"), new),
        ("demo", load_model(str(DEMO_MODEL_DIR)), new),
        ("llama-134m", build("llama-134m", LLAMA_134M, weights), big_new),
        ("134m-bf16", build("134m-bf16", LLAMA_134M, {k: v.astype(BF16) for k, v in
                                                       weights.items()}), big_new),
    ]  # fmt: skip
    print(f"models built in {time.perf_counter() - start:.1f} s", flush=True)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
        f"numba {numba.__version__}, load average {os.getloadavg()[0]:.2f} at start"
    )
    head = (
        f"{'model':<11} {'params':>7} {'threads':>7} {'prompt+new':>10} {'evaluate s':>10} "
        f"{'commit s':>9} {'bg hash s':>9} {'commit/evaluate':>15} {'wall rec/plain':>19}"
    )
    print(head)
    print("-" * len(head))
    for name, model, n_new in models:
        prompt = tuple(int(t) for t in np.arange(1, 9) * 7 % model.config.vocab_size)
        for th in threads:
            numba.set_num_threads(th)
            r = commit_runs(model, prompt, n_new, repeats)
            wall = f"{r['wall']:+6.1%} {'PASS' if r['wall'] <= CPU_COMMIT_TARGET else 'FAIL'}"
            print(
                f"{name:<11} {model.num_parameters / 1e6:6.1f}M {th:>7} "
                f"{f'8+{n_new}':>10} {r['evaluate']:10.3f} {r['commit']:9.3f} "
                f"{r['commit_background']:9.3f} {r['commit'] / r['evaluate']:15.1%} "
                f"{wall:>19}",
                flush=True,
            )
    print(
        f"target: a recorded run's wall time <= {1 + CPU_COMMIT_TARGET:.2f}x the unrecorded run's "
        f"(median of {repeats} alternating pairs); commit s: the commitments' time on the "
        "evaluating thread, bg hash s: the hashing's on the commit thread (summed over the "
        f"recorded runs). load average {os.getloadavg()[0]:.2f} at the end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-llama only")
    parser.add_argument(
        "--commitments", action="store_true", help="commitment cost on the CPU backend only"
    )
    parser.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=16, help="new tokens, tiny-llama")
    parser.add_argument(
        "--big-new-tokens", type=int, default=8, help="new tokens, ~100M model (slow in numpy)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="weights-root timings (best of); with --commitments, recorded/unrecorded pairs",
    )  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch threads (default 1: refute's numpy reference is single-threaded too); "
        "with --commitments, numba thread counts (default 1 2)",
    )
    args = parser.parse_args()
    if args.commitments:
        commitments(args.threads or [1, 2], args.repeats, args.new_tokens, args.big_new_tokens)
        return
    import torch

    torch.set_num_threads((args.threads or [1])[0])
    torch.manual_seed(0)

    results = [bench("tiny-llama", builtin_model("tiny-llama"), args.prompt, args.new_tokens, 5)]
    if not args.quick:
        start = time.perf_counter()
        big = build("llama-100m", LLAMA_100M, random_weights(LLAMA_100M, seed=0))
        print(f"built llama-100m in {time.perf_counter() - start:.1f} s", flush=True)
        results.append(bench("llama-100m", big, args.prompt, args.big_new_tokens, args.repeats))
    report(results)


if __name__ == "__main__":
    main()
