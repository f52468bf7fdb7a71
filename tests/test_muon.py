"""scalegpt.muon: each logical matrix of a fused weight (c_attn's q, k, v with GQA; SwiGLU's gate, up) gets exactly the
update torch.optim.Muon gives that matrix as a parameter of its own, and the batched Newton-Schulz iteration equals
torch's per matrix."""
from __future__ import annotations

import pytest
import torch

from scalegpt.config import OptimSection
from scalegpt.model import GPT, preset_config
from scalegpt.muon import Muon, ns_dtype_for, orthogonalise, row_parts
from scalegpt.optim import build_optimizers


def _gqa_swiglu_model() -> GPT:
    # 4 query heads over 2 key/value heads: c_attn is [q (32 rows); k (16); v (16)], c_fc [gate (64); up (64)]
    return GPT(preset_config("tiny", vocab_size=100, n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=64, bias=False))


def test_row_parts_name_the_fused_matrices():
    model = _gqa_swiglu_model()
    parts = row_parts(model)
    block = model.transformer.h[0]
    assert parts[id(block.attn.c_attn.weight)] == (32, 16, 16)
    assert parts[id(block.mlp.c_fc.weight)] == (64, 64)
    assert id(block.attn.c_proj.weight) not in parts and id(block.mlp.c_proj.weight) not in parts
    gpt2 = GPT(preset_config("tiny", vocab_size=100))  # no GQA, GELU: c_attn still three matrices, c_fc one
    assert set(row_parts(gpt2).values()) == {(32, 32, 32)}


@pytest.mark.parametrize("adjust_lr", ["original", "match_rms_adamw"])
def test_each_part_steps_as_torchs_muon_on_that_part_alone(adjust_lr):
    """Four steps with Nesterov momentum and weight decay: every row block of every Muon matrix follows
    torch.optim.Muon stepping that block as a separate parameter with the block's gradient."""
    torch.manual_seed(0)
    model = _gqa_swiglu_model()
    optimizer, _ = build_optimizers(model, OptimSection(name="muon", muon_lr=0.02, muon_weight_decay=0.1,
                                                        muon_adjust_lr=adjust_lr), "cpu")
    muon = optimizer.parts["muon"]
    assert isinstance(muon, Muon) and muon.ns_dtype == torch.float32  # on a CPU (test_newton_schulz_dtype_...)
    muon.ns_dtype = torch.bfloat16  # torch.optim.Muon's Newton-Schulz dtype, as on a GPU
    parts = row_parts(model)
    weights = muon.param_groups[0]["params"]
    # the reference: one nn.Parameter per logical matrix, stepped by torch's own Muon
    blocks = [(w, start, n) for w in weights for start, n in _spans(parts.get(id(w), (w.size(0),)))]
    alone = [torch.nn.Parameter(w.detach()[start:start + n].clone()) for w, start, n in blocks]
    reference = torch.optim.Muon(alone, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True,
                                 adjust_lr_fn=adjust_lr)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        for w in weights:
            w.grad = torch.randn(w.shape, generator=g)
        for (w, start, n), p in zip(blocks, alone):
            p.grad = w.grad[start:start + n].clone()
        muon.step()
        reference.step()
        for (w, start, n), p in zip(blocks, alone):
            torch.testing.assert_close(w.detach()[start:start + n], p.detach(), rtol=0, atol=1e-6)
    # and the fused update is not the whole matrix orthogonalised as one (which this change replaces)
    assert len(blocks) > len(weights)


def _spans(rows):
    start = 0
    for n in rows:
        yield start, n
        start += n


def test_batched_newton_schulz_equals_torchs_per_matrix():
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _zeropower_via_newtonschulz

    g = torch.Generator().manual_seed(0)
    shapes = [(32, 32), (32, 32), (16, 32), (128, 32), (32, 128), (32, 128), (7, 5)]
    matrices = [torch.randn(s, generator=g) * 10 for s in shapes]
    coefficients = (DEFAULT_A, DEFAULT_B, DEFAULT_C)
    for m, ours in zip(matrices, orthogonalise(matrices, coefficients, 5, EPS)):
        theirs = _zeropower_via_newtonschulz(m, coefficients, 5, EPS)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=0, atol=2e-2)  # a few bf16 ulps of ~1



def _newton_schulz(m: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch's Newton-Schulz iteration written out for one matrix, computed in `dtype`."""
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS

    x = (m.mT if m.size(0) > m.size(1) else m).to(dtype)
    x = x / x.norm().clamp(min=EPS)
    for _ in range(5):
        gram = x @ x.mT
        x = DEFAULT_A * x + (DEFAULT_B * gram + DEFAULT_C * gram @ gram) @ x
    return x.mT if m.size(0) > m.size(1) else x


def test_newton_schulz_in_fp32_is_the_same_iteration_computed_in_fp32():
    """On a CPU the trainer runs Newton-Schulz in fp32 (bf16 matmuls there are slow or emulated): the same iteration
    as torch's, written out here per matrix in fp32, within fp32 rounding; on CUDA it stays bf16 (torch's)."""
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS

    g = torch.Generator().manual_seed(0)
    matrices = [torch.randn(s, generator=g) * 10 for s in [(32, 32), (32, 32), (128, 32), (32, 128), (7, 5)]]
    for m, ours in zip(matrices, orthogonalise(matrices, (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, EPS, torch.float32)):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, _newton_schulz(m), rtol=0, atol=1e-5)
    assert ns_dtype_for("cpu") == torch.float32 and ns_dtype_for("cuda") == torch.bfloat16


def test_wide_matrices_iterate_on_their_gram_matrix_within_fp32_rounding(monkeypatch):
    """Matrices more than 1.5x as wide as tall (Muon's MLP matrices) go through the same iteration written on their
    m x m Gram matrix (fewer FLOPs): it matches the iteration computed in float64, also on an ill-conditioned
    matrix (singular values from 1 down to 1e-6, as a low-rank momentum has): there its error (7e-5 on entries up to
    0.16) is ~35x the direct fp32 iteration's, and under a tenth of torch's own bf16 iteration's."""
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS

    import scalegpt.muon as muon

    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(256, 64, generator=g))
    ill = (u * torch.logspace(0, -6, 64)) @ v.T  # 64 x 256
    matrices = [torch.randn(64, 256, generator=g), ill, ill.T.contiguous(), torch.randn(48, 80, generator=g)]
    calls = []
    real = muon._newton_schulz_on_gram
    monkeypatch.setattr(muon, "_newton_schulz_on_gram", lambda x, *a: calls.append(tuple(x.shape)) or real(x, *a))
    ours = orthogonalise(matrices, (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, EPS, torch.float32)
    assert sorted(calls) == [(1, 48, 80), (3, 64, 256)]  # 80 > 1.5 x 48; the three 64 x 256 ones in one batch
    for m, o in zip(matrices, ours):
        exact = _newton_schulz(m, torch.float64)
        ours_err = (o.double() - exact).abs().max().item()
        bf16_err = (_newton_schulz(m, torch.bfloat16).double() - exact).abs().max().item()
        assert ours_err < 1.5e-4 and ours_err < bf16_err / 10, (ours_err, bf16_err)
    # in bf16 (torch's dtype, a GPU's) the direct iteration is kept
    calls.clear()
    orthogonalise(matrices[:1], (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, EPS, torch.bfloat16)
    assert calls == []
