"""GGUF export read back with ggml's own GGUFReader: architecture, tensor names, shapes and values, the
hyperparameters llama.cpp reads, the embedded tokenizer, the weight types, and what is refused (one line, nothing
written). Running the files in llama.cpp itself is tests/test_gguf_llamacpp.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scalegpt.checkpoint import save_model_dir
from scalegpt.errors import ScalegptError
from scalegpt.gguf_export import export_gguf, gguf_blockers
from scalegpt.model import GPT, GPTConfig
from scalegpt.tokenizer import get_tokenizer, train_sentencepiece

gguf = pytest.importorskip("gguf")  # the `dev` extra installs it; CI must have it

GPT2_SPEC = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}
SP_VOCAB = 384


def gpt2_config(**changes) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=SP_VOCAB, block_size=48, n_layer=2, n_head=4, n_embd=64), **changes})


def modern_config(**changes) -> GPTConfig:
    base = dict(vocab_size=SP_VOCAB, block_size=48, n_layer=2, n_head=4, n_embd=64, bias=False, pos_emb="rope",
                rope_theta=500.0, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", n_kv_head=2, tie_embeddings=False)
    return GPTConfig(**{**base, **changes})


CASES = {  # name: (config, GGUF architecture)
    "gpt2": (gpt2_config(), "gpt2"),
    "llama-gqa-untied": (modern_config(), "llama"),
    "llama-bias-tied": (modern_config(bias=True, n_kv_head=0, tie_embeddings=True, mlp_hidden=96), "llama"),
    "qwen3-headdim": (modern_config(qk_norm=True, head_dim=24), "qwen3"),
}


@pytest.fixture(scope="module")
def sp_spec(tmp_path_factory, shakespeare_text) -> dict:
    d = tmp_path_factory.mktemp("sp")
    (d / "corpus.txt").write_text(shakespeare_text[:50_000], encoding="utf-8")
    return get_tokenizer(str(train_sentencepiece([d / "corpus.txt"], SP_VOCAB, d / "sp"))).spec()


def field(reader, key):
    f = reader.get_field(key)
    assert f is not None, f"{key} missing"
    return f.contents()


def tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def randomized(config: GPTConfig) -> GPT:
    model = GPT(config).eval()
    with torch.no_grad():  # norms start at ones and biases at zeros: make a misplaced one visible
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_tensors_and_hyperparameters_are_what_llama_cpp_reads(case, sp_spec, tmp_path):
    config, arch = CASES[case]
    model = randomized(config)
    out = export_gguf(model, sp_spec, tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(out))
    assert field(r, "general.architecture") == arch
    assert field(r, f"{arch}.context_length") == 48 and field(r, f"{arch}.block_count") == 2
    assert field(r, f"{arch}.embedding_length") == 64 and field(r, f"{arch}.feed_forward_length") == config.mlp_width
    assert field(r, f"{arch}.attention.head_count") == 4
    assert field(r, f"{arch}.attention.head_count_kv") == config.kv_heads
    t = tensors(r)
    vocab_rows = t["token_embd.weight"]
    assert [int(x) for x in vocab_rows.shape] == [64, SP_VOCAB]  # ne order (in, out); padding rows dropped
    assert ("output.weight" in t) == (not config.tie_embeddings)  # tied: llama.cpp reuses token_embd
    state = model.state_dict()
    assert np.array_equal(t["token_embd.weight"].data, state["transformer.wte.weight"][:SP_VOCAB].numpy())
    assert all(x.tensor_type == gguf.GGMLQuantizationType.F32 for x in r.tensors)
    if arch == "gpt2":
        assert field(r, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
        assert np.array_equal(t["position_embd.weight"].data, state["transformer.wpe.weight"].numpy())
        assert np.array_equal(t["blk.1.attn_qkv.weight"].data, state["transformer.h.1.attn.c_attn.weight"].numpy())
        assert np.array_equal(t["blk.0.ffn_norm.bias"].data, state["transformer.h.0.ln_2.bias"].numpy())
        assert len(t) == 2 + 12 * 2 + 2
        return
    head = config.head_size
    assert field(r, f"{arch}.rope.freq_base") == 500.0 and field(r, f"{arch}.rope.dimension_count") == head
    assert field(r, f"{arch}.attention.key_length") == head and field(r, f"{arch}.attention.value_length") == head
    assert field(r, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    qkv = state["transformer.h.1.attn.c_attn.weight"]
    q, k, v = qkv.split([4 * head, config.kv_heads * head, config.kv_heads * head])
    assert np.array_equal(t["blk.1.attn_v.weight"].data, v.numpy())
    gate, up = state["transformer.h.1.mlp.c_fc.weight"].chunk(2)
    assert np.array_equal(t["blk.1.ffn_gate.weight"].data, gate.numpy())
    assert np.array_equal(t["blk.1.ffn_up.weight"].data, up.numpy())
    if arch == "qwen3":  # NEOX rope: halves, as ours; no reordering
        assert np.array_equal(t["blk.1.attn_q.weight"].data, q.numpy())
        assert np.array_equal(t["blk.1.attn_k_norm.weight"].data, state["transformer.h.1.attn.k_norm.weight"].numpy())
        return
    # llama: row 2i of a head is our row i, row 2i+1 our row i + head/2 (llama.cpp rotates adjacent pairs)
    for ours, name, heads in ((q, "attn_q", 4), (k, "attn_k", config.kv_heads)):
        theirs = t[f"blk.1.{name}.weight"].data
        for h in range(heads):
            for i in range(head // 2):
                assert np.array_equal(theirs[h * head + 2 * i], ours[h * head + i].numpy())
                assert np.array_equal(theirs[h * head + 2 * i + 1], ours[h * head + head // 2 + i].numpy())
    if config.bias:
        bias_q = state["transformer.h.0.attn.c_attn.bias"][:head]
        assert t["blk.0.attn_q.bias"].data[1] == bias_q[head // 2]
        assert "blk.0.ffn_gate.bias" in t and "blk.0.attn_output.bias" in t


def test_sentencepiece_vocabulary_is_embedded(sp_spec, tmp_path):
    tok = get_tokenizer_from(sp_spec)
    r = gguf.GGUFReader(str(export_gguf(randomized(modern_config()), sp_spec, tmp_path / "m.gguf")))
    assert field(r, "tokenizer.ggml.model") == "llama"
    tokens = field(r, "tokenizer.ggml.tokens")
    assert tokens == [tok.sp.id_to_piece(i) for i in range(SP_VOCAB)]
    assert field(r, "tokenizer.ggml.scores") == pytest.approx([tok.sp.get_score(i) for i in range(SP_VOCAB)])
    types = field(r, "tokenizer.ggml.token_type")
    assert types[tok.sp.unk_id()] == gguf.TokenType.UNKNOWN and types[tok.sp.eos_id()] == gguf.TokenType.CONTROL
    assert types[tokens.index("<0x41>")] == gguf.TokenType.BYTE  # byte fallback pieces
    assert field(r, "tokenizer.ggml.eos_token_id") == tok.eot_id and field(r, "tokenizer.ggml.bos_token_id") == 1
    assert field(r, "tokenizer.ggml.add_bos_token") is False  # scalegpt sample adds no BOS to a prompt


def get_tokenizer_from(spec):
    from scalegpt.tokenizer import tokenizer_from_spec

    return tokenizer_from_spec(spec)


def test_gpt2_vocabulary_and_merges_come_from_the_offline_bpe_files(tmp_path):
    from scalegpt.tokenizer import gpt2_encoding

    out = export_gguf(randomized(gpt2_config(vocab_size=50257, n_layer=1)), GPT2_SPEC, tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(out))
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(r, "tokenizer.ggml.tokens")
    enc = gpt2_encoding()
    assert len(tokens) == 50257 and tokens[50256] == "<|endoftext|>"
    # the byte-level unicode strings of GPT-2's encoder.json: "Ġthe" is " the"
    assert enc.decode_single_token_bytes(tokens.index("\u0120the")) == b" the"
    merges = field(r, "tokenizer.ggml.merges")
    assert len(merges) == 50000 and merges[0] == "\u0120 t"
    assert field(r, "tokenizer.ggml.bos_token_id") == 50256 == field(r, "tokenizer.ggml.eos_token_id")
    assert field(r, "tokenizer.ggml.token_type")[50256] == gguf.TokenType.CONTROL


@pytest.mark.parametrize("dtype,expected", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_weight_types(dtype, expected, sp_spec, tmp_path):
    model = randomized(modern_config(qk_norm=True, head_dim=24))
    r = gguf.GGUFReader(str(export_gguf(model, sp_spec, tmp_path / "m.gguf", dtype=dtype)))
    t = tensors(r)
    assert t["blk.0.attn_q.weight"].tensor_type.name == expected
    assert t["blk.0.attn_q_norm.weight"].tensor_type.name == "F32"  # 1-D tensors stay f32
    ours = model.state_dict()["transformer.h.0.mlp.c_proj.weight"].numpy()
    back = gguf.quants.dequantize(t["blk.0.ffn_down.weight"].data, t["blk.0.ffn_down.weight"].tensor_type)
    assert back.shape == ours.shape
    rel = {"f16": 1e-3, "bf16": 1e-2, "q8_0": 1e-2}[dtype]
    assert np.abs(back - ours).max() <= rel * np.abs(ours).max()


REFUSED = {
    "relu2 and value embeddings": (modern_config(mlp="relu2", value_embeds=True), "sp",
                                   ["mlp = 'relu2'", "value_embeds = true"]),
    "exact gelu": (gpt2_config(mlp="gelu"), "sp", ["mlp = 'gelu'", "tanh"]),
    "logit softcap": (modern_config(logit_softcap=15.0), "sp", ["logit_softcap = 15.0"]),
    "char tokenizer": (gpt2_config(vocab_size=66), "char", ["tokenizer 'char'"]),
    "no tokenizer": (gpt2_config(), None, ["no tokenizer"]),
    "sentencepiece unigram": (gpt2_config(), "unigram", ["SentencePiece unigram model"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals_name_what_and_write_nothing(case, sp_spec, shakespeare_text, tmp_path):
    config, tok, named = REFUSED[case]
    if tok == "unigram":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "c.txt").write_text(shakespeare_text[:50_000], encoding="utf-8")
        spec = get_tokenizer(str(train_sentencepiece([tmp_path / "in"], SP_VOCAB, tmp_path / "in" / "u",
                                                     model_type="unigram"))).spec()
        tmp_path = tmp_path / "out"
        tmp_path.mkdir()
    else:
        spec = {"sp": sp_spec, "char": get_tokenizer("char", text=shakespeare_text).spec(), None: None}[tok]
    assert gguf_blockers(config, spec)
    with pytest.raises(ScalegptError) as e:
        export_gguf(GPT(config), spec, tmp_path / "m.gguf")
    assert "cannot be exported to GGUF" in str(e.value) and "\n" not in str(e.value)
    assert all(n in str(e.value) for n in named), str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_from_a_checkpoint_and_from_a_hf_directory(sp_spec, tmp_path, run_cli):
    model = randomized(modern_config(qk_norm=True))
    save_model_dir(model, tmp_path / "ckpt", tokenizer_spec=sp_spec)
    rc, out, err = run_cli("export", "--format", "gguf", "--checkpoint", tmp_path / "ckpt", "--out",
                           tmp_path / "a.gguf", "--dtype", "q8_0")
    assert rc == 0, err
    assert "as GGUF qwen3 q8_0" in out and "tokenizer sentencepiece" in out
    assert field(gguf.GGUFReader(str(tmp_path / "a.gguf")), "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    rc, out, err = run_cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf")
    assert rc == 0, err
    rc, out, err = run_cli("export", "--format", "gguf", "--hf", tmp_path / "hf", "--out", tmp_path / "b.gguf")
    assert rc == 0, err
    a, b = (tensors(gguf.GGUFReader(str(tmp_path / f"{n}.gguf"))) for n in ("a", "b"))
    assert a.keys() == b.keys()
    k = model.state_dict()["transformer.h.1.attn.c_attn.weight"][64:96]  # qwen3: k after q's 4 x 16 rows, as it is
    assert np.array_equal(b["blk.1.attn_k.weight"].data, k.numpy())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind


def test_cli_refuses_an_existing_file_unless_overwrite_and_dtype_without_gguf(sp_spec, tmp_path, run_cli):
    save_model_dir(randomized(gpt2_config()), tmp_path / "ckpt", tokenizer_spec=sp_spec)
    (tmp_path / "m.gguf").write_bytes(b"keep me")  # a file of the user's: never replaced, not even with --overwrite
    for extra in ((), ("--overwrite",)):
        rc, out, err = run_cli("export", "--format", "gguf", "--checkpoint", tmp_path / "ckpt", "--out",
                               tmp_path / "m.gguf", *extra)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and "not a GGUF file" in err
    assert (tmp_path / "m.gguf").read_bytes() == b"keep me"
    (tmp_path / "m.gguf").unlink()
    rc, out, err = run_cli("export", "--format", "gguf", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "m.gguf")
    assert rc == 0, err
    first = (tmp_path / "m.gguf").read_bytes()
    rc, out, err = run_cli("export", "--format", "gguf", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "m.gguf")
    assert rc == 2 and "--overwrite" in err and (tmp_path / "m.gguf").read_bytes() == first  # a GGUF of ours
    rc, out, err = run_cli("export", "--format", "gguf", "--checkpoint", tmp_path / "ckpt", "--out",
                           tmp_path / "m.gguf", "--overwrite")
    assert rc == 0, err
    assert field(gguf.GGUFReader(str(tmp_path / "m.gguf")), "general.architecture") == "gpt2"
    rc, out, err = run_cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf", "--dtype", "f16")
    assert rc == 2 and "--dtype applies to --format gguf only" in err and not (tmp_path / "hf").exists()


def test_cli_refusal_is_one_line_with_exit_code_2(shakespeare_text, tmp_path, run_cli):
    spec = get_tokenizer("char", text=shakespeare_text).spec()
    save_model_dir(GPT(modern_config(vocab_size=spec["vocab_size"], mlp="relu2")), tmp_path / "ckpt",
                   tokenizer_spec=spec)
    rc, out, err = run_cli("export", "--format", "gguf", "--checkpoint", tmp_path / "ckpt", "--out",
                           tmp_path / "m.gguf")
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "mlp = 'relu2'" in lines[0] and "tokenizer 'char'" in lines[0]
    assert not (tmp_path / "m.gguf").exists()
