"""The modern recipe's elementwise functions with a hand-written backward pass, for CPUs.

    rms_norm(x, weight, eps)      x / sqrt(mean(x^2) + eps) [* weight], over the last dimension
    relu_squared(x)               relu(x)^2
    rotate(x, cos, sin)           rotary embedding: x * cos + swap_halves(x) * sin  (see Rotary.cos_sin)
    mix(x, x0, x_scale, x0_scale) x_scale * x + x0_scale * x0 (the residual/x0 scalars), scales 0-dim tensors

Why: a small model's step is many small ops, and autograd differentiates each op it sees. On a CPU torch computes
F.rms_norm from five ops (pow, mean, add, rsqrt, mul), relu(x).square() from two plus a threshold_backward, and a
rotation from seven; at the shakespeare-char shape (12 x 64 tokens, 128 wide) that made the modern step's forward
and backward ~1.2x a GPT-2 step's, whose LayerNorm and GELU are one kernel each way. Written as autograd Functions
they save only what their backward needs and make two or three passes over the data each way. CUDA keeps torch's
own ops (a fused RMSNorm kernel there; torch.compile fuses the rest). Same values as torch's ops to fp32 rounding
(tests/test_fused.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        inv_rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.size(-1)).add_(eps).rsqrt_()
        normed = x * inv_rms
        ctx.save_for_backward(normed, inv_rms, weight)
        return normed * weight if weight is not None else normed

    @staticmethod
    @once_differentiable  # a second derivative through these would miss terms: refuse it
    def backward(ctx, grad_out: torch.Tensor):
        normed, inv_rms, weight = ctx.saved_tensors
        grad_weight = None
        if weight is not None:
            if ctx.needs_input_grad[1]:
                grad_weight = (grad_out * normed).reshape(-1, normed.size(-1)).sum(0)
            grad_out = grad_out * weight
        # d/dx of x * r(x): (g - normed * mean(g * normed)) * r, with r = 1 / rms(x)
        along = (grad_out * normed).mean(-1, keepdim=True)
        return torch.addcmul(grad_out, normed, along, value=-1).mul_(inv_rms), grad_weight, None


class _ReLUSquared(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        relu = torch.relu(x)
        ctx.save_for_backward(relu)
        return relu * relu

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (relu,) = ctx.saved_tensors
        return torch.mul(grad_out, relu).mul_(2)  # 2 relu(x) is 0 where x < 0: no mask needed


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, x1), dim=-1)


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return torch.addcmul(x * cos, swap_halves(x), sin)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        cos, sin = ctx.saved_tensors  # the transpose of a rotation is the rotation by minus the angle
        return torch.addcmul(grad_out * cos, swap_halves(grad_out), sin, value=-1), None, None


class _Mix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x0, x_scale, x0_scale):
        ctx.save_for_backward(x, x0, x_scale, x0_scale)
        return torch.addcmul(x * x_scale, x0, x0_scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, x0, x_scale, x0_scale = ctx.saved_tensors
        g = grad_out.reshape(-1)
        return (grad_out * x_scale, grad_out * x0_scale, torch.dot(g, x.reshape(-1)).to(x_scale.dtype),
                torch.dot(g, x0.reshape(-1)).to(x0_scale.dtype))


def hand_written(x: torch.Tensor) -> bool:
    """Whether x's device takes the Functions above (a CPU) or torch's own ops (any other)."""
    return x.device.type == "cpu"


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    if not hand_written(x):
        return F.rms_norm(x, x.shape[-1:], weight, eps)
    return _RMSNorm.apply(x, weight, eps)


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    if not hand_written(x):
        return F.relu(x).square()
    return _ReLUSquared.apply(x)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if not hand_written(x):
        return x * cos + swap_halves(x) * sin
    return _Rotate.apply(x, cos, sin)


def mix(x: torch.Tensor, x0: torch.Tensor, x_scale: torch.Tensor, x0_scale: torch.Tensor) -> torch.Tensor:
    if not hand_written(x) or x.dtype != x0.dtype:
        return x_scale * x + x0_scale * x0
    return _Mix.apply(x, x0, x_scale, x0_scale)
