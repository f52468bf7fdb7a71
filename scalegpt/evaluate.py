"""Evaluation: validation loss / perplexity on a fixed token budget, and HellaSwag (see `scalegpt.hellaswag`).

    evaluate_loss(model, batches)  -> {"loss": mean cross-entropy per target token, "perplexity": exp(loss),
                                       "tokens": number of target tokens}
    evaluate_loss(model, batches, byte_lengths=token_byte_lengths(tok))
                                   -> the same plus "bytes" (UTF-8 bytes of the documents' text the targets
                                      stand for: end-of-text ids 0, SentencePiece's dummy-prefix space not
                                      counted) and "bpb" = sum of target NLL (nats, end-of-text targets
                                      included) / ln 2 / bytes: bits per byte, comparable across tokenizers

The same function serves `scalegpt eval loss` and the training loop. Under torch.distributed every rank evaluates its
own batches and the token-weighted sums are all-reduced, so every rank returns the global figure.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable

import torch
import torch.nn.functional as F

from scalegpt.errors import ScalegptError
from scalegpt.generate import eval_mode

__all__ = ["evaluate_loss", "distributed_world", "in_lockstep"]


def distributed_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, or (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def in_lockstep(model, batches: Iterable, device, autocast, synced: bool):
    """Yield the batches. Under torch.distributed (synced) the walk goes on while any rank still has work: a rank
    that ran out runs a throwaway forward each round, so it keeps joining the collectives (FSDP all-gathers its
    parameters inside forward) and a rank with fewer or zero batches cannot leave the others waiting forever."""
    import torch.distributed as dist

    it = iter(batches)
    while True:
        batch = next(it, None)
        if synced:
            flag = torch.tensor([0 if batch is None else 1], dtype=torch.int32, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if not flag.item():
                return
            if batch is None:
                with autocast:  # keep this rank in step with the others; the result is not used
                    model(torch.zeros(1, 1, dtype=torch.long, device=device))
                continue
        elif batch is None:
            return
        yield batch


def evaluate_loss(model, batches: Iterable, device="cpu", autocast=None, reduce_across_ranks: bool = True,
                  byte_lengths=None) -> dict:
    """Token-weighted mean cross-entropy of the model over batches of (x, y) int64 (B, T); targets -1 are ignored.

    byte_lengths: `scalegpt.tokenizer.token_byte_lengths(tok)` (or a plain table of bytes per token id); with it
    the result also has "bytes" and "bpb" (bits per byte).

    The model runs in eval() under torch.no_grad() and is put back in its previous mode afterwards."""
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    _, world = distributed_world()
    synced = reduce_across_ranks and world > 1
    # [sum of losses, number of target tokens, number of target bytes]
    total = torch.zeros(3, dtype=torch.float64, device=device)
    table = doc_start_table = None
    if byte_lengths is not None:
        per_token = getattr(byte_lengths, "per_token", byte_lengths)
        table = torch.as_tensor(per_token, dtype=torch.float64, device=device)
        if getattr(byte_lengths, "at_doc_start", None) is not None:
            doc_start_table = torch.as_tensor(byte_lengths.at_doc_start, dtype=torch.float64, device=device)
            eot_id = byte_lengths.eot_id
    with eval_mode(model):
        for batch in in_lockstep(model, batches, device, autocast, synced):
            x, y = (t.to(device, non_blocking=True) for t in batch)
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                                   ignore_index=-1, reduction="sum")
            total[0] += loss.double()
            kept = y != -1
            total[1] += kept.sum()
            if table is not None:
                n_bytes = table[y[kept]]
                if doc_start_table is not None:  # a target right after an end-of-text input starts a document
                    n_bytes = torch.where(x[kept] == eot_id, doc_start_table[y[kept]], n_bytes)
                total[2] += n_bytes.sum()
    if synced:
        import torch.distributed as dist

        dist.all_reduce(total)
    loss_sum, tokens, n_bytes = total.tolist()
    if tokens == 0:
        raise ScalegptError("evaluate_loss: no batches to evaluate (0 target tokens); "
                            "is the split or --tokens too small?")
    loss = loss_sum / tokens
    result = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(tokens)}
    if table is not None:
        result["bytes"] = int(n_bytes)
        result["bpb"] = loss_sum / math.log(2) / n_bytes if n_bytes else float("nan")
    return result
