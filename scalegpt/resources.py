"""Memory estimates made before anything is allocated, and the one check that refuses what cannot fit.

    estimate_training(model_config, micro_batch_size, seq_len, ...)  -> Estimate (weights, grads, optimizer, activations)
    estimate_inference(model_config, batch_size, seq_len, kv_cache=...) -> Estimate (weights, KV cache, activations)
    check_fits(estimate, device, what)   -> raises one ScalegptError line when the estimate exceeds what is available
    available_memory(device)             -> (bytes, where the figure comes from)

Every path that builds a model or generates goes through here first (train, quickstart, sample, eval, export, HF
import, the harness), so a config that would need terabytes is refused in milliseconds, naming the keys that make it
large, instead of running until the kernel kills it or the allocator gives up.

The formulas (docs/configuration.md, "Memory estimate") count bytes, with P parameters, N = batch x seq_len tokens,
C = n_embd, q = n_head x head_dim, kv = n_kv_head x head_dim, M = the MLP width, a = 2 bytes under bf16/fp16
autocast (4 in fp32), L = n_layer:
    weights        4 P                       (fp32 master weights)
    gradients      4 P
    optimizer      8 P_adamw + 4 P_muon       (AdamW: two moments; Muon: one momentum buffer)
    activations    L N (16 C + a (2 C + 4 q + 3 kv + k M))   k = 4 for swiglu, 2 otherwise; what backward keeps per
                   layer (fp32 residual and norm outputs, their autocast copies, q/k/v, rotated q/k, attention output,
                   MLP hidden states); with activation checkpointing only 4 C per layer plus one layer's worth
    loss           the fused loss's chunk of logits (4 + 2 a) min(N V, 2^27) + its 4 N C hidden gradient
    inference      4 P weights + KV cache 2 L B kv T_cache x (dtype bytes) + one forward's logits (4 + a) N V and
                   one layer's activations
FSDP shards weights, gradients and optimizer state over the ranks. The estimate leaves out the allocator's
fragmentation and torch.compile's workspace, so it is a lower bound of the peak: a run it passes may still be tight,
but one it refuses cannot fit.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from scalegpt.config import GPTConfig
from scalegpt.errors import ScalegptError

LOSS_CHUNK_ELEMENTS = 1 << 27  # scalegpt.loss.CHUNK_ELEMENTS (kept torch-free here)


@dataclass
class Estimate:
    """Bytes needed, part by part; each part names the config keys that make it large."""
    parts: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)  # (what, bytes, keys)

    def add(self, what: str, nbytes: int, *keys: str) -> "Estimate":
        self.parts.append((what, int(nbytes), keys))
        return self

    @property
    def total(self) -> int:
        return sum(b for _, b, _ in self.parts)

    def summary(self) -> str:
        """'1.9 GiB (weights 0.5 GiB, gradients 0.5 GiB, ...)'"""
        return f"{format_bytes(self.total)} (" + ", ".join(f"{w} {format_bytes(b)}" for w, b, _ in self.parts) + ")"

    def culprits(self) -> list[str]:
        """The keys of the largest parts, largest first (those worth lowering)."""
        keys: list[str] = []
        for _, _, ks in sorted(self.parts, key=lambda p: -p[1])[:2]:
            keys += [k for k in ks if k not in keys]
        return keys


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


# ------------------------------------------------------------------------------------------------ parameters


def _norm_params(c: GPTConfig) -> int:
    if not c.norm_learnable:
        return 0
    return c.n_embd * (2 if c.norm == "layernorm" and c.bias else 1)


def block_matrix_params(c: GPTConfig) -> int:
    """The Linear weights of one block (what Muon steps), without biases."""
    q, kv, m = c.n_head * c.head_size, c.kv_heads * c.head_size, c.mlp_width
    fc = (2 if c.mlp == "swiglu" else 1) * m
    return c.n_embd * (q + 2 * kv) + q * c.n_embd + c.n_embd * fc + m * c.n_embd


def value_embed_layers(c: GPTConfig) -> int:
    return sum(1 for i in range(c.n_layer) if i % 2 == (c.n_layer - 1) % 2) if c.value_embeds else 0


def param_count(c: GPTConfig) -> int:
    """Exactly GPT(c).num_params(), computed from the config alone (a tied head counted once)."""
    C, V, L = c.n_embd, c.padded_vocab_size, c.n_layer
    q, kv, m = c.n_head * c.head_size, c.kv_heads * c.head_size, c.mlp_width
    fc = (2 if c.mlp == "swiglu" else 1) * m
    block = 2 * _norm_params(c) + block_matrix_params(c)
    if c.bias:
        block += (q + 2 * kv) + C + fc + C
    if c.qk_norm and c.norm_learnable:
        block += 2 * c.head_size
    n = V * C + L * block + _norm_params(c)  # token embedding, blocks, final norm
    n += c.block_size * C if c.pos_emb == "learned" else 0
    n += _norm_params(c) if c.embed_norm else 0
    ve = value_embed_layers(c)
    n += ve * (V * kv + C * c.kv_heads)  # the tables and each layer's gate
    n += 2 * L if c.residual_scalars else 0
    n += 0 if c.tie_embeddings else V * C
    return n


MODEL_KEYS = ("model.n_layer", "model.n_embd")
VOCAB_KEYS = ("model.vocab_size", "model.pad_vocab_multiple", "model.n_embd")


def _weights(est: Estimate, c: GPTConfig, bytes_per_param: int, what: str, shards: int = 1) -> None:
    """Split P x bytes into the blocks' share and the embeddings' share, so the message names the right keys."""
    total = param_count(c)
    tables = c.padded_vocab_size * c.n_embd * (1 if c.tie_embeddings else 2)
    tables += value_embed_layers(c) * c.padded_vocab_size * c.kv_heads * c.head_size
    rest = total - tables
    keys = MODEL_KEYS + tuple(k for k, v in (("model.mlp_hidden", c.mlp_hidden), ("model.head_dim", c.head_dim)) if v)
    if c.pos_emb == "learned" and c.block_size * c.n_embd > rest // 2:
        keys += ("model.block_size",)
    est.add(what, math.ceil(bytes_per_param * rest / shards), *keys)
    est.add(f"{what} (embeddings)", math.ceil(bytes_per_param * tables / shards), *VOCAB_KEYS)


def _layer_activation_bytes(c: GPTConfig, tokens: int, a: int) -> int:
    C, q, kv, m = c.n_embd, c.n_head * c.head_size, c.kv_heads * c.head_size, c.mlp_width
    k = 4 if c.mlp == "swiglu" else 2
    return tokens * (16 * C + a * (2 * C + 4 * q + 3 * kv + k * m))


def estimate_training(c: GPTConfig, micro_batch_size: int, seq_len: int, precision: str = "fp32",
                      optimizer: str = "adamw", activation_checkpointing: bool = False, shards: int = 1) -> Estimate:
    """What one rank needs to train: weights, gradients, optimizer state, one micro-batch's activations and loss."""
    a = 4 if precision == "fp32" else 2
    est = Estimate()
    _weights(est, c, 4, "weights", shards)
    _weights(est, c, 4, "gradients", shards)
    muon = c.n_layer * block_matrix_params(c) if optimizer == "muon" else 0
    est.add("optimizer", math.ceil((8 * (param_count(c) - muon) + 4 * muon) / shards), *MODEL_KEYS)
    N = micro_batch_size * seq_len
    batch_keys = ("train.micro_batch_size", "train.seq_len" if seq_len else "model.block_size", "model.n_layer")
    layer = _layer_activation_bytes(c, N, a)
    kept = (c.n_layer * 4 * N * c.n_embd + layer) if activation_checkpointing else c.n_layer * layer
    est.add("activations", kept + 4 * N * c.n_embd, *batch_keys)
    chunk = min(N * c.padded_vocab_size, LOSS_CHUNK_ELEMENTS)
    est.add("loss", (4 + 2 * a) * chunk + 4 * N * c.n_embd, "train.micro_batch_size", "model.vocab_size")
    return est


def estimate_inference(c: GPTConfig, batch_size: int, seq_len: int, precision: str = "fp32", kv_cache: bool = False,
                       batch_keys: tuple[str, ...] = ("batch size",), weights: bool = True, logits: bool = True,
                       dtype_bytes: int = 4) -> Estimate:
    """What a forward without gradients needs: weights (unless already loaded), one layer's activations and the
    logits of every position (evaluation, a generation's prefill; HellaSwag and the harness project only the scored
    positions: logits=False), plus a KV cache over block_size when generating."""
    a = 4 if precision == "fp32" and dtype_bytes == 4 else 2
    est = Estimate()
    if weights:
        _weights(est, c, dtype_bytes, "weights")
    N = batch_size * seq_len
    if kv_cache:
        cache = 2 * c.n_layer * batch_size * c.kv_heads * c.block_size * c.head_size * dtype_bytes
        est.add("KV cache", cache, *batch_keys, "model.block_size", "model.n_layer", "model.n_kv_head")
    est.add("activations", _layer_activation_bytes(c, N, a) + 4 * N * c.n_embd, *batch_keys)
    if logits:
        est.add("logits", (4 + a) * N * c.padded_vocab_size, *batch_keys, "model.vocab_size")
    return est


# ------------------------------------------------------------------------------------------------ availability


def available_memory(device="cpu") -> tuple[int, str]:
    """(bytes free for a new allocation on `device`, where that figure comes from)."""
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"free on {device} (torch.cuda.mem_get_info)"
    try:
        import psutil

        return psutil.virtual_memory().available, "available RAM (psutil)"
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM (MemAvailable in /proc/meminfo)"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free RAM (sysconf)"
    except (ValueError, OSError, AttributeError):
        return 1 << 62, "unknown (no limit applied)"


def check_fits(est: Estimate, device="cpu", what: str = "this run", available: int | None = None) -> str:
    """Raise one ScalegptError line naming the keys, the estimate and the memory available when `est` exceeds it;
    else return a one-line summary for the log ('memory: estimate ... of ... available')."""
    source = "given"
    if available is None:
        available, source = available_memory(device)
    if est.total > available:
        raise ScalegptError(f"{what}: needs an estimated {est.summary()} on {device}, more than the "
                            f"{format_bytes(available)} {source}; lower {', '.join(est.culprits())} "
                            "(formula: docs/configuration.md, 'Memory estimate')")
    return f"memory: estimated {est.summary()}, of {format_bytes(available)} {source}"


def check_model(c: GPTConfig, device="cpu", what: str = "the model") -> None:
    """Refuse a model whose fp32 weights alone cannot be allocated on `device` (loading, importing, exporting)."""
    est = Estimate()
    _weights(est, c, 4, "weights")
    check_fits(est, device, what)


def check_training_memory(model_config: GPTConfig, config, device, precision: str, world_size: int = 1) -> str:
    """Refuse a training config (Config; model_config with the real vocabulary) whose training step, or whose
    evaluation and samples, cannot fit on one rank's device; else the 'memory: ...' line the trainer logs."""
    t, d = config.train, config.dist
    seq = t.seq_len or model_config.block_size
    shards = world_size if d.strategy in ("fsdp", "auto") and world_size > 1 else 1
    train = estimate_training(model_config, t.micro_batch_size, seq, precision, config.optim.name,
                              d.activation_checkpointing, shards)
    line = check_fits(train, device, "training (one micro-batch on one rank)")
    e = config.eval
    if e.interval or e.at_start:
        kept = Estimate([p for p in train.parts if p[0].startswith(("weights", "optimizer"))])  # grads are freed
        evaluation = estimate_inference(model_config, e.batch_size or t.micro_batch_size, seq, precision,
                                        batch_keys=("eval.batch_size",))
        check_fits(Estimate(kept.parts + evaluation.parts[2:]), device, "evaluation (eval.batch_size sequences)")
        kept.parts = [p for p in kept.parts if not p[0].startswith("weights")]  # sampling's estimate has them
        if e.samples:
            sampling = estimate_inference(model_config, e.samples, model_config.block_size, precision, kv_cache=True,
                                          batch_keys=("eval.samples",))
            check_fits(Estimate(kept.parts + sampling.parts), device, "sampling (eval.samples rows)")
    return line


def check_generation(c: GPTConfig, rows: int, prompt_len: int, max_new_tokens: int, device, dtype_bytes: int = 4,
                     kv_cache: bool = True) -> None:
    """Refuse a generation request (weights already loaded) whose KV cache and prefill cannot fit, or whose length is
    beyond MAX_NEW_TOKENS."""
    from scalegpt.config.sections import MAX_NEW_TOKENS

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ScalegptError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}] (the stated cap; a longer "
                            f"text: several calls), got {max_new_tokens!r}")
    window = min(prompt_len, c.block_size)
    if prompt_len + max_new_tokens > c.block_size:  # the window slides: re-prefills of block_size // 2 tokens
        window = max(window, c.block_size // 2)
    est = estimate_inference(c, rows, max(window, 1), "fp32", kv_cache=kv_cache, batch_keys=("num_samples (--num-samples)",),
                             weights=False, dtype_bytes=dtype_bytes)
    check_fits(est, device, f"generation ({rows} row(s))")


def check_forward(c: GPTConfig, rows: int, seq_len: int, device, keys: tuple[str, ...], what: str,
                  logits: bool = True) -> None:
    """Refuse an evaluation batch (weights already loaded) of rows x seq_len tokens that cannot fit; logits=False
    where only the scored positions meet the vocabulary (HellaSwag, the harness)."""
    check_fits(estimate_inference(c, rows, seq_len, batch_keys=keys, weights=False, logits=logits), device, what)


def check_config_memory(config) -> None:
    """check_training_memory before the dataset (so its vocabulary) is known: with vocab_size 0 counted as 1 and
    bf16 activations, an estimate below the trainer's own (quickstart calls it before preparing any data)."""
    import dataclasses

    import torch

    device = config.train.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "mps" or (device.startswith("cuda") and not torch.cuda.is_available()):
        device = "cpu"  # MPS shares the host's memory; a missing CUDA device is the trainer's to name
    model = dataclasses.replace(config.model, vocab_size=config.model.vocab_size or 1)
    check_training_memory(model, config, device, "bf16")
