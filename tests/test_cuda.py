"""GPU-only checks (pytest marker `cuda`; skipped with a reason where CUDA is absent). `scripts/gpu_check.sh` runs
them first on a GPU machine: `python -m pytest -m cuda tests/test_cuda.py`."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")]


def _model(**overrides):
    from scalegpt.model import GPT, preset_config

    return GPT(preset_config("tiny", vocab_size=100, **overrides)).cuda()


def _batch(B=4, T=32, vocab=100):
    x = torch.randint(0, vocab, (B, T + 1), device="cuda")
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def test_bf16_autocast_training_step_is_finite():
    from scalegpt.optim import build_optimizer

    model = _model()
    opt, _ = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cuda")
    x, y = _batch()
    losses = []
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert torch.isfinite(loss) and torch.isfinite(norm)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fused_adamw_is_used_on_cuda():
    from scalegpt.optim import build_optimizer

    opt, info = build_optimizer(_model(), 1e-3, 0.1, (0.9, 0.95), 1e-8, "cuda")  # fused="auto", the default
    assert all(g.get("fused") for g in opt.param_groups), info


def test_flash_sdpa_backend_runs_the_models_attention_shape():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from scalegpt.model import GPT, preset_config

    cfg = preset_config("gpt2", vocab_size=50257)  # 12 heads of 64, as the 124M run attends
    B, T, H, D = 2, 1024, cfg.n_head, cfg.n_embd // cfg.n_head
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        y.float().sum().backward()
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(y.float(), ref, atol=2e-2, rtol=2e-2)
    # The whole model's forward and backward also run with only the flash kernel allowed.
    model = GPT(preset_config("tiny", vocab_size=100, block_size=256)).cuda()
    x, yt = _batch(2, 256)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, yt)
    loss.backward()
    assert torch.isfinite(loss)


def test_compiled_forward_matches_eager():
    model = _model().eval()
    compiled = torch.compile(model)
    x, y = _batch()
    with torch.no_grad():
        eager_logits = model(x)
        compiled_logits = compiled(x)
        eager_loss = model(x, y)
        compiled_loss = compiled(x, y)
    torch.testing.assert_close(compiled_logits, eager_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)


MODERN = dict(pos_emb="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, n_head=4, n_kv_head=2,
              tie_embeddings=False, value_embeds=True, residual_scalars=True, embed_norm=True, logit_softcap=15.0,
              bias=False)


def test_all_model_options_train_in_bf16_and_compile_like_eager():
    from scalegpt.optim import build_optimizer

    model = _model(**MODERN)
    x, y = _batch()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager, compiled = model(x, y), torch.compile(model)(x, y)
        plain = torch.nn.functional.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
    torch.testing.assert_close(compiled, eager, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(plain, eager, atol=2e-2, rtol=2e-2)  # softcap inside the fused loss, in bf16
    opt, _ = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cuda")
    losses = []
    for _ in range(4):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and losses[-1] < losses[0]


def test_kv_cache_greedy_equals_no_cache_greedy_on_cuda():
    from scalegpt.generate import generate_tokens

    model = _model().eval()
    prompt = torch.randint(0, 100, (3, 5), device="cuda")
    # 100 new tokens from a 5-token prompt cross the 64-token block: the window slides on both paths.
    cached = torch.stack(list(generate_tokens(model, prompt, 100, temperature=0)), 1)
    plain = torch.stack(list(generate_tokens(model, prompt, 100, temperature=0, use_cache=False)), 1)
    assert torch.equal(cached, plain)


def test_trainer_applies_the_tf32_flag(tmp_path):
    import numpy as np

    from scalegpt.config import load_config
    from scalegpt.train import Trainer

    data = tmp_path / "data"
    _write_dataset(data, np.random.default_rng(0).integers(0, 100, 20_000))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for flag in (True, False):
            overrides = [("data.dir", str(data)), ("train.device", "cuda"), ("train.tf32", str(flag)),
                         ("model.n_layer", "1"), ("model.n_head", "2"), ("model.n_embd", "32"),
                         ("model.block_size", "32"), ("train.global_batch_tokens", "128"),
                         ("train.micro_batch_size", "4"), ("train.max_steps", "1"), ("train.compile", "false"),
                         ("eval.interval", "0"), ("eval.at_start", "false"), ("log.plot", "false")]
            Trainer(load_config(None, overrides), tmp_path / f"run_{flag}", echo=lambda *_: None)
            assert torch.backends.cuda.matmul.allow_tf32 is flag
            assert torch.backends.cudnn.allow_tf32 is flag
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _write_dataset(directory, tokens) -> None:
    """A char-tokenizer dataset through `scalegpt prepare`'s own writer: text of 100 distinct characters."""
    from scalegpt.prepare import prepare

    alphabet = [chr(33 + i) for i in range(100)]
    text = "".join(alphabet[t] for t in tokens)
    src = directory.parent / "corpus.txt"
    src.write_text(text, encoding="utf-8")
    prepare([str(src)], str(directory), "char", progress=False)
