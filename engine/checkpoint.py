"""Load models: built-in random-init tiny models by name, or Hugging Face checkpoint directories.

A checkpoint directory holds config.json and model.safetensors (or shards listed in
model.safetensors.index.json), with bf16, fp16 or fp32 weights, memory-mapped and kept at their
stored width (`engine.weights`; widened exactly, docs/spec.md §3, where they are read). A
tokenizer.json, when present, is loaded with `tokenizers`.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from refute.engine import weights as wt
from refute.engine.model import Model
from refute.engine.models import ROPE_TYPES, GPT2Config, LlamaConfig, build_gpt2, build_llama
from refute.errors import ModelLoadError

TINY_LLAMA = LlamaConfig(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=176,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    max_positions=256,
)
TINY_GPT2 = GPT2Config(vocab_size=320, hidden_size=64, num_layers=2, num_heads=4, max_positions=256)
BUILTIN = {"tiny-llama": TINY_LLAMA, "tiny-gpt2": TINY_GPT2}


def random_weights(config: LlamaConfig | GPT2Config, seed: int) -> dict[str, np.ndarray]:
    """Gaussian weights (std 0.1: logits spread enough that greedy choices are not near ties),
    norm gains 1 and biases 0, with Hugging Face names."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w: dict[str, np.ndarray] = {}
    d = config.hidden_size
    if isinstance(config, LlamaConfig):
        hd, h, g, f = (
            config.head_dim,
            config.num_heads,
            config.num_kv_heads,
            config.intermediate_size,
        )
        w["model.embed_tokens.weight"] = normal(config.vocab_size, d)
        for i in range(config.num_layers):
            p = f"model.layers.{i}."
            w[p + "input_layernorm.weight"] = np.ones(d, np.float32)
            w[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
            w[p + "self_attn.q_proj.weight"] = normal(h * hd, d)
            w[p + "self_attn.k_proj.weight"] = normal(g * hd, d)
            w[p + "self_attn.v_proj.weight"] = normal(g * hd, d)
            w[p + "self_attn.o_proj.weight"] = normal(d, h * hd)
            w[p + "mlp.gate_proj.weight"] = normal(f, d)
            w[p + "mlp.up_proj.weight"] = normal(f, d)
            w[p + "mlp.down_proj.weight"] = normal(d, f)
        w["model.norm.weight"] = np.ones(d, np.float32)
        if not config.tie_embeddings:
            w["lm_head.weight"] = normal(config.vocab_size, d)
        return w
    f = config.inner
    w["transformer.wte.weight"] = normal(config.vocab_size, d)
    w["transformer.wpe.weight"] = normal(config.max_positions, d)
    for i in range(config.num_layers):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            w[p + ln + ".weight"] = np.ones(d, np.float32)
            w[p + ln + ".bias"] = np.zeros(d, np.float32)
        w[p + "attn.c_attn.weight"] = normal(d, 3 * d)
        w[p + "attn.c_attn.bias"] = normal(3 * d)
        w[p + "attn.c_proj.weight"] = normal(d, d)
        w[p + "attn.c_proj.bias"] = normal(d)
        w[p + "mlp.c_fc.weight"] = normal(d, f)
        w[p + "mlp.c_fc.bias"] = normal(f)
        w[p + "mlp.c_proj.weight"] = normal(f, d)
        w[p + "mlp.c_proj.bias"] = normal(d)
    w["transformer.ln_f.weight"] = np.ones(d, np.float32)
    w["transformer.ln_f.bias"] = np.zeros(d, np.float32)
    return w


def build(
    name: str,
    config: LlamaConfig | GPT2Config,
    weights: Mapping[str, np.ndarray],
    tokenizer=None,
    context_note: str = "",
) -> Model:
    builder = build_llama if isinstance(config, LlamaConfig) else build_gpt2
    program, values = builder(config, weights)
    return Model(name, config, program, values, tokenizer, context_note=context_note)


def builtin_model(name: str, seed: int = 0) -> Model:
    if name not in BUILTIN:
        raise ModelLoadError(f"unknown built-in model {name!r}; choose from {sorted(BUILTIN)}")
    config = BUILTIN[name]
    return build(name if seed == 0 else f"{name}@{seed}", config, random_weights(config, seed))


def load_model(name_or_path: str | Path, seed: int = 0, context: int | None = None) -> Model:
    """A built-in tiny model by name, or a Hugging Face checkpoint directory built for `context`
    positions (see `load_checkpoint`)."""
    if str(name_or_path) in BUILTIN:
        if context is not None:
            raise ModelLoadError("a built-in model has a fixed context; do not pass one")
        return builtin_model(str(name_or_path), seed)
    if str(name_or_path) == "demo":  # the shipped checkpoint, by name
        from refute.demo_model import DEMO_MODEL_DIR

        name_or_path = DEMO_MODEL_DIR
    path = Path(name_or_path)
    if not path.is_dir():
        raise ModelLoadError(
            f"{name_or_path!r} is neither a built-in model ({', '.join(sorted(BUILTIN))}, demo) "
            "nor a checkpoint directory"
        )
    return load_checkpoint(path, context)


# --- config.json -> a program config ----------------------------------------------------------

DEFAULT_CONTEXT = 4096
"""Positions a checkpoint's program is built for when no context is given (or fewer, where the
checkpoint allows fewer). The program's max_positions is committed (program header, config) and
bounds every claim on chain, and the RoPE tables are that many rows: a checkpoint declaring 1M
positions must not cost 1M rows unless they are asked for."""

LLAMA_FAMILY = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3",
    "mixtral", "qwen2_moe", "qwen3_moe",
)  # fmt: skip
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
GEMMA = ("gemma", "gemma2", "gemma3_text")
SUPPORTED = (*LLAMA_FAMILY, "gpt2")


def _read_json(file: Path) -> dict:
    """A JSON object from `file`; a broken file is a ModelLoadError naming it and the error."""
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{file} is not valid JSON: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file} must hold a JSON object, not {type(data).__name__}")
    return data


# RoPE parameters refute knows (transformers' RopeParameters); anything else is refused.
_ROPE_KEYS = {
    "rope_type", "type", "rope_theta", "partial_rotary_factor", "factor",
    "original_max_position_embeddings", "low_freq_factor", "high_freq_factor",
    "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate",
    "short_factor", "long_factor",
}  # fmt: skip


def _get(params: dict, key: str, kind: str):
    if params.get(key) is None:
        raise ModelLoadError(f"RoPE scaling {kind!r} needs {key!r} in config.json")
    return params[key]


def rope_config(hf: dict, head_dim: int, max_positions: int) -> dict:
    """LlamaConfig's RoPE fields from either spelling of config.json: transformers 5's
    `rope_parameters` dict, or the older top-level `rope_theta` with a `rope_scaling` dict
    (which transformers prefers when both are present). Derived values (yarn's and longrope's
    attention factor, a factor left out) are resolved here as transformers resolves them, so the
    committed config holds every number the tables are computed from."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ModelLoadError("config.json's rope_parameters / rope_scaling must be an object")
    if any(isinstance(v, dict) for v in params.values()):
        raise ModelLoadError("per-layer-type RoPE parameters are not supported")
    unknown = sorted(set(params) - _ROPE_KEYS)
    if unknown:
        raise ModelLoadError(f"config.json sets RoPE parameters refute does not know: {unknown}")
    kind = params.get("rope_type") or params.get("type") or "default"
    theta = params.get("rope_theta") or hf.get("rope_theta") or 10000.0
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0
    if partial != 1.0:
        raise ModelLoadError(
            f"config.json sets partial_rotary_factor={partial!r}, which refute does not "
            "implement (supported: 1.0)"
        )
    out: dict = {"rope_theta": float(theta), "rope_type": kind}
    original = (
        hf.get("original_max_position_embeddings")
        or params.get("original_max_position_embeddings")
        or max_positions
    )
    scaling: dict = {}
    if kind == "default":
        pass
    elif kind in ("linear", "dynamic"):
        scaling["factor"] = float(_get(params, "factor", kind))
    elif kind == "llama3":
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            scaling[key] = float(_get(params, key, kind))
        scaling["original_max_position_embeddings"] = int(original)
    elif kind == "yarn":
        factor = params.get("factor") or max_positions / original
        attention = params.get("attention_factor")
        if attention is None:
            mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")

            def get_mscale(scale: float, m: float = 1.0) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

            if mscale and mscale_all:
                attention = get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
            else:
                attention = get_mscale(factor)
        scaling |= {
            "factor": float(factor),
            "attention_factor": float(attention),
            "beta_fast": float(params.get("beta_fast") or 32),
            "beta_slow": float(params.get("beta_slow") or 1),
            "truncate": bool(params.get("truncate", True)),
            "original_max_position_embeddings": int(original),
        }
    elif kind == "longrope":
        short = _get(params, "short_factor", kind)
        _get(params, "long_factor", kind)
        if not isinstance(short, list) or len(short) != head_dim // 2:
            raise ModelLoadError(
                f"RoPE scaling 'longrope' needs short_factor of {head_dim // 2} numbers"
            )
        factor = params.get("factor") or max_positions / original
        attention = params.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
        scaling |= {
            "attention_factor": float(attention),
            "short_factor": tuple(float(x) for x in short),
            "original_max_position_embeddings": int(original),
        }
    else:
        raise ModelLoadError(
            f"RoPE scaling {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    out["rope_scaling"] = tuple(sorted(scaling.items()))
    return out


def sliding_window(hf: dict) -> tuple[int | None, tuple[int, ...]]:
    """The attention window W of a config (None: none) and the layers that use it, as
    transformers reads them: Mistral's and Phi-3's `sliding_window` on every layer; Qwen's only
    with `use_sliding_window`, on the layers that `layer_types` (or `max_window_layers`) mark
    sliding; Gemma 2's and 3's on the layers `layer_types` marks sliding (by default every
    other layer for Gemma 2, five of every six for Gemma 3: `sliding_window_pattern`)."""
    kind = hf.get("model_type")
    layers = hf.get("num_hidden_layers", 0)
    if kind in ("mistral", "phi3", "mixtral"):
        window, types = hf.get("sliding_window"), ["sliding_attention"] * layers
    elif kind in ("qwen2", "qwen3"):
        window = hf.get("sliding_window", 4096)
        if not hf.get("use_sliding_window", False):
            return None, ()
        types = hf.get("layer_types") or [
            "sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention"
            for i in range(layers)
        ]
    elif kind in ("gemma2", "gemma3_text"):
        window = hf.get("sliding_window", 4096)
        pattern = 2 if kind == "gemma2" else hf.get("sliding_window_pattern", 6)
        types = hf.get("layer_types") or [
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
        ]
    else:
        return None, ()
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown or len(types) != layers:
        raise ModelLoadError(
            f"config.json's layer_types must name sliding_attention or full_attention for each "
            f"of its {layers} layers, not {types!r}"
        )
    bad = isinstance(window, bool) or not isinstance(window, int) or window < 1
    if window is not None and bad:
        raise ModelLoadError(f"config.json sets sliding_window={window!r}: a positive integer")
    return window, tuple(i for i, t in enumerate(types) if t == "sliding_attention")


def choose_context(
    declared: int, key: str, context: int | None, caps: tuple[tuple[int, str], ...] = ()
) -> tuple[int, str]:
    """The program's max_positions and the reason for it (the executor appends it to its
    "positions exceed" message): the context asked for, else DEFAULT_CONTEXT, never more than
    the checkpoint declares (`key`) nor than any of `caps` — (limit, why) pairs of features that
    refute computes exactly only up to a point (a sliding window, longrope's switch)."""
    if context is not None:
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ModelLoadError(f"context must be a positive integer, not {context!r}")
        if context > declared:
            raise ModelLoadError(
                f"context {context} exceeds the checkpoint's {declared} positions "
                f"({key} in config.json)"
            )
        for limit, why in caps:
            if context > limit:
                raise ModelLoadError(f"context {context} exceeds {limit} positions: {why}")
        return context, " (the context it was loaded with)"
    limit, note = min(declared, DEFAULT_CONTEXT), ""
    if declared > DEFAULT_CONTEXT:
        note = (
            f" (refute's default context; the checkpoint declares {declared}: load it with a "
            "larger context for more)"
        )
    else:
        note = f" ({key} in config.json)"
    for cap, why in caps:
        if cap < limit:
            limit, note = cap, f" ({why})"
    return limit, note


def _longrope_cap(original: int) -> tuple[int, str]:
    return original, (
        f"longrope's original_max_position_embeddings={original}: beyond it transformers "
        "switches every position to long_factor by the length of the sequence, which a table of "
        "one row per position cannot express"
    )


def _gemma3_rope(hf: dict, head_dim: int, declared: int) -> tuple[dict, float]:
    """Gemma 3's two RoPEs: the global layers' (any supported type; in the older spelling
    `rope_theta` and `rope_scaling`), and the sliding layers' default RoPE with its own base
    (`rope_parameters.sliding_attention.rope_theta`, older `rope_local_base_freq`)."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and {"full_attention", "sliding_attention"} & set(params):
        unknown = sorted(set(params) - {"full_attention", "sliding_attention"})
        if unknown:
            raise ModelLoadError(f"config.json sets RoPE parameters for unknown layers: {unknown}")
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
    else:
        full = dict(hf.get("rope_scaling") or params or {})
        local = {}
    full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
    local_kind = local.get("rope_type") or local.get("type") or "default"
    if local_kind != "default" or set(local) - {"rope_type", "type", "rope_theta"}:
        raise ModelLoadError(
            f"the sliding layers' RoPE must be the default one with a rope_theta, not {local!r}"
        )
    original = hf.get("original_max_position_embeddings")
    global_rope = rope_config(
        {"rope_parameters": full, "original_max_position_embeddings": original},
        head_dim,
        declared,
    )
    return global_rope, float(local["rope_theta"])


def _phi3_rope(hf: dict) -> dict:
    """Phi-3 reads the RoPE types `su` and `yarn` as `longrope` (transformers' Phi3Config)."""
    for key in ("rope_scaling", "rope_parameters"):
        params = hf.get(key)
        if isinstance(params, dict) and (params.get("rope_type") or params.get("type")) in (
            "su",
            "yarn",
        ):
            renamed = {k: v for k, v in params.items() if k != "type"} | {"rope_type": "longrope"}
            hf = {**hf, key: renamed}
    return hf


def _gemma_fields(hf: dict, kind: str) -> dict:
    """The LlamaConfig fields of Gemma 1, 2 and 3 (transformers' modeling_gemma*.py)."""
    fields = dict(
        norm_plus_one=True,
        # transformers: torch.tensor(hidden_size**0.5), a binary32 in the fp32 forward
        embed_scale=float(np.float32(float(hf["hidden_size"]) ** 0.5)),
        mlp_act="gelu_tanh",
    )
    if kind in ("gemma2", "gemma3_text"):
        final = hf.get("final_logit_softcapping", 30.0 if kind == "gemma2" else None)
        fields |= dict(
            sandwich_norms=True,
            attn_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5,
            final_softcap=float(final or 0.0),
        )
    if kind == "gemma2":  # Gemma 3's attention ignores attn_logit_softcapping, as transformers'
        fields["attn_softcap"] = float(hf.get("attn_logit_softcapping", 50.0) or 0.0)
    return fields


def _moe_fields(hf: dict, kind: str) -> dict:
    """The LlamaConfig fields of Mixtral, Qwen2-MoE and Qwen3-MoE (transformers'
    modeling_mixtral.py, modeling_qwen2_moe.py, modeling_qwen3_moe.py): Mixtral routes every
    layer and always renormalises the top k; the Qwen ones route the layers that
    `decoder_sparse_step` and `mlp_only_layers` choose (the others keep a dense MLP of
    `intermediate_size`) and renormalise only with `norm_topk_prob`."""
    layers = hf["num_hidden_layers"]
    if kind == "mixtral":
        experts = hf.get("num_local_experts", 8)
        return dict(
            num_experts=experts,
            experts_per_token=hf.get("num_experts_per_tok", 2),
            moe_intermediate_size=hf["intermediate_size"],
            norm_topk_prob=True,
            moe_layers=tuple(range(layers)),
            moe_names="mixtral",
        )
    experts = hf.get("num_experts", hf.get("num_local_experts", 60 if kind == "qwen2_moe" else 128))
    step = hf.get("decoder_sparse_step", 1)
    dense = set(hf.get("mlp_only_layers") or [])
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ModelLoadError(f"config.json sets decoder_sparse_step={step!r}: a positive integer")
    routed = tuple(
        i for i in range(layers) if i not in dense and experts > 0 and (i + 1) % step == 0
    )
    return dict(
        num_experts=experts,
        experts_per_token=hf.get("num_experts_per_tok", 4 if kind == "qwen2_moe" else 8),
        moe_intermediate_size=hf["moe_intermediate_size"],
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        shared_expert_size=hf.get("shared_expert_intermediate_size", 0)
        if kind == "qwen2_moe"
        else 0,
        moe_layers=routed,
        moe_names="qwen",
    )


def config_from_hf(hf: dict, context: int | None = None) -> tuple[LlamaConfig | GPT2Config, str]:
    """The program config of a config.json, and the reason for its max_positions. The
    model_type is checked first, then every option that changes the computation."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise ModelLoadError(f"unsupported model_type {kind!r} (supported: {', '.join(SUPPORTED)})")
    _check_options(hf)
    try:
        if kind == "gpt2":
            max_positions, note = choose_context(hf["n_positions"], "n_positions", context)
            return GPT2Config(
                vocab_size=hf["vocab_size"],
                hidden_size=hf["n_embd"],
                num_layers=hf["n_layer"],
                num_heads=hf["n_head"],
                max_positions=max_positions,
                intermediate_size=hf.get("n_inner") or 0,
                ln_eps=hf.get("layer_norm_epsilon", 1e-5),
            ), note
        heads = hf["num_attention_heads"]
        default_head_dim = {"qwen3": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256}
        head_dim = hf.get("head_dim") or default_head_dim.get(kind, hf["hidden_size"] // heads)
        declared = hf["max_position_embeddings"]
        extra: dict = {}
        if kind == "gemma3_text":
            rope, local_theta = _gemma3_rope(hf, head_dim, declared)
        else:
            rope = rope_config(_phi3_rope(hf) if kind == "phi3" else hf, head_dim, declared)
        caps = []
        if rope["rope_type"] == "longrope":
            caps.append(
                _longrope_cap(dict(rope["rope_scaling"])["original_max_position_embeddings"])
            )
        max_positions, note = choose_context(
            declared, "max_position_embeddings", context, tuple(caps)
        )
        window, sliding = sliding_window(hf)
        # keys t - W + 1 .. t on the sliding layers (docs/models.md). A window spanning the
        # context is full attention, exactly; then only Gemma 3, whose sliding layers have
        # their own RoPE, needs to know which layers slide.
        masked = window is not None and window < max_positions
        if sliding and (masked or kind == "gemma3_text"):
            extra["sliding_layers"] = sliding
            if masked:
                extra["sliding_window"] = window
            if kind == "gemma3_text":
                extra["local_rope_theta"] = local_theta
        if kind in GEMMA:
            extra |= _gemma_fields(hf, kind)
        if kind == "phi3":
            extra |= dict(fused_qkv=True, fused_gate_up=True)
        if kind in MOE:
            extra |= _moe_fields(hf, kind)
        attention_bias = kind in ("llama", "qwen3", "qwen3_moe", *GEMMA) and bool(
            hf.get("attention_bias", False)
        )
        return LlamaConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            max_positions=max_positions,
            rms_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(hf.get("tie_word_embeddings", kind in GEMMA)),
            qkv_bias=kind == "qwen2"
            or (kind == "qwen2_moe" and bool(hf.get("qkv_bias", True)))
            or attention_bias,
            o_bias=kind not in ("qwen2", "qwen2_moe") and attention_bias,
            mlp_bias=kind == "llama" and bool(hf.get("mlp_bias", False)),
            qk_norm=kind in ("qwen3", "qwen3_moe", "gemma3_text"),
            **rope,
            **extra,
        ), note
    except KeyError as exc:
        raise ModelLoadError(f"config.json lacks {exc.args[0]!r}") from exc


# Options of the Hugging Face configs that change the computation but that the programs of
# models.py do not implement: a checkpoint using them is refused rather than silently run with
# the default behaviour (each was measured to change the logits). (key, default, supported values)
_ACT = ("hidden_act", "silu", ("silu", "swish"))
_GEMMA_ACT = ("hidden_activation", "gelu_pytorch_tanh", ("gelu_pytorch_tanh", "gelu_new"))
_BIDIRECTIONAL = ("use_bidirectional_attention", False, (False, None))
_UNSUPPORTED_OPTIONS = {
    # transformers reads attention_bias only for Llama and Qwen3 and mlp_bias only for Llama
    # (Qwen2's q, k, v biases are always there); the others ignore such keys, and so does refute
    "llama": (_ACT,),
    "mistral": (_ACT,),
    "qwen2": (_ACT,),
    "qwen3": (_ACT,),
    "mixtral": (_ACT,),
    "qwen2_moe": (_ACT, ("use_sliding_window", False, (False,))),
    "qwen3_moe": (_ACT, ("use_sliding_window", False, (False,))),
    "phi3": (_ACT,),
    # transformers' Gemma reads hidden_act ("gelu" meaning the tanh form, as its config says);
    # Gemma 2 and 3 read hidden_activation, where "gelu" is the exact (erf) GELU
    "gemma": (
        ("hidden_act", "gelu_pytorch_tanh", ("gelu", "gelu_pytorch_tanh", "gelu_new")),
        _BIDIRECTIONAL,
    ),
    "gemma2": (_GEMMA_ACT, _BIDIRECTIONAL),
    "gemma3_text": (_GEMMA_ACT, _BIDIRECTIONAL),
    "gpt2": (
        ("activation_function", "gelu_new", ("gelu_new", "gelu_pytorch_tanh")),
        ("scale_attn_weights", True, (True,)),
        ("scale_attn_by_inverse_layer_idx", False, (False,)),
        ("tie_word_embeddings", True, (True,)),
    ),
}


def _check_options(hf: dict) -> None:
    for key, default, supported in _UNSUPPORTED_OPTIONS.get(hf.get("model_type"), ()):
        value = hf.get(key, default)
        if value not in supported:
            raise ModelLoadError(
                f"config.json sets {key}={value!r}, which refute does not implement "
                f"(supported: {', '.join(map(repr, supported))})"
            )


# --- safetensors ------------------------------------------------------------------------------

_DTYPES = {"F32": wt.F32, "BF16": wt.BF16, "F16": wt.F16}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


class Tensors(Mapping):
    """A checkpoint's tensors by name, memory-mapped at their stored width (float32, bfloat16,
    float16) and never widened here: consumers widen exactly as they read (`engine.weights`).

    Each file is mapped once, read-only and shared (`mmap.ACCESS_READ`), so the pages are the
    page cache's: processes that load one checkpoint hold one copy of it. Tensors a program does
    not use (GPT-2's stored attention masks, say) are never touched, whatever their dtype."""

    def __init__(self, infos: dict[str, tuple[Path, mmap.mmap, str, list[int], int, int]]) -> None:
        self.infos = infos

    def __getitem__(self, name: str) -> np.ndarray:
        file, buf, dtype, shape, begin, end = self.infos[name]
        if dtype not in _DTYPES:
            raise ModelLoadError(
                f"tensor {name!r} has dtype {dtype}; supported: {', '.join(_DTYPES)}"
            )
        dt = _DTYPES[dtype]
        count = math.prod(shape)
        if end - begin != count * dt.itemsize:
            raise ModelLoadError(
                f"{file}: tensor {name!r} of shape {shape} and dtype {dtype} spans "
                f"{end - begin} bytes"
            )
        values = np.frombuffer(buf, dtype=dt.newbyteorder("<"), count=count, offset=begin)
        if not values.flags.aligned:  # safetensors does not promise aligned offsets
            values = values.copy()
        return values.reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)


def _map_file(file: Path) -> dict[str, tuple[Path, mmap.mmap, str, list[int], int, int]]:
    """The tensors of one safetensors file (8-byte little-endian header length, a JSON header
    of name -> dtype, shape, data_offsets, then the data), over one shared read-only map."""
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"cannot read {file}: too short for a safetensors file")
            n = int.from_bytes(head, "little")
            if n > min(_MAX_HEADER, size - 8):
                raise ModelLoadError(f"cannot read {file}: header of {n} bytes")
            header = json.loads(f.read(n))
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise ModelLoadError(f"cannot read {file}: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"cannot read {file}: its header is not a JSON object")
    start = 8 + n
    infos = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(info["dtype"]), [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {file}: bad entry for {name!r}") from exc
        if not 0 <= begin <= end <= size - start or any(d < 0 for d in shape):
            raise ModelLoadError(f"cannot read {file}: tensor {name!r} lies outside the file")
        infos[name] = (file, buf, dtype, shape, start + begin, start + end)
    return infos


def read_safetensors(directory: Path) -> Tensors:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index} has no weight_map object")
        files = [directory / s for s in sorted(set(weight_map.values()))]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no .safetensors files in {directory}")
    infos: dict = {}
    for file in files:
        infos.update(_map_file(file))
    return Tensors(infos)


def _read_tokenizer(file: Path):
    from tokenizers import Tokenizer

    _read_json(file)  # a JSON error names the file and the position
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises plain Exception for a schema it cannot read
        raise ModelLoadError(f"{file} is not a tokenizer `tokenizers` can read: {exc}") from exc


def load_checkpoint(directory: Path, context: int | None = None) -> Model:
    """A Hugging Face checkpoint directory as a model whose program runs `context` positions
    (default: DEFAULT_CONTEXT, or the checkpoint's own limit when that is smaller)."""
    config_file = directory / "config.json"
    if not config_file.exists():
        raise ModelLoadError(f"{directory} has no config.json")
    config, note = config_from_hf(_read_json(config_file), context)
    weights = read_safetensors(directory)
    if (
        isinstance(config, LlamaConfig)
        and "lm_head.weight" not in weights
        and not (config.tie_embeddings)
    ):
        raise ModelLoadError("checkpoint has no lm_head.weight and does not tie embeddings")
    tokenizer = None
    if (directory / "tokenizer.json").exists():
        tokenizer = _read_tokenizer(directory / "tokenizer.json")
    return build(str(directory), config, weights, tokenizer, context_note=note)
