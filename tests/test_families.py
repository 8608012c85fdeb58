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
    family: str  # the transformers config class prefix: Llama, Qwen2, Qwen3, Gemma2, Phi3, ...
    kwargs: dict = field(default_factory=dict)
    dtype: str = "float32"
    seed: int = 0

    @property
    def model_class(self) -> str:
        """transformers' causal-LM class (Gemma3TextConfig's is Gemma3ForCausalLM)."""
        return f"{self.family.removesuffix('Text')}ForCausalLM"

    @property
    def model_type(self) -> str:
        return {"Gemma3Text": "gemma3_text"}.get(self.family, self.family.lower())


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
_GEMMA = dict(
    _LLAMA,
    hidden_size=60,
    num_hidden_layers=3,
    head_dim=12,
    query_pre_attn_scalar=10,  # read by Gemma 2 and 3 only
)
_PHI3 = dict(
    _LLAMA, hidden_size=60, original_max_position_embeddings=64, pad_token_id=None
)  # head_dim 10
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
    # Gemma: GeGLU, (1 + w) gains, embeddings times sqrt(hidden), explicit head_dim; Gemma 2 and
    # 3 add the norms around each block, query_pre_attn_scalar, soft-capping (Gemma 2's scores
    # with a small cap, so that tanh bends them) and sliding layers whose window (W < the 39
    # positions run) really cuts keys off; Gemma 3 its q/k norm and the sliding layers' RoPE.
    Case("gemma-bf16", "Gemma", dict(_GEMMA, num_hidden_layers=2), dtype="bfloat16"),
    Case(
        "gemma2-softcap-window",
        "Gemma2",
        dict(_GEMMA, attn_logit_softcapping=3.0, final_logit_softcapping=8.0, sliding_window=16),
    ),
    Case(
        "gemma3-two-ropes-window",
        "Gemma3Text",
        dict(
            _GEMMA,
            sliding_window=12,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            final_logit_softcapping=20.0,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
            },
        ),
    ),
    Case(
        "gemma3-bias-untied-bf16",
        "Gemma3Text",
        dict(
            _GEMMA,
            num_key_value_heads=3,
            attention_bias=True,
            tie_word_embeddings=False,
            sliding_window=10,
        ),  # default layer_types: sliding, sliding, sliding (full every 6th)
        dtype="bfloat16",
    ),
    # Phi-3: fused qkv_proj and gate_up_proj, read at row offsets; its window on every layer;
    # longrope (Phi-3 long-context), within original_max_position_embeddings
    Case("phi3-window", "Phi3", dict(_PHI3, sliding_window=20)),
    Case(
        "phi3-longrope-bf16",
        "Phi3",
        dict(
            _PHI3,
            num_key_value_heads=3,
            max_position_embeddings=128,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "short_factor": [1.0, 1.2, 1.8, 2.5, 3.0],
                "long_factor": [1.0, 3.0, 6.0, 9.0, 12.0],
            },
        ),
        dtype="bfloat16",
    ),
]


def build_hf(case: Case):
    """A random-init transformers model: weights N(0, 0.15), norm gains N(1, 0.1) (Qwen3's
    q/k norm gains included; Gemma's stored w of its (1 + w) gains N(0, 0.1)) and biases
    N(0, 0.1), so gains and biases are exercised and greedy choices are not near ties. Stored in
    `case.dtype`."""
    torch.manual_seed(case.seed)
    common = dict(initializer_range=0.15, bos_token_id=None, eos_token_id=None)
    config = getattr(transformers, f"{case.family}Config")(**common, **case.kwargs)
    model = getattr(transformers, case.model_class)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif p.dim() == 1:
                p.normal_(0.0 if case.family.startswith("Gemma") else 1.0, 0.1)
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
    assert stored["model_type"] == case.model_type
    _, tokens, logits = refute_run(directory)
    assert_matches(reference(directory, case.model_class), tokens, logits, case.name)
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


def _without_window(directory: Path, dst: Path) -> Path:
    """The same checkpoint with full attention on every layer (transformers reads no window)."""
    shutil.copytree(directory, dst)
    config = json.loads((dst / "config.json").read_text())
    config["sliding_window"] = None
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_sliding_window_is_a_real_window(tmp_path: Path) -> None:
    """Mistral's window of 16 over 39 positions: keys t - 15 .. t, as transformers computes it
    (and not full attention, which differs by far more than the tolerance past position 16).
    The context is the checkpoint's, not capped at the window."""
    ckpt = _write(
        tmp_path / "mistral", "Mistral", **dict(_LLAMA, num_hidden_layers=1, sliding_window=16)
    )
    model, tokens, logits = refute_run(ckpt)
    assert model.program.max_positions == 64 and model.config.sliding_window == 16
    assert "sliding window" not in model.context_note
    hf = reference(ckpt, "MistralForCausalLM")
    assert_matches(hf, tokens, logits, "mistral-window-16")
    full = reference(_without_window(ckpt, tmp_path / "full"), "MistralForCausalLM")
    sequence = (list(PROMPT) + tokens)[: len(PROMPT) + NEW_TOKENS - 1]
    with torch.no_grad():
        windowed = hf(torch.tensor([sequence])).logits[0].numpy()
        unwindowed = full(torch.tensor([sequence])).logits[0].numpy()
    assert np.array_equal(windowed[:16], unwindowed[:16])
    assert np.abs(windowed[16:] - unwindowed[16:]).max() > 100 * tolerance(windowed)
    # a window spanning the context is full attention: the same program as no window at all
    assert load_model(ckpt, context=16).root == load_model(tmp_path / "full", context=16).root


def test_qwen_sliding_window(tmp_path: Path) -> None:
    """Qwen's window applies only with use_sliding_window, on layers >= max_window_layers."""
    kw = dict(_LLAMA, use_sliding_window=True, sliding_window=16)
    windowed = load_model(_write(tmp_path / "w", "Qwen2", **kw, max_window_layers=1))
    assert windowed.config.sliding_window == 16 and windowed.config.sliding_layers == (1,)
    assert windowed.program.max_positions == 64
    masked = [n.name for n in windowed.program.nodes if n.name.endswith("attn.window")]
    assert masked == ["layers.1.attn.window"]
    unused = load_model(_write(tmp_path / "u", "Qwen2", **kw, max_window_layers=2))  # none >= 2
    assert unused.config.sliding_window == 0 and unused.config.sliding_layers == ()
    off = _write(tmp_path / "o", "Qwen3", **dict(_LLAMA, sliding_window=16, head_dim=8))
    assert load_model(off).config.sliding_window == 0  # use_sliding_window is False
    # every layer sliding with a window of 8 over 39 positions: as transformers computes it
    narrow = _write(tmp_path / "n", "Qwen2", **dict(kw, sliding_window=8, max_window_layers=0))
    model, tokens, logits = refute_run(narrow)
    assert model.config.sliding_layers == (0, 1)
    assert_matches(reference(narrow, "Qwen2ForCausalLM"), tokens, logits, "qwen2-window-8")


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
                model_type="olmo2",
                rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6},
            ),
            r"unsupported model_type 'olmo2' \(supported: llama, mistral, qwen2, qwen3, gemma, "
            r"gemma2, gemma3_text, phi3, mixtral, qwen2_moe, qwen3_moe, gpt2\)",
        ),
        (
            dict(model_type="gemma2", hidden_activation="gelu"),  # Gemma 2's exact (erf) GELU
            r"config.json sets hidden_activation='gelu', which refute does not implement "
            r"\(supported: 'gelu_pytorch_tanh', 'gelu_new'\)",
        ),
        (
            dict(model_type="gemma3_text", use_bidirectional_attention=True),
            r"config.json sets use_bidirectional_attention=True, which refute does not implement",
        ),
        (
            dict(
                model_type="gemma3_text",
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                },
            ),
            r"the sliding layers' RoPE must be the default one with a rope_theta",
        ),
        (
            dict(model_type="gemma2", layer_types=["sliding_attention", "chunked_attention"]),
            r"layer_types must name sliding_attention or full_attention for each of its 1 layers",
        ),
        (
            dict(model_type="phi3", hidden_act="gelu_new"),
            r"config.json sets hidden_act='gelu_new', which refute does not implement",
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


# --- Gemma and Phi-3: what each builds, spellings, backends, steps on chain ---------------------


def test_what_gemma_and_phi3_build(saved) -> None:
    """Gains folded as fl32(1 + w) under their own names, the embedding scale, the soft-caps,
    the window mask on the sliding layers only, Gemma 3's second RoPE tables, Phi-3's fused
    weights read at offsets (no q_proj, no gate_proj committed)."""
    from safetensors.numpy import load_file

    gemma2 = load_model(saved["gemma2-softcap-window"])
    c = gemma2.config
    assert c.embed_scale == float(np.float32(60**0.5)) and c.mlp_act == "gelu_tanh"
    assert (c.attn_softcap, c.final_softcap, c.sliding_window) == (3.0, 8.0, 16)
    assert c.sliding_layers == (0, 2) and c.attn_scale == 10**-0.5  # Gemma 2: every other layer
    weights = dict(zip((w.name for w in gemma2.program.weights), gemma2.weights, strict=True))
    stored = load_file(saved["gemma2-softcap-window"] / "model.safetensors")
    w = stored["model.layers.1.pre_feedforward_layernorm.weight"]
    assert "model.layers.1.pre_feedforward_layernorm.weight" not in weights
    folded = np.asarray(weights["model.layers.1.pre_feedforward_layernorm.weight+1"], np.float32)
    assert np.array_equal(folded, (torch.from_numpy(w) + 1.0).numpy())  # torch's fp32 1.0 + w
    mask = np.asarray(weights["attn.window_mask"], np.float32)
    assert mask.shape == (64,) and not mask[:16].any() and np.all(mask[16:] == -np.inf)
    names = [n.name for n in gemma2.program.nodes]
    assert [n for n in names if n.endswith(".attn.window")] == [
        "layers.0.attn.window",
        "layers.2.attn.window",
    ]
    assert names[gemma2.program.logits_node] == "final_softcap"
    for i in range(3):
        assert names.index(f"layers.{i}.attn.softcap") < names.index(f"layers.{i}.attn.max")
        assert names.index(f"layers.{i}.attn.post_norm.weight") < names.index(
            f"layers.{i}.attn.residual"
        )
    gemma3 = load_model(saved["gemma3-two-ropes-window"])
    assert gemma3.config.local_rope_theta == 10000.0 and gemma3.config.rope_type == "linear"
    assert gemma3.config.attn_softcap == 0.0  # transformers' Gemma 3 attention has none
    reads = {
        gemma3.program.weights[op.index].name
        for n in gemma3.program.nodes
        if n.name.startswith("layers.1.attn.q_rope")
        for op in n.operands
        if op.src == 1
    }
    assert reads == {"rope.cos", "rope.sin_signed"}  # the full layer: the global tables
    assert "rope_local.cos" in {w.name for w in gemma3.program.weights}
    default_types = load_model(saved["gemma3-bias-untied-bf16"]).config
    assert default_types.sliding_layers == (0, 1, 2) and not default_types.tie_embeddings
    assert default_types.qkv_bias and default_types.o_bias
    phi3 = load_model(saved["phi3-window"])
    phi3_names = {w.name for w in phi3.program.weights}
    assert "model.layers.0.self_attn.qkv_proj.weight" in phi3_names
    assert not {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.gate_proj.weight"} & (
        phi3_names
    )
    nodes = {n.name: n for n in phi3.program.nodes}
    hd, h, g, f = 10, 6, 2, 176
    assert nodes["layers.0.attn.k_rope.cos"].operands[0].offset == h * hd
    assert nodes["layers.0.attn.v_cache"].operands[0].offset == (h + g) * hd
    assert nodes["layers.0.mlp.gated"].operands[1].offset == f
    assert phi3.config.sliding_layers == (0, 1) and phi3.config.sliding_window == 20


def test_gemma3_older_rope_spelling_is_the_same_model(saved, tmp_path: Path) -> None:
    """transformers 4's Gemma 3 spelling (rope_theta, rope_scaling for the global layers,
    rope_local_base_freq) is the same model as rope_parameters per layer type."""
    old = shutil.copytree(saved["gemma3-two-ropes-window"], tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params["full_attention"].pop("rope_theta")
    config["rope_scaling"] = params["full_attention"]
    config["rope_local_base_freq"] = params["sliding_attention"]["rope_theta"]
    (old / "config.json").write_text(json.dumps(config))
    assert load_model(old).root == load_model(saved["gemma3-two-ropes-window"]).root


def test_phi3_reads_su_and_yarn_as_longrope(saved, tmp_path: Path) -> None:
    """Phi3Config renames the RoPE types `su` and `yarn` to `longrope`, and so does refute."""
    want = load_model(saved["phi3-longrope-bf16"]).root
    for kind in ("su", "yarn"):
        old = shutil.copytree(saved["phi3-longrope-bf16"], tmp_path / kind)
        config = json.loads((old / "config.json").read_text())
        params = config.pop("rope_parameters")
        params.pop("rope_type")
        config["rope_scaling"] = params | {"type": kind}
        (old / "config.json").write_text(json.dumps(config))
        assert load_model(old).root == want


NEW_BACKEND_CASES = {
    # one layer. Gemma 2's a full one: soft-capped scores, no mask, which the fused softmax
    # takes as its input; the others' a sliding one with a window of 2, so that the mask cuts
    # keys off within the positions run
    "gemma2-softcap-window": dict(layer_types=["full_attention"]),
    "gemma3-two-ropes-window": dict(sliding_window=2, layer_types=["sliding_attention"]),
    "phi3-window": dict(sliding_window=2),
}


@pytest.mark.parametrize("name", sorted(NEW_BACKEND_CASES))
def test_new_families_give_the_reference_trace_root(name: str, tmp_path: Path) -> None:
    """Gemma 2 (soft-caps), Gemma 3 (q/k norm, local RoPE, window) and Phi-3 (fused
    projections, window), one layer, three positions, sampled: every record's root is the
    reference's on the cpu kernels and on the Triton kernels in the interpreter. Soft-capped or
    masked attention is not the fused attention's pattern: its nodes run one by one, but for
    the softmax of capped scores, which is the fused softmax's."""
    case = next(c for c in CASES if c.name == name)
    kwargs = dict(case.kwargs, num_hidden_layers=1) | NEW_BACKEND_CASES[name]
    build_hf(Case(name, case.family, kwargs, "bfloat16", case.seed)).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert model.config.sliding_window == (0 if name.startswith("gemma2") else 2)
    requests = [Request((92, 3), 2, temperature=0.8, seed=7)]  # key 0 masked at t = 2
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
        if backend == "triton":
            kinds = sorted(f.kind for f in runner.fused(model.program).values())
            want_kinds = {"gemma2-softcap-window": ["softmax"], "phi3-window": []}
            assert [k for k in kinds if k in ("attention", "softmax")] == want_kinds.get(name, [])


def _on_chain(client, prover, model, calls) -> None:
    for call in calls:
        node = model.program.nodes[call.node]
        if call.level is None and call.leaf is None:  # an element: the record's own value
            out = prover.outputs(call.position)[call.node]
            assert call.value == int(np.asarray(out, np.float32).view(np.uint32)[call.element])
        assert client.compute(call) == (call.value, call.index), node.name
        assert client.verify(call), node.name
        assert not client.verify(call, value=call.value ^ 1), node.name


def test_gemma_and_phi3_nodes_verify_on_chain(embedded_web3, tmp_path: Path) -> None:
    """Steps only these families have, on real traces (bf16 checkpoints): Gemma 2's embedding
    scale, folded (1 + w) gain, GeGLU, the three steps of both soft-caps, the window mask (a
    masked key: -inf, then exp = +0; an unmasked one); Phi-3's fused reads — leaves of the qkv
    product in its k and v rows, the v cache and k RoPE reading the product at offsets, the
    up half of gate_up. The contract computes the engine's value, accepts it, and rejects it
    with one bit flipped."""
    from refute.contracts.onestep import OneStepClient, StepProver

    client = OneStepClient(w3=embedded_web3)
    case = next(c for c in CASES if c.name == "gemma2-softcap-window")
    kwargs = dict(
        case.kwargs, num_hidden_layers=1, sliding_window=2, layer_types=["sliding_attention"]
    )
    build_hf(Case("g", case.family, kwargs, "bfloat16")).save_pretrained(tmp_path / "g")
    model = load_model(tmp_path / "g")
    ex = Executor(model)
    gen = ex.generate([Request(prompt=(5, 17, 250), max_new_tokens=3, temperature=0.7, seed=3)])[0]
    prover = StepProver(model, ex, gen)
    ids = {n.name: i for i, n in enumerate(model.program.nodes)}
    t, rows = 3, 6  # scores [T, 2, 3]: key j's row starts at element 6 j
    out = prover.outputs(t)
    assert out[ids["layers.0.attn.window"]].view(np.uint32)[0] == 0xFF800000  # key 0: -inf
    assert out[ids["layers.0.attn.exp"]][0] == 0.0 and out[ids["layers.0.attn.exp"]][rows * t] > 0
    _on_chain(client, prover, model, [
        prover.step(t, ids["embed"], 7),
        prover.step(t, ids["layers.0.input_norm.weight"], 11),
        prover.step(t, ids["layers.0.mlp.gelu_tanh"], 100),
        prover.step(t, ids["layers.0.attn.softcap.div"], rows * 2 + 4),
        prover.step(t, ids["layers.0.attn.softcap.tanh"], rows * 2 + 4),
        prover.step(t, ids["layers.0.attn.softcap"], rows * 3 + 1),
        prover.step(t, ids["layers.0.attn.window"], 5),  # key 0, masked
        prover.step(t, ids["layers.0.attn.window"], rows * 2 + 2),  # key 2, inside the window
        prover.step(t, ids["layers.0.attn.exp"], 3),  # exp(-inf - max) = +0
        prover.step(t, ids["final_softcap.div"], 42),
        prover.step(t, ids["final_softcap.tanh"], 42),
        prover.step(t, ids["final_softcap"], 299),
    ])  # fmt: skip
    case = next(c for c in CASES if c.name == "phi3-window")
    kwargs = dict(case.kwargs, num_hidden_layers=1)
    build_hf(Case("p", case.family, kwargs, "bfloat16")).save_pretrained(tmp_path / "p")
    model = load_model(tmp_path / "p")
    ex = Executor(model)
    gen = ex.generate([Request(prompt=(5, 17, 250), max_new_tokens=2, temperature=0.7, seed=3)])[0]
    prover = StepProver(model, ex, gen)
    ids = {n.name: i for i, n in enumerate(model.program.nodes)}
    hd, h, g, f = 10, 6, 2, 176
    _on_chain(client, prover, model, [
        prover.step(2, ids["layers.0.attn.qkv"], h * hd + 7, leaf=13),  # a k row of qkv_proj
        prover.step(2, ids["layers.0.attn.qkv"], (h + g) * hd + 3, leaf=59),  # a v row
        prover.step(2, ids["layers.0.attn.qkv"], (h + g) * hd + 3, level=6, index=0),  # root
        prover.step(2, ids["layers.0.attn.k_rope.sin"], 12),
        prover.step(2, ids["layers.0.attn.v_cache"], 2 * g * hd + 17),  # row t = 2
        prover.step(2, ids["layers.0.mlp.gate_up"], f + 9, leaf=31),  # an up row
        prover.step(2, ids["layers.0.mlp.gated"], 9),  # silu(gate[9]) * up[9] = gate_up[f + 9]
    ])  # fmt: skip
