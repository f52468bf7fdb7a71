"""The GPT architecture: a decoder-only Transformer, GPT-2 by default, with the switches modern recipes use.

    tokens -> wte (+ wpe) [-> embed_norm] -> [Block] x n_layer -> ln_f -> lm_head [-> softcap] -> logits
    Block(x) = x + attn(ln_1(x));  x + mlp(ln_2(x))        (pre-norm residual stream)
    attn:  q, k, v = c_attn(x);  [q_norm, k_norm];  [RoPE on q, k];  [v += gate * value_embedding(token)];
           softmax(q k^T / sqrt(head_dim)) v over n_head query heads sharing n_kv_head key/value heads (GQA)
    with residual_scalars, before block i:  x = resid_lambdas[i] * x + x0_lambdas[i] * x0   (x0 = the embedding)

Every switch is a field of GPTConfig ([model]); the defaults build GPT-2 exactly. Parameter names follow
HuggingFace's GPT2LMHeadModel (`transformer.wte`, `transformer.h.0.attn.c_attn`, ...) so that importing or
exporting weights is a key map (see `scalegpt.hf`). Beyond GPT-2's: `transformer.h.{i}.attn.q_norm/k_norm`,
`transformer.embed_norm`, `transformer.value_embeds.{i}` with `transformer.h.{i}.attn.ve_gate` (layers with value
embeddings only), `transformer.resid_lambdas` and `transformer.x0_lambdas` (n_layer,), and an untied `lm_head`.
The model knows nothing of training, parallelism or checkpoints: those are applied from outside.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from scalegpt.config import GPTConfig, preset_config  # noqa: F401  (the model's config lives with the settings)
from scalegpt.errors import ScalegptError
from scalegpt.fused import mix, relu_squared, rms_norm, rotate
from scalegpt.loss import linear_cross_entropy, softcap


def attention(q, k, v, mask: torch.Tensor | None, is_causal: bool, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim) + mask) v for every head, by F.scaled_dot_product_attention. k and v may have
    fewer heads than q (GQA): each serves n_head / n_kv_head consecutive query heads.

    On a CPU, bf16 heads are attended in fp32: torch's CPU flash-attention backward is ~5x slower in bf16 than in fp32
    (4.6 vs 0.84 ms a layer at shakespeare-char's shapes), which cost more than bf16 saved in all the matmuls."""
    gqa = k.size(1) != q.size(1)
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal,
                                               dropout_p=dropout_p, enable_gqa=gqa)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                          enable_gqa=gqa)


class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm, computed in fp32 and cast back (as HF Llama does): under bf16 autocast the mean square keeps
    full precision, and torch's fused kernel runs (it refuses a bf16 input with an fp32 weight). On a CPU,
    scalegpt.fused's version with a hand-written backward (torch's is five differentiated ops there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        return rms_norm(x.float(), weight, self.eps).to(x.dtype)


def Norm(config: GPTConfig) -> nn.Module:
    """The model's normalisation layer over the residual stream's n_embd features."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps, elementwise_affine=config.norm_learnable)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, elementwise_affine=config.norm_learnable,
                        bias=config.bias and config.norm_learnable)


class Rotary(nn.Module):
    """Rotary position embedding (RoFormer): rotates each (i, i + head_dim/2) pair of q's and k's features by
    position * freq_i, so q.k depends only on the distance between positions. HF Llama's "rotate_half" layout.

    The angles are computed once per forward pass (GPT.hidden_states hands them to every layer) rather than
    stored: no buffer to keep in sync across meta-device builds, checkpoints and FSDP."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def cos_sin(self, start: int | torch.Tensor, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The angles at positions start .. start+T-1 as (cos, sin) of head_dim features (fp32), laid out so that
        rotating is x * cos + swap_halves(x) * sin: cos = [cos, cos], sin = [-sin, sin] over the two halves.
        (T, head_dim) for an int start, (B, 1, T, head_dim) for a (B,) tensor of per-row starts."""
        inv_freq = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim)
        angles = positions(start, T, device).float()[..., None] * inv_freq  # (T, head_dim/2) or (B, T, head_dim/2)
        if angles.dim() == 3:
            angles = angles[:, None]
        cos, sin = angles.cos(), angles.sin()
        return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor = 0,
                cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, heads, T, head_dim) at positions start .. start+T-1 (cos_sin: self.cos_sin of them), rotated:
        each pair (x_i, x_{i + head_dim/2}) by its angle."""
        cos, sin = cos_sin if cos_sin is not None else self.cos_sin(start, x.size(2), x.device)
        return rotate(x, cos.to(x.dtype), sin.to(x.dtype))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, value_embeds: bool = False):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_size
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.split = (q_dim, kv_dim, kv_dim)
        self.c_attn = nn.Linear(config.n_embd, q_dim + 2 * kv_dim, bias=config.bias)  # q, k, v in one matmul
        self.c_attn.row_parts = self.split  # three matrices to Muon (scalegpt.muon.row_parts)
        self.c_proj = nn.Linear(q_dim, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True  # scaled init, see GPT._init_weights
        self.q_norm = self.k_norm = None
        if config.qk_norm:  # per head, over head_dim
            self.q_norm = RMSNorm(self.head_dim, eps=config.norm_eps, elementwise_affine=config.norm_learnable)
            self.k_norm = RMSNorm(self.head_dim, eps=config.norm_eps, elementwise_affine=config.norm_learnable)
        self.rotary = Rotary(self.head_dim, config.rope_theta) if config.pos_emb == "rope" else None
        if value_embeds:  # how much of the token's value embedding each kv head takes, from the input: 2*sigmoid
            self.ve_gate = nn.Linear(config.n_embd, self.n_kv_head, bias=False)
            self.ve_gate.zero_init = True  # gate 1 at the start
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None = None, cache: "KVCache | None" = None,
                layer: int = 0, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        # q's and k's heads side by side, (B, T, n_head + n_kv_head, head_dim): one norm and one rotation for both
        qk, v = self.c_attn(x).split((self.split[0] + self.split[1], self.split[2]), dim=2)
        qk, v = qk.view(B, T, -1, self.head_dim), v.view(B, T, -1, self.head_dim)
        if self.q_norm is not None:
            if self.q_norm.weight is None:  # then q_norm and k_norm are the same function
                qk = self.q_norm(qk)
            else:
                qk = torch.cat((self.q_norm(qk[:, :, :self.n_head]), self.k_norm(qk[:, :, self.n_head:])), dim=2)
        if ve is not None:
            v = v + 2 * torch.sigmoid(self.ve_gate(x)).unsqueeze(-1) * ve.view_as(v)
        qk, v = qk.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        start = cache.length if cache is not None else 0
        if self.rotary is not None:
            qk = self.rotary(qk, start, rope)
        q, k = qk[:, :self.n_head], qk[:, self.n_head:]
        if cache is None:
            mask, causal = None, True
        else:
            mask, causal = cache.mask(T, x.device), False
            k, v = cache.update(layer, k, v)
        y = attention(q, k, v, mask, causal, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, -1)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """c_proj(act(c_fc(x))); for swiglu c_fc makes [gate; up] and act is silu(gate) * up."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind, hidden = config.mlp, config.mlp_width
        self.c_fc = nn.Linear(config.n_embd, (2 if self.kind == "swiglu" else 1) * hidden, bias=config.bias)
        self.c_fc.row_parts = (hidden,) * (2 if self.kind == "swiglu" else 1)  # [gate; up]: two matrices to Muon
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = relu_squared(h)
        else:
            h = F.gelu(h, approximate="tanh" if self.kind == "gelu_tanh" else "none")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, value_embeds: bool = False):
        super().__init__()
        self.ln_1 = Norm(config)
        self.attn = CausalSelfAttention(config, value_embeds)
        self.ln_2 = Norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None = None, cache: "KVCache | None" = None,
                layer: int = 0, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), ve, cache, layer, rope)
        return x + self.mlp(self.ln_2(x))


def has_value_embeds(config: GPTConfig, layer: int) -> bool:
    """Value embeddings go to every other layer, the last one always included (nanochat's choice)."""
    return config.value_embeds and layer % 2 == (config.n_layer - 1) % 2


def positions(start: int | torch.Tensor, T: int, device) -> torch.Tensor:
    """Positions start .. start+T-1: (T,) for an int start, (B, T) for a (B,) tensor of per-row starts."""
    steps = torch.arange(T, device=device)
    return steps + start if isinstance(start, int) else start[:, None] + steps


class KVCache:
    """Keys and values of the tokens seen so far, one preallocated buffer per layer, for incremental decoding.
    Keys are stored after RoPE; only the n_kv_head heads are stored (GQA shares them at attention time).

    `length` is an int when every row holds as many tokens, or a (B,) tensor of per-row lengths: continuous batching
    (scalegpt.serve) decodes sequences of different lengths together, each row at its own positions, its keys past
    its own length masked out."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype=torch.float32, max_len: int | None = None):
        self.max_len = max_len or config.block_size
        shape = (config.n_layer, batch_size, config.kv_heads, self.max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # tokens cached; advanced by GPT.forward after all layers have written

    def end(self, T: int) -> int:
        """The cache's filled width once T more tokens are appended (the longest row's)."""
        end = (self.length if isinstance(self.length, int) else int(self.length.max())) + T
        if end > self.max_len:
            raise ScalegptError(f"KV cache holds {self.max_len} positions; cannot append up to {end}")
        return end

    def mask(self, T: int, device) -> torch.Tensor | None:
        """Which cached keys each of T new queries sees: a query at position p sees keys 0..p. None = all of them."""
        if isinstance(self.length, int):
            return None if T == 1 else torch.ones(T, self.length + T, dtype=torch.bool, device=device).tril(self.length)
        keys = torch.arange(self.end(T), device=device)
        return (keys <= positions(self.length, T, device)[..., None]).unsqueeze(1)  # (B, 1, T, end)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.end(k.size(2))
        if isinstance(self.length, int):
            self.k[layer, :, :, self.length:end] = k
            self.v[layer, :, :, self.length:end] = v
        else:
            rows = torch.arange(k.size(0), device=k.device)[:, None]
            at = positions(self.length, k.size(2), k.device)  # (B, T)
            self.k[layer][rows, :, at] = k.transpose(1, 2)  # indexed (B, T, heads, head_dim)
            self.v[layer][rows, :, at] = v.transpose(1, 2)
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def rows(self, start: int, stop: int, length: int | torch.Tensor = 0) -> "KVCache":
        """A cache over rows start..stop-1 of this one that writes into the same buffers (a scheduler prefills one
        row, then decodes the active rows together)."""
        view = copy.copy(self)
        view.k, view.v, view.length = self.k[:, start:stop], self.v[:, start:stop], length
        return view


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ScalegptError("model.vocab_size must be >= 1 to build a model (0 means 'the tokenizer's' only in a "
                                "training config)")
        self.config = config
        L, V, C = config.n_layer, config.padded_vocab_size, config.n_embd
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(V, C)))
        if config.pos_emb == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, C)
        if config.embed_norm:
            self.transformer.embed_norm = Norm(config)
        self.transformer.drop = nn.Dropout(config.dropout)
        self.transformer.h = nn.ModuleList(Block(config, has_value_embeds(config, i)) for i in range(L))
        self.transformer.ln_f = Norm(config)
        if config.value_embeds:
            kv_dim = config.kv_heads * config.head_size
            self.transformer.value_embeds = nn.ModuleDict(
                {str(i): nn.Embedding(V, kv_dim) for i in range(L) if has_value_embeds(config, i)})
        if config.residual_scalars:  # start as the plain residual stream: x = 1 * x + 0 * x0
            self.transformer.resid_lambdas = nn.Parameter(torch.ones(L))
            self.transformer.x0_lambdas = nn.Parameter(torch.zeros(L))
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.zero_init = config.zero_init and not config.tie_embeddings
        self.tie_weights()
        self.apply(self._init_weights)

    def tie_weights(self) -> None:
        """With tie_embeddings, one matrix embeds and un-embeds (to be redone after `to_empty`, which unties)."""
        if self.config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight

    def _init_weights(self, module: nn.Module):
        # GPT-2: N(0, 0.02) everywhere; the projections that write into the residual stream are scaled by
        # 1/sqrt(2 * n_layer) because each block adds two of them, so the stream's variance stays bounded with depth.
        # zero_init starts them at 0 instead: every block begins as the identity (modded-nanogpt, nanochat).
        if isinstance(module, nn.Linear):
            residual = getattr(module, "residual_projection", False)
            std = 0.02 * (2 * self.config.n_layer) ** -0.5 if residual else 0.02
            if getattr(module, "zero_init", False) or (residual and self.config.zero_init):
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> (B, T, n_embd) outputs of the final norm, the input of lm_head.

        With a KVCache, idx holds only the new tokens; their positions continue after the cached ones."""
        B, T = idx.shape
        tf, c = self.transformer, self.config
        start = cache.length if cache is not None else 0
        end = cache.end(T) if cache is not None else T
        if end > self.config.block_size:
            raise ScalegptError(f"sequence of {end} tokens exceeds the model's block_size {self.config.block_size}")
        x = tf.wte(idx)
        if c.pos_emb == "learned":
            x = x + tf.wpe(positions(start, T, idx.device))
        if c.embed_norm:
            x = tf.embed_norm(x)
        x = x0 = tf.drop(x)
        rope = tf.h[0].attn.rotary.cos_sin(start, T, idx.device) if c.pos_emb == "rope" else None  # for all layers
        for i, block in enumerate(tf.h):
            if c.residual_scalars:
                x = mix(x, x0, tf.resid_lambdas[i], tf.x0_lambdas[i])
            ve = tf.value_embeds[str(i)](idx) if has_value_embeds(c, i) else None
            x = block(x, ve, cache, i, rope)
        if cache is not None:
            cache.length = cache.length + T  # not in place: a per-row tensor passed in stays as it was
        return tf.ln_f(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states -> logits over the real vocabulary (padded ids are never sampled), softcapped."""
        return softcap(self.lm_head(h)[..., : self.config.vocab_size], self.config.logit_softcap)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """idx (B, T) token ids -> logits (B, T, vocab_size); with targets (B, T) -> the mean cross-entropy over
        targets != -1 (a scalar).

        With targets the logits are never materialised: lm_head, softcap and the loss are fused (`scalegpt.loss`)."""
        h = self.hidden_states(idx, cache)
        if targets is not None:
            return linear_cross_entropy(h, self.lm_head.weight, targets, self.config.vocab_size,
                                        self.config.logit_softcap)
        return self.head(h)

    def _lookup_tables(self) -> list[torch.Tensor]:
        """Embedding tables that are only indexed, never multiplied: the position table, value embeddings, and wte
        when the head is untied (tied, it is also lm_head's matmul)."""
        tf = self.transformer
        tables = [tf.wpe.weight] if self.config.pos_emb == "learned" else []
        tables += [e.weight for e in tf.value_embeds.values()] if self.config.value_embeds else []
        return tables + ([] if self.config.tie_embeddings else [tf.wte.weight])

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied lm_head/wte matrix counted once), padded vocabulary rows included.

        exclude_embeddings=True leaves out the token, position and value embeddings, the usual 'non-embedding'
        count (an untied lm_head stays in: it is a matmul)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            tables = self._lookup_tables()
            n -= sum(t.numel() for t in tables) + (0 if any(t is self.transformer.wte.weight for t in tables)
                                                   else self.transformer.wte.weight.numel())
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token: 6N + 12 * n_layer * n_head * head_dim * seq_len.

        N counts every weight that takes part in a matmul (all parameters but the lookup-only tables: position
        table, value embeddings, an untied wte; the lm_head matmul over the padded vocabulary included); the second
        term is attention's QK^T and AV products (PaLM paper, appendix B), unchanged by GQA.
        MFU = achieved FLOP/s / peak FLOP/s."""
        T = seq_len or self.config.block_size
        n = self.num_params() - sum(t.numel() for t in self._lookup_tables())
        return 6 * n + 12 * self.config.n_layer * self.config.n_head * self.config.head_size * T

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPT":
        return cls(preset_config(name, **overrides))


def unwrap(module: nn.Module) -> nn.Module:
    """The plain model inside torch.compile's, DDP's and activation checkpointing's wrappers (FSDP2 wraps in place)."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if inner is None:
            inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner
