"""HuggingFace Llama and Qwen3 interop: import of models transformers builds (logits and greedy decoding equal to
transformers'), export read back by AutoModelForCausalLM, exact round trips, and what is refused."""
from __future__ import annotations

import json

import pytest
import torch

from scalegpt.checkpoint import save_model_dir
from scalegpt.errors import ScalegptError
from scalegpt.generate import generate, generate_tokens
from scalegpt.hf import export_family, export_hf, load_pretrained, load_pretrained_with_tokenizer
from scalegpt.model import GPT, GPTConfig
from scalegpt.tokenizer import get_tokenizer

transformers = pytest.importorskip("transformers")  # the `dev` extra installs it; CI must have it

VOCAB = 211  # not a multiple of 64: our tables are padded to 256, HF's are not
GPT2_SPEC = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}

# (model_type, transformers config kwargs): GQA, MQA and plain multi-head; tied and untied; biases; Qwen3 with a
# head_dim that is not hidden_size / num_attention_heads.
HF_CASES = {
    "llama-gqa-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-mqa-untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False)),
    "llama-bias-untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                                        attention_bias=True, mlp_bias=True)),
    "qwen3-gqa-untied": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                       tie_word_embeddings=False)),
    "qwen3-tied": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                                 tie_word_embeddings=True)),
}


def _build_hf(model_type: str, **kwargs):
    config_class = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config}[model_type]
    config = config_class(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0, bos_token_id=0,
                          eos_token_id=0, pad_token_id=0, **kwargs)
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    _randomize_norms_and_biases(model)
    return model


def _randomize_norms_and_biases(model):
    # Norms start at ones and biases at zeros: randomise them so a misplaced one changes the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)


def _logits(model, idx):
    with torch.no_grad():
        out = model.eval()(idx)
    return out.logits if hasattr(out, "logits") else out


@pytest.fixture(scope="module", params=sorted(HF_CASES))
def hf_case(request, tmp_path_factory):
    model_type, kwargs = HF_CASES[request.param]
    model = _build_hf(model_type, **kwargs)
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(d)
    return model, d


def test_import_matches_transformers_logits_and_greedy_decoding(hf_case):
    hf, d = hf_case
    model = load_pretrained(str(d))
    c = hf.config
    assert model.config.qk_norm == (c.model_type == "qwen3")
    assert (model.config.n_kv_head or model.config.n_head) == c.num_key_value_heads
    assert model.config.tie_embeddings == c.tie_word_embeddings and model.config.rope_theta == 500.0
    tied = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert tied == c.tie_word_embeddings
    idx = torch.randint(0, VOCAB, (2, 64))
    assert (_logits(model, idx) - _logits(hf, idx)).abs().max() <= 1e-4

    prompt = torch.randint(0, VOCAB, (2, 7))
    ours = torch.stack(list(generate_tokens(model, prompt, 12, temperature=0.0)), dim=1)
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12,
                             do_sample=False, pad_token_id=0)[:, prompt.size(1):]
    assert torch.equal(ours, theirs)


def test_hf_import_then_export_gives_back_the_same_tensors(hf_case, tmp_path):
    from safetensors.torch import load_file

    hf, d = hf_case
    export_hf(load_pretrained(str(d)), None, tmp_path / "again")
    original = load_file(str(d / "model.safetensors"))
    exported = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert exported.keys() == original.keys() - ({"lm_head.weight"} if hf.config.tie_word_embeddings else set())
    for k, v in exported.items():
        assert torch.equal(v, original[k]), k
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    for key in ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "rms_norm_eps", "tie_word_embeddings", "attention_bias", "vocab_size"):
        assert config[key] == getattr(hf.config, key), key


def _modern(**changes) -> GPTConfig:
    base = dict(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_embd=64, bias=False, pos_emb="rope",
                rope_theta=500.0, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", n_kv_head=2)
    return GPTConfig(**{**base, **changes})


EXPORT_CASES = {
    "llama-gqa-tied": (_modern(), "LlamaForCausalLM"),
    "llama-untied-bias": (_modern(tie_embeddings=False, bias=True, n_kv_head=0, mlp_hidden=80), "LlamaForCausalLM"),
    "qwen3-headdim-untied": (_modern(qk_norm=True, head_dim=24, tie_embeddings=False), "Qwen3ForCausalLM"),
    "qwen3-mqa-tied": (_modern(qk_norm=True, n_kv_head=1), "Qwen3ForCausalLM"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_loads_in_transformers_with_equal_logits(case, tmp_path):
    config, architecture = EXPORT_CASES[case]
    model = GPT(config).eval()
    _randomize_norms_and_biases(model)
    out = export_hf(model, None, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    assert type(hf).__name__ == architecture
    assert hf.config.vocab_size == VOCAB and hf.config.max_position_embeddings == 64
    tied = hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    assert tied == config.tie_embeddings
    idx = torch.randint(0, VOCAB, (2, 64))
    assert (_logits(hf, idx) - _logits(model, idx)).abs().max() <= 1e-4

    back = load_pretrained(str(out))  # and back: the same model, tensor for tensor
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for k, v in ours.items():
        if k in ("transformer.wte.weight", "lm_head.weight"):
            v, theirs[k] = v[:VOCAB], theirs[k][:VOCAB]  # padded rows are not part of the export
        assert torch.equal(v, theirs[k]), k
    assert torch.equal(_logits(back, idx), _logits(model, idx))


@pytest.mark.parametrize("changes, derived", [
    (dict(qk_norm=True, tie_embeddings=False, mlp_hidden=128), {}),
    # explicit values equal to the derived ones (head_dim = n_embd / n_head, n_kv_head = n_head) come back as 0
    (dict(mlp_hidden=192, head_dim=16, n_kv_head=4, rope_theta=1e6), dict(mlp_hidden=0, head_dim=0, n_kv_head=0)),
])
def test_round_trip_keeps_the_config(changes, derived, tmp_path):
    config = _modern(**changes)
    export_hf(GPT(config), None, tmp_path / "out")
    back = load_pretrained(str(tmp_path / "out"))
    assert back.config.to_dict() == {**config.to_dict(), **derived}


@pytest.mark.parametrize("changes, named", [
    (dict(mlp="relu2"), "mlp = 'relu2'"),
    (dict(value_embeds=True), "value_embeds = true"),
    (dict(residual_scalars=True), "residual_scalars = true"),
    (dict(logit_softcap=15.0), "logit_softcap = 15.0"),
    (dict(embed_norm=True), "embed_norm = true"),
    (dict(norm_learnable=False), "norm_learnable = false"),
    (dict(bias=True, qk_norm=True), "bias = true with qk_norm"),
    (dict(pos_emb="learned"), "pos_emb = 'learned'"),
    (dict(pos_emb="learned", norm="layernorm", mlp="gelu_tanh", n_kv_head=0, norm_eps=1e-5), "bias = false"),
    (dict(pos_emb="learned", norm="layernorm", mlp="gelu_tanh", n_kv_head=0, norm_eps=1e-5, bias=True,
          tie_embeddings=False), "tie_embeddings = false"),
])
def test_export_refuses_options_no_hf_family_has(changes, named, tmp_path):
    config = _modern(**changes)
    with pytest.raises(ScalegptError) as e:
        export_family(config)
    message = str(e.value)
    assert named in message and "\n" not in message and "cannot be exported to HuggingFace" in message
    with pytest.raises(ScalegptError, match="cannot be exported to HuggingFace"):
        export_hf(GPT(config), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_family_follows_the_config():
    assert export_family(_modern()) == "llama"
    assert export_family(_modern(qk_norm=True)) == "qwen3"
    assert export_family(GPTConfig(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32)) == "gpt2"


def _hf_config(d, model_type="llama", **changes):
    d.mkdir(exist_ok=True)
    config = {"model_type": model_type, "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, **changes}
    config = {k: v for k, v in config.items() if v is not None}
    (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.mark.parametrize("model_type, changes, error", [
    ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling with rope_type 'linear'"),
    ("llama", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     "rope_parameters with rope_type 'yarn'"),
    ("llama", dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling with rope_type 'dynamic'"),
    ("qwen3", dict(use_sliding_window=True, sliding_window=16), "sliding-window attention"),
    ("llama", dict(hidden_act="gelu"), "hidden_act must be 'silu'"),
    ("llama", dict(attention_bias=True), "attention_bias (True) and mlp_bias (False) must be equal"),
    ("qwen3", dict(attention_bias=True), "attention_bias = true is not supported for qwen3"),
    ("llama", dict(hidden_size="32"), "'hidden_size' must be a positive integer"),
    ("mistral", {}, "model_type 'mistral' is not supported; expected one of gpt2, llama, qwen3"),
    (None, {}, "config.json: no model_type; expected one of gpt2, llama, qwen3"),
])
def test_import_refuses_what_scalegpt_does_not_compute(model_type, changes, error, tmp_path):
    d = _hf_config(tmp_path / "m", model_type, **changes)
    with pytest.raises(ScalegptError) as e:
        load_pretrained(str(d))
    assert error in str(e.value) and "\n" not in str(e.value)
    assert str(d / "config.json") in str(e.value)


def test_import_reads_sharded_checkpoints(tmp_path):
    hf = _build_hf("qwen3", num_attention_heads=4, num_key_value_heads=2, head_dim=24, tie_word_embeddings=False)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    idx = torch.randint(0, VOCAB, (1, 32))
    assert (_logits(load_pretrained(str(tmp_path)), idx) - _logits(hf, idx)).abs().max() <= 1e-4


def test_import_refuses_unknown_and_missing_tensors(hf_case, tmp_path):
    from safetensors.torch import load_file, save_file

    _, d = hf_case
    state = load_file(str(d / "model.safetensors"))
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "config.json").write_text((d / "config.json").read_text())
    extra = {**state, "model.layers.0.mlp.extra_proj.weight": torch.zeros(2)}
    save_file(extra, str(tmp_path / "extra" / "model.safetensors"))
    with pytest.raises(ScalegptError, match="unexpected tensor 'model.layers.0.mlp.extra_proj.weight'"):
        load_pretrained(str(tmp_path / "extra"))
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "config.json").write_text((d / "config.json").read_text())
    state.pop("model.layers.1.self_attn.k_proj.weight")
    save_file(state, str(tmp_path / "missing" / "model.safetensors"))
    with pytest.raises(ScalegptError, match="incomplete"):
        load_pretrained(str(tmp_path / "missing"))


def test_gpt2_tokenizer_travels_with_a_llama_export(tmp_path, shakespeare_text):
    model = GPT(_modern(vocab_size=50257, n_embd=32, n_head=2, n_kv_head=1))
    out = export_hf(model, GPT2_SPEC, tmp_path / "out")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    text = shakespeare_text[:2000] + " naïve café 🙂"
    assert hf_tok(text)["input_ids"] == get_tokenizer("gpt2").encode(text)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256
    (out / "scalegpt_tokenizer.json").unlink()
    assert load_pretrained_with_tokenizer(str(out))[1] == GPT2_SPEC  # tokenizer_config.json says GPT2Tokenizer
    (out / "tokenizer_config.json").unlink()
    assert load_pretrained_with_tokenizer(str(out))[1] is None  # a Llama vocabulary of 50257 proves nothing


def test_hellaswag_eval_of_a_llama_export_through_the_cli(tmp_path, data_dir, run_cli):
    from scalegpt.hellaswag import evaluate_hellaswag, load_hellaswag

    model = GPT(_modern(vocab_size=50257, n_embd=32, n_head=2, n_kv_head=1, block_size=128)).eval()
    export_hf(model, GPT2_SPEC, tmp_path / "hf")
    rc, out, err = run_cli("eval", "hellaswag", "--hf", tmp_path / "hf", "--no-progress", "--device", "cpu",
                           "--file", data_dir / "hellaswag_val_sample.jsonl")
    assert rc == 0, err
    examples = load_hellaswag(data_dir / "hellaswag_val_sample.jsonl")
    expected = evaluate_hellaswag(model, get_tokenizer("gpt2"), examples, progress=False)
    got = json.loads(out)
    assert got["examples"] == len(examples)
    assert got["acc"] == pytest.approx(expected["acc"]) and got["acc_norm"] == pytest.approx(expected["acc_norm"])


def _tokenizer(kind: str, text: str, tmp_path):
    if kind == "char":
        return get_tokenizer("char", text=text)
    from scalegpt.tokenizer import train_sentencepiece

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "part.txt").write_text(text[:100_000], encoding="utf-8")
    return get_tokenizer(str(train_sentencepiece([tmp_path / "corpus"], 512, tmp_path / "sp")))


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_char_and_sentencepiece_exports_sample_back_through_the_cli(kind, tmp_path, shakespeare_text, run_cli):
    tok = _tokenizer(kind, shakespeare_text, tmp_path)
    spec = tok.spec()
    model = GPT(_modern(vocab_size=tok.vocab_size, qk_norm=True))
    save_model_dir(model, tmp_path / "ckpt", tokenizer_spec=spec)
    rc, out, err = run_cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf")
    assert rc == 0, err
    assert "as Qwen3ForCausalLM" in out and f"tokenizer {kind}" in out
    # Ours travels in scalegpt_tokenizer.json; char also gets a tokenizer.json transformers loads, SentencePiece a
    # tokenizer_config.json that makes AutoTokenizer refuse rather than load an empty GPT-2 tokenizer (test_hf.py)
    hf_files = {"char": {"tokenizer.json", "tokenizer_config.json"}, "sentencepiece": {"tokenizer_config.json"}}[kind]
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors",
                                                             "generation_config.json", "scalegpt_tokenizer.json",
                                                             "scalegpt_export.json"} | hf_files
    assert load_pretrained_with_tokenizer(str(tmp_path / "hf"))[1] == spec
    rc, out, err = run_cli("sample", "--hf", tmp_path / "hf", "--prompt", "ROMEO:", "--max-new-tokens", "8",
                           "--temperature", "0", "--device", "cpu")
    assert rc == 0, err
    assert "ROMEO:" + generate(model, tok, "ROMEO:", max_new_tokens=8, temperature=0.0)[0] in out


def test_cli_export_refusal_is_one_line_with_exit_code_2(tmp_path, run_cli):
    save_model_dir(GPT(_modern(mlp="relu2", value_embeds=True)), tmp_path / "ckpt")
    rc, out, err = run_cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf")
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "mlp = 'relu2'" in lines[0] and "value_embeds = true" in lines[0]
    assert not (tmp_path / "hf").exists()


def test_cli_import_refusal_is_one_line_with_exit_code_2(tmp_path, run_cli):
    d = _hf_config(tmp_path / "scaled", rope_scaling={"rope_type": "llama3", "factor": 8.0})
    rc, out, err = run_cli("sample", "--hf", d, "--max-new-tokens", "2", "--device", "cpu")
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "config.json: rope_scaling with rope_type 'llama3' is not supported" in lines[0]
