"""Fast CPU backend vs BLAS and torch: canonical GEMV/GEMM and decode tokens/s, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/kernels.py [--threads 1 2]

1. Kernels: `refute.kernels.cpu` GEMV (M = 1) and GEMM (M = 16) against numpy's BLAS
   (`x @ W.T`, float32) on the decode shapes of a 7B Llama, W stored [N, K] as torch's Linear.
   Ratio = BLAS time / canonical time (>= 1: the canonical kernel is faster).
2. Decode: tokens/s of `Executor` with `CPUBackend` (trace recorded: what a watcher runs) against
   `transformers.LlamaForCausalLM` fp32 eager attention with the same weights, and the reference
   backend, on a ~134M-parameter random Llama (hidden 768, 12 layers, 12 heads, SwiGLU 2048,
   vocab 32000, untied head). Where `llama_cpp` (llama-cpp-python) and `gguf` are installed,
   llama.cpp runs the same weights too, from GGUF files written here (f32 and bf16 matrices,
   KV cache in f32), as a second peer.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, if set, can pin OpenBLAS to a slower kernel: unset them in
the command for a fair baseline (the BLAS kernel that ran is printed, from threadpoolctl). The
machine may be shared: every timing is the minimum (and median) of interleaved repetitions, and
the load average is printed with the results. Targets are printed PASS/FAIL; the exit status is 0
either way.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

GEMV_TARGET = 0.9  # canonical GEMV, fp32 weights >= 0.9x BLAS sgemv
BF16_TARGET = 1.6  # canonical GEMV, bf16 weights >= 1.6x BLAS fp32 sgemv
DECODE_TARGET = {"fp32": 0.9, "bf16": 1.2}  # CPUBackend decode vs torch eager fp32, same weights
SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096))  # (N out, K in)


def _timed(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, np.ndarray]:
    """Interleave the candidates rep by rep, so load changes hit all of them alike."""
    for f in fns.values():
        f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t)
    return {k: np.array(v) for k, v in out.items()}


def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def kernels(threads: int, reps: int) -> list[tuple]:
    """Canonical GEMV/GEMM vs BLAS sgemv/sgemm, both on `threads` threads."""
    import numba
    from threadpoolctl import threadpool_limits

    from refute.engine.weights import BF16
    from refute.kernels.cpu import matmul, pack

    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for n, k in SHAPES:
        w = (rng.standard_normal((n, k), dtype=np.float32) * 0.02).astype(np.float32)
        packed, packed16 = pack(w), pack(w.astype(BF16))
        for m in (1, 16):
            x = rng.standard_normal((m, k), dtype=np.float32)
            fns = {"blas": lambda x=x, w=w: x @ w.T, "cpu": lambda x=x, p=packed: matmul(x, p)}
            if m == 1:  # bf16 weights (16-bit panels, widened in-register) vs fp32 sgemv
                fns["bf16"] = lambda x=x, p=packed16: matmul(x, p)
            with threadpool_limits(threads):
                t = _timed(fns, reps if m == 1 else max(3, reps // 4))
            rows.append((threads, m, n, k, t["blas"], t["cpu"], t.get("bf16")))
        del w, packed, packed16
    return rows


LLAMA = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_layers": 12,
    "num_heads": 12,
    "num_kv_heads": 12,
    "head_dim": 64,
    "max_positions": 512,
}


def _torch_llama():
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    c = LLAMA
    hf = HFConfig(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_layers"],
        num_attention_heads=c["num_heads"],
        num_key_value_heads=c["num_kv_heads"],
        head_dim=c["head_dim"],
        max_position_embeddings=c["max_positions"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf).eval()
    with torch.no_grad():  # std 0.02 init; make the norm gains 1 + noise so nothing is trivial
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def _torch_decode(model, prompt: list[int], new: int, threads: int) -> tuple[list[int], list]:
    import torch

    torch.set_num_threads(threads)
    steps = []
    with torch.inference_mode():
        out = model(torch.tensor([prompt]), use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        cache = out.past_key_values
        for _ in range(new - 1):
            t = time.perf_counter()
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            tokens.append(int(out.logits[0, -1].argmax()))
            steps.append(time.perf_counter() - t)
    return tokens, steps


def _llama_cpp_available() -> str:
    """Why llama.cpp cannot be a peer here ("" when it can)."""
    import importlib.util

    missing = [m for m in ("llama_cpp", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed (pip install llama-cpp-python gguf: "
            "llama-cpp-python builds llama.cpp from source)"
        )
    return ""


def _rope_pairs(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q or k projection reordered from transformers' rotate-half layout (each head's
    first half of dimensions pairs with its second half) to llama.cpp's adjacent pairs."""
    rows, cols = w.shape
    half = rows // heads // 2
    return w.reshape(heads, 2, half, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _write_gguf(weights16: dict[str, np.ndarray], path: str, bf16: bool) -> None:
    """The torch Llama's weights (bf16 values) as a llama.cpp GGUF: matrices bf16 or f32, norm
    gains f32 (exact either way), q/k rows in llama.cpp's rope order, a placeholder vocabulary
    (token ids are fed directly)."""
    import gguf

    from refute.engine.weights import widen

    c = LLAMA
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(c["max_positions"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_heads"])
    w.add_head_count_kv(c["num_kv_heads"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(c["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    special = ["<unk>", "<s>", "</s>"]
    w.add_token_list(special + [f"t{i}" for i in range(len(special), c["vocab_size"])])
    w.add_token_scores([0.0] * c["vocab_size"])
    w.add_token_types([2, 3, 3] + [1] * (c["vocab_size"] - len(special)))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}  # fmt: skip
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}  # fmt: skip
    for layer in range(c["num_layers"]):
        for hf, ours in per_layer.items():
            names[f"model.layers.{layer}.{hf}.weight"] = f"blk.{layer}.{ours}.weight"
    for hf, ours in names.items():
        value = weights16[hf]
        if hf.endswith("q_proj.weight"):
            value = _rope_pairs(value, c["num_heads"])
        elif hf.endswith("k_proj.weight"):
            value = _rope_pairs(value, c["num_kv_heads"])
        if bf16 and value.ndim == 2:
            raw = np.ascontiguousarray(value).view(np.uint16).view(np.uint8)
            w.add_tensor(ours, raw, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(ours, np.ascontiguousarray(widen(value)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama_cpp_decode(llm, prompt: list[int], new: int) -> tuple[list[int], list]:
    def greedy() -> int:  # the last token's logits, in llama.cpp's own buffer
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        return int(np.argmax(logits))

    llm.reset()
    llm.eval(prompt)
    tokens = [greedy()]
    steps = []
    for _ in range(new - 1):
        t = time.perf_counter()
        llm.eval([tokens[-1]])
        tokens.append(greedy())
        steps.append(time.perf_counter() - t)
    return tokens, steps


def _refute_decode(executor, prompt: list[int], new: int) -> tuple[list[int], list]:
    from refute.engine.executor import Request

    marks: list[float] = []
    (gen,) = executor.generate(
        [Request(tuple(prompt), new)], on_position=lambda _: marks.append(time.perf_counter())
    )
    return gen.output_tokens, list(np.diff(marks))


def decode(threads: list[int], new: int, ref_new: int, repeats: int) -> list[tuple]:
    import numba
    import torch

    from refute.engine.backend import ReferenceBackend
    from refute.engine.checkpoint import build
    from refute.engine.executor import Executor
    from refute.engine.models import LlamaConfig
    from refute.engine.weights import BF16, widen
    from refute.kernels.cpu import CPUBackend

    tm = _torch_llama()
    # one set of values for every engine: the weights rounded to bf16 once; refute holds them
    # at 16 bits (bf16) or widened (fp32), torch runs them in fp32 and in bf16
    weights16 = {k: v.detach().numpy().astype(BF16) for k, v in tm.state_dict().items()}
    with torch.no_grad():
        for k, p in tm.state_dict().items():
            p.copy_(torch.from_numpy(widen(weights16[k])))
    tm16 = _torch_llama().to(torch.bfloat16)
    tm16.load_state_dict({k: v.to(torch.bfloat16) for k, v in tm.state_dict().items()})
    config = LlamaConfig(**LLAMA)
    models = {
        "bf16": build("llama-134m-bf16", config, weights16),
        "fp32": build("llama-134m", config, {k: widen(v) for k, v in weights16.items()}),
    }
    model = models["fp32"]
    prompt = [1, 17, 423, 9, 31000, 5, 77, 2048]
    rows = []
    ggufs: dict[str, str] = {}
    if not _llama_cpp_available():  # the same weights for llama.cpp, written once
        import tempfile

        folder = tempfile.mkdtemp(prefix="refute-gguf-")
        for width in ("f32", "bf16"):
            ggufs[width] = os.path.join(folder, f"llama-134m-{width}.gguf")
            _write_gguf(weights16, ggufs[width], bf16=width == "bf16")
    for th in threads:
        numba.set_num_threads(th)
        cpus = {w: Executor(m, backend=CPUBackend()) for w, m in models.items()}
        for cpu in cpus.values():
            _refute_decode(cpu, prompt, 2)  # pack the weights, load compiled kernels
            cpu.seconds = dict.fromkeys(cpu.seconds, 0.0)  # the share below: timed runs only
        cands = {
            "torch eager fp32": lambda th=th: _torch_decode(tm, prompt, new, th),
            "torch eager bf16": lambda th=th: _torch_decode(tm16, prompt, new, th),
            "refute CPUBackend fp32": lambda c=cpus: _refute_decode(c["fp32"], prompt, new),
            "refute CPUBackend bf16": lambda c=cpus: _refute_decode(c["bf16"], prompt, new),
        }
        for width, path in ggufs.items():
            from llama_cpp import Llama

            # KV cache in f32 (llama.cpp's default is f16), one thread count for both phases
            llm = Llama(model_path=path, n_ctx=64, n_batch=64, n_threads=th, n_threads_batch=th,
                        type_k=0, type_v=0, verbose=False)  # fmt: skip
            cands[f"llama.cpp {width}"] = lambda m=llm: _llama_cpp_decode(m, prompt, new)
        best: dict[str, tuple] = {}
        for _ in range(repeats):  # alternate, keep each one's best run
            for name, run in cands.items():
                tokens, steps = run()
                if name not in best or np.median(steps) < np.median(best[name][1]):
                    best[name] = (tokens, steps)
        for name, (tokens, steps) in best.items():
            rows.append((th, name, steps, tokens))
        for w, cpu in cpus.items():
            rows.append((th, f"  commit / evaluate {w}", None, cpu.seconds))
    ref_tokens, ref_steps = _refute_decode(Executor(model, ReferenceBackend()), prompt, ref_new)
    rows.append((1, "refute reference", ref_steps, ref_tokens))
    return rows, model.num_parameters


def _ms(a: np.ndarray) -> str:
    return f"{a.min() * 1e3:8.2f} / {np.median(a) * 1e3:8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=20, help="GEMV repetitions (GEMM: reps/4)")
    parser.add_argument("--new", type=int, default=17, help="new tokens (decode steps + 1)")
    parser.add_argument("--ref-new", type=int, default=3, help="new tokens, reference backend")
    parser.add_argument("--repeats", type=int, default=2, help="decode runs per candidate")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--plot", default=None, help="also draw the ratios to this PNG file")
    args = parser.parse_args()
    kernel_points: list[tuple[str, float]] = []  # (label, paired ratio), for --plot
    decode_points: list[tuple[str, float]] = []  # (label, tok/s)

    import numba
    import torch
    from threadpoolctl import threadpool_info

    np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)  # load BLAS
    blas = [
        f"{i['internal_api']} {i.get('version')} kernel={i.get('architecture')}"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {_load()}"
    )
    print(f"numpy {np.__version__} BLAS: {'; '.join(blas)}")
    print(
        f"numba {numba.__version__} (threading layer chosen at first parallel call), "
        f"torch {torch.__version__}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}"
    )

    print("\n## Kernels: ms min / median; ratio = BLAS time / canonical time (>= 1: faster)")
    print("ratio: of the minima, and the median of per-repetition ratios (interleaved runs)")
    print("threads  M      N      K     BLAS (ms)           canonical (ms)      ratio min  paired")
    gemv_ok = bf16_ok = True
    for th in args.threads:
        for threads, m, n, k, tb, tc, t16 in kernels(th, args.reps):
            r_min, r_pair = tb.min() / tc.min(), float(np.median(tb / tc))
            shape = f"{threads:7d} {m:3d} {n:6d} {k:6d}"
            line = f"{shape}  {_ms(tb)}   {_ms(tc)}   {r_min:9.2f}  {r_pair:6.2f}"
            if t16 is not None:
                r16 = float(np.median(tb / t16))
                gb = n * k * 2 / t16.min() / 1e9
                line += f"   bf16 {_ms(t16)} paired {r16:.2f} ({gb:.1f} GB/s of bf16)"
                bf16_ok &= r16 >= BF16_TARGET
                kernel_points.append((f"GEMV bf16 {n}x{k} {threads}t", r16))
            print(line)
            kernel_points.append(
                (f"{'GEMV' if m == 1 else f'GEMM M={m}'} {n}x{k} {threads}t", r_pair)
            )
            if m == 1:
                gemv_ok &= r_pair >= GEMV_TARGET
    print(f"threading layer: {numba.threading_layer()}; {_load()}")
    verdict = "PASS" if gemv_ok else "FAIL"
    print(
        f"GEMV >= {GEMV_TARGET}x BLAS sgemv (paired ratio, every shape and thread count): {verdict}"
    )
    print(f"GEMV bf16 weights >= {BF16_TARGET}x BLAS fp32 sgemv: {'PASS' if bf16_ok else 'FAIL'}")
    if args.skip_decode:
        if args.plot:
            plot(args.plot, kernel_points, decode_points)
        return

    rows, params = decode(args.threads, args.new, args.ref_new, args.repeats)
    print(f"\n## Decode, {params / 1e6:.1f}M-parameter random Llama, greedy, one sequence")
    print(f"llama.cpp: {_llama_cpp_available() or 'on the same weights (GGUF f32 and bf16)'}")
    print("threads  engine               ms/token min / median   tok/s (median)")
    torch_tps: dict[int, float] = {}
    torch_tokens: dict[int, list[int]] = {}
    verdicts = []
    for th, name, steps, extra in rows:
        if steps is None:
            share = extra["commit"] / extra["evaluate"]
            beside = extra["commit_background"] / extra["evaluate"]
            print(f"{th:7d}  {name:20s} {share:.1%} (hashing every node output, timed runs"
                  + (f"; on the evaluating thread, and {beside:.1%} on the commit thread)"
                     if beside else ")"))  # fmt: skip
            continue
        steps = np.array(steps)
        tps = 1.0 / np.median(steps)
        line = f"{th:7d}  {name:20s} {_ms(steps)}   {tps:8.2f}"
        decode_points.append((f"{name.replace('refute ', '')} {th}t", tps))
        if name == "torch eager fp32":
            torch_tps[th], torch_tokens[th] = tps, extra
        elif th in torch_tps:
            ratio = tps / torch_tps[th]
            same = extra == torch_tokens[th][: len(extra)]
            line += f"   {ratio:.2f}x torch fp32; same greedy tokens as torch fp32: {same}"
            if "CPUBackend" in name:
                verdicts.append((th, name.split()[-1], ratio))
        print(line)
    print(_load())
    for th, width, ratio in verdicts:
        target = DECODE_TARGET[width]
        verdict = "PASS" if ratio >= target else "FAIL"
        print(
            f"CPUBackend decode, {width} weights >= {target}x torch eager fp32, {th} thread(s): "
            f"{verdict}"
        )
    if args.plot:
        plot(args.plot, kernel_points, decode_points)


def plot(
    path: str, kernel_points: list[tuple[str, float]], decode_points: list[tuple[str, float]]
) -> None:
    """Two bar charts: canonical/BLAS time ratios per shape, and decode tokens/s per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if decode_points else 1
    fig, axes = plt.subplots(1, panels, figsize=(10 * panels, 6.5), squeeze=False)
    ax = axes[0][0]
    labels, ratios = zip(*kernel_points, strict=True) if kernel_points else ((), ())
    ax.bar(
        range(len(ratios)), ratios, color=["#3b7dd8" if "GEMV" in x else "#8fb3e8" for x in labels]
    )
    ax.axhline(GEMV_TARGET, color="#c0392b", linestyle="--", label=f"GEMV target {GEMV_TARGET}x")
    ax.axhline(1.0, color="#555555", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
    ax.set_ylabel("BLAS time / canonical time")
    ax.set_title("Canonical tree dot (numba) vs OpenBLAS, 7B decode shapes")
    ax.legend(fontsize=8)
    if decode_points:
        ax = axes[0][1]
        labels, tps = zip(*decode_points, strict=True)
        peers = {"torch": "#7f8c8d", "llama.cpp": "#e67e22"}  # refute's bars green
        colors = [next((c for p, c in peers.items() if p in x), "#27ae60") for x in labels]
        ax.bar(range(len(tps)), tps, color=colors)
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=60, ha="right")
        ax.set_ylabel("decode tokens/s (median)")
        ax.set_title("Decode, random Llama, one sequence")
    fig.suptitle(
        f"bench/kernels.py, {platform.machine()}, {os.cpu_count()} cores; {_load()}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
