"""scalegpt.resources: memory estimates before allocating, and the one check that refuses what cannot fit."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from scalegpt.config import GPTConfig, load_config, seq_len, shipped_configs
from scalegpt.errors import ScalegptError
from scalegpt.model import GPT
from scalegpt.resources import (Estimate, available_memory, check_fits, check_generation, estimate_training,
                                param_count)

GiB = 1 << 30


@pytest.mark.parametrize("switches", list(itertools.product(
    ["learned", "rope"], ["layernorm", "rmsnorm"], ["gelu_tanh", "swiglu"], [True, False], [True, False],
    [True, False], [0, 1])))
def test_param_count_is_exactly_what_the_model_holds(switches):
    pos, norm, mlp, bias, tie, extras, kv = switches
    config = GPTConfig(n_layer=3, n_head=2, n_embd=16, block_size=8, vocab_size=50, pos_emb=pos, norm=norm, mlp=mlp,
                       bias=bias, tie_embeddings=tie, qk_norm=extras, value_embeds=extras, residual_scalars=extras,
                       embed_norm=extras, n_kv_head=kv)
    with torch.device("meta"):
        model = GPT(config)
    assert param_count(config) == model.num_params()


def _preset(name: str):
    config = load_config(name, [])
    model = dataclasses.replace(config.model, vocab_size=config.model.vocab_size or 50257)  # the GPT-2 tokenizer's
    return config, model


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_preset_fits_one_80_gib_gpu(name):
    """The presets are real recipes: on an H100/A100 80 GB (bf16, the GPU default) none is refused."""
    config, model = _preset(name)
    est = estimate_training(model, config.train.micro_batch_size, seq_len(config), "bf16", config.optim.name,
                            config.dist.activation_checkpointing)
    line = check_fits(est, "cuda", available=80 * GiB)
    assert line.startswith("memory: estimated ") and "activations" in line


def test_gpt2_124m_needs_what_build_nanogpt_uses():
    """GPT-2 124M at 64 x 1024 tokens in bf16: ~31 GiB (build-nanogpt trains this micro-batch on 40/80 GB GPUs),
    so a 24 GiB CPU refuses it and names the batch, while 8 sequences (~6.4 GiB) fit."""
    config, model = _preset("gpt2-124m")
    assert param_count(model) == 124_475_904  # GPT-2 small with the vocabulary padded to 50,304
    est = estimate_training(model, 64, 1024, "bf16")
    assert 25 * GiB < est.total < 40 * GiB
    with pytest.raises(ScalegptError) as e:
        check_fits(est, "cpu", "training", available=24 * GiB)
    message = str(e.value)
    assert "\n" not in message and "training: needs an estimated 31." in message
    assert "24.0 GiB" in message and "train.micro_batch_size" in message
    assert estimate_training(model, 8, 1024, "bf16").total < 8 * GiB


def test_a_huge_model_names_its_keys_and_the_memory_available():
    config = GPTConfig(n_layer=100_000, n_embd=8192, n_head=64, vocab_size=50257)
    with pytest.raises(ScalegptError, match=r"needs an estimated .*PiB.*lower model\.n_layer, model\.n_embd"):
        check_fits(estimate_training(config, 1, 1024), "cpu", "training")


def test_available_memory_reads_the_machine():
    free, source = available_memory("cpu")
    assert free > 0 and ("RAM" in source or "unknown" in source)


def test_check_fits_passes_a_small_estimate_and_reports_it():
    line = check_fits(Estimate().add("weights", 1024, "model.n_embd"), "cpu")
    assert line.startswith("memory: estimated 1.0 KiB (weights 1.0 KiB), of ")


def _rope_model(block_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=64, pos_emb="rope"))


def test_generate_refuses_a_kv_cache_that_cannot_fit_before_allocating_it():
    from scalegpt.generate import generate_tokens

    model = _rope_model(2**28)  # tiny weights, no position table, 2^28 positions to cache
    tokens = generate_tokens(model, torch.zeros(64, 1, dtype=torch.long), max_new_tokens=4)
    with pytest.raises(ScalegptError, match=r"generation \(64 row\(s\)\): needs an estimated .*KV cache .*TiB"):
        next(tokens)


def test_generation_length_is_capped_and_the_cap_is_stated():
    from scalegpt.config.sections import MAX_NEW_TOKENS

    config = _rope_model(16).config
    for bad in (0, MAX_NEW_TOKENS + 1, 10**12, 1.5, True):
        with pytest.raises(ScalegptError, match=rf"max_new_tokens must be an integer in \[1, {MAX_NEW_TOKENS}\]"):
            check_generation(config, 1, 1, bad, "cpu")
    check_generation(config, 1, 1, MAX_NEW_TOKENS, "cpu")  # the cap itself is allowed


def test_sampling_refuses_a_denormal_temperature_and_a_seed_beyond_64_bits():
    from scalegpt.generate import generate
    from scalegpt.tokenizer import CharTokenizer

    model = _rope_model(16)
    tok = CharTokenizer("abcdefgh")
    with pytest.raises(ScalegptError, match=r"temperature must be 0 \(greedy\) or in \[0.0001, 100\], got 1e-45"):
        generate(model, tok, "ab", max_new_tokens=2, temperature=1e-45)
    with pytest.raises(ScalegptError, match=r"seed must be an integer in \[0, 2\^64\)"):
        generate(model, tok, "ab", max_new_tokens=2, seed=2**70)
    assert len(generate(model, tok, "ab", max_new_tokens=3, temperature=1e-4, seed=1)[0]) == 3  # the floor works


def test_numeric_flags_share_one_parser():
    from scalegpt.cli.numbers import integer, real

    parse = integer("--n", 1, 100)
    assert parse("1e2") == 100 and parse("1_0") == 10 and parse("2,0") == 20
    for text, message in (("inf", "--n: expected a finite integer"), ("nan", "--n: expected a finite integer"),
                          ("1.5", "--n: expected a finite integer"), ("x", "--n: expected an integer"),
                          ("0", "--n must be >= 1, got 0"), (str(2**70), "--n must be <= 100, got 1180591")):
        with pytest.raises(ScalegptError, match=message.replace("(", r"\(")):
            parse(text)
    fraction = real("--f", 0.0, 1.0, high_open=True)
    assert fraction("0.5") == 0.5
    for text in ("1", "nan", "inf", "-0.1", "1e308"):
        with pytest.raises(ScalegptError, match=r"--f must be in \[0, 1\)"):
            fraction(text)
