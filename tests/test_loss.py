"""The fused lm_head + cross-entropy: the same loss and gradients as the plain way, without keeping the logits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import scalegpt.loss
from scalegpt.loss import linear_cross_entropy


def plain(hidden, weight, targets, vocab_size):
    logits = (hidden @ weight.t())[..., :vocab_size]
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=-1)


def loss_and_grads(fn, hidden, weight, targets, vocab_size, upstream=1.0):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    loss = fn(hidden, weight, targets, vocab_size)
    (loss * upstream).backward()  # an upstream factor, as a GradScaler or accumulation divisor would apply
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("chunk_elements", [1 << 27, 128 * 7])  # one chunk; many chunks with a ragged last one
def test_matches_plain_cross_entropy(monkeypatch, chunk_elements):
    monkeypatch.setattr(scalegpt.loss, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 41, 16), torch.randn(128, 16)  # 100 real ids padded to 128
    targets = torch.randint(0, 100, (3, 41))
    targets[0, :9] = -1  # not scored
    fused = loss_and_grads(linear_cross_entropy, hidden, weight, targets, 100, upstream=2.5)
    reference = loss_and_grads(plain, hidden, weight, targets, 100, upstream=2.5)
    for got, want in zip(fused, reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert fused[2][100:].abs().max() == 0  # padded rows: no gradient


def test_nothing_scored_is_nan_with_zero_gradients():
    hidden, weight = torch.randn(4, 8), torch.randn(16, 8)
    loss, grad_hidden, grad_weight = loss_and_grads(linear_cross_entropy, hidden, weight, torch.full((4,), -1), 10)
    assert loss.isnan()  # as F.cross_entropy with every target ignored
    assert grad_hidden.abs().max() == 0 and grad_weight.abs().max() == 0


def test_without_gradients_takes_the_plain_path():
    hidden, weight, targets = torch.randn(5, 8), torch.randn(16, 8), torch.randint(0, 10, (5,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, 10)
    torch.testing.assert_close(loss, plain(hidden, weight, targets, 10))


def test_under_bf16_autocast_the_loss_stays_fp32_and_close():
    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(64, 32), torch.randn(128, 32) * 0.1, torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(linear_cross_entropy, hidden, weight, targets, 100)
        reference = loss_and_grads(plain, hidden, weight, targets, 100)
    assert fused[0].dtype == torch.float32 and fused[1].dtype == hidden.dtype and fused[2].dtype == weight.dtype
    for got, want in zip(fused, reference):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)


def test_tied_weight_gets_embedding_and_head_gradients():
    # GPT ties wte to lm_head: autograd adds the embedding's gradient into the one the loss hands back (in place).
    torch.manual_seed(0)
    weight, idx = torch.randn(64, 16), torch.randint(0, 60, (2, 12))
    grads = []
    for fn in (linear_cross_entropy, plain):
        w = weight.clone().requires_grad_()
        fn(F.embedding(idx, w) * 2.0, w, idx.roll(-1, dims=1), 60).backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_second_backward_through_the_same_graph_is_refused():
    # backward scales the gradients it saved in place; a second pass must fail loudly, not reuse scaled values
    hidden = torch.randn(6, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, torch.randn(16, 8), torch.randint(0, 10, (6,)), 10)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
