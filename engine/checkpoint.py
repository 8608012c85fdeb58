"""Load models: built-in random-init tiny models by name, or Hugging Face checkpoint directories.

A checkpoint directory holds config.json and model.safetensors (or shards listed in
model.safetensors.index.json), with bf16, fp16 or fp32 weights; all are widened exactly to
float32 (docs/spec.md §3). A tokenizer.json, when present, is loaded with `tokenizers`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors

from refute.engine.model import Model
from refute.engine.models import GPT2Config, LlamaConfig, build_gpt2, build_llama
from refute.errors import ModelLoadError
from refute.kernels import reference as ref

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
    name: str, config: LlamaConfig | GPT2Config, weights: dict[str, np.ndarray], tokenizer=None
) -> Model:
    builder = build_llama if isinstance(config, LlamaConfig) else build_gpt2
    program, values = builder(config, weights)
    return Model(name, config, program, values, tokenizer)


def builtin_model(name: str, seed: int = 0) -> Model:
    if name not in BUILTIN:
        raise ModelLoadError(f"unknown built-in model {name!r}; choose from {sorted(BUILTIN)}")
    config = BUILTIN[name]
    return build(name if seed == 0 else f"{name}@{seed}", config, random_weights(config, seed))


def load_model(name_or_path: str | Path, seed: int = 0) -> Model:
    """A built-in tiny model by name, or a Hugging Face checkpoint directory."""
    if str(name_or_path) in BUILTIN:
        return builtin_model(str(name_or_path), seed)
    path = Path(name_or_path)
    if not path.is_dir():
        raise ModelLoadError(
            f"{name_or_path!r} is neither a built-in model ({', '.join(sorted(BUILTIN))}) nor a "
            "checkpoint directory"
        )
    return load_checkpoint(path)


def config_from_hf(hf: dict) -> LlamaConfig | GPT2Config:
    kind = hf.get("model_type")
    try:
        if kind in ("llama", "mistral"):
            heads = hf["num_attention_heads"]
            return LlamaConfig(
                vocab_size=hf["vocab_size"],
                hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=heads,
                num_kv_heads=hf.get("num_key_value_heads") or heads,
                head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
                # sliding-window attention equals full attention up to the window: run that far
                max_positions=min(
                    hf["max_position_embeddings"],
                    hf.get("sliding_window") or hf["max_position_embeddings"],
                ),
                rms_eps=hf.get("rms_norm_eps", 1e-6),
                rope_theta=hf.get("rope_theta")
                or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            )
        if kind == "gpt2":
            return GPT2Config(
                vocab_size=hf["vocab_size"],
                hidden_size=hf["n_embd"],
                num_layers=hf["n_layer"],
                num_heads=hf["n_head"],
                max_positions=hf["n_positions"],
                intermediate_size=hf.get("n_inner") or 0,
                ln_eps=hf.get("layer_norm_epsilon", 1e-5),
            )
    except KeyError as exc:
        raise ModelLoadError(f"config.json lacks {exc.args[0]!r}") from exc
    raise ModelLoadError(f"unsupported model_type {kind!r} (supported: llama, mistral, gpt2)")


# Options of the Hugging Face configs that change the computation but that the programs of
# models.py do not implement: a checkpoint using them is refused rather than silently run with
# the default behaviour (each was measured to change the logits). (key, default, supported values)
_UNSUPPORTED_OPTIONS = {
    "llama": (
        ("attention_bias", False, (False,)),
        ("mlp_bias", False, (False,)),
        ("hidden_act", "silu", ("silu", "swish")),
    ),
    "gpt2": (
        ("activation_function", "gelu_new", ("gelu_new", "gelu_pytorch_tanh")),
        ("scale_attn_weights", True, (True,)),
        ("scale_attn_by_inverse_layer_idx", False, (False,)),
        ("tie_word_embeddings", True, (True,)),
    ),
}
_UNSUPPORTED_OPTIONS["mistral"] = _UNSUPPORTED_OPTIONS["llama"]


def _check_options(hf: dict) -> None:
    for key, default, supported in _UNSUPPORTED_OPTIONS.get(hf.get("model_type"), ()):
        value = hf.get(key, default)
        if value not in supported:
            raise ModelLoadError(
                f"config.json sets {key}={value!r}, which refute does not implement "
                f"(supported: {', '.join(map(repr, supported))})"
            )


def _check_rope(hf: dict) -> None:
    scaling = hf.get("rope_scaling") or {}
    rope_type = (
        scaling.get("rope_type")
        or scaling.get("type")
        or (hf.get("rope_parameters") or {}).get("rope_type", "default")
    )
    if rope_type not in ("default", None):
        raise ModelLoadError(f"RoPE scaling {rope_type!r} is not supported (default RoPE only)")


def _to_f32(name: str, info: dict) -> np.ndarray:
    dtype, shape, data = info["dtype"], info["shape"], info["data"]
    if dtype == "F32":
        values = np.frombuffer(data, "<f4").astype(np.float32)
    elif dtype == "F16":
        values = ref.from_fp16(np.frombuffer(data, "<u2"))
    elif dtype == "BF16":
        values = ref.from_bf16(np.frombuffer(data, "<u2"))
    else:
        raise ModelLoadError(f"tensor {name!r} has dtype {dtype}; supported: F32, F16, BF16")
    return values.reshape(shape)


def read_safetensors(directory: Path) -> dict[str, np.ndarray]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [directory / s for s in shards]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no .safetensors files in {directory}")
    weights: dict[str, np.ndarray] = {}
    for file in files:
        try:
            tensors = safetensors.deserialize(file.read_bytes())
        except (OSError, safetensors.SafetensorError) as exc:
            raise ModelLoadError(f"cannot read {file}: {exc}") from exc
        for name, info in tensors:
            weights[name] = _to_f32(name, info)
    return weights


def load_checkpoint(directory: Path) -> Model:
    config_file = directory / "config.json"
    if not config_file.exists():
        raise ModelLoadError(f"{directory} has no config.json")
    hf = json.loads(config_file.read_text())
    _check_rope(hf)
    config = config_from_hf(hf)
    _check_options(hf)
    weights = read_safetensors(directory)
    if (
        isinstance(config, LlamaConfig)
        and "lm_head.weight" not in weights
        and not (config.tie_embeddings)
    ):
        raise ModelLoadError("checkpoint has no lm_head.weight and does not tie embeddings")
    tokenizer = None
    if (directory / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return build(str(directory), config, weights, tokenizer)
