"""The GPT-2 architecture: a decoder-only Transformer.

    tokens -> wte + wpe -> [Block] x n_layer -> ln_f -> lm_head (tied to wte) -> logits
    Block(x) = x + attn(ln_1(x));  x + mlp(ln_2(x))        (pre-norm residual stream)

Parameter names follow HuggingFace's GPT2LMHeadModel (`transformer.wte`, `transformer.h.0.attn.c_attn`, ...) so that
importing or exporting weights is a key map plus a transpose of HF's Conv1D matrices (see `scalegpt.hf`).
The model knows nothing of training, parallelism or checkpoints: those are applied from outside.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from scalegpt.config import GPTConfig, preset_config  # noqa: F401  (the model's config lives with the settings)
from scalegpt.errors import ScalegptError
from scalegpt.loss import linear_cross_entropy


ACTIVATIONS = {"gelu_tanh": "tanh", "gelu": "none"}  # name -> nn.GELU(approximate=...)


def attention(q, k, v, mask: torch.Tensor | None, is_causal: bool, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim) + mask) v for every head, by F.scaled_dot_product_attention.

    On a CPU, bf16 heads are attended in fp32: torch's CPU flash-attention backward is ~5x slower in bf16 than in fp32
    (4.6 vs 0.84 ms a layer at shakespeare-char's shapes), which cost more than bf16 saved in all the matmuls."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal,
                                               dropout_p=dropout_p)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True  # scaled init, see GPT._init_weights
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is None:
            mask, causal = None, True
        else:
            start = cache.length
            k, v = cache.update(layer, k, v)
            # A query at position start+i sees keys 0..start+i. With one new token it sees all of them.
            causal = False
            mask = None if T == 1 else torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
        y = attention(q, k, v, mask, causal, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=ACTIVATIONS[config.activation])
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Keys and values of the tokens seen so far, one preallocated buffer per layer, for incremental decoding."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype=torch.float32, max_len: int | None = None):
        self.max_len = max_len or config.block_size
        shape = (config.n_layer, batch_size, config.n_head, self.max_len, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # tokens cached; advanced by GPT.forward after all layers have written

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ScalegptError(f"KV cache holds {self.max_len} positions; cannot append up to {end}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ScalegptError("model.vocab_size must be >= 1 to build a model (0 means 'the tokenizer's' only in a "
                                "training config)")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one matrix embeds and un-embeds
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module):
        # GPT-2: N(0, 0.02) everywhere; the projections that write into the residual stream are scaled by
        # 1/sqrt(2 * n_layer) because each block adds two of them, so the stream's variance stays bounded with depth.
        if isinstance(module, nn.Linear):
            std = 0.02 * (2 * self.config.n_layer) ** -0.5 if getattr(module, "residual_projection", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> (B, T, n_embd) outputs of the final LayerNorm, the input of lm_head.

        With a KVCache, idx holds only the new tokens; their positions continue after the cached ones."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ScalegptError(f"sequence of {start + T} tokens exceeds the model's block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """idx (B, T) token ids -> logits (B, T, vocab_size); with targets (B, T) -> the mean cross-entropy over
        targets != -1 (a scalar).

        With targets the logits are never materialised: lm_head and the loss are fused (`scalegpt.loss`)."""
        h = self.hidden_states(idx, cache)
        if targets is not None:
            return linear_cross_entropy(h, self.lm_head.weight, targets, self.config.vocab_size)
        return self.lm_head(h)[..., : self.config.vocab_size]  # padded ids are never sampled

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (the tied lm_head/wte matrix counted once), padded vocabulary rows included.

        exclude_embeddings=True leaves out the token and position embeddings, the usual 'non-embedding' count."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token: 6N + 12 * n_layer * n_embd * seq_len.

        N counts every weight that takes part in a matmul (all parameters but the position table; the lm_head
        matmul over the padded vocabulary included); the second term is attention's QK^T and AV products
        (PaLM paper, appendix B). MFU = achieved FLOP/s / peak FLOP/s."""
        T = seq_len or self.config.block_size
        n = self.num_params() - self.transformer.wpe.weight.numel()
        return 6 * n + 12 * self.config.n_layer * self.config.n_embd * T

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
