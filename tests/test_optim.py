"""AdamW decay groups, Muon + AdamW in one CombinedOptimizer, and the learning-rate schedules (pure functions of the
step)."""
from __future__ import annotations

import math

import pytest
import torch

from scalegpt.config import OptimSection
from scalegpt.errors import ScalegptError
from scalegpt.optim import (
    build_optimizer, build_optimizers, constant_lr, cosine_lr, decay_groups, lr_at, muon_matrices, wsd_lr,
)


def _fake_step(model, optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


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


def test_muon_steps_the_block_matrices_and_adamw_the_rest(tiny_model):
    optimizer, lines = build_optimizers(tiny_model, OptimSection(name="muon", muon_lr=0.03, muon_weight_decay=0.01),
                                        "cpu")
    muon, adamw = optimizer.parts["muon"], optimizer.parts["adamw"]
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    in_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    expected = sorted(f"transformer.h.{i}.{m}.weight" for i in range(tiny_model.config.n_layer)
                      for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert in_muon == expected
    in_adamw = [names[id(p)] for g in adamw.param_groups for p in g["params"]]
    # the embeddings and the (tied) head, norms and biases, each exactly once, none of Muon's
    assert "transformer.wte.weight" in in_adamw and "transformer.wpe.weight" in in_adamw
    assert not set(in_adamw) & set(in_muon) and len(in_adamw) + len(in_muon) == len(names)
    assert len(lines) == 3
    assert lines[2] == ("optimizer group muon: Muon (momentum 0.95, Nesterov, adjust_lr original, Newton-Schulz in "
                        "float32), 8 tensors, "
                        f"{sum(p.numel() for p in muon_matrices(tiny_model)):,} parameters, lr 0.03, weight decay 0.01")
    assert lines[0].startswith("optimizer group decay: AdamW (fused), 2 tensors") and "lr 0.0006" in lines[0]


def test_adamw_only_state_is_torchs_own_format(tiny_model):
    """Checkpoints written before Muon existed held torch.optim.AdamW's state_dict: it must load unchanged."""
    optimizer, _ = build_optimizers(tiny_model, OptimSection(), "cpu")
    assert list(optimizer.parts) == ["adamw"]
    _fake_step(tiny_model, optimizer, 0)
    state = optimizer.state_dict()
    reference = optimizer.parts["adamw"].state_dict()
    assert state["param_groups"] == reference["param_groups"] and state["state"].keys() == reference["state"].keys()
    fresh, _ = build_optimizers(tiny_model, OptimSection(), "cpu")
    fresh.load_state_dict(reference)
    assert torch.equal(fresh.parts["adamw"].state_dict()["state"][3]["exp_avg"], reference["state"][3]["exp_avg"])


def test_combined_state_round_trip_continues_identically(tiny_model):
    import copy

    config = OptimSection(name="muon")
    optimizer, _ = build_optimizers(tiny_model, config, "cpu")
    for seed in range(2):
        _fake_step(tiny_model, optimizer, seed)
    state = copy.deepcopy(optimizer.state_dict())
    assert len(state["param_groups"]) == 3 and [g["name"] for g in state["param_groups"]] == ["decay", "no_decay",
                                                                                               "muon"]
    twin = copy.deepcopy(tiny_model)
    resumed, _ = build_optimizers(twin, config, "cpu")
    resumed.load_state_dict(state)
    for seed in (2, 3):
        _fake_step(tiny_model, optimizer, seed)
        _fake_step(twin, resumed, seed)
    for (name, a), b in zip(tiny_model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name
    # an AdamW-only state does not fit a Muon run (and the reverse): refused, naming the likely cause
    adamw_only, _ = build_optimizers(twin, OptimSection(), "cpu")
    with pytest.raises(ValueError, match=r"optim.name changed"):
        adamw_only.load_state_dict(state)


def test_set_lr_puts_each_part_on_one_schedule_at_its_own_peak(tiny_model):
    optimizer, _ = build_optimizers(tiny_model, OptimSection(name="muon", lr=1e-3, muon_lr=0.02), "cpu")
    optimizer.set_lr(lambda peak: lr_at(0, "cosine", peak, 0.1, 4, 100))
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"decay": pytest.approx(2.5e-4), "no_decay": pytest.approx(2.5e-4), "muon": pytest.approx(5e-3)}


def test_muon_orthogonalises_each_matrix_update(tiny_model):
    """One Muon step from zero momentum moves each matrix by lr x sqrt(max(1, rows/cols)) x an orthogonalised
    gradient: singular values near 1 (Newton-Schulz in bf16 gives roughly 0.5-1.5), whatever the gradient's scale."""
    optimizer, _ = build_optimizers(tiny_model, OptimSection(name="muon", muon_lr=0.01), "cpu")
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    for p in tiny_model.parameters():
        p.grad = 1000 * torch.randn_like(p)
    optimizer.set_lr(lambda peak: peak)
    optimizer.step()
    w = tiny_model.transformer.h[0].mlp.c_fc.weight  # (128, 32): rows/cols = 4
    update = (before["transformer.h.0.mlp.c_fc.weight"] - w.detach()) / (0.01 * 2.0)
    s = torch.linalg.svdvals(update)
    assert 0.4 < s.min() and s.max() < 1.6, s


def test_muon_selection_with_modern_model_options():
    """Value embeddings, residual scalars, an untied head and RMSNorm gains stay with AdamW; every Linear weight in
    the blocks (value-embedding gates included) is Muon's."""
    from scalegpt.model import GPT, preset_config

    model = GPT(preset_config("tiny", vocab_size=100, pos_emb="rope", norm="rmsnorm", mlp="relu2", value_embeds=True,
                              residual_scalars=True, tie_embeddings=False, bias=False))
    optimizer, _ = build_optimizers(model, OptimSection(name="muon"), "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for p in optimizer.parts["muon"].param_groups[0]["params"]}
    adamw = {names[id(p)] for g in optimizer.parts["adamw"].param_groups for p in g["params"]}
    assert muon == {n for n in names.values() if n.startswith("transformer.h.") and "ln_" not in n}
    assert "transformer.h.1.attn.ve_gate.weight" in muon
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.value_embeds.1.weight",
            "transformer.resid_lambdas", "transformer.x0_lambdas", "transformer.ln_f.weight"} <= adamw
    assert muon.isdisjoint(adamw) and len(muon) + len(adamw) == len(names)


def test_a_nan_in_muons_state_is_seen_by_the_finiteness_check(tiny_model):
    """The trainer's checkpoint check reads optimizer.state: with Muon that must cover both parts, so a NaN in
    Muon's momentum buffer never reaches a checkpoint."""
    from scalegpt.finite import all_finite, state_tensors

    optimizer, _ = build_optimizers(tiny_model, OptimSection(name="muon"), "cpu")
    _fake_step(tiny_model, optimizer, 0)
    assert set(optimizer.state) == {p for g in optimizer.param_groups for p in g["params"]}
    assert bool(all_finite(state_tensors(tiny_model, optimizer)))
    muon_param = optimizer.parts["muon"].param_groups[0]["params"][0]
    next(v for v in optimizer.state[muon_param].values() if isinstance(v, torch.Tensor)).view(-1)[0] = float("nan")
    assert not bool(all_finite(state_tensors(tiny_model, optimizer)))
