"""Cross-entropy straight from the final hidden states: lm_head and loss fused, a chunk of tokens at a time.

The plain way, `F.cross_entropy(lm_head(h)[..., :vocab], targets)`, keeps (tokens x vocab) fp32 logits and their
log-softmax alive from forward to backward, and walks over them about ten times (the vocabulary slice and its
gradient, log-softmax and its gradient, the NLL gradient's zeros). For GPT-2 that is 206 MB per 1024 tokens, 3.3 GB
per 16 x 1024 on a GPU; on a CPU those memory-bound passes cost about a tenth of a GPT-2 training step.

Here the forward makes one chunk's logits, turns them in place into d(loss)/d(logits) = softmax - onehot(target), and
multiplies that straight back into d(hidden) and d(weight); the backward only scales what the forward kept. The
matmuls are the same three as the plain way's. Used only when a gradient is wanted; evaluation takes the plain path.
With a logit softcap c the scored logits are c * tanh(logits / c), and the gradient gets tanh's derivative.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Logits per chunk (512 MB in fp32). Each chunk adds into the whole d(weight) once, so chunks are kept large: one
# chunk for GPT-2 at 1024 tokens, 7 at 16 x 1024, instead of 3.3 GB of logits.
CHUNK_ELEMENTS = 1 << 27


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                cap: float):
        # hidden (N, C), weight (padded vocab, C), targets (N,), -1 = not scored. Under autocast the matmuls run in
        # its dtype and the softmax in fp32, as in the plain path.
        n_scored = (targets != -1).sum().float()
        grad_hidden = torch.empty_like(hidden)
        grad_weight = None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = max(1, CHUNK_ELEMENTS // weight.size(0))
        for start in range(0, hidden.size(0), rows):
            h, t = hidden[start:start + rows], targets[start:start + rows]
            logits = h @ weight.t()
            matmul_dtype = logits.dtype
            logits = logits.float()
            if cap:  # z = c * tanh(l / c); dz/dl = 1 - tanh^2, kept for the chain rule below
                tanh = logits.div_(cap).tanh_()
                dcap = 1.0 - tanh.square()
                logits = tanh.mul_(cap)
            logits[:, vocab_size:] = float("-inf")  # padded ids get no probability
            scored = t != -1
            target = torch.where(scored, t, 0).unsqueeze(1)
            target_logit = logits.gather(1, target)
            # Softmax in place, in passes that each stream the buffer once (torch.softmax and logsumexp take 5-10x
            # longer than these on a CPU): exp(logits - max), its row sums, then a per-row scale.
            row_max = logits.amax(dim=1, keepdim=True)
            grad = logits.sub_(row_max).exp_()
            row_sum = grad.sum(dim=1, keepdim=True)
            total += torch.where(scored, (row_max + row_sum.log() - target_logit).squeeze(1), 0.0).sum()  # lse - target
            # d(mean loss)/d(logits) = (softmax - onehot(target)) / n_scored; zero on rows not scored.
            grad.mul_(torch.where(scored.unsqueeze(1), 1.0 / (row_sum * n_scored), 0.0))
            grad.scatter_add_(1, target, torch.where(scored, -1.0 / n_scored, 0.0).unsqueeze(1))
            if cap:
                grad.mul_(dcap)
            grad = grad.to(matmul_dtype)
            grad_hidden[start:start + rows] = grad @ weight.to(matmul_dtype)
            chunk_grad_weight = (grad.t() @ h.to(matmul_dtype)).float()
            grad_weight = chunk_grad_weight if grad_weight is None else grad_weight.add_(chunk_grad_weight)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / n_scored  # nan when nothing is scored, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        # Scaled in place: a (vocab x C) copy costs GPT-2 a 154 MB allocation per step. A second backward through
        # the same graph then fails autograd's saved-tensor version check instead of using scaled gradients.
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), None, None, None


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): logits bounded to (-cap, cap), nearly unchanged where small; cap 0 = off."""
    return cap * torch.tanh(logits / cap) if cap else logits


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         vocab_size: int, cap: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T`'s first `vocab_size` columns, softcapped by `cap` (0 = off),
    against targets (-1 = not scored).

    Equals `F.cross_entropy(softcap((hidden @ weight.T)[..., :vocab_size].float(), cap), targets, ignore_index=-1)`,
    without keeping the logits when a gradient is wanted."""
    hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, vocab_size, cap)
    logits = (hidden @ weight.t())[:, :vocab_size]
    return F.cross_entropy(softcap(logits.float(), cap), targets, ignore_index=-1)
