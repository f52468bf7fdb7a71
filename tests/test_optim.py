"""AdamW decay groups and the learning-rate schedules (pure functions of the step)."""
from __future__ import annotations

import math

import pytest
import torch

from scalegpt.errors import ScalegptError
from scalegpt.optim import build_optimizer, constant_lr, cosine_lr, decay_groups, lr_at, wsd_lr


def test_decay_groups_split_by_rank(tiny_model):
    groups = decay_groups(tiny_model, 0.1)
    decay, no_decay = groups[0]["params"], groups[1]["params"]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay) and all(p.dim() < 2 for p in no_decay)
    n_layer = tiny_model.config.n_layer
    # wte (tied with lm_head, counted once) + wpe + per block: c_attn, attn c_proj, c_fc, mlp c_proj
    assert len(decay) == 2 + 4 * n_layer
    # per block: ln_1 (w, b), ln_2 (w, b), 4 linear biases; then ln_f (w, b)
    assert len(no_decay) == 8 * n_layer + 2
    assert sum(p.numel() for g in groups for p in g["params"]) == tiny_model.num_params()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # the tied matrix is in exactly one group


def test_optimizer_is_fused_on_cpu_and_reports_counts(tiny_model):
    optimizer, info = build_optimizer(tiny_model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
    assert optimizer.defaults["fused"] is True
    assert "AdamW (fused)" in info and "decayed tensors" in info and "non-decayed tensors" in info
    optimizer, info = build_optimizer(tiny_model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu", fused="false")
    assert not optimizer.defaults.get("fused") and "foreach" in info


def test_no_decay_group_is_not_decayed(tiny_model):
    """With zero gradients, one AdamW step changes only decayed tensors (by exactly lr * wd * p)."""
    optimizer, _ = build_optimizer(tiny_model, 0.5, 0.1, (0.9, 0.95), 1e-8, "cpu")
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    for p in tiny_model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in tiny_model.named_parameters():
        if p.dim() >= 2:
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.5 * 0.1))
        else:
            assert torch.equal(p.detach(), before[n]), n


def test_cosine_schedule_values():
    lr = lambda s: cosine_lr(s, max_lr=6e-4, min_lr=6e-5, warmup_steps=715, decay_steps=19073)  # noqa: E731
    assert lr(0) == pytest.approx(6e-4 / 715)
    assert lr(714) == pytest.approx(6e-4)
    assert lr(715) == pytest.approx(6e-4)
    assert lr((715 + 19073) / 2) == pytest.approx((6e-4 + 6e-5) / 2)
    assert lr(19073) == pytest.approx(6e-5) and lr(50_000) == pytest.approx(6e-5)
    values = [lr(s) for s in range(715, 19074, 97)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never rises after warmup
    warm = [lr(s) for s in range(715)]
    assert all(a < b for a, b in zip(warm, warm[1:]))


def test_constant_and_wsd_schedules():
    assert constant_lr(0, 1.0, 4) == 0.25 and constant_lr(3, 1.0, 4) == 1.0 and constant_lr(10**6, 1.0, 4) == 1.0
    assert constant_lr(0, 1.0, 0) == 1.0
    w = lambda s: wsd_lr(s, max_lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=100, decay_fraction=0.2)  # noqa
    assert w(0) == pytest.approx(0.1) and w(9) == 1.0
    assert w(10) == 1.0 and w(79) == 1.0  # stable until the last 20% of the steps
    assert w(80) == 1.0 and w(90) == pytest.approx(0.55) and w(100) == pytest.approx(0.1)
    assert w(1000) == pytest.approx(0.1)


def test_lr_at_dispatch_and_floor_ratio():
    assert lr_at(5000, "cosine", 1e-3, 0.1, 100, 2000) == pytest.approx(1e-4)
    assert lr_at(5000, "constant", 1e-3, 0.1, 100, 2000) == 1e-3
    assert lr_at(5000, "wsd", 1e-3, 0.1, 100, 2000) == pytest.approx(1e-4)
    assert math.isclose(lr_at(0, "cosine", 1e-3, 0.1, 0, 2000), 1e-3)  # no warmup: the peak at once
    with pytest.raises(ScalegptError, match="schedule.kind"):
        lr_at(0, "linear", 1e-3, 0.1, 100, 2000)
