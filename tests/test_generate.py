"""Generation: KV-cache decoding against full recomputation and transformers, sampling controls, the `sample` CLI."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from scalegpt.errors import ScalegptError
from scalegpt.generate import (
    OneDNNLinear, StreamDecoder, encode_prompt, filter_logits, for_cpu_decoding, generate, generate_tokens,
    sample_next, stream,
)
from scalegpt.model import GPT, GPTConfig, preset_config
from scalegpt.tokenizer import CharTokenizer, get_tokenizer
from scalegpt.checkpoint import save_model_dir

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n"


@pytest.fixture
def char_tok():
    return CharTokenizer.from_text(TEXT)


@pytest.fixture
def char_model(char_tok):
    return GPT(preset_config("tiny", vocab_size=char_tok.vocab_size, block_size=32)).eval()


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """Recompute the whole window every step; the window slides as documented in scalegpt.generate."""
    block = model.config.block_size
    window, out = list(prompt[-block:]), []
    for _ in range(n):
        if len(window) > block:
            window = window[-(block // 2):]
        logits = model(torch.tensor([window]))
        t = int(logits[0, -1].argmax())
        window.append(t)
        out.append(t)
    return out


def run_tokens(model, idx, n, **kw) -> torch.Tensor:
    return torch.stack(list(generate_tokens(model, idx, n, **kw)), dim=1)


# -------------------------------------------------------------------------------------------------------- greedy


def test_greedy_kv_cache_equals_full_recompute(tiny_model):
    idx = torch.randint(0, 100, (3, 7))
    cached = run_tokens(tiny_model, idx, 20, temperature=0)
    uncached = run_tokens(tiny_model, idx, 20, temperature=0, use_cache=False)
    assert cached.shape == (3, 20)
    assert torch.equal(cached, uncached)
    for r in range(3):
        assert cached[r].tolist() == greedy_reference(tiny_model, idx[r].tolist(), 20)


def test_greedy_kv_cache_equals_full_recompute_with_rope_gqa_and_qk_norm():
    config = preset_config("tiny", vocab_size=100, n_head=4, n_kv_head=2, pos_emb="rope", qk_norm=True,
                           norm="rmsnorm", value_embeds=True, residual_scalars=True, block_size=24)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger weights: more decisive argmaxes, so a wrong position would show
            p.add_(torch.randn_like(p) * 0.3)
    idx = torch.randint(0, 100, (2, 5))
    cached = run_tokens(model, idx, 30, temperature=0)  # past block_size: the window slides and RoPE restarts
    assert torch.equal(cached, run_tokens(model, idx, 30, temperature=0, use_cache=False))
    for r in range(2):
        assert cached[r].tolist() == greedy_reference(model, idx[r].tolist(), 30)


def test_caller_grad_mode_and_model_mode_are_left_alone(tiny_model):
    tiny_model.train()
    steps = generate_tokens(tiny_model, torch.randint(0, 100, (1, 4)), 3, temperature=0)
    next(steps)
    assert torch.is_grad_enabled()  # the suspended generator does not leak no_grad into the caller
    assert list(steps) and tiny_model.training


def _hf_pair(block_size=64, vocab=96):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(vocab_size=vocab, n_positions=block_size, n_embd=32, n_layer=2, n_head=4,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    ours = GPT(GPTConfig(block_size=block_size, vocab_size=vocab, n_layer=2, n_head=4, n_embd=32)).eval()
    # HF's Conv1D stores (in, out) where nn.Linear stores (out, in); our padded vocabulary rows get zeros.
    state = {}
    for k, v in hf.state_dict().items():
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
            continue
        if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            v = v.t()
        state[k] = v
    wte = state["transformer.wte.weight"]
    state["transformer.wte.weight"] = torch.cat([wte, torch.zeros(ours.config.padded_vocab_size - vocab, 32)])
    state["lm_head.weight"] = state["transformer.wte.weight"]
    ours.load_state_dict(state)
    return hf, ours


def test_greedy_matches_transformers_generate():
    hf, ours = _hf_pair()
    idx = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        expected = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=30, do_sample=False,
                               pad_token_id=0, eos_token_id=None)[:, 9:]
    assert expected.shape == (2, 30)
    assert torch.equal(run_tokens(ours, idx, 30, temperature=0), expected)
    assert torch.equal(run_tokens(ours, idx, 30, temperature=0, use_cache=False), expected)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN backend")
@pytest.mark.parametrize("switches", [{}, dict(pos_emb="rope", norm="rmsnorm", n_kv_head=2, mlp="swiglu",
                                               qk_norm=True, tie_embeddings=False, bias=False)])
def test_cpu_decoding_swaps_every_linear_and_keeps_the_logits(switches):
    """for_cpu_decoding puts every Linear (lm_head included) on oneDNN: the logits stay those of the plain model
    to float rounding, and greedy decoding gives the same tokens."""
    torch.manual_seed(0)
    plain = GPT(preset_config("tiny", vocab_size=100, **switches)).eval()
    with torch.no_grad():  # spread-out logits: no near-ties for argmax
        for p in plain.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    packed = for_cpu_decoding(copy.deepcopy(plain))
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    assert isinstance(packed.lm_head, OneDNNLinear)
    idx = torch.randint(0, 100, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(packed(idx), plain(idx), atol=1e-4, rtol=1e-4)
    assert torch.equal(run_tokens(packed, idx, 20, temperature=0), run_tokens(plain, idx, 20, temperature=0))


def test_cpu_decoding_leaves_a_bf16_model_as_it_is(tiny_model):
    model = for_cpu_decoding(tiny_model.to(torch.bfloat16))
    assert isinstance(model.lm_head, torch.nn.Linear)


def test_window_slides_past_block_size(char_tok):
    model = GPT(preset_config("tiny", vocab_size=char_tok.vocab_size, block_size=12)).eval()
    prompt = torch.randint(0, char_tok.vocab_size, (2, 5))
    n = 40  # slides at 13, 19, 25, ... tokens
    cached = run_tokens(model, prompt, n, temperature=0)
    assert cached.shape == (2, n)
    assert torch.equal(cached, run_tokens(model, prompt, n, temperature=0, use_cache=False))
    assert cached[0].tolist() == greedy_reference(model, prompt[0].tolist(), n)


def test_long_prompt_keeps_its_last_block(char_tok, char_model):
    block = char_model.config.block_size
    prompt = TEXT * 3
    ids, dropped = encode_prompt(char_tok, prompt, block)
    assert dropped == len(prompt) - block and ids == char_tok.encode(prompt)[-block:]
    out = generate(char_model, char_tok, prompt, max_new_tokens=10, temperature=0)
    assert out == [char_tok.decode(greedy_reference(char_model, ids, 10))]


def test_empty_prompt_starts_from_end_of_text(char_tok, char_model):
    assert encode_prompt(char_tok, "", 32) == ([char_tok.eot_id], 0)
    out = generate(char_model, char_tok, "", max_new_tokens=8, temperature=0)
    assert out == [char_tok.decode(greedy_reference(char_model, [char_tok.eot_id], 8))]


# ------------------------------------------------------------------------------------------------------ sampling


def test_sampling_is_reproducible_per_seed_and_leaves_global_rng(char_tok, char_model):
    state = torch.get_rng_state()
    a = generate(char_model, char_tok, "Speak", max_new_tokens=30, num_samples=3, seed=42)
    b = generate(char_model, char_tok, "Speak", max_new_tokens=30, num_samples=3, seed=42)
    c = generate(char_model, char_tok, "Speak", max_new_tokens=30, num_samples=3, seed=43)
    assert a == b and a != c
    assert len(a) == 3 and len(set(a)) == 3  # the rows of one batch are different samples
    assert all(len(s) == 30 for s in a)  # one character per token
    assert torch.equal(torch.get_rng_state(), state)


def test_top_k_and_top_p_masks():
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.2, 0.15]])
    logits = probs.log()
    kept = lambda out: torch.isfinite(out[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_k=5)) == [0, 1, 2, 3, 4]
    assert kept(filter_logits(logits, top_p=0.6)) == [1, 3]  # 0.5 alone is short of 0.6; 0.5 + 0.2 reaches it
    assert kept(filter_logits(logits, top_p=0.5)) == [1]
    assert kept(filter_logits(logits, top_p=0.01)) == [1]  # the most likely token always stays
    assert kept(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3, 4]
    assert kept(filter_logits(logits, top_k=3, top_p=0.9)) == [1, 3, 4]
    kept_values = filter_logits(logits, top_k=2)[0, [1, 3]]
    assert torch.equal(kept_values, logits[0, [1, 3]])  # survivors are untouched


def test_sampling_respects_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 50)
    top3 = logits.topk(3, dim=-1).indices
    drawn = sample_next(logits, temperature=1.5, top_k=3, generator=g)
    assert (drawn[:, None] == top3).any(dim=1).all()
    assert torch.equal(sample_next(logits, temperature=0.7, top_k=1, generator=g), logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))
    # Low temperature concentrates on the argmax, temperature 1 does not.
    row = torch.tensor([[2.0, 1.0, 0.0]]).expand(4000, 3)
    cold = sample_next(row, temperature=0.1, generator=g)
    warm = sample_next(row, temperature=1.0, generator=g)
    assert (cold == 0).float().mean() > 0.99
    share = (warm == 0).float().mean().item()
    assert abs(share - math.exp(2) / (math.exp(2) + math.exp(1) + 1)) < 0.04


@pytest.mark.parametrize("kw,match", [
    (dict(top_p=0.0), "top-p"), (dict(top_p=1.5), "top-p"), (dict(top_k=0), "top-k"),
    (dict(top_k=10_000), "top-k"), (dict(temperature=-0.5), "temperature"), (dict(num_samples=0), "num_samples"),
    (dict(stop=""), "stop"),
])
def test_bad_sampling_arguments(char_tok, char_model, kw, match):
    with pytest.raises(ScalegptError, match=match):
        generate(char_model, char_tok, "x", max_new_tokens=2, **kw)


# ---------------------------------------------------------------------------------------------------------- stops


def test_stop_strings_and_tokens(char_tok, char_model):
    full = generate(char_model, char_tok, "All", max_new_tokens=40, temperature=0)[0]
    stop_text = full[10:12]
    cut = full.find(stop_text)
    assert generate(char_model, char_tok, "All", max_new_tokens=40, temperature=0, stop=stop_text) == [full[:cut]]
    stop_id = char_tok.encode(full[7])[0]
    expected = full[:full.find(full[7])]
    assert generate(char_model, char_tok, "All", max_new_tokens=40, temperature=0, stop=stop_id) == [expected]
    both = generate(char_model, char_tok, "All", max_new_tokens=40, temperature=0, stop=["@@", stop_text])
    assert both == [full[:cut]]


def test_stream_pieces_join_to_generate(char_tok, char_model):
    for stop in (None, "ea"):
        pieces = list(stream(char_model, char_tok, "Be", max_new_tokens=40, seed=7, stop=stop))
        assert "".join(pieces) == generate(char_model, char_tok, "Be", max_new_tokens=40, seed=7, stop=stop)[0]
        assert len(pieces) > 3  # produced incrementally, not at the end


def test_stream_decoder_holds_back_split_utf8():
    tok = get_tokenizer("gpt2")
    text = "naïve café 🙂 世界 — done"
    ids = tok.encode(text)
    split = [i for i in ids if not tok.decode_bytes([i]).decode("utf-8", errors="ignore")]
    assert split, "expected some token holding an incomplete UTF-8 character"
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


# ------------------------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def char_checkpoint(tmp_path, char_tok, char_model):
    run = tmp_path / "run"
    save_model_dir(char_model, run / "checkpoints" / "step_000005", tokenizer_spec=char_tok.spec())
    return run


def test_cli_sample_is_reproducible(run_cli, char_checkpoint):
    args = ["sample", "--checkpoint", char_checkpoint, "--prompt", "Speak", "--num-samples", "3",
            "--max-new-tokens", "20", "--seed", "42"]
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    assert out.count("sample ") == 3 and out.count("Speak") == 3
    assert run_cli(*args)[1] == out
    rc, other, _ = run_cli(*args[:-1], "43")
    assert rc == 0 and other != out


def test_cli_sample_seeds_and_greedy(run_cli, char_checkpoint, char_tok, char_model):
    rc, out, err = run_cli("sample", "--checkpoint", char_checkpoint, "--seeds", "1,2,3", "--max-new-tokens", "5")
    assert rc == 0, err
    assert [line for line in out.splitlines() if line.startswith("---")] == [f"{'-' * 40} seed {s}" for s in (1, 2, 3)]
    one = generate(char_model, char_tok, "", max_new_tokens=5, seed=2)[0]
    assert out.split(f"{'-' * 40} seed 2\n")[1].startswith(one)
    rc, out, _ = run_cli("sample", "--checkpoint", char_checkpoint, "--prompt", "All", "--temperature", "0",
                         "--max-new-tokens", "12")
    assert rc == 0
    assert out.splitlines()[1:] == ("All" + generate(char_model, char_tok, "All", 12, temperature=0)[0]).splitlines()


@pytest.mark.parametrize("extra,match", [
    (["--top-p", "0"], "top-p must be in (0, 1]"), (["--top-k", "500"], "top-k must be between 1"),
    (["--temperature", "-1"], "temperature"), (["--seeds", "1,x"], "--seeds"), (["--max-new-tokens", "0"], "max-new"),
])
def test_cli_sample_bad_arguments(run_cli, char_checkpoint, extra, match):
    rc, out, err = run_cli("sample", "--checkpoint", char_checkpoint, *extra)
    assert rc == 2 and out == ""
    assert err.startswith("scalegpt: error:") and match in err and "Traceback" not in err


def test_cli_sample_needs_a_tokenizer_spec(run_cli, tmp_path, char_model):
    save_model_dir(char_model, tmp_path / "ckpt")  # no tokenizer spec
    rc, _, err = run_cli("sample", "--checkpoint", tmp_path / "ckpt")
    assert rc == 2 and "no tokenizer spec" in err
    rc, _, err = run_cli("sample", "--checkpoint", tmp_path / "nowhere")
    assert rc == 2 and "no such checkpoint" in err


def test_cli_long_prompt_warns(run_cli, char_checkpoint):
    rc, out, err = run_cli("sample", "--checkpoint", char_checkpoint, "--prompt", TEXT, "--max-new-tokens", "3")
    assert rc == 0 and "warning: the prompt is longer than the block size" in err


def test_cli_interactive_streams_until_eof(run_cli, char_checkpoint, char_tok, char_model, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("All\n\nSpeak\n"))
    rc, out, err = run_cli("sample", "--checkpoint", char_checkpoint, "--interactive", "--temperature", "0",
                           "--max-new-tokens", "6")
    assert rc == 0, err
    expected = [p + generate(char_model, char_tok, p, 6, temperature=0)[0] for p in ("All", "", "Speak")]
    assert out == "".join(e + "\n" for e in expected)


def test_top_k_and_top_p_keep_the_same_set_as_transformers_on_tied_logits():
    # Where the nucleus ends inside a group of tied logits, which of them stay must be transformers' choice (its
    # TopPLogitsWarper sorts ascending and keeps the last ones), so the same logits give the same kept set.
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    gen = torch.Generator().manual_seed(0)
    for vocab in (8, 65, 257, 50257):
        for trial in range(8):
            levels = torch.randn(6, generator=gen) * 2
            logits = levels[torch.randint(0, 6, (2, vocab), generator=gen)]  # 6 values only: ties everywhere
            top_k = [None, 5][trial % 2] if vocab > 8 else None
            for top_p in (0.1, 0.5, 0.9):
                expected = logits.clone()
                if top_k is not None:
                    expected = TopKLogitsWarper(top_k)(None, expected)
                expected = TopPLogitsWarper(top_p)(None, expected)
                got = filter_logits(logits, top_k=top_k, top_p=top_p)
                assert torch.equal(torch.isinf(got), torch.isinf(expected)), (vocab, trial, top_k, top_p)
