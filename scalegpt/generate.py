"""Text generation with a KV cache: prefill the prompt once, then one token per forward.

    generate(model, tokenizer, "Once upon a time", max_new_tokens=100, num_samples=4, seed=42)  -> 4 completions
    stream(model, tokenizer, prompt, ...)                          -> text pieces as they are produced
    generate_tokens(model, idx (B, T), max_new_tokens, ...)        -> yields the next (B,) token ids, step by step

Sampling: temperature 0 is greedy (argmax; top-k/top-p then do nothing), otherwise logits / temperature, then top-k,
then top-p (nucleus), then a draw from a `torch.Generator` seeded per call, so a seed always gives the same text for the
same model, prompt and settings.

The window: a GPT sees at most `block_size` positions. When the sequence fills the block, the window slides: the last
`block_size // 2` tokens are kept and re-prefilled as a fresh context (positions restart at 0), and decoding goes on one
token per forward. Sliding by half a block rather than by one token costs one prefill every block_size // 2 tokens
instead of one full recompute per token. `use_cache=False` applies the very same windows by recomputing the whole
window each step, so both paths give identical greedy tokens at any length.
"""
from __future__ import annotations

import codecs
import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from scalegpt.config.sections import check_temperature
from scalegpt.errors import ScalegptError
from scalegpt.model import KVCache, unwrap
from scalegpt.resources import check_generation
from scalegpt.tokenizer import EOT_TEXT


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None, vocab_size: int) -> None:
    if temperature is None or not 0 <= temperature < math.inf:
        raise ScalegptError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    check_temperature(temperature)  # the floor: logits / 1e-45 overflow to inf and the softmax to NaN
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ScalegptError(f"top-k must be between 1 and the vocabulary size {vocab_size}, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ScalegptError(f"top-p must be in (0, 1], got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of probability mass top_p. logits: (B, V)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # transformers' TopPLogitsWarper, step for step, so that the same logits keep the same set: ascending sort
        # (among tied logits the highest ids come last, so they are the ones kept), drop a token when the tokens
        # ranked below it, itself included, hold at most 1 - top_p of the mass; the top token always stays.
        sorted_logits, order = torch.sort(logits, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits of the last position -> (B,) next token ids."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def model_config(model):
    """The GPTConfig of a model, looking through wrappers (DDP's .module, torch.compile's ._orig_mod)."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        raise ScalegptError(f"{type(model).__name__} has no GPT config (expected a scalegpt GPT or a wrapper of one)")
    return config



class OneDNNLinear(torch.nn.Module):
    """An inference-only nn.Linear whose weight is held in oneDNN's layout and multiplied by oneDNN (torch's mkldnn
    backend) rather than by the BLAS (MKL) that plain fp32 matmuls use on a CPU.

    Why: decoding multiplies a few rows (one per sequence in flight) by every weight. MKL's sgemm is fast for one
    row, but for 2-16 rows it runs far below its one-row speed on some CPUs: on a 2-core AMD EPYC (AVX2) GPT-2's
    50304 x 768 head took 16 ms for 1 row, 50-61 ms for 4-16 rows; oneDNN took 10 / 19 / 26 ms
    (docs/serving.md), so batching sequences now costs little more than decoding one."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight.detach().to_mkldnn()
        self.bias = linear.bias.detach().to_mkldnn() if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.mkldnn_linear(x.contiguous().to_mkldnn(), self.weight, self.bias).to_dense()


def for_cpu_decoding(model):
    """The model, its Linear layers swapped for OneDNNLinear where that applies (an fp32 model on a CPU with torch's
    oneDNN backend); otherwise unchanged. In place: the model is for inference from then on (no Linear weights left
    to train or save)."""
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(module, name, OneDNNLinear(child))
    return model.eval()


@contextlib.contextmanager
def eval_mode(model):
    """No grad and eval() (no dropout) for the duration; the model's previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def generate_tokens(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, generator: torch.Generator | None = None,
                    stop_ids: Sequence[int] | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,) int64, up to max_new_tokens times.

    idx (B, T) is the prompt, 1 <= T. Stops early once every row has produced one of stop_ids (the stop id itself is
    yielded; rows that already stopped keep being decoded alongside the others, and the caller discards their tail).
    """
    if idx.dim() != 2 or idx.size(1) < 1:
        raise ScalegptError(f"generate_tokens needs a (batch, time) prompt of at least one token, "
                            f"got shape {tuple(idx.shape)}")
    config = model_config(model)
    block = config.block_size
    check_sampling_args(temperature, top_k, top_p, config.vocab_size)
    check_generation(config, idx.size(0), idx.size(1), max_new_tokens, idx.device,
                     next(model.parameters()).element_size(), use_cache)  # the cap and the KV cache's memory
    keep = max(1, block // 2)  # tokens kept when the window slides
    stop = torch.tensor(sorted(set(stop_ids or ())), dtype=torch.long, device=idx.device)
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    seq = idx[:, -block:]  # the current window; a longer prompt keeps its last block_size tokens
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()  # no dropout; restored when the generator finishes or is closed
    try:
        cache = None
        for step in range(max_new_tokens):
            if step == 0 or seq.size(1) > block:
                if seq.size(1) > block:
                    seq = seq[:, -keep:]
                if use_cache:
                    if cache is None:
                        cache = KVCache(config, seq.size(0), idx.device, dtype=dtype)
                    cache.length = 0  # a slide reuses the buffers: positions past `length` are never read
                    logits = _last_logits(model, seq, cache)
            if not use_cache:
                logits = _last_logits(model, seq, None)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            yield nxt
            if stop.numel():
                done |= torch.isin(nxt, stop)
                if bool(done.all()):
                    return
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            if use_cache and seq.size(1) <= block and step + 1 < max_new_tokens:
                logits = _last_logits(model, nxt[:, None], cache)
    finally:
        model.train(was_training)


@torch.no_grad()  # per forward, not around the yields, so the caller's own grad mode is never changed
def _last_logits(model, x: torch.Tensor, cache) -> torch.Tensor:
    out = model(x, cache=cache) if cache is not None else model(x)
    return out[:, -1]


def encode_prompt(tokenizer, prompt: str, block_size: int) -> tuple[list[int], int]:
    """(prompt ids, number of tokens dropped). An empty prompt starts from the end-of-text token, as a new document
    does; a prompt longer than the block keeps its last block_size tokens."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        ids = [tokenizer.eot_id]
    dropped = max(0, len(ids) - block_size)
    return ids[dropped:], dropped


def _split_stop(tokenizer, stop) -> tuple[list[int], list[str]]:
    if stop is None:
        return [], []
    items = [stop] if isinstance(stop, (str, int)) else list(stop)
    ids, texts = [], []
    for s in items:
        if isinstance(s, int):
            ids.append(s)
        elif s == EOT_TEXT:  # the end-of-text marker is a token, never produced as text
            ids.append(tokenizer.eot_id)
        elif isinstance(s, str) and s:
            texts.append(s)
        else:
            raise ScalegptError(f"stop must be a non-empty string or a token id, got {s!r}")
    return ids, texts


def _cut(text: str, stop_texts: Sequence[str]) -> tuple[str, bool]:
    cuts = [i for i in (text.find(s) for s in stop_texts) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _prepare(model, tokenizer, prompt, num_samples, temperature, top_k, top_p, seed, stop, device):
    config = model_config(model)
    check_sampling_args(temperature, top_k, top_p, config.vocab_size)
    if num_samples < 1:
        raise ScalegptError(f"num_samples must be >= 1, got {num_samples}")
    stop_ids, stop_texts = _split_stop(tokenizer, stop)
    ids, _ = encode_prompt(tokenizer, prompt, config.block_size)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise ScalegptError(f"seed must be an integer in [0, 2^64), got {seed!r}")
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh entropy, leaving the global RNG alone
    else:
        generator.manual_seed(seed)
    return idx, generator, stop_ids, stop_texts


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 100, num_samples: int = 1, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None, stop=None,
             device="cpu") -> list[str]:
    """num_samples completions of prompt (the prompt itself not included), sampled as one batch.

    stop: a string, a token id, or a list of them; a completion ends before the first stop string or stop token
    ("<|endoftext|>" means the end-of-text token). A seed makes the call reproducible; None draws a fresh one."""
    idx, generator, stop_ids, stop_texts = _prepare(model, tokenizer, prompt, num_samples, temperature, top_k, top_p,
                                                    seed, stop, device)
    rows: list[list[int]] = [[] for _ in range(num_samples)]
    finished = [False] * num_samples
    ids_or_strings = bool(stop_ids) or bool(stop_texts)
    for nxt in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, generator, stop_ids):
        for r, t in enumerate(nxt.tolist()):
            if finished[r]:
                continue
            if t in stop_ids:
                finished[r] = True
                continue
            rows[r].append(t)
            if stop_texts:
                finished[r] = _cut(tokenizer.decode(rows[r]), stop_texts)[1]
        if ids_or_strings and all(finished):
            break
    return [_cut(tokenizer.decode(r), stop_texts)[0] for r in rows]


class StreamDecoder:
    """Token ids in, printable text out, holding back the bytes of a UTF-8 character split across tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""
        if hasattr(tokenizer, "decode_bytes"):
            self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if hasattr(self, "utf8"):
            return self.utf8.decode(self.tokenizer.decode_bytes([token_id]))
        # Tokenizers without byte access: decode everything and emit what is new (a changed prefix is not re-emitted).
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        new = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        if new.endswith("\ufffd"):  # an incomplete byte sequence may still complete
            return ""
        self.emitted += new
        return new

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True) if hasattr(self, "utf8") else ""


def stream(model, tokenizer, prompt: str, max_new_tokens: int = 100, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None, stop=None,
           device="cpu") -> Iterator[str]:
    """One completion of prompt, yielded as text pieces while it is produced; the pieces join to what generate()
    returns for num_samples=1 (text that could be the start of a stop string is held back until it is known not
    to be)."""
    idx, generator, stop_ids, stop_texts = _prepare(model, tokenizer, prompt, 1, temperature, top_k, top_p, seed,
                                                    stop, device)
    decoder = StreamDecoder(tokenizer)
    hold = max((len(s) for s in stop_texts), default=1) - 1
    pending = ""
    for nxt in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, generator, stop_ids):
        t = int(nxt[0])
        if t in stop_ids:
            break
        pending += decoder.push(t)
        pending, stopped = _cut(pending, stop_texts)
        if stopped:
            break
        if len(pending) > hold:
            out_len = len(pending) - hold
            yield pending[:out_len]
            pending = pending[out_len:]
    else:
        pending += decoder.flush()
        pending = _cut(pending, stop_texts)[0]
    if pending:
        yield pending
