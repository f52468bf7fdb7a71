"""HuggingFace Llama and Qwen3 interop: the key and config maps between `GPT` and `LlamaForCausalLM` /
`Qwen3ForCausalLM` (Qwen3 is Llama plus a per-head RMSNorm on q and k, our `qk_norm`).

A scalegpt model is Llama when it has rotary positions, learnable RMSNorm, a SwiGLU MLP and nothing Llama lacks
(no softcap, embedding norm, value embeddings or residual scalars). Both sides rotate halves of a head
("rotate_half", not interleaved pairs), so q and k need no permutation; the differences are only in how tensors are
cut:
    ours  attn.c_attn  rows [q; k; v]  <->  self_attn.q_proj, k_proj, v_proj   (GQA: k and v have n_kv_head heads)
    ours  mlp.c_fc     rows [gate; up] <->  mlp.gate_proj, up_proj
and our embedding and head carry padded vocabulary rows that HF does not.

`scalegpt.hf` reads and writes the directories; this module only maps configs and state dicts, both ways.
"""
from __future__ import annotations

import dataclasses
import re

import torch

from scalegpt.config import GPTConfig
from scalegpt.errors import ScalegptError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
TIED_KEY = "lm_head.weight"

# Our per-block names -> HF's, for the tensors that map one to one (weight and bias alike).
LAYER_RENAMES = {
    "ln_1": "input_layernorm",
    "ln_2": "post_attention_layernorm",
    "attn.c_proj": "self_attn.o_proj",
    "attn.q_norm": "self_attn.q_norm",
    "attn.k_norm": "self_attn.k_norm",
    "mlp.c_proj": "mlp.down_proj",
}
# Our fused per-block matrices -> the HF pieces, in row order.
LAYER_SPLITS = {
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
}
GLOBAL_RENAMES = {"transformer.wte": "model.embed_tokens", "transformer.ln_f": "model.norm", "lm_head": "lm_head"}
# Defaults of transformers' configs, for keys a config.json may leave out (None: computed from other keys).
FAMILY_DEFAULTS = {
    "llama": dict(num_key_value_heads=None, head_dim=None, max_position_embeddings=2048),
    "qwen3": dict(num_key_value_heads=32, head_dim=128, max_position_embeddings=32768),
}


def blockers(config: GPTConfig) -> list[str]:
    """The options of `config` that neither Llama nor Qwen3 has (empty: it exports as `family(config)`)."""
    why = []
    if config.pos_emb != "rope":
        why.append(f"pos_emb = '{config.pos_emb}' (Llama uses rope)")
    if config.norm != "rmsnorm":
        why.append(f"norm = '{config.norm}' (Llama uses rmsnorm)")
    if not config.norm_learnable:
        why.append("norm_learnable = false (Llama's norms have weights)")
    if config.mlp != "swiglu":
        why.append(f"mlp = '{config.mlp}' (Llama uses swiglu)")
    if config.bias and config.qk_norm:
        why.append("bias = true with qk_norm (Qwen3's MLP has no biases)")
    if config.logit_softcap > 0:
        why.append(f"logit_softcap = {config.logit_softcap}")
    for name in ("embed_norm", "value_embeds", "residual_scalars"):
        if getattr(config, name):
            why.append(f"{name} = true")
    return why


def family(config: GPTConfig) -> str:
    return "qwen3" if config.qk_norm else "llama"


# ---------------------------------------------------------------------------------------------------- HF -> scalegpt


def config_from_hf(hf: dict, source) -> GPTConfig:
    """GPTConfig from a Llama or Qwen3 config.json dict; whatever our model would compute differently is an error."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ScalegptError(f"{source}: model_type '{model_type}' is not Llama or Qwen3")
    defaults = FAMILY_DEFAULTS[model_type]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        _check_int(hf, key, None, source)
    n_head, n_embd = hf["num_attention_heads"], hf["hidden_size"]
    n_kv = _check_int(hf, "num_key_value_heads", defaults["num_key_value_heads"] or n_head, source)
    dim = _check_int(hf, "head_dim", defaults["head_dim"] or n_embd // n_head, source)
    block = _check_int(hf, "max_position_embeddings", defaults["max_position_embeddings"], source)
    if hf.get("hidden_act", "silu") != "silu":
        raise ScalegptError(f"{source}: hidden_act must be 'silu' (SwiGLU), got {hf['hidden_act']!r}")
    _check_plain_rope(hf, source)
    if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or ()):
        raise ScalegptError(f"{source}: sliding-window attention (use_sliding_window / layer_types) is not "
                            "supported; scalegpt attends to the full context")
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if model_type == "qwen3" and attn_bias:
        raise ScalegptError(f"{source}: attention_bias = true is not supported for qwen3 (scalegpt's `bias` puts "
                            "biases in the MLP too, which Qwen3 has not)")
    if attn_bias != mlp_bias:
        raise ScalegptError(f"{source}: attention_bias ({attn_bias}) and mlp_bias ({mlp_bias}) must be equal "
                            "(scalegpt has one `bias` switch for both)")
    eps = hf.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ScalegptError(f"{source}: rms_norm_eps must be a positive number, got {eps!r}")
    config = GPTConfig(
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=n_head, n_embd=n_embd,
        n_kv_head=0 if n_kv == n_head else n_kv, head_dim=0 if dim * n_head == n_embd else dim,
        block_size=block, dropout=0.0, bias=attn_bias, pos_emb="rope", rope_theta=float(_rope_theta(hf, source)),
        norm="rmsnorm", norm_learnable=True, norm_eps=float(eps), mlp="swiglu", mlp_hidden=hf["intermediate_size"],
        qk_norm=model_type == "qwen3", tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    # Our mlp_hidden = 0 means Llama's rule; keep it 0 where the rule gives HF's width, so round trips are exact.
    derived = dataclasses.replace(config, mlp_hidden=0)
    return derived if derived.mlp_width == config.mlp_hidden else config


def _check_int(hf: dict, key: str, default, source) -> int:
    value = hf.get(key)
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ScalegptError(f"{source}: '{key}' must be a positive integer, got {hf.get(key)!r}")
    return value


def _check_plain_rope(hf: dict, source) -> None:
    """Refuse every RoPE variant but the plain one: scaled (linear, dynamic, yarn, llama3...) or partial rotary."""
    for key in ("rope_scaling", "rope_parameters"):
        params = hf.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise ScalegptError(f"{source}: '{key}' must be an object or null, got {params!r}")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise ScalegptError(f"{source}: {key} with rope_type '{kind}' is not supported; scalegpt computes plain "
                                "RoPE only (null or rope_type 'default')")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise ScalegptError(f"{source}: {key}.partial_rotary_factor {params['partial_rotary_factor']} is not "
                                "supported; scalegpt rotates the whole head")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ScalegptError(f"{source}: partial_rotary_factor {hf['partial_rotary_factor']} is not supported; "
                            "scalegpt rotates the whole head")


def _rope_theta(hf: dict, source) -> float:
    # transformers >= 5 writes rope_parameters.rope_theta; older versions write a top-level rope_theta.
    params = hf.get("rope_parameters")
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    theta = theta if theta is not None else hf.get("rope_theta", 10000.0)
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 0:
        raise ScalegptError(f"{source}: rope_theta must be a positive number, got {theta!r}")
    return theta


def state_from_hf(hf_state: dict, config: GPTConfig, source) -> dict:
    """Our state dict from LlamaForCausalLM / Qwen3ForCausalLM tensors (or the bare model's, without `model.`)."""
    to_ours = {hf: ours for ours, hf in GLOBAL_RENAMES.items()}
    pieces: dict[tuple[str, str], dict[int, torch.Tensor]] = {}  # (our key, fused module) -> {piece index: tensor}
    state = {}
    for k, v in hf_state.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue  # a buffer of old transformers versions, recomputed from rope_theta
        if k == TIED_KEY and config.tie_embeddings:
            continue  # tied: the embedding is the one copy we keep
        name = k if k.startswith(("model.", "lm_head.")) else "model." + k
        v = v.float()
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if m is None:
            module, _, kind = name.rpartition(".")
            if module not in to_ours:
                raise ScalegptError(f"{source}: unexpected tensor '{k}' for a {family(config)} model")
            state[f"{to_ours[module]}.{kind}"] = v
            continue
        layer, module, kind = m.groups()
        ours = _layer_module_from_hf(module)
        if ours is None:
            raise ScalegptError(f"{source}: unexpected tensor '{k}' for a {family(config)} model")
        key = f"transformer.h.{layer}.{ours[0]}.{kind}"
        if ours[1] is None:
            state[key] = v
        else:
            pieces.setdefault((key, ours[0]), {})[ours[1]] = v
    for (name, fused), parts in pieces.items():
        count = len(LAYER_SPLITS[fused])
        if len(parts) != count:
            raise ScalegptError(f"{source}: tensors for {name} are incomplete ({len(parts)} of {count} pieces)")
        state[name] = torch.cat([parts[i] for i in range(count)])
    for key in ("transformer.wte.weight", TIED_KEY):
        table = state.get(key)
        if table is not None and config.padded_vocab_size > table.shape[0]:
            # Rows for padded ids: never scored nor sampled, so zeros are as good as anything.
            pad = table.new_zeros(config.padded_vocab_size - table.shape[0], table.shape[1])
            state[key] = torch.cat([table, pad])
    if config.tie_embeddings:
        state[TIED_KEY] = state.get("transformer.wte.weight")
    return state


def _layer_module_from_hf(module: str) -> tuple[str, int | None] | None:
    for ours, hf in LAYER_RENAMES.items():
        if module == hf:
            return ours, None
    for ours, hf_pieces in LAYER_SPLITS.items():
        if module in hf_pieces:
            return ours, hf_pieces.index(module)
    return None


# ---------------------------------------------------------------------------------------------------- scalegpt -> HF


def state_to_hf(state: dict, config: GPTConfig) -> dict:
    """HF tensors from our (clean) state dict: fused matrices split, padded vocabulary rows dropped, lm_head left
    out when tied (transformers ties it on load)."""
    q_rows, kv_rows = config.n_head * config.head_size, config.kv_heads * config.head_size
    out = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if k == TIED_KEY and config.tie_embeddings:
            continue
        if k in ("transformer.wte.weight", TIED_KEY):
            v = v[: config.vocab_size]
        m = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)", k)
        if m is None:
            module, _, kind = k.rpartition(".")
            if module not in GLOBAL_RENAMES:
                raise ScalegptError(f"parameter '{k}' has no place in a HuggingFace {family(config)} model")
            out[f"{GLOBAL_RENAMES[module]}.{kind}"] = v.contiguous()
            continue
        layer, module, kind = m.groups()
        prefix = f"model.layers.{layer}."
        if module in LAYER_RENAMES:
            out[f"{prefix}{LAYER_RENAMES[module]}.{kind}"] = v.contiguous()
        elif module == "attn.c_attn":
            for name, part in zip(LAYER_SPLITS[module], v.split([q_rows, kv_rows, kv_rows])):
                out[f"{prefix}{name}.{kind}"] = part.contiguous()
        elif module == "mlp.c_fc":
            for name, part in zip(LAYER_SPLITS[module], v.chunk(2)):
                out[f"{prefix}{name}.{kind}"] = part.contiguous()
        else:
            raise ScalegptError(f"parameter '{k}' has no place in a HuggingFace {family(config)} model")
    return out


def config_to_hf(config: GPTConfig, eot: int | None) -> dict:
    """config.json for LlamaForCausalLM or Qwen3ForCausalLM; eot: the end-of-text id (bos and eos), if known."""
    kind = family(config)
    theta = config.rope_theta
    hf = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": config.vocab_size,  # the real vocabulary: padding is our speed trick, not part of the model
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_width,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        # Both spellings: transformers >= 5 reads rope_parameters, older versions rope_theta.
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": config.bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }
    if kind == "llama":
        hf.update(mlp_bias=config.bias, pretraining_tp=1)
    else:
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layer,
                  layer_types=["full_attention"] * config.n_layer)
    return hf
