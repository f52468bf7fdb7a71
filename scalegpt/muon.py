"""Muon for the Transformer blocks' matrices: torch.optim.Muon's update, applied to each logical matrix on its own
and computed for all matrices of one shape at once.

    muon_matrices(model)   the weights Muon steps
    row_parts(model)       how fused weights split into logical matrices: c_attn = [q; k; v], SwiGLU's c_fc = [gate; up]
    Muon                   torch.optim.Muon (same hyperparameters, state and state_dict) orthogonalising per part
    FullMatrixMuon         Muon for FSDP2's row-sharded (DTensor) matrices
    orthogonalise(ms)      torch's Newton-Schulz iteration for a list of matrices, batched by shape (in fp32, wide
                           matrices iterate on their Gram matrix: the same iteration, 44% fewer FLOPs at 128 x 512)
    ns_dtype_for(device)   the iteration's dtype: bf16 on CUDA (torch's), fp32 on a CPU

Why per part: q, k and v (and SwiGLU's gate and up) are separate matrices that are stored stacked so one matmul
computes them all. Orthogonalising the stack mixes their singular directions and scales the update by the stack's
shape; modded-nanogpt and nanochat orthogonalise each one (the update differs by 33-83% on those matrices). So each
part gets exactly the update torch.optim.Muon would give it as a parameter of its own, lr scale included, while the
weights keep the fused layout (one matmul, HF-compatible names).

Why batched: on a small model the Newton-Schulz iterations are many tiny matmuls; a model has only a few matrix
shapes (n_embd x n_embd, n_embd x mlp width, ...), so one bmm per shape replaces a dozen mm calls per iteration.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def muon_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights Muon steps: every nn.Linear weight inside the Transformer blocks (model.transformer.h), i.e. the
    hidden matrices. Embeddings, value embeddings, lm_head, norms, biases and scalars are AdamW's: Muon
    orthogonalises a 2-D update, which suits a matrix mapping activations to activations, not a lookup table or the
    logit layer (Keller Jordan's Muon post; nanochat and modded-nanogpt split the same way)."""
    return [m.weight for m in model.transformer.h.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]


def row_parts(model: nn.Module) -> dict[int, tuple[int, ...]]:
    """id(weight) -> the row counts of the logical matrices stacked in it, for the blocks' fused Linear layers (the
    model marks them with a `row_parts` attribute); weights not listed are one matrix."""
    return {id(m.weight): tuple(m.row_parts) for m in model.transformer.h.modules()
            if isinstance(m, nn.Linear) and getattr(m, "row_parts", None) and len(m.row_parts) > 1}


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape) -> float:
    """torch.optim.Muon's learning-rate scale for a matrix of `shape` (rows, cols): original (Keller Jordan)
    sqrt(max(1, rows/cols)); match_rms_adamw (Moonlight) 0.2 sqrt(max(rows, cols))."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


def orthogonalise(matrices: list[torch.Tensor], ns_coefficients: tuple[float, float, float], ns_steps: int,
                  eps: float, dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    """torch.optim.Muon's Newton-Schulz iteration (on the wide orientation, after scaling to Frobenius norm 1) of
    each matrix, computed in `dtype` (torch's: bf16), as matrices of that dtype and the same shapes. Matrices whose
    wide orientation has the same shape go through the iteration together, as one batch."""
    a, b, c = ns_coefficients
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(matrices):
        by_shape.setdefault((min(m.shape), max(m.shape)), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(matrices)
    for idx in by_shape.values():
        x = torch.stack([matrices[i].mT if matrices[i].size(0) > matrices[i].size(1) else matrices[i]
                         for i in idx]).to(dtype)
        x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
        if dtype == torch.float32 and x.size(-1) > 1.5 * x.size(-2) and ns_steps > 1:
            x = _newton_schulz_on_gram(x, a, b, c, ns_steps)
        else:
            for _ in range(ns_steps):
                gram = x @ x.mT
                x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        for j, i in enumerate(idx):
            out[i] = x[j].mT if matrices[i].size(0) > matrices[i].size(1) else x[j]
    return out


def _newton_schulz_on_gram(x: torch.Tensor, a: float, b: float, c: float, steps: int) -> torch.Tensor:
    """The same iteration for wide m x n matrices (n > 1.5 m), carried out on m x m matrices.

    Each step is x <- p(x x^T) x with p(G) = a + b G + c G^2, so after k steps x_k = Q_k x_0, where Q_k and
    G_k = x_k x_k^T are polynomials in G_0 = x_0 x_0^T and all of them commute: Q_{k+1} = p(G_k) Q_k and
    G_{k+1} = p(G_k) G_k p(G_k). Iterating Q and G costs 4s - 3 products of m x m matrices plus two m x n ones (G_0
    and Q_s x_0), against 2s m x n and s m x m products: on Muon's 128 x 512 MLP matrices, 44% fewer FLOPs. Only in
    fp32: in bf16 the error of the squared spectrum grows with every step (the standard iteration is used there)."""
    gram = x @ x.mT
    q = None
    for k in range(steps):
        p = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        p.diagonal(dim1=-2, dim2=-1).add_(a)
        q = p if q is None else p @ q
        if k < steps - 1:
            gram = p @ (gram @ p)
    return q @ x


def muon_update(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor],
                parts: list[tuple[int, ...] | None], *, lr: float, weight_decay: float, momentum: float,
                nesterov: bool, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float,
                adjust_lr_fn: str | None, ns_dtype: torch.dtype = torch.bfloat16) -> None:
    """torch.optim.Muon's step (torch.optim._muon._single_tensor_muon) on full matrices, in place, with each
    parameter's rows cut into `parts` (row counts; None: the whole matrix) orthogonalised (in ns_dtype) and lr-scaled
    apart."""
    torch._foreach_lerp_(bufs, grads, 1 - momentum)
    updates = torch._foreach_lerp(grads, bufs, momentum) if nesterov else bufs
    pieces, where = [], []
    for i, (update, rows) in enumerate(zip(updates, parts)):
        start = 0
        for n in rows or (update.size(0),):
            pieces.append(update[start:start + n])
            where.append((i, start, n))
            start += n
    if weight_decay:  # torch multiplies by 1 - lr * 0 too; skipping it leaves the same bits
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    for (i, start, n), ortho in zip(where, orthogonalise(pieces, ns_coefficients, ns_steps, eps, ns_dtype)):
        params[i][start:start + n].add_(ortho, alpha=-adjusted_lr(lr, adjust_lr_fn, ortho.shape))


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its hyperparameters, momentum_buffer state and state_dict) whose update treats each logical
    matrix of a fused weight as its own parameter: `parts` maps id(weight) -> row counts (see row_parts).

    ns_dtype: the Newton-Schulz iteration's dtype. bf16 is torch's choice and suits a GPU's tensor cores; on a CPU
    torch runs a bf16 batched matmul one matrix at a time, and without AVX-512 BF16 emulates it, so the trainer asks
    for fp32 there (`ns_dtype_for`). Not a hyperparameter in the state_dict: a run resumed on another device uses that
    device's choice."""

    def __init__(self, params, parts: dict[int, tuple[int, ...]] | None = None,
                 ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.parts = dict(parts or {})
        self.ns_dtype = ns_dtype

    def _buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)  # sharded as the gradient is, under FSDP2
        return state["momentum_buffer"]

    def _update(self, group: dict, params, grads, bufs, parts) -> None:
        muon_update(params, grads, bufs, parts, lr=group["lr"], weight_decay=group["weight_decay"],
                    momentum=group["momentum"], nesterov=group["nesterov"], ns_coefficients=group["ns_coefficients"],
                    ns_steps=group["ns_steps"], eps=group["eps"], adjust_lr_fn=group["adjust_lr_fn"],
                    ns_dtype=self.ns_dtype)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params, [p.grad for p in params], [self._buffer(p) for p in params],
                             [self.parts.get(id(p)) for p in params])
        return loss


def ns_dtype_for(device_type: str) -> torch.dtype:
    """Newton-Schulz in bf16 on CUDA (torch.optim.Muon's choice), in fp32 elsewhere. On the 2-core AVX2 EPYC a
    shakespeare-char modern step took 1182 ms with bf16 Newton-Schulz (91% of it in Muon.step) against 69 ms for a
    GPT-2-recipe step (benchmarks/bench_step.py, docs/performance.md)."""
    return torch.bfloat16 if device_type == "cuda" else torch.float32


class FullMatrixMuon(Muon):
    """Muon for FSDP2's row-sharded (DTensor) matrices: Muon orthogonalises whole matrices, so each step all-gathers
    each matrix's parameter, gradient and momentum, applies the update to the full matrix, which is the same
    computation on every rank, and keeps this rank's rows of the new parameter and momentum. The momentum stays
    sharded in the optimizer state (and in checkpoints) like AdamW's moments.

    Handing the DTensors to torch's Muon directly would run its Newton-Schulz matmuls as DTensor operations: right for
    evenly sharded matrices, but it fails mid-step on a matrix with fewer rows than ranks (e.g. a value-embedding gate
    of n_kv_head rows), and its bf16 sums would be ordered differently from one process's."""

    def _update(self, group: dict, params, grads, bufs, parts) -> None:
        from torch.distributed.tensor import distribute_tensor

        # one matrix at a time: gathering them all at once would hold every full matrix on every rank
        for p, grad, buf, rows in zip(params, grads, bufs, parts):
            full_p, full_buf = p.full_tensor(), buf.full_tensor()
            super()._update(group, [full_p], [grad.full_tensor()], [full_buf], [rows])
            for sharded, full in ((p, full_p), (buf, full_buf)):  # every rank holds the same full result
                mine = distribute_tensor(full, sharded.device_mesh, sharded.placements, src_data_rank=None)
                sharded.to_local().copy_(mine.to_local())
