"""HuggingFace GPT-2 interop: import (safetensors, .bin, legacy names), logits parity, export, round trips."""
from __future__ import annotations

import json
import shutil
import pickle

import pytest
import torch

from scalegpt.errors import ScalegptError
from scalegpt.hf import export_hf, load_pretrained_with_tokenizer
from scalegpt.model import GPT, GPTConfig, preset_config
from scalegpt.tokenizer import get_tokenizer
from scalegpt.checkpoint import save_model_dir
from scalegpt.hf import load_pretrained

transformers = pytest.importorskip("transformers")  # the `dev` extra installs it; CI must have it

VOCAB = 211  # not a multiple of 64, so our model pads it (to 256) and the export must strip the padding
GPT2_SPEC = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(1)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF zero-inits biases and ones-inits LayerNorms: randomise them so every tensor is tested
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "safetensors"
    hf_model.save_pretrained(d)
    assert (d / "model.safetensors").is_file()
    return d


def _hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


def _our_logits(model, idx):
    with torch.no_grad():
        return model.eval()(idx)


def test_load_hf_safetensors_dir_matches_transformers(hf_model, hf_dir):
    model = load_pretrained(str(hf_dir))
    assert model.config.vocab_size == VOCAB and model.config.block_size == 64
    assert model.config.padded_vocab_size == 256
    idx = torch.randint(0, VOCAB, (2, 64))
    assert (_our_logits(model, idx) - _hf_logits(hf_model, idx)).abs().max() <= 1e-4
    _, spec = load_pretrained_with_tokenizer(str(hf_dir))
    assert spec is None  # a vocabulary of 211 is not GPT-2's: its tokenizer is unknown


def test_load_pytorch_model_bin_with_legacy_names(hf_model, hf_dir, tmp_path):
    """The hub's original gpt2 files: GPT2Model names (no `transformer.`), causal-mask buffers, no lm_head."""
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, d / "pytorch_model.bin")
    model = load_pretrained(str(d))
    idx = torch.randint(0, VOCAB, (3, 40))
    assert (_our_logits(model, idx) - _hf_logits(hf_model, idx)).abs().max() <= 1e-4


def test_a_malicious_pickle_is_never_executed(hf_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.wte.weight": Evil()}, f, protocol=2)
    with pytest.raises(ScalegptError, match=r"pytorch_model.bin: cannot read .*weights_only=True"):
        load_pretrained(str(d))
    assert not marker.exists()


@pytest.mark.parametrize("mlp, hf_activation", [("gelu_tanh", "gelu_new"), ("gelu", "gelu")])
def test_export_loads_in_transformers_with_identical_logits(tmp_path, mlp, hf_activation):
    model = GPT(preset_config("tiny", vocab_size=VOCAB, mlp=mlp))  # padded to 256, 211 in the export
    out = export_hf(model, None, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == hf_activation
    assert load_pretrained(str(out)).config.mlp == mlp
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    idx = torch.randint(0, VOCAB, (2, 64))
    assert (_hf_logits(hf, idx) - _our_logits(model, idx)).abs().max() <= 1e-4
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied on their side too


def test_export_import_round_trip_is_exact(tmp_path, shakespeare_text):
    model = GPT(GPTConfig(block_size=32, vocab_size=66, n_layer=2, n_head=4, n_embd=64, dropout=0.1))
    spec = get_tokenizer("char", text=shakespeare_text).spec()
    export_hf(model, spec, tmp_path / "out")
    back, back_spec = load_pretrained_with_tokenizer(str(tmp_path / "out"))
    assert back_spec == spec  # the char vocabulary travels in scalegpt_tokenizer.json
    assert back.config.to_dict() == {**model.config.to_dict(), "dropout": 0.0}  # loaded for inference
    ours, theirs = model.state_dict(), back.state_dict()
    for k, v in ours.items():
        if k in ("transformer.wte.weight", "lm_head.weight"):
            v, theirs_v = v[:66], theirs[k][:66]  # padded rows are not part of the export
        else:
            theirs_v = theirs[k]
        assert torch.equal(v, theirs_v), k
    idx = torch.randint(0, 66, (2, 32))
    assert torch.equal(_our_logits(model, idx), _our_logits(back, idx))


def test_hf_import_export_round_trip_is_exact(hf_dir, tmp_path):
    from safetensors.torch import load_file

    model = load_pretrained(str(hf_dir))
    export_hf(model, None, tmp_path / "again")
    original = load_file(str(hf_dir / "model.safetensors"))
    exported = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert exported.keys() == {k for k in original if k != "lm_head.weight"}
    for k, v in exported.items():
        assert torch.equal(v, original[k]), k


def test_gpt2_tokenizer_export_works_offline_in_transformers(tmp_path, shakespeare_text):
    model = GPT(preset_config("tiny", vocab_size=50257))
    out = export_hf(model, GPT2_SPEC, tmp_path / "out")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).is_file(), name
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ours = get_tokenizer("gpt2")
    text = shakespeare_text[:3000] + " Hello world, naïve café 🙂"
    assert hf_tok(text)["input_ids"] == ours.encode(text)
    assert hf_tok.eos_token_id == 50256
    # and back: a HF directory with GPT-2's vocabulary gets the gpt2 tokenizer
    (out / "scalegpt_tokenizer.json").unlink()
    _, spec = load_pretrained_with_tokenizer(str(out))
    assert spec == GPT2_SPEC


def test_export_refuses_to_clobber(tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ScalegptError, match=r"not a scalegpt export; refusing to write into it \(it holds notes.txt\)"):
        export_hf(tiny_model, None, out)
    with pytest.raises(ScalegptError, match="refusing to replace it even with --overwrite"):  # never ours to delete
        export_hf(tiny_model, None, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    # an export of ours is replaced with overwrite=True only
    export_hf(tiny_model, None, tmp_path / "ours")
    with pytest.raises(ScalegptError, match="already holds a scalegpt export; pass --overwrite"):
        export_hf(tiny_model, None, tmp_path / "ours")
    export_hf(tiny_model, None, tmp_path / "ours", overwrite=True)
    assert (tmp_path / "ours" / "model.safetensors").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScalegptError, match="exists and is not a directory"):
        export_hf(tiny_model, None, tmp_path / "file", overwrite=True)


def test_export_refuses_what_gpt2_cannot_hold(tmp_path):
    with pytest.raises(ScalegptError, match=r"cannot be exported to HuggingFace.*bias = false \(GPT-2 has true\)"):
        export_hf(GPT(preset_config("tiny", vocab_size=50, bias=False)), None, tmp_path / "a")
    with pytest.raises(ScalegptError, match="model vocab_size 50 does not match its tokenizer's vocab_size 50257"):
        export_hf(GPT(preset_config("tiny", vocab_size=50)), GPT2_SPEC, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("option, named", [
    (dict(pos_emb="rope"), "pos_emb = 'rope'"), (dict(norm="rmsnorm"), "norm = 'rmsnorm'"),
    (dict(mlp="relu2"), "mlp = 'relu2'"), (dict(mlp="swiglu"), "mlp = 'swiglu'"),
    (dict(tie_embeddings=False), "tie_embeddings = false"), (dict(qk_norm=True), "qk_norm = true"),
    (dict(n_kv_head=1), "n_kv_head = 1"), (dict(logit_softcap=15.0), "logit_softcap = 15.0"),
    (dict(embed_norm=True), "embed_norm = true"), (dict(value_embeds=True), "value_embeds = true"),
    (dict(residual_scalars=True), "residual_scalars = true"), (dict(norm_learnable=False), "norm_learnable = false"),
])
def test_export_names_the_option_gpt2_cannot_express(tmp_path, option, named):
    with pytest.raises(ScalegptError, match="cannot be exported to HuggingFace") as e:
        export_hf(GPT(preset_config("tiny", vocab_size=50, **option)), None, tmp_path / "out")
    assert f"nearest GPT-2: {named} (GPT-2 has" in str(e.value)
    assert not (tmp_path / "out").exists()
    # Spelled out at their GPT-2 values, the same options export.
    export_hf(GPT(preset_config("tiny", vocab_size=50, n_kv_head=2, head_dim=16, mlp_hidden=128)), None, tmp_path / "ok")


def _write_config(d, **changes):
    d.mkdir(exist_ok=True)
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50, "n_positions": 16,
              "n_embd": 32, "n_layer": 1, "n_head": 2, **changes}
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_other_architectures_and_unsupported_options_are_refused(hf_dir, tmp_path):
    bert = _write_config(tmp_path / "bert", model_type="bert", architectures=["BertModel"])
    with pytest.raises(ScalegptError, match="model_type 'bert' is not supported; expected one of gpt2, llama, qwen3"):
        load_pretrained(str(bert))
    with pytest.raises(ScalegptError, match="layer_norm_epsilon must be 1e-05"):
        load_pretrained(str(_write_config(tmp_path / "eps", layer_norm_epsilon=1e-6)))
    with pytest.raises(ScalegptError, match="activation_function must be one of gelu_new, gelu_pytorch_tanh, gelu, got 'relu'"):
        load_pretrained(str(_write_config(tmp_path / "act", activation_function="relu")))
    with pytest.raises(ScalegptError, match="tie_word_embeddings' must be true"):
        load_pretrained(str(_write_config(tmp_path / "tie", tie_word_embeddings=False)))
    with pytest.raises(ScalegptError, match="no weights found"):
        load_pretrained(str(_write_config(tmp_path / "empty")))
    bad_shapes = _write_config(tmp_path / "shapes", vocab_size=VOCAB, n_positions=64, n_layer=2, n_embd=64)
    (bad_shapes / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    with pytest.raises(ScalegptError, match="has shape"):
        load_pretrained(str(bad_shapes))


@pytest.mark.parametrize("model_type, fragment", [
    (None, "no model_type"), ("gpt_neo", "model_type 'gpt_neo' is not supported"),
    ("mistral", "model_type 'mistral' is not supported"), (["gpt2"], "model_type ['gpt2'] is not supported")])
def test_a_config_of_another_model_type_is_refused_even_when_its_tensors_fit(hf_dir, tmp_path, run_cli,
                                                                               model_type, fragment):
    """GPT-2's tensors under another (or no) model_type, with GPT2 architectures: loading them as GPT-2 would run
    a model its config does not describe. `scalegpt sample --hf` says so in one line naming config.json."""
    d = tmp_path / "other"
    shutil.copytree(hf_dir, d)
    config = json.loads((d / "config.json").read_text())
    config.pop("model_type")
    if model_type is not None:
        config["model_type"] = model_type
    (d / "config.json").write_text(json.dumps(config))
    assert config["architectures"] == ["GPT2LMHeadModel"]
    rc, out, err = run_cli("sample", "--hf", str(d), "--max-new-tokens", "2")
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalegpt: error: ") and "Traceback" not in err, err
    assert f"{d / 'config.json'}: {fragment}; expected one of gpt2, llama, qwen3" in lines[0]
    assert load_pretrained(str(hf_dir)) is not None  # the unedited directory still loads


def test_hf_weights_holding_nan_are_refused(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "nan"
    shutil.copytree(hf_dir, d)
    state = load_file(str(d / "model.safetensors"))
    state["transformer.h.1.mlp.c_fc.bias"][0] = float("inf")
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ScalegptError, match=r"non-finite weights \(NaN or inf in transformer.h.1.mlp.c_fc.bias\)"):
        load_pretrained(str(d))


def test_names_and_paths_that_do_not_exist(tiny_model, tmp_path):
    save_model_dir(tiny_model, tmp_path / "ours")
    (tmp_path / "ours" / "model.safetensors").unlink()
    with pytest.raises(ScalegptError, match="ours/model.safetensors: cannot read weights"):
        load_pretrained(str(tmp_path / "ours"))  # reported as our checkpoint, not as a foreign architecture
    with pytest.raises(ScalegptError, match="no such model directory; expected a scalegpt checkpoint directory"):
        load_pretrained(str(tmp_path / "missing"))
    # Offline (the tests switch the hub off), a hub name fails fast with a way forward.
    with pytest.raises(ScalegptError, match="cannot download 'gpt2-xl'.*pass a local directory"):
        load_pretrained("gpt2-xl")


def test_char_export_has_a_tokenizer_transformers_loads(tmp_path, shakespeare_text, run_cli):
    """Before: AutoTokenizer loaded an empty GPT-2 tokenizer for a char model (every text -> no ids)."""
    tok = get_tokenizer("char", text=shakespeare_text)
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))
    save_model_dir(model, tmp_path / "ckpt", tok.spec())
    rc, out, err = run_cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf")
    assert rc == 0, err
    assert "tokenizer: a char tokenizer that transformers.AutoTokenizer loads" in out
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = shakespeare_text[:2000]
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text and hf_tok.eos_token_id == tok.eot_id


def test_sentencepiece_export_says_it_has_no_transformers_tokenizer(tmp_path, run_cli, shakespeare_text):
    (tmp_path / "c.txt").write_text(shakespeare_text[:100_000])
    assert run_cli("tokenizer", "train", "--input", tmp_path / "c.txt", "--vocab-size", "400",
                   "--out", tmp_path / "sp")[0] == 0
    tok = get_tokenizer(str(tmp_path / "sp.model"))
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))
    save_model_dir(model, tmp_path / "ckpt", tok.spec())
    rc, out, err = run_cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf")
    assert rc == 0, err
    assert "tokenizer: no transformers tokenizer for sentencepiece (AutoTokenizer refuses the directory)" in out
    with pytest.raises(Exception):  # refused, instead of an empty GPT-2 tokenizer that encodes nothing
        transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))


def test_model_files_follow_the_umask_and_load_pretrained_takes_a_run_directory(tmp_path):
    import os

    model = GPT(GPTConfig(block_size=16, vocab_size=66, n_layer=1, n_head=2, n_embd=16))
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        save_model_dir(model, run / "checkpoints" / "step_000003", None)
        export_hf(model, None, tmp_path / "hf")
    finally:
        os.umask(old)
    for path in (run / "checkpoints" / "step_000003" / "model.safetensors", tmp_path / "hf" / "model.safetensors"):
        assert oct(path.stat().st_mode & 0o777) == "0o644", path  # safetensors alone writes 0600
    back = load_pretrained(str(run))  # a run directory, as every CLI --checkpoint accepts: its latest checkpoint
    assert torch.equal(back.state_dict()["transformer.wte.weight"], model.state_dict()["transformer.wte.weight"])
