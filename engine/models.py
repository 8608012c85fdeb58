"""Model families, spelled as programs: Llama (RMSNorm, RoPE, SwiGLU, GQA) and GPT-2.

The Llama program also serves Mistral, Qwen2/2.5, Qwen3, Gemma 1/2/3 and Phi-3: their
differences are config fields that choose nodes and build-time constants (docs/models.md).

Each `build_*` takes a config and a dict of float32 weights named as in Hugging Face
checkpoints, and returns the program and its weights in program order. Constants that need
sin, cos or pow (the RoPE tables, attention scales) are computed here, once, and committed with
the weights or as bit patterns in the program.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from refute.engine.builder import ProgramBuilder, Ref, const
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
    # added with the Qwen families and RoPE scaling; committed only when not at their default
    # (config_dict), so the configs of models built before them hash as they did
    qkv_bias: bool = False  # q, k and v projections carry biases (Qwen2; Llama attention_bias)
    o_bias: bool = False  # the output projection carries a bias (Llama attention_bias)
    mlp_bias: bool = False  # gate, up and down projections carry biases (Llama mlp_bias)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3)
    rope_type: str = "default"  # default, linear, dynamic, llama3, yarn, longrope
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # the resolved parameters of rope_type
    # added with Gemma and Phi-3 (the same rule)
    norm_plus_one: bool = False  # RMSNorm gains are (1 + w), committed folded as fl32(1 + w)
    embed_scale: float = 0.0  # the embedding row times this binary32 constant (Gemma); 0: none
    mlp_act: str = "silu"  # the gate's activation: silu (SwiGLU) or gelu_tanh (GeGLU, Gemma)
    sandwich_norms: bool = False  # RMSNorm of the attention and MLP outputs too (Gemma 2, 3)
    attn_scale: float = 0.0  # the score scale; 0: head_dim^-1/2 (Gemma 2, 3: from the config)
    attn_softcap: float = 0.0  # scores -> cap * tanh(scores / cap) before the mask (Gemma 2)
    final_softcap: float = 0.0  # logits -> cap * tanh(logits / cap) (Gemma 2, 3)
    sliding_window: int = 0  # W: the layers in sliding_layers attend to keys t - W + 1 .. t
    sliding_layers: tuple[int, ...] = ()
    local_rope_theta: float = 0.0  # default-RoPE base of the sliding layers (Gemma 3); 0: none
    fused_qkv: bool = False  # one qkv_proj [(H + 2G)·hd, D], read at row offsets (Phi-3)
    fused_gate_up: bool = False  # one gate_up_proj [2F, D], gate rows first (Phi-3)
    # added with the mixtures of experts (the same rule)
    num_experts: int = 0  # E routed experts on each layer of moe_layers (Mixtral, Qwen-MoE)
    experts_per_token: int = 0  # k: the experts each position runs
    moe_intermediate_size: int = 0  # F of one expert
    norm_topk_prob: bool = False  # the k selected probabilities divided by their sum
    shared_expert_size: int = 0  # F of Qwen2-MoE's shared expert, sigmoid-gated (0: none)
    moe_layers: tuple[int, ...] = ()
    moe_names: str = ""  # tensor names: "mixtral" (block_sparse_moe.experts.e.w1/w3/w2), "qwen"


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


_ADDED_FIELDS = (
    "qkv_bias", "o_bias", "mlp_bias", "qk_norm", "rope_type", "rope_scaling",
    "norm_plus_one", "embed_scale", "mlp_act", "sandwich_norms", "attn_scale", "attn_softcap",
    "final_softcap", "sliding_window", "sliding_layers", "local_rope_theta", "fused_qkv",
    "fused_gate_up", "num_experts", "experts_per_token", "moe_intermediate_size",
    "norm_topk_prob", "shared_expert_size", "moe_layers", "moe_names",
)  # fmt: skip
MLP_ACTS = {"silu": Fn.SILU, "gelu_tanh": Fn.GELU_TANH}


def config_dict(config: Config) -> dict:
    """The committed form of a config (the model root hashes its canonical JSON). Fields added
    after the first version appear only when they differ from their default, so a model that
    does not use them keeps the root it had before they existed."""
    out = asdict(config)
    for f in fields(config):
        if f.name in _ADDED_FIELDS and out[f.name] == f.default:
            del out[f.name]
    return out


ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


def rope_inv_freq(config: LlamaConfig) -> tuple[np.ndarray, float]:
    """The inverse frequencies [head_dim / 2] (float64) and the attention factor that multiplies
    cos and sin, for each RoPE type as Hugging Face's `modeling_rope_utils` defines it, from the
    parameters resolved at load (engine.checkpoint). `dynamic` is the default RoPE: it rescales
    only beyond the checkpoint's max_position_embeddings, which a program never reaches."""
    hd, base = config.head_dim, float(config.rope_theta)
    p = dict(config.rope_scaling)
    exponents = np.arange(0, hd, 2, dtype=np.float64) / hd
    pos_freqs = base**exponents
    inv_freq = 1.0 / pos_freqs
    kind = config.rope_type
    if kind in ("default", "dynamic"):
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / p["factor"], 1.0
    if kind == "llama3":
        factor, old = p["factor"], p["original_max_position_embeddings"]
        low_wavelen = old / p["low_freq_factor"]
        high_wavelen = old / p["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - p["low_freq_factor"]) / (
            p["high_freq_factor"] - p["low_freq_factor"]
        )
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        factor, old = p["factor"], p["original_max_position_embeddings"]

        def correction_dim(rotations: float) -> float:
            return (hd * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(p["beta_fast"]), correction_dim(p["beta_slow"])
        if p["truncate"]:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, hd - 1)
        if low == high:
            high += 0.001  # as transformers: no division by zero
        ramp = np.clip((np.arange(hd // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        interpolated = 1.0 / (factor * pos_freqs)
        blended = interpolated * (1 - extrapolation) + inv_freq * extrapolation
        return blended, p["attention_factor"]
    if kind == "longrope":
        short = np.asarray(p["short_factor"], dtype=np.float64)
        return 1.0 / (short * pos_freqs), p["attention_factor"]
    raise ModelLoadError(
        f"RoPE type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
    )


def rope_tables(config: LlamaConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and signed sin tables [max_positions, head_dim]: angle(t, i) = t * inv_freq[i], each
    half of a head sharing the same angles, both tables times the RoPE type's attention factor.
    The sin table carries rotate_half's sign (-sin on the first half). Every step is float64
    (numpy), each entry rounded once to binary32 at the end; sized by the program's
    max_positions (the context it was built for), not by the checkpoint's."""
    inv_freq, factor = rope_inv_freq(config)
    angles = np.outer(np.arange(config.max_positions, dtype=np.float64), inv_freq)
    cos = (np.cos(np.concatenate([angles, angles], axis=1)) * factor).astype(np.float32)
    sin = np.sin(angles) * factor
    sin_signed = np.concatenate([-sin, sin], axis=1).astype(np.float32)
    return cos, sin_signed


def local_rope_tables(config: LlamaConfig) -> tuple[np.ndarray, np.ndarray]:
    """The tables of the sliding layers of Gemma 3: default RoPE with base local_rope_theta."""
    local = replace(
        config, rope_theta=config.local_rope_theta, rope_type="default", rope_scaling=()
    )
    return rope_tables(local)


def window_mask(max_positions: int, window: int) -> np.ndarray:
    """mask[d] for d = t - j, the distance from query t back to key j: +0 for d < W (keys
    t - W + 1 .. t), -inf beyond. Added to the scores it makes exp give exactly +0 there, so
    windowed attention is full attention's nodes with one MAP(ADD) (docs/ir.md)."""
    mask = np.zeros(max_positions, np.float32)
    mask[window:] = -np.inf
    return mask


def _need(weights: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in weights:
        raise ModelLoadError(f"checkpoint has no tensor {name!r}")
    w = weights[name]
    if tuple(w.shape) != shape:
        raise ModelLoadError(f"tensor {name!r} has shape {tuple(w.shape)}, expected {shape}")
    return w


def _plus_one(w: np.ndarray) -> np.ndarray:
    """Gemma's RMSNorm gain: transformers computes `(1.0 + w.float())` in binary32, one rounded
    add per element; folded here, once, it is the same numbers (docs/models.md)."""
    return (np.float32(1.0) + np.asarray(w, np.float32)).astype(np.float32)


MOE_NAMES = {  # (block prefix, router, (gate, up, down) of an expert) as checkpoints name them
    "mixtral": ("block_sparse_moe.", "gate", ("w1", "w3", "w2")),
    "qwen": ("mlp.", "gate", ("gate_proj", "up_proj", "down_proj")),
}


def topk_mask(num_experts: int) -> np.ndarray:
    """mask[E - 1 - pick + e]: -inf where e is the pick, +0 elsewhere ([2E - 1]). Added to the
    scores, it removes an earlier pick from the next ARGMAX pass (builder.top_k)."""
    mask = np.zeros(2 * num_experts - 1, np.float32)
    mask[num_experts - 1] = -np.inf
    return mask


def _stacked(weights: Mapping[str, np.ndarray], names: list[str], shape: tuple[int, ...]):
    """The experts' tensors stacked [E, *shape], at their stored width when they share one
    (the committed tensor that an expert index selects rows of; a copy, made once at load)."""
    parts = [_need(weights, n, shape) for n in names]
    if len({p.dtype for p in parts}) > 1:
        parts = [np.asarray(p, np.float32) for p in parts]
    return np.stack(parts)


def _moe_weights(
    b: ProgramBuilder, c: LlamaConfig, weights: Mapping[str, np.ndarray], layer: int
) -> dict[str, Ref]:
    """A MoE layer's router, stacked experts (committed as `<block>experts.<gate|up|down>`)
    and Qwen2-MoE's shared expert and its gate."""
    block, router, (g, u, dn) = MOE_NAMES[c.moe_names]
    p = f"model.layers.{layer}.{block}"
    d, f, e = c.hidden_size, c.moe_intermediate_size, c.num_experts
    out = {
        "router": b.weight(p + router + ".weight", _need(weights, p + router + ".weight", (e, d)))
    }
    for part, name, shape in (("gate", g, (f, d)), ("up", u, (f, d)), ("down", dn, (d, f))):
        names = [f"{p}experts.{i}.{name}.weight" for i in range(e)]
        out[part] = b.weight(f"{p}experts.{name}.weight", _stacked(weights, names, shape))
    if c.shared_expert_size:
        s = c.shared_expert_size
        for part, shape in (("gate_proj", (s, d)), ("up_proj", (s, d)), ("down_proj", (d, s))):
            name = f"{p}shared_expert.{part}.weight"
            out["shared." + part] = b.weight(name, _need(weights, name, shape))
        name = f"{p}shared_expert_gate.weight"
        out["shared.gate"] = b.weight(name, _need(weights, name, (1, d)))
    return out


def _layer_shapes(c: LlamaConfig, moe: bool = False) -> dict[str, tuple[int, ...]]:
    """The tensors of one decoder layer, by their Hugging Face names within the layer."""
    d, hd, h, g, f = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
    }
    if c.sandwich_norms:
        shapes |= {
            "pre_feedforward_layernorm.weight": (d,),
            "post_feedforward_layernorm.weight": (d,),
        }
    if c.fused_qkv:
        shapes["self_attn.qkv_proj.weight"] = ((h + 2 * g) * hd, d)
    else:
        shapes |= {
            "self_attn.q_proj.weight": (h * hd, d),
            "self_attn.k_proj.weight": (g * hd, d),
            "self_attn.v_proj.weight": (g * hd, d),
        }
    shapes["self_attn.o_proj.weight"] = (d, h * hd)
    if moe:  # the experts are read by _moe_weights
        pass
    elif c.fused_gate_up:
        shapes["mlp.gate_up_proj.weight"] = (2 * f, d)
        shapes["mlp.down_proj.weight"] = (d, f)
    else:
        shapes |= {"mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d)}
        shapes["mlp.down_proj.weight"] = (d, f)
    if c.qkv_bias:
        shapes |= {
            "self_attn.q_proj.bias": (h * hd,),
            "self_attn.k_proj.bias": (g * hd,),
            "self_attn.v_proj.bias": (g * hd,),
        }
    if c.o_bias:
        shapes["self_attn.o_proj.bias"] = (d,)
    if c.mlp_bias:
        shapes |= {
            "mlp.gate_proj.bias": (f,),
            "mlp.up_proj.bias": (f,),
            "mlp.down_proj.bias": (d,),
        }
    if c.qk_norm:
        shapes |= {"self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,)}
    return shapes


def build_llama(
    config: LlamaConfig, weights: Mapping[str, np.ndarray]
) -> tuple[Program, list[np.ndarray]]:
    c = config
    d, hd, h, g, f = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.intermediate_size
    if h % g or hd % 2:
        raise ModelLoadError("heads must be a multiple of kv heads, head_dim even")
    if c.fused_qkv and (c.qk_norm or c.qkv_bias):
        raise ModelLoadError("a fused qkv projection with q/k norms or biases is not supported")
    if c.mlp_act not in MLP_ACTS:
        raise ModelLoadError(f"unknown MLP activation {c.mlp_act!r} (known: {sorted(MLP_ACTS)})")
    b = ProgramBuilder(c.max_positions, c.vocab_size)

    def norm_gain(name: str, shape: tuple[int, ...]) -> Ref:
        w = _need(weights, name, shape)
        if c.norm_plus_one:  # committed under its own name: it is not the checkpoint's tensor
            return b.weight(name + "+1", _plus_one(w))
        return b.weight(name, w)

    embed = b.weight(
        "model.embed_tokens.weight", _need(weights, "model.embed_tokens.weight", (c.vocab_size, d))
    )
    cos, sin_signed = rope_tables(c)
    cos_t, sin_t = b.weight("rope.cos", cos), b.weight("rope.sin_signed", sin_signed)
    windowed = set(c.sliding_layers) if c.sliding_window else set()
    local_tables = (cos_t, sin_t)
    if windowed and c.local_rope_theta:
        local_cos, local_sin = local_rope_tables(c)
        local_tables = (
            b.weight("rope_local.cos", local_cos),
            b.weight("rope_local.sin_signed", local_sin),
        )
    mask = None
    if windowed:
        mask = b.weight("attn.window_mask", window_mask(c.max_positions, c.sliding_window))
    moe_set = set(c.moe_layers) if c.num_experts else set()
    if moe_set and c.moe_names not in MOE_NAMES:
        raise ModelLoadError(f"unknown expert naming {c.moe_names!r} (known: {sorted(MOE_NAMES)})")
    if moe_set and not 1 <= c.experts_per_token <= c.num_experts:
        raise ModelLoadError(
            f"{c.experts_per_token} experts per token of {c.num_experts}: need 1 <= k <= E"
        )
    topk = b.weight("moe.topk_mask", topk_mask(c.num_experts)) if moe_set else None
    layer_weights = []
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        layer_weights.append(
            {
                k: norm_gain(p + k, s)
                if k.endswith("norm.weight")
                else b.weight(p + k, _need(weights, p + k, s))
                for k, s in _layer_shapes(c, i in moe_set).items()
            }
        )
        if i in moe_set:
            layer_weights[-1] |= _moe_weights(b, c, weights, i)
    norm = norm_gain("model.norm.weight", (d,))
    if c.tie_embeddings:
        lm_head = embed
    else:
        lm_head = b.weight("lm_head.weight", _need(weights, "lm_head.weight", (c.vocab_size, d)))

    if c.embed_scale:  # Gemma: the row times fl32(sqrt(hidden)), one rounded product
        x = b.map(
            "embed",
            Fn.MUL,
            (d,),
            embed.read(1, token_stride=d),
            const(c.embed_scale).broadcast((d,)),
        )
    else:
        x = b.embedding("embed", embed)
    scale = c.attn_scale or float(hd) ** -0.5
    act_fn = MLP_ACTS[c.mlp_act]
    for i, w in enumerate(layer_weights):
        b.layer = i
        hn = b.rmsnorm("input_norm", x, w["input_layernorm.weight"], c.rms_eps)
        if c.fused_qkv:  # q, k and v are rows of one product, read at offsets (no copy)
            qkv = b.linear("attn.qkv", hn, w["self_attn.qkv_proj.weight"])
            q, k, v = qkv, qkv, qkv
            q_off, k_off, v_off = 0, h * hd, (h + g) * hd
        else:
            q = b.linear(
                "attn.q", hn, w["self_attn.q_proj.weight"], bias=w.get("self_attn.q_proj.bias")
            )
            k = b.linear(
                "attn.k", hn, w["self_attn.k_proj.weight"], bias=w.get("self_attn.k_proj.bias")
            )
            v = b.linear(
                "attn.v", hn, w["self_attn.v_proj.weight"], bias=w.get("self_attn.v_proj.bias")
            )
            q_off = k_off = v_off = 0
        if c.qk_norm:
            q = b.head_rmsnorm("attn.q_norm", q, h, hd, w["self_attn.q_norm.weight"], c.rms_eps)
            k = b.head_rmsnorm("attn.k_norm", k, g, hd, w["self_attn.k_norm.weight"], c.rms_eps)
        cos_i, sin_i = local_tables if i in windowed else (cos_t, sin_t)
        qr = b.rope("attn.q_rope", q, h, hd, cos_i, sin_i, offset=q_off)
        kr = b.rope("attn.k_rope", k, g, hd, cos_i, sin_i, offset=k_off)
        k_cache = b.cache("attn.k_cache", kr, g, hd)
        v_cache = b.cache("attn.v_cache", v, g, hd, offset=v_off)
        o = b.attention(
            "attn", qr, k_cache, v_cache, h, g, hd, scale, Fn.MUL,
            softcap=c.attn_softcap, mask=mask if i in windowed else None,
        )  # fmt: skip
        o = b.linear("attn.o", o, w["self_attn.o_proj.weight"], bias=w.get("self_attn.o_proj.bias"))
        if c.sandwich_norms:
            o = b.rmsnorm("attn.post_norm", o, w["post_attention_layernorm.weight"], c.rms_eps)
            pre_mlp = w["pre_feedforward_layernorm.weight"]
        else:
            pre_mlp = w["post_attention_layernorm.weight"]
        x = b.map("attn.residual", Fn.ADD, (d,), x, o)
        hn = b.rmsnorm("post_norm", x, pre_mlp, c.rms_eps)
        if i in moe_set:
            down = b.moe(
                "moe", hn, w["router"], (w["gate"], w["up"], w["down"]), c.experts_per_token,
                c.norm_topk_prob, ("expert." + c.mlp_act, act_fn), topk,
            )  # fmt: skip
            if c.shared_expert_size:  # Qwen2-MoE: + sigmoid(gate x) * shared_expert(x)
                sg = b.linear("moe.shared.gate", hn, w["shared.gate"])
                sgate = b.linear("moe.shared.gate_proj", hn, w["shared.gate_proj"])
                sup = b.linear("moe.shared.up_proj", hn, w["shared.up_proj"])
                sact = b.map("moe.shared." + c.mlp_act, act_fn, sgate.shape, sgate)
                sh = b.map("moe.shared.gated", Fn.MUL, sgate.shape, sact, sup)
                sdown = b.linear("moe.shared.down", sh, w["shared.down_proj"])
                sig = b.map("moe.shared.sigmoid", Fn.SIGMOID, (1,), sg)
                shared = b.map("moe.shared.weighted", Fn.MUL, (d,), sig, sdown)
                down = b.map("moe.shared.add", Fn.ADD, (d,), down, shared)
        elif c.fused_gate_up:  # gate rows [0, F), up rows [F, 2F) of one product
            gate_up = b.linear("mlp.gate_up", hn, w["mlp.gate_up_proj.weight"])
            act = b.map("mlp." + c.mlp_act, act_fn, (f,), gate_up.read(1))
            prod = b.map("mlp.gated", Fn.MUL, (f,), act, gate_up.read(1, offset=f))
        else:
            gate = b.linear(
                "mlp.gate", hn, w["mlp.gate_proj.weight"], bias=w.get("mlp.gate_proj.bias")
            )
            up = b.linear("mlp.up", hn, w["mlp.up_proj.weight"], bias=w.get("mlp.up_proj.bias"))
            act = b.map("mlp." + c.mlp_act, act_fn, (f,), gate)
            prod = b.map("mlp.gated", Fn.MUL, (f,), act, up)
        if i not in moe_set:
            down = b.linear(
                "mlp.down", prod, w["mlp.down_proj.weight"], bias=w.get("mlp.down_proj.bias")
            )
        if c.sandwich_norms:
            down = b.rmsnorm(
                "mlp.post_norm", down, w["post_feedforward_layernorm.weight"], c.rms_eps
            )
        x = b.map("mlp.residual", Fn.ADD, (d,), x, down)
    b.layer = -1
    hn = b.rmsnorm("final_norm", x, norm, c.rms_eps)
    logits = b.linear("lm_head", hn, lm_head)
    if c.final_softcap:
        logits = b.softcap("final_softcap", logits, c.final_softcap)
    return b.build(logits, b.sample("sample", logits))


def _gpt2_names(weights: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """GPT-2 checkpoints name tensors `transformer.h.0...` (GPT2LMHeadModel) or `h.0...` (the
    original OpenAI checkpoints, GPT2Model): read either, commit the prefixed names, so both
    spellings of one checkpoint have one model root."""
    if "transformer.wte.weight" in weights or "wte.weight" not in weights:
        return weights
    return _Prefixed(weights, "transformer.")


class _Prefixed(Mapping):
    """`weights` seen with `prefix` added to every name (no copy)."""

    def __init__(self, weights: Mapping[str, np.ndarray], prefix: str) -> None:
        self.weights, self.prefix = weights, prefix

    def __getitem__(self, name: str) -> np.ndarray:
        if not name.startswith(self.prefix):
            raise KeyError(name)
        return self.weights[name[len(self.prefix) :]]

    def __iter__(self) -> Iterator[str]:
        return (self.prefix + name for name in self.weights)

    def __len__(self) -> int:
        return len(self.weights)


def _need_rows(weights: Mapping[str, np.ndarray], name: str, rows: int, width: int) -> np.ndarray:
    """The first `rows` rows of a [N >= rows, width] table (GPT-2's positions: a program built
    for a shorter context than the checkpoint's commits only the rows it can read)."""
    if name not in weights:
        raise ModelLoadError(f"checkpoint has no tensor {name!r}")
    w = weights[name]
    if w.ndim != 2 or w.shape[1] != width or w.shape[0] < rows:
        raise ModelLoadError(
            f"tensor {name!r} has shape {tuple(w.shape)}, expected ({rows} or more, {width})"
        )
    return w[:rows]


def build_gpt2(
    config: GPT2Config, weights: Mapping[str, np.ndarray]
) -> tuple[Program, list[np.ndarray]]:
    c = config
    d, hd, h, f = c.hidden_size, c.head_dim, c.num_heads, c.inner
    b = ProgramBuilder(c.max_positions, c.vocab_size)
    weights = _gpt2_names(weights)
    wte = b.weight(
        "transformer.wte.weight", _need(weights, "transformer.wte.weight", (c.vocab_size, d))
    )
    wpe_table = _need_rows(weights, "transformer.wpe.weight", c.max_positions, d)
    wpe = b.weight("transformer.wpe.weight", wpe_table)
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
