"""scalegpt.fused: hand-written backward passes give torch's values and gradients."""
import pytest
import torch
import torch.nn.functional as F

import scalegpt.fused as fused
from scalegpt.fused import mix, relu_squared, rms_norm, rotate, swap_halves
from scalegpt.model import Rotary


def _values_and_grads(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*inputs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad(out, [t for t in inputs if t.requires_grad], grad_out)
    return out, grads


def _same_as_torch(ours, theirs, *inputs, tol=1e-5):
    got, want = _values_and_grads(ours, *inputs), _values_and_grads(theirs, *inputs)
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol)
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 16), (2, 4, 3, 8)])
def test_rms_norm_matches_torch_and_gradcheck(shape, learnable):
    x = torch.randn(shape, requires_grad=True) * 3
    weight = torch.randn(shape[-1], requires_grad=True) if learnable else None
    args = (x, weight) if learnable else (x,)
    _same_as_torch(lambda x, w=None: rms_norm(x, w, 1e-5), lambda x, w=None: F.rms_norm(x, x.shape[-1:], w, 1e-5),
                   *args)
    double = [a.detach().double().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda x, w=None: rms_norm(x, w, 1e-5), double)


def test_relu_squared_matches_torch_and_gradcheck():
    x = torch.randn(4, 7, 32, requires_grad=True)
    _same_as_torch(relu_squared, lambda x: F.relu(x).square(), x)
    assert torch.autograd.gradcheck(relu_squared, [torch.randn(3, 6, dtype=torch.double, requires_grad=True)])


@pytest.mark.parametrize("start", [0, 5, "rows"])
def test_rotate_is_the_rotary_rotation_and_gradcheck(start, monkeypatch):
    """rotate(x, *cos_sin) turns each pair (x_i, x_{i+d/2}) by its angle: the formula written out here."""
    rotary, d = Rotary(8, 10000.0), 8
    x = torch.randn(2, 3, 6, d, requires_grad=True)
    start = torch.tensor([0, 4]) if start == "rows" else start
    cos, sin = rotary.cos_sin(start, 6, "cpu")

    def written_out(x):
        half = rotary.cos_sin(start, 6, "cpu")
        c, s = half[0][..., : d // 2], -half[1][..., : d // 2]  # the plain angles' cos and sin
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    _same_as_torch(lambda x: rotate(x, cos, sin), written_out, x)
    assert torch.autograd.gradcheck(lambda x: rotate(x, cos.double(), sin.double()),
                                    [x.detach().double().requires_grad_()])
    torch.testing.assert_close(swap_halves(torch.arange(4.0)), torch.tensor([2.0, 3.0, 0.0, 1.0]))
    monkeypatch.setattr(fused, "hand_written", lambda x: False)  # what rotate computes off a CPU
    _same_as_torch(lambda x: rotate(x, cos, sin), written_out, x)


def test_under_cpu_bf16_autocast_the_modern_model_trains_as_with_torchs_ops(monkeypatch):
    """The presets' precision auto is bf16 on a CPU with fast bf16: the hand-written passes give the gradients torch's
    ops give there too (within bf16 rounding)."""
    from scalegpt.config import GPTConfig
    from scalegpt.model import GPT

    config = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50, pos_emb="rope", norm="rmsnorm",
                       mlp="relu2", qk_norm=True, tie_embeddings=False, embed_norm=True, residual_scalars=True)
    torch.manual_seed(0)
    model = GPT(config)
    for p in model.parameters():  # no zero-initialised layers: every path carries gradient
        torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
    idx, targets = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))

    def grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx, targets)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, ours = grads()
    monkeypatch.setattr(fused, "hand_written", lambda x: False)  # torch's ops: what runs off a CPU
    want_loss, theirs = grads()
    torch.testing.assert_close(loss, want_loss, rtol=2e-2, atol=2e-2)
    for g, w in zip(ours, theirs, strict=True):
        torch.testing.assert_close(g, w, rtol=5e-2, atol=5e-2 * w.abs().max().item())


def test_mix_matches_torch_and_gradcheck():
    x, x0 = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 5, 8, requires_grad=True)
    scales = torch.tensor([0.7, -0.3], requires_grad=True)
    _same_as_torch(lambda x, x0, s: mix(x, x0, s[0], s[1]), lambda x, x0, s: s[0] * x + s[1] * x0, x, x0, scales)
    double = [t.detach().double().requires_grad_() for t in (x, x0, scales)]
    assert torch.autograd.gradcheck(lambda x, x0, s: mix(x, x0, s[0], s[1]), double)


def test_a_second_derivative_is_refused_not_wrong():
    x = torch.randn(2, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(rms_norm(x, None, 1e-5).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
