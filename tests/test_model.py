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


# ---------------------------------------------------------------------------------------------------- model options

# Every switch away from GPT-2 at once (tiny shapes: 4 query heads sharing 1 key/value head).
ALL_OPTIONS = dict(pos_emb="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, n_kv_head=1, tie_embeddings=False,
                   zero_init=True, value_embeds=True, residual_scalars=True, embed_norm=True, logit_softcap=15.0,
                   bias=False)


def _options_model(**options) -> GPT:
    return GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=32, vocab_size=50, **options)).eval()


def _randomised(model: GPT) -> GPT:
    """Every parameter moved off its init (zero-init weights, unit gains), so no option is a no-op by accident."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def test_each_option_changes_the_parameters_it_should():
    names = lambda m: set(dict(m.named_parameters()))  # noqa: E731
    gpt2 = names(_options_model())
    assert "transformer.wpe.weight" in gpt2 and "transformer.h.0.ln_1.bias" in gpt2
    assert "transformer.wpe.weight" not in names(_options_model(pos_emb="rope"))
    rms = _options_model(norm="rmsnorm", norm_eps=1e-6)
    assert isinstance(rms.transformer.h[0].ln_1, torch.nn.RMSNorm) and rms.transformer.ln_f.eps == 1e-6
    assert "transformer.h.0.ln_1.bias" not in names(rms)
    assert not any(".ln_" in n for n in names(_options_model(norm_learnable=False)))
    assert not any(n.endswith(".bias") for n in names(_options_model(bias=False)))
    mlp = lambda **o: _options_model(**o).transformer.h[0].mlp  # noqa: E731
    assert mlp(mlp="swiglu").c_fc.weight.shape == (2 * 128, 32)  # 8/3 * 32 = 85.3, up to a multiple of 64
    assert mlp(mlp="swiglu").c_proj.weight.shape == (32, 128)
    assert mlp(mlp="relu2", mlp_hidden=48).c_fc.weight.shape == (48, 32)
    attn = _options_model(head_dim=16, n_kv_head=2, qk_norm=True).transformer.h[0].attn
    assert attn.c_attn.weight.shape == (4 * 16 + 2 * 2 * 16, 32) and attn.c_proj.weight.shape == (32, 4 * 16)
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (16,)
    untied = _options_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert "lm_head.weight" in names(untied) and "lm_head.weight" not in names(_options_model())
    assert "transformer.embed_norm.weight" in names(_options_model(embed_norm=True))
    ve = _options_model(value_embeds=True)
    assert sorted(ve.transformer.value_embeds) == ["0", "2"]  # every other layer, the last one included
    assert ve.transformer.value_embeds["2"].weight.shape == (64, 32)  # (padded vocab, n_kv_head * head_dim)
    assert hasattr(ve.transformer.h[2].attn, "ve_gate") and not hasattr(ve.transformer.h[1].attn, "ve_gate")
    scalars = _options_model(residual_scalars=True).transformer
    assert torch.equal(scalars.resid_lambdas, torch.ones(3)) and torch.equal(scalars.x0_lambdas, torch.zeros(3))


def test_zero_init_zeroes_residual_projections_and_only_an_untied_head():
    model = _options_model(zero_init=True, tie_embeddings=False)
    for block in model.transformer.h:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
        assert block.attn.c_attn.weight.std() > 0.01
    assert not model.lm_head.weight.any() and model.transformer.wte.weight.std() > 0.01
    tied = _options_model(zero_init=True)
    assert tied.lm_head.weight.std() > 0.01  # the head is the embedding: never zeroed


def test_logit_softcap_bounds_the_logits():
    model = _options_model(logit_softcap=3.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(500)  # raw logits in the hundreds
        logits = model(torch.randint(0, 50, (2, 16)))
    assert logits.abs().max() <= 3.0 and logits.abs().max() > 2.9


@pytest.mark.parametrize("options", [dict(logit_softcap=2.0), ALL_OPTIONS])
def test_fused_loss_equals_cross_entropy_of_the_logits(options):
    model = _randomised(_options_model(**options))
    idx, targets = torch.randint(0, 50, (2, 24)), torch.randint(0, 50, (2, 24))
    targets[0, :5] = -1
    fused = model(idx, targets)
    fused.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten(), ignore_index=-1)
    plain.backward()
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_all_options_train_causally_and_every_parameter_learns():
    model = _randomised(_options_model(**ALL_OPTIONS))
    idx = torch.randint(0, 50, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 50
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3
    model.train()
    model(idx, idx).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gqa_equals_attention_over_repeated_kv_heads():
    model = _randomised(_options_model(n_kv_head=2, head_dim=8))
    attn, x = model.transformer.h[0].attn, torch.randn(2, 10, 32)
    q, k, v = attn.c_attn(x).split([32, 16, 16], dim=2)
    q, k, v = (t.view(2, 10, -1, 8).transpose(1, 2) for t in (q, k, v))
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # kv head j serves query heads 2j, 2j+1
    want = attn.c_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 10, 32))
    torch.testing.assert_close(attn(x), want, rtol=1e-5, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    from scalegpt.model import Rotary

    rotary, q, k = Rotary(16, 10000.0), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)

    def scores(start):
        rq, rk = rotary(q, start), rotary(k, start)
        return rq @ rk.transpose(-1, -2)

    torch.testing.assert_close(scores(37), scores(0), rtol=1e-4, atol=1e-4)
    assert (rotary(q, 3) - rotary(q, 0)).abs().max() > 0.1  # absolute positions do move q itself
    # HF Llama's layout (rotate_half), the one the Llama/Qwen3 exporter relies on.
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    hf = LlamaRotaryEmbedding(LlamaConfig(hidden_size=32, num_attention_heads=2, head_dim=16, rope_theta=10000.0))
    cos, sin = hf(q, torch.arange(5, 11)[None])
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    got_q, got_k = rotary(q, 5), rotary(k, 5)
    torch.testing.assert_close(got_q, want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k, want_k, rtol=1e-5, atol=1e-5)


def test_kv_cache_with_rope_gqa_and_all_options_matches_full_forward():
    model = _randomised(_options_model(**ALL_OPTIONS))
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model.config, batch_size=2, device="cpu")
        assert cache.k.shape == (3, 2, 1, 32, 8)  # only the n_kv_head heads are cached
        parts = [model(idx[:, :5], cache=cache), model(idx[:, 5:8], cache=cache)]
        parts += [model(idx[:, t:t + 1], cache=cache) for t in range(8, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_counts_and_flops_follow_the_options():
    C, L, V, hd = 32, 3, 64, 8
    model = _options_model(pos_emb="rope", tie_embeddings=False, n_kv_head=2, mlp="swiglu", bias=False)
    per_block = C * (4 * hd + 2 * 2 * hd) + 4 * hd * C + 3 * C * 128 + 2 * C  # attn, swiglu (2 in, 1 out), norms
    n = L * per_block + 2 * V * C + C  # wte and an untied head, ln_f
    assert model.num_params() == n
    assert model.num_params(exclude_embeddings=True) == n - V * C
    assert model.flops_per_token(16) == 6 * (n - V * C) + 12 * L * C * 16  # wte is a lookup when untied
    ve = _options_model(value_embeds=True)  # position table and value embeddings: lookups, no FLOPs
    assert ve.flops_per_token(16) == 6 * (ve.num_params() - 32 * C - 2 * V * 4 * hd) + 12 * L * C * 16


def test_option_config_errors_and_the_legacy_activation_key(tmp_path):
    from scalegpt.config import load_config

    with pytest.raises(ScalegptError, match=r"model.n_head \(4\) must be divisible by model.n_kv_head \(3\)"):
        GPTConfig(n_head=4, n_embd=32, n_kv_head=3)
    with pytest.raises(ScalegptError, match=r"model.mlp must be one of gelu_tanh \| gelu \| relu2 \| swiglu, got .relu."):
        GPTConfig(mlp="relu")
    with pytest.raises(ScalegptError, match="model.logit_softcap must be >= 0"):
        GPTConfig(logit_softcap=-1.0)
    assert GPTConfig(n_embd=30, n_head=4, head_dim=8).head_size == 8  # head_dim frees n_embd from n_head
    # Checkpoints and configs written before `mlp` replaced `activation` still load.
    assert GPTConfig.from_dict({"activation": "gelu", "n_layer": 2}).mlp == "gelu"
    (tmp_path / "old.toml").write_text('[model]\nactivation = "gelu"\n')
    assert load_config(tmp_path / "old.toml").model.mlp == "gelu"
    assert load_config(None, [("model.activation", "relu2")]).model.mlp == "relu2"
