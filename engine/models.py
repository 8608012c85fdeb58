"""Model families, spelled as programs: Llama (RMSNorm, RoPE, SwiGLU, GQA) and GPT-2.

Each `build_*` takes a config and a dict of float32 weights named as in Hugging Face
checkpoints, and returns the program and its weights in program order. Constants that need
sin, cos or pow (the RoPE tables, attention scales) are computed here, once, and committed with
the weights or as bit patterns in the program.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from refute.engine.builder import ProgramBuilder, const
from refute.engine.ir import Fn, Program
from refute.errors import ModelLoadError


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    architecture: str = "llama"


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    max_positions: int
    intermediate_size: int = 0  # 0 means 4 * hidden_size
    ln_eps: float = 1e-5
    architecture: str = "gpt2"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def inner(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size


Config = LlamaConfig | GPT2Config


def config_dict(config: Config) -> dict:
    return asdict(config)


def rope_tables(config: LlamaConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and signed sin tables [max_positions, head_dim], as HF's default RoPE defines them:
    angle(t, i) = t * theta^(-2i/head_dim), each half of a head sharing the same angles. The sin
    table carries rotate_half's sign (-sin on the first half). Computed in float64, rounded once."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    angles = np.outer(np.arange(config.max_positions, dtype=np.float64), inv_freq)
    cos = np.cos(np.concatenate([angles, angles], axis=1)).astype(np.float32)
    sin = np.sin(angles)
    sin_signed = np.concatenate([-sin, sin], axis=1).astype(np.float32)
    return cos, sin_signed


def _need(weights: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in weights:
        raise ModelLoadError(f"checkpoint has no tensor {name!r}")
    w = weights[name]
    if tuple(w.shape) != shape:
        raise ModelLoadError(f"tensor {name!r} has shape {tuple(w.shape)}, expected {shape}")
    return w


def build_llama(
    config: LlamaConfig, weights: dict[str, np.ndarray]
) -> tuple[Program, list[np.ndarray]]:
    c = config
    d, hd, h, g, f = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.intermediate_size
    if h % g or hd % 2:
        raise ModelLoadError("heads must be a multiple of kv heads, head_dim even")
    b = ProgramBuilder(c.max_positions, c.vocab_size)
    embed = b.weight(
        "model.embed_tokens.weight", _need(weights, "model.embed_tokens.weight", (c.vocab_size, d))
    )
    cos, sin_signed = rope_tables(c)
    cos_t, sin_t = b.weight("rope.cos", cos), b.weight("rope.sin_signed", sin_signed)
    layer_weights = []
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        shapes = {
            "input_layernorm.weight": (d,),
            "post_attention_layernorm.weight": (d,),
            "self_attn.q_proj.weight": (h * hd, d),
            "self_attn.k_proj.weight": (g * hd, d),
            "self_attn.v_proj.weight": (g * hd, d),
            "self_attn.o_proj.weight": (d, h * hd),
            "mlp.gate_proj.weight": (f, d),
            "mlp.up_proj.weight": (f, d),
            "mlp.down_proj.weight": (d, f),
        }
        layer_weights.append(
            {k: b.weight(p + k, _need(weights, p + k, s)) for k, s in shapes.items()}
        )
    norm = b.weight("model.norm.weight", _need(weights, "model.norm.weight", (d,)))
    if c.tie_embeddings:
        lm_head = embed
    else:
        lm_head = b.weight("lm_head.weight", _need(weights, "lm_head.weight", (c.vocab_size, d)))

    x = b.embedding("embed", embed)
    for i, w in enumerate(layer_weights):
        b.layer = i
        hn = b.rmsnorm("input_norm", x, w["input_layernorm.weight"], c.rms_eps)
        q = b.linear("attn.q", hn, w["self_attn.q_proj.weight"])
        k = b.linear("attn.k", hn, w["self_attn.k_proj.weight"])
        v = b.linear("attn.v", hn, w["self_attn.v_proj.weight"])
        qr = b.rope("attn.q_rope", q, h, hd, cos_t, sin_t)
        kr = b.rope("attn.k_rope", k, g, hd, cos_t, sin_t)
        k_cache = b.cache("attn.k_cache", kr, g, hd)
        v_cache = b.cache("attn.v_cache", v, g, hd)
        o = b.attention("attn", qr, k_cache, v_cache, h, g, hd, float(hd) ** -0.5, Fn.MUL)
        o = b.linear("attn.o", o, w["self_attn.o_proj.weight"])
        x = b.map("attn.residual", Fn.ADD, (d,), x, o)
        hn = b.rmsnorm("post_norm", x, w["post_attention_layernorm.weight"], c.rms_eps)
        gate = b.linear("mlp.gate", hn, w["mlp.gate_proj.weight"])
        up = b.linear("mlp.up", hn, w["mlp.up_proj.weight"])
        act = b.map("mlp.silu", Fn.SILU, (f,), gate)
        prod = b.map("mlp.gated", Fn.MUL, (f,), act, up)
        down = b.linear("mlp.down", prod, w["mlp.down_proj.weight"])
        x = b.map("mlp.residual", Fn.ADD, (d,), x, down)
    b.layer = -1
    hn = b.rmsnorm("final_norm", x, norm, c.rms_eps)
    logits = b.linear("lm_head", hn, lm_head)
    return b.build(logits, b.sample("sample", logits))


def build_gpt2(
    config: GPT2Config, weights: dict[str, np.ndarray]
) -> tuple[Program, list[np.ndarray]]:
    c = config
    d, hd, h, f = c.hidden_size, c.head_dim, c.num_heads, c.inner
    b = ProgramBuilder(c.max_positions, c.vocab_size)
    wte = b.weight(
        "transformer.wte.weight", _need(weights, "transformer.wte.weight", (c.vocab_size, d))
    )
    wpe = b.weight(
        "transformer.wpe.weight", _need(weights, "transformer.wpe.weight", (c.max_positions, d))
    )
    layer_weights = []
    for i in range(c.num_layers):
        p = f"transformer.h.{i}."
        shapes = {
            "ln_1.weight": (d,),
            "ln_1.bias": (d,),
            "ln_2.weight": (d,),
            "ln_2.bias": (d,),
            "attn.c_attn.weight": (d, 3 * d),
            "attn.c_attn.bias": (3 * d,),
            "attn.c_proj.weight": (d, d),
            "attn.c_proj.bias": (d,),
            "mlp.c_fc.weight": (d, f),
            "mlp.c_fc.bias": (f,),
            "mlp.c_proj.weight": (f, d),
            "mlp.c_proj.bias": (d,),
        }
        layer_weights.append(
            {k: b.weight(p + k, _need(weights, p + k, s)) for k, s in shapes.items()}
        )
    lnf_w = b.weight("transformer.ln_f.weight", _need(weights, "transformer.ln_f.weight", (d,)))
    lnf_b = b.weight("transformer.ln_f.bias", _need(weights, "transformer.ln_f.bias", (d,)))

    x = b.map("embed", Fn.ADD, (d,), wte.read(1, token_stride=d), wpe.read(1, t_stride=d))
    for i, w in enumerate(layer_weights):
        b.layer = i
        hn = b.layernorm("ln_1", x, w["ln_1.weight"], w["ln_1.bias"], c.ln_eps)
        qkv = b.linear(
            "attn.qkv", hn, w["attn.c_attn.weight"], transposed=True, bias=w["attn.c_attn.bias"]
        )
        k_cache = b.cache("attn.k_cache", qkv, h, hd, offset=d)
        v_cache = b.cache("attn.v_cache", qkv, h, hd, offset=2 * d)
        # GPT-2 divides the scores by sqrt(head_dim) (a constant rounded once, here)
        o = b.attention("attn", qkv, k_cache, v_cache, h, h, hd, float(np.sqrt(hd)), Fn.DIV)
        o = b.linear(
            "attn.proj", o, w["attn.c_proj.weight"], transposed=True, bias=w["attn.c_proj.bias"]
        )
        x = b.map("attn.residual", Fn.ADD, (d,), x, o)
        hn = b.layernorm("ln_2", x, w["ln_2.weight"], w["ln_2.bias"], c.ln_eps)
        fc = b.linear("mlp.fc", hn, w["mlp.c_fc.weight"], transposed=True, bias=w["mlp.c_fc.bias"])
        act = b.map("mlp.gelu", Fn.GELU_TANH, (f,), fc)
        proj = b.linear(
            "mlp.proj", act, w["mlp.c_proj.weight"], transposed=True, bias=w["mlp.c_proj.bias"]
        )
        x = b.map("mlp.residual", Fn.ADD, (d,), x, proj)
    b.layer = -1
    hn = b.layernorm("ln_f", x, lnf_w, lnf_b, c.ln_eps)
    logits = b.linear("lm_head", hn, wte)
    return b.build(logits, b.sample("sample", logits))


__all__ = ["GPT2Config", "LlamaConfig", "build_gpt2", "build_llama", "const", "rope_tables"]
