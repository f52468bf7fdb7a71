"""The GPT model: shapes, causal masking, loss, init, parameter counts, FLOPs, KV cache, config errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scalegpt.errors import ScalegptError
from scalegpt.config import PRESETS
from scalegpt.model import GPT, GPTConfig, KVCache, preset_config


def test_forward_shapes_and_initial_loss(tiny_model):
    idx = torch.randint(0, 100, (3, 17))
    logits = tiny_model(idx)
    assert logits.shape == (3, 17, 100)  # the real vocabulary, not the padded 128
    loss = tiny_model(idx, targets=torch.randint(0, 100, (3, 17)))
    assert loss.ndim == 0
    # With N(0, 0.02) weights the predictions are nearly uniform: loss close to ln(vocab).
    assert abs(loss.item() - math.log(100)) < 0.1


def test_every_parameter_gets_a_gradient(tiny_model):
    tiny_model.train()
    idx = torch.randint(0, 100, (2, 16))
    loss = tiny_model(idx, targets=idx)
    loss.backward()
    for name, p in tiny_model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_future_tokens_do_not_change_earlier_logits(tiny_model):
    idx = torch.randint(0, 100, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 100
    with torch.no_grad():
        a = tiny_model(idx)
        b = tiny_model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3  # and the changed positions do see the change


def test_targets_minus_one_are_ignored(tiny_model):
    idx = torch.randint(0, 100, (2, 10))
    targets = torch.randint(0, 100, (2, 10))
    targets[0, :4] = -1
    targets[1, 7:] = -1
    logits = tiny_model(idx)
    loss = tiny_model(idx, targets=targets)
    assert loss.dim() == 0  # with targets, only the loss: lm_head and the loss are fused (scalegpt.loss)
    keep = targets != -1
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)
    # What sits behind an ignored target cannot move the loss.
    other = targets.clone()
    loss2 = tiny_model(idx, targets=torch.where(keep, other, torch.full_like(other, -1)))
    torch.testing.assert_close(loss, loss2)


def test_padded_vocab_rows_never_reach_the_logits():
    model = GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=1, n_head=2, n_embd=32, pad_vocab_multiple=64)).eval()
    assert model.lm_head.weight.shape[0] == 128
    idx = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        before = model(idx)
        model.lm_head.weight[100:] = 100.0  # rows of padded ids: would dominate any softmax if they were scored
        after = model(idx)
        loss_after = model(idx, targets=idx)
    assert after.shape[-1] == 100
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    torch.testing.assert_close(loss_after, F.cross_entropy(before.flatten(0, 1), idx.flatten()))
    # Nor the training loss, and they get no gradient from it.
    model.lm_head.weight.grad = None
    loss = model(idx, targets=idx)
    loss.backward()
    torch.testing.assert_close(loss.detach(), loss_after)
    assert model.lm_head.weight.grad[100:].abs().max() == 0


def test_init_statistics():
    n_layer = 8
    model = GPT(GPTConfig(block_size=64, vocab_size=512, n_layer=n_layer, n_head=4, n_embd=256))
    resid_std = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        if "ln_" in name:
            assert torch.all(p == (1 if name.endswith("weight") else 0)), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            std = resid_std if name.endswith("c_proj.weight") else 0.02
            assert p.std().item() == pytest.approx(std, rel=0.03), name
            assert abs(p.mean().item()) < std / 20, name
    assert model.lm_head.weight is model.transformer.wte.weight  # tied


def _count(config: GPTConfig) -> int:
    """Parameters from the architecture on paper: per block 12C^2 + 13C, plus embeddings and the final LayerNorm."""
    C, L = config.n_embd, config.n_layer
    return L * (12 * C * C + 13 * C) + config.padded_vocab_size * C + config.block_size * C + 2 * C


@pytest.mark.parametrize("name,expected", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
])
def test_gpt2_parameter_counts(name, expected):
    config = preset_config(name, vocab_size=50257, pad_vocab_multiple=1)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = GPT(config)
    assert model.num_params() == expected == _count(config)


def test_padded_and_non_embedding_counts():
    config = preset_config("gpt2")  # vocab 50257 padded to 50304
    assert config.padded_vocab_size == 50304
    with torch.device("meta"):
        model = GPT(config)
    assert model.num_params() == 124_439_808 + (50304 - 50257) * 768
    assert model.num_params(exclude_embeddings=True) == 12 * (12 * 768 * 768 + 13 * 768) + 2 * 768


def test_flops_per_token_formula():
    config = preset_config("gpt2", vocab_size=50257, pad_vocab_multiple=1)
    with torch.device("meta"):
        model = GPT(config)
    n_matmul = 124_439_808 - 1024 * 768  # every parameter but the position table
    assert model.flops_per_token() == 6 * n_matmul + 12 * 12 * 768 * 1024
    assert model.flops_per_token(seq_len=256) == 6 * n_matmul + 12 * 12 * 768 * 256


def test_kv_cache_matches_full_forward(tiny_model):
    idx = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        full = tiny_model(idx)
        cache = KVCache(tiny_model.config, batch_size=2, device="cpu")
        parts = [tiny_model(idx[:, :5], cache=cache)]  # prefill
        parts.append(tiny_model(idx[:, 5:8], cache=cache))  # a chunk after a prefix: the masked path
        for t in range(8, 12):  # then one token at a time
            parts.append(tiny_model(idx[:, t:t + 1], cache=cache))
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_sequence_longer_than_block_size_is_refused(tiny_model):
    with pytest.raises(ScalegptError, match="block_size 64"):
        tiny_model(torch.zeros(1, 65, dtype=torch.long))
    cache = KVCache(tiny_model.config, batch_size=1, device="cpu", max_len=8)
    tiny_model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(ScalegptError, match="KV cache holds 8"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_presets_and_config_errors():
    assert set(PRESETS) >= {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny"}
    with pytest.raises(ScalegptError, match="unknown model preset 'gpt5'.*gpt2-medium"):
        preset_config("gpt5")
    with pytest.raises(ScalegptError, match="n_embd .* divisible by model.n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ScalegptError, match="model.n_layer must be >= 1"):
        GPTConfig(n_layer=0)
    with pytest.raises(ScalegptError, match="dropout"):
        GPTConfig(dropout=1.5)
    with pytest.raises(ScalegptError, match=r"unknown model config key\(s\) \['n_lyr'\]"):
        GPTConfig.from_dict({"n_lyr": 2})
    config = preset_config("micro", vocab_size=65)
    assert GPTConfig.from_dict(config.to_dict()) == config


def test_dropout_is_active_only_in_training():
    model = GPT(preset_config("tiny", vocab_size=50, dropout=0.5))
    idx = torch.randint(0, 50, (1, 16))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(idx), model(idx))


def test_bf16_attention_on_cpu_is_computed_in_fp32():
    # torch's CPU flash-attention backward is ~5x slower in bf16 than in fp32, so bf16 heads are attended in fp32
    from scalegpt.model import attention

    q, k, v = (torch.randn(2, 3, 16, 8).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attention(q, k, v, None, True, 0.0)
    assert y.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).bfloat16()
    assert torch.equal(y, want)
    y.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0


def test_bf16_autocast_forward_stays_close_to_fp32():
    torch.manual_seed(0)
    model = GPT.from_preset("tiny", vocab_size=100).eval()
    idx = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        want = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(idx)
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.05)
