"""Model families and options beyond default-RoPE Llama and GPT-2, against transformers.

Every case is a random-init model of transformers 5 (Llama with each RoPE scaling, attention and
MLP biases; Qwen2 with its q/k/v biases, tied and untied, with YaRN; Qwen3 with its per-head q/k
RMSNorm and explicit head_dim; GPT-2 saved as the original OpenAI checkpoints are), written with
`save_pretrained` inside the test (fp32 and bf16), loaded by refute, and compared with
transformers' fp32 eager forward of the same saved checkpoint: logits within the tolerance of
tests/test_transformers.py at every position and 32 greedy tokens equal. Each family's program
also gives the same trace root on the reference, cpu and Triton-interpreter backends, and the
nodes only these families use (bias adds, the per-head q/k norm) are verified on chain. Every
refusal is a ModelLoadError whose message is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

if os.environ.get("REFUTE_TRITON_DEVICE") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before refute.kernels.gpu is imported

from refute.engine import backends  # noqa: E402
from refute.engine.checkpoint import DEFAULT_CONTEXT, load_model  # noqa: E402
from refute.engine.executor import Executor, Request  # noqa: E402
from refute.errors import ExecutionError, ModelLoadError  # noqa: E402
from tests.test_transformers import NEW_TOKENS, PROMPT, tolerance  # noqa: E402

transformers.logging.set_verbosity_error()


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # the transformers model class prefix: Llama, Qwen2, Qwen3, Mistral, GPT2
    kwargs: dict = field(default_factory=dict)
    dtype: str = "float32"
    seed: int = 0


# Small shapes, none a power of two, GQA ratios 2 and 3; max_position_embeddings 64 unless the
# RoPE type needs an original length (16: the tables of llama3 and yarn differ from the default
# ones in the first 39 positions).
_LLAMA = dict(
    vocab_size=300,
    hidden_size=48,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
_ROPE = {"rope_theta": 10000.0}
CASES = [
    Case(
        "llama3-rope",
        "Llama",
        dict(
            _LLAMA,
            rope_parameters=_ROPE
            | dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    Case(
        "llama3-rope-bf16",
        "Llama",
        dict(
            _LLAMA,
            tie_word_embeddings=True,
            rope_parameters=_ROPE
            | dict(
                rope_type="llama3",
                factor=32.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
        dtype="bfloat16",
    ),
    Case(
        "linear-rope",
        "Llama",
        dict(_LLAMA, rope_parameters=_ROPE | dict(rope_type="linear", factor=2.5)),
    ),
    Case(
        "dynamic-rope",
        "Llama",
        dict(_LLAMA, rope_parameters=_ROPE | dict(rope_type="dynamic", factor=4.0)),
    ),
    Case(
        "yarn-rope",
        "Llama",
        dict(
            _LLAMA,
            rope_parameters=_ROPE
            | dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16),
        ),
    ),
    Case(
        "longrope",
        "Llama",
        dict(
            _LLAMA,
            max_position_embeddings=128,
            rope_parameters=_ROPE
            | dict(
                rope_type="longrope",
                short_factor=[1.0, 1.3, 2.0, 3.5],
                long_factor=[1.0, 4.0, 9.0, 16.0],
                original_max_position_embeddings=64,
            ),
        ),
    ),
    Case(
        "llama-attention-mlp-bias",
        "Llama",
        dict(_LLAMA, hidden_size=80, num_attention_heads=4, attention_bias=True, mlp_bias=True),
    ),
    Case(
        "qwen2-tied",
        "Qwen2",
        dict(
            _LLAMA,
            hidden_size=72,
            num_attention_heads=6,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        ),
        seed=2,  # seed 0: a near tie (margin 5.5e-4, 9x the tolerance)
    ),
    Case(
        "qwen2-tied-bf16",
        "Qwen2",
        dict(
            _LLAMA,
            hidden_size=72,
            num_attention_heads=6,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        ),
        dtype="bfloat16",
    ),
    Case(
        "qwen2.5-yarn",
        "Qwen2",
        dict(
            _LLAMA,
            rope_parameters={"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0},
            max_position_embeddings=64,
        ),
    ),
    Case(
        "qwen3-hd12",
        "Qwen3",
        dict(_LLAMA, hidden_size=80, num_attention_heads=4, num_key_value_heads=2, head_dim=12),
    ),
    Case(
        "qwen3-hd12-bias-tied-bf16",
        "Qwen3",
        dict(
            _LLAMA,
            hidden_size=80,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=12,
            attention_bias=True,
            tie_word_embeddings=True,
        ),
        dtype="bfloat16",
        seed=2,  # seed 0: a near tie (margin 1.0e-4)
    ),
]


def build_hf(case: Case):
    """A random-init transformers model: weights N(0, 0.15), norm gains N(1, 0.1) (Qwen3's
    q/k norm gains included) and biases N(0, 0.1), so gains and biases are exercised and greedy
    choices are not near ties. Stored in `case.dtype`."""
    torch.manual_seed(case.seed)
    common = dict(initializer_range=0.15, bos_token_id=None, eos_token_id=None)
    config = getattr(transformers, f"{case.family}Config")(**common, **case.kwargs)
    model = getattr(transformers, f"{case.family}ForCausalLM")(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif p.dim() == 1:
                p.normal_(1.0, 0.1)
    return model.to(getattr(torch, case.dtype)).eval()


def reference(directory: Path, cls: str):
    """transformers' fp32 eager model of a saved checkpoint (bf16 weights widened)."""
    model_cls = getattr(transformers, cls)
    return model_cls.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def refute_run(directory: Path, prompt=PROMPT, new_tokens: int = NEW_TOKENS, **load):
    model = load_model(directory, **load)
    ex = Executor(model, record=False, capture=(model.program.logits_node,))
    (gen,) = ex.generate([Request(prompt=prompt, max_new_tokens=new_tokens)])
    return model, gen.output_tokens, np.stack(gen.captured[model.program.logits_node])


def assert_matches(hf, tokens: list[int], logits: np.ndarray, label: str) -> None:
    """Logits within tolerance at every position, the greedy tokens transformers generates,
    and every greedy choice won by far more than the tolerance."""
    sequence = list(PROMPT) + tokens
    executed = len(PROMPT) + NEW_TOKENS - 1
    assert logits.shape == (executed, hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(torch.tensor([sequence[:executed]])).logits[0].numpy()
    diff, tol = float(np.abs(logits - expected).max()), tolerance(expected)
    assert diff <= tol, f"{label}: max |refute - torch| = {diff:.3g} > {tol:.3g}"
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
        )
    assert tokens == out[0, len(PROMPT) :].tolist(), f"{label}: greedy tokens differ"
    top2 = np.sort(logits[len(PROMPT) - 1 :], axis=1)[:, -2:]
    margin = float((top2[:, 1] - top2[:, 0]).min())
    assert margin > 10 * tol, f"{label}: a greedy choice is a near tie ({margin:.3g})"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Every case's checkpoint, written once."""
    out = {}
    for case in CASES:
        hf = build_hf(case)
        assert sum(p.numel() for p in hf.parameters()) <= 200_000
        out[case.name] = tmp_path_factory.mktemp(case.name)
        hf.save_pretrained(out[case.name])
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_family_matches_transformers(case: Case, saved) -> None:
    directory = saved[case.name]
    stored = json.loads((directory / "config.json").read_text())
    assert stored["model_type"] == case.family.lower()
    _, tokens, logits = refute_run(directory)
    assert_matches(reference(directory, f"{case.family}ForCausalLM"), tokens, logits, case.name)
    from safetensors import safe_open

    with safe_open(directory / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16" if case.dtype == "bfloat16" else "F32"}


def test_what_each_family_builds(saved) -> None:
    """The options reach the program: biases, q/k norms and RoPE types are where they should be,
    and the committed config names each one."""

    def names(case: str) -> set[str]:
        return {w.name for w in load_model(saved[case]).program.weights}

    qwen2 = load_model(saved["qwen2-tied"])
    assert qwen2.config.qkv_bias and not qwen2.config.o_bias and qwen2.config.tie_embeddings
    assert "model.layers.1.self_attn.k_proj.bias" in names("qwen2-tied")
    assert "model.layers.1.self_attn.o_proj.bias" not in names("qwen2-tied")
    assert "lm_head.weight" not in names("qwen2-tied")
    qwen3 = load_model(saved["qwen3-hd12"])
    assert qwen3.config.qk_norm and qwen3.config.head_dim == 12 and not qwen3.config.qkv_bias
    node_names = [n.name for n in qwen3.program.nodes]
    assert node_names.index("layers.0.attn.q_norm.weight") < node_names.index(
        "layers.0.attn.q_rope"
    )
    assert {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.o_proj.bias"} <= (
        names("qwen3-hd12-bias-tied-bf16")
    )
    biased = names("llama-attention-mlp-bias")
    assert {"model.layers.0.self_attn.o_proj.bias", "model.layers.0.mlp.down_proj.bias"} <= biased
    assert '"rope_type":"llama3"' in load_model(saved["llama3-rope"]).config_json
    yarn = dict(load_model(saved["qwen2.5-yarn"]).config.rope_scaling)
    assert yarn["factor"] == 4.0 and yarn["original_max_position_embeddings"] == 64
    assert yarn["attention_factor"] == pytest.approx(0.1 * np.log(4.0) + 1.0)


def test_dynamic_rope_is_the_default_rope_within_the_checkpoint(saved, tmp_path: Path) -> None:
    """transformers' dynamic NTK rescales only past max_position_embeddings, which a program
    never reaches: its tables are the default ones, bit for bit."""
    default = shutil.copytree(saved["dynamic-rope"], tmp_path / "default")
    config = json.loads((default / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    (default / "config.json").write_text(json.dumps(config))
    dynamic, plain = load_model(saved["dynamic-rope"]), load_model(default)
    assert dynamic.tensor_roots == plain.tensor_roots
    assert dynamic.root != plain.root  # the committed config still says which it is


def test_older_rope_spelling_is_the_same_model(saved, tmp_path: Path) -> None:
    """Top-level rope_theta with a rope_scaling dict ("type" key), as transformers 4 wrote it:
    transformers 5 reads it as the rope_parameters spelling, and so does refute (one root)."""
    for case in ("linear-rope", "llama3-rope"):
        old = shutil.copytree(saved[case], tmp_path / case)
        config = json.loads((old / "config.json").read_text())
        params = config.pop("rope_parameters")
        config["rope_theta"] = params.pop("rope_theta")
        params["type"] = params.pop("rope_type")
        config["rope_scaling"] = params
        (old / "config.json").write_text(json.dumps(config))
        assert load_model(old).root == load_model(saved[case]).root
        ids = torch.tensor([list(PROMPT)])
        with torch.no_grad():
            a = reference(old, "LlamaForCausalLM")(ids).logits
            b = reference(saved[case], "LlamaForCausalLM")(ids).logits
        assert torch.equal(a, b)


# --- GPT-2 as published -----------------------------------------------------------------------


def test_gpt2_as_published(tmp_path: Path) -> None:
    """The original OpenAI checkpoints: tensor names without `transformer.`, no lm_head (the
    head is wte). refute loads them as transformers' GPT2LMHeadModel does, with the same model
    root as the prefixed spelling of the same weights."""
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        vocab_size=300, n_embd=60, n_layer=2, n_head=5, n_positions=64, initializer_range=0.15,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    full = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in full.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif p.dim() == 1:
                p.normal_(1.0, 0.1)
    full.transformer.save_pretrained(tmp_path / "published")  # GPT2Model: h.0..., wte...
    full.save_pretrained(tmp_path / "prefixed")
    from safetensors import safe_open

    with safe_open(tmp_path / "published" / "model.safetensors", "pt") as f:
        stored = set(f.keys())
    assert "wte.weight" in stored and "h.0.attn.c_attn.weight" in stored
    assert not any(k.startswith("transformer.") or k.startswith("lm_head") for k in stored)
    model, tokens, logits = refute_run(tmp_path / "published")
    assert_matches(reference(tmp_path / "published", "GPT2LMHeadModel"), tokens, logits, "gpt2")
    assert model.root == load_model(tmp_path / "prefixed").root


# --- context, sliding windows -----------------------------------------------------------------


def _write(directory: Path, family: str, dtype: str = "float32", **kwargs) -> Path:
    build_hf(Case(directory.name, family, kwargs, dtype)).save_pretrained(directory)
    return directory


def test_tables_are_sized_by_the_context(tmp_path: Path) -> None:
    """A checkpoint declaring 1M positions builds DEFAULT_CONTEXT rows unless asked for more; the
    context is what the program commits (max_positions), and a longer request names it."""
    big = _write(
        tmp_path / "big",
        "Llama",
        **dict(_LLAMA, num_hidden_layers=1, max_position_embeddings=2**20),
    )
    model = load_model(big)
    assert model.program.max_positions == DEFAULT_CONTEXT
    tables = {w.name: w.shape for w in model.program.weights if w.name.startswith("rope.")}
    assert tables == {"rope.cos": (DEFAULT_CONTEXT, 8), "rope.sin_signed": (DEFAULT_CONTEXT, 8)}
    small = load_model(big, context=40)
    assert small.program.max_positions == 40 and small.root != model.root
    # the first rows are the same numbers: only the length differs
    ours = {s.name: w for s, w in zip(small.program.weights, small.weights, strict=True)}
    theirs = {s.name: w for s, w in zip(model.program.weights, model.weights, strict=True)}
    assert np.array_equal(ours["rope.cos"], theirs["rope.cos"][:40])
    with pytest.raises(ExecutionError, match=r"41 positions exceed the model's 40 \(the context"):
        Executor(small).generate([Request(prompt=(1,) * 40, max_new_tokens=2)])
    with pytest.raises(ModelLoadError, match=r"context 2097152 exceeds the checkpoint's 1048576"):
        load_model(big, context=2**21)
    with pytest.raises(ModelLoadError, match="context must be a positive integer"):
        load_model(big, context=0)


def test_mistral_sliding_window_is_named(tmp_path: Path) -> None:
    """Full attention equals Mistral's sliding-window attention within the window: the program
    stops there, and says why."""
    ckpt = _write(
        tmp_path / "mistral", "Mistral", **dict(_LLAMA, num_hidden_layers=1, sliding_window=16)
    )
    model = load_model(ckpt)
    assert model.program.max_positions == 16
    with pytest.raises(
        ExecutionError,
        match=r"31 positions exceed the model's 16 \(the sliding window of 16 positions "
        r"\(sliding_window=16",
    ):
        Executor(model).generate([Request(prompt=PROMPT, max_new_tokens=24)])
    with pytest.raises(
        ModelLoadError, match=r"context 32 exceeds 16 positions: the sliding window"
    ):
        load_model(ckpt, context=32)


def test_qwen_sliding_window(tmp_path: Path) -> None:
    """Qwen's window applies only with use_sliding_window, on layers >= max_window_layers."""
    kw = dict(_LLAMA, use_sliding_window=True, sliding_window=16)
    windowed = load_model(_write(tmp_path / "w", "Qwen2", **kw, max_window_layers=1))
    assert windowed.program.max_positions == 16
    assert "sliding window" in windowed.context_note
    unused = _write(tmp_path / "u", "Qwen2", **kw, max_window_layers=2)  # no layer >= 2
    assert load_model(unused).program.max_positions == 64
    off = _write(tmp_path / "o", "Qwen3", **dict(_LLAMA, sliding_window=16, head_dim=8))
    assert load_model(off).program.max_positions == 64  # use_sliding_window is False
    # a window no shorter than the context is full attention: runs, and matches transformers
    wide = _write(tmp_path / "wide", "Qwen2", **dict(kw, sliding_window=64, max_window_layers=0))
    model, tokens, logits = refute_run(wide)
    assert model.program.max_positions == 64
    assert_matches(reference(wide, "Qwen2ForCausalLM"), tokens, logits, "qwen2-window-64")


def test_longrope_stays_within_its_original_length(saved) -> None:
    model = load_model(saved["longrope"])
    assert model.program.max_positions == 64  # original_max_position_embeddings, not 128
    assert "longrope" in model.context_note
    with pytest.raises(
        ModelLoadError,
        match=r"context 100 exceeds 64 positions: longrope's original_max_position_embeddings=64",
    ):
        load_model(saved["longrope"], context=100)


# --- refusals ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return _write(
        tmp_path_factory.mktemp("q") / "qwen2", "Qwen2", **dict(_LLAMA, num_hidden_layers=1)
    )


def _edit(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # the architecture is named before any option it sets
        (
            dict(
                model_type="qwen2_moe",
                rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6},
            ),
            r"unsupported model_type 'qwen2_moe' \(supported: llama, mistral, qwen2, qwen3, gpt2\)",
        ),
        (
            dict(model_type="gemma2", hidden_act="gelu_pytorch_tanh"),
            "unsupported model_type 'gemma2'",
        ),
        (
            dict(hidden_act="gelu"),
            r"config.json sets hidden_act='gelu', which refute does not implement",
        ),
        (
            dict(rope_parameters={"rope_type": "proportional", "rope_theta": 1e4, "factor": 2.0}),
            r"RoPE scaling 'proportional' is not supported "
            r"\(supported: default, linear, dynamic, llama3, yarn, longrope\)",
        ),
        (
            dict(
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 2]}
            ),
            r"RoPE parameters refute does not know: \['mrope_section'\]",
        ),
        (
            dict(
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 1e4,
                    "partial_rotary_factor": 0.5,
                }
            ),
            r"partial_rotary_factor=0.5, which refute does not implement",
        ),
        (
            dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4}),
            r"RoPE scaling 'linear' needs 'factor'",
        ),
        (
            dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
            r"RoPE scaling 'llama3' needs 'low_freq_factor'",
        ),
        (
            dict(rope_parameters={"rope_type": "full", "full_attention": {"rope_type": "default"}}),
            "per-layer-type RoPE parameters are not supported",
        ),
        (dict(hidden_size=None), r"config.json lacks 'hidden_size'"),
    ],
    ids=lambda x: str(x)[:40] if isinstance(x, str) else None,
)
def test_refusals(small: Path, tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(_edit(small, tmp_path / "c", **changes))


def test_malformed_json_names_the_file(small: Path, tmp_path: Path) -> None:
    broken = _edit(small, tmp_path / "c")
    (broken / "config.json").write_text('{"model_type": "qwen2",')
    with pytest.raises(
        ModelLoadError, match=r"config\.json is not valid JSON: Expecting property name"
    ):
        load_model(broken)
    (broken / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match=r"config\.json must hold a JSON object, not list"):
        load_model(broken)
    fixed = _edit(small, tmp_path / "t")
    (fixed / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(
        ModelLoadError, match=r"tokenizer\.json is not valid JSON: Expecting value: line 1"
    ):
        load_model(fixed)
    (fixed / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(
        ModelLoadError, match=r"tokenizer\.json is not a tokenizer `tokenizers` can read"
    ):
        load_model(fixed)


# --- every backend, the same trace ------------------------------------------------------------

BACKEND_CASES = ["qwen2-tied", "qwen3-hd12-bias-tied-bf16", "llama-attention-mlp-bias"]


@pytest.mark.parametrize("name", BACKEND_CASES)
def test_backends_give_the_reference_trace_root(name: str, tmp_path: Path) -> None:
    """One layer of each family's program (the RoPE types change only the committed tables),
    three positions, sampled: every record's root is the reference's on the cpu kernels and on
    the Triton kernels in the interpreter (the fused groups that match, per node the rest: the
    per-head q/k norm is not the fused RMSNorm's pattern)."""
    case = next(c for c in CASES if c.name == name)
    one_layer = Case(
        name, case.family, dict(case.kwargs, num_hidden_layers=1), case.dtype, case.seed
    )
    build_hf(one_layer).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    requests = [Request((92, 3), 2, temperature=0.8, seed=7)]
    want = Executor(model).generate(requests)
    for backend in ("cpu", "triton"):
        reason = backends.unavailable_reason(backend)
        if reason is not None:
            pytest.skip(f"{backend}: {reason}")
        runner = backends.make(backend)
        got = Executor(model, backend=runner).generate(requests)
        for a, b in zip(want, got, strict=True):
            assert b.trace.roots == a.trace.roots, f"{name} on {backend}"
            assert b.output_tokens == a.output_tokens
        if backend == "triton":  # the three model norms and the attention fused, nothing else
            kinds = sorted(f.kind for f in runner.fused(model.program).values())
            assert kinds == ["attention", "rmsnorm", "rmsnorm", "rmsnorm"]


# --- the new nodes, one step on chain -----------------------------------------------------------


def test_new_nodes_verify_on_chain(embedded_web3, tmp_path: Path) -> None:
    """Steps of nodes only these families have — q, k, v and o bias adds, every node of Qwen3's
    per-head q/k RMSNorm (sum of squares leaves and tree nodes of head 1, mean, eps, rsqrt,
    scale, gain) — on a real trace of a Qwen3 checkpoint with biases (bf16): the contract
    computes the engine's value, accepts it, and rejects it with one bit flipped."""
    from refute.contracts.onestep import KIND_ELEMENT, OneStepClient, StepProver

    case = next(c for c in CASES if c.name == "qwen3-hd12-bias-tied-bf16")
    build_hf(
        Case("q", case.family, dict(case.kwargs, num_hidden_layers=1), case.dtype, 2)
    ).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    ex = Executor(model)
    gen = ex.generate([Request(prompt=(5, 17, 250), max_new_tokens=3, temperature=0.7, seed=3)])[0]
    prover = StepProver(model, ex, gen)
    client = OneStepClient(w3=embedded_web3)
    ids = {n.name: i for i, n in enumerate(model.program.nodes)}
    t, hd = 3, 12
    calls = [
        prover.step(t, ids["layers.0.attn.q.bias"], 29),
        prover.step(t, ids["layers.0.attn.k.bias"], 23),
        prover.step(2, ids["layers.0.attn.v.bias"], 5),
        prover.step(t, ids["layers.0.attn.o.bias"], 79),
        prover.step(t, ids["layers.0.attn.q_norm.sumsq"], 1, leaf=7),
        prover.step(t, ids["layers.0.attn.q_norm.sumsq"], 1, leaf=14),  # padding of 12 -> 16
        prover.step(t, ids["layers.0.attn.q_norm.sumsq"], 1, level=2, index=2),
        prover.step(t, ids["layers.0.attn.k_norm.sumsq"], 1, level=4, index=0),  # the root
        prover.step(t, ids["layers.0.attn.q_norm.mean"], 4),
        prover.step(t, ids["layers.0.attn.k_norm.eps"], 0),
        prover.step(t, ids["layers.0.attn.q_norm.rsqrt"], 5),
        prover.step(t, ids["layers.0.attn.q_norm.scale"], 1 * hd + 7),
        prover.step(t, ids["layers.0.attn.k_norm.weight"], 1 * hd + 11),
    ]
    for call in calls:
        node = model.program.nodes[call.node]
        out = prover.outputs(call.position)[call.node]
        if call.kind == KIND_ELEMENT or call.level == 4:  # the output itself
            assert call.value == int(np.asarray(out, np.float32).view(np.uint32)[call.element])
        assert client.compute(call) == (call.value, call.index), node.name
        assert client.verify(call), node.name
        assert not client.verify(call, value=call.value ^ 1), node.name
