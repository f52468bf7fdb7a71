"""GGUF export: a `GPT` as one `.gguf` file that llama.cpp (llama-cli, llama-server, llama-cpp-python) runs, written
with ggml's own `gguf` package (`pip install scalegpt[gguf]`).

The GGUF architecture is the HF family `scalegpt.hf.export_family` picks: gpt2, llama or qwen3. What differs from
the HF export is only how tensors are named and cut, and one permutation:
    llama   llama.cpp rotates interleaved pairs (2i, 2i+1) of each head, we rotate halves (i, i + d/2) like HF, so the
            rows of q and k (weights and biases) are reordered per head; qwen3 rotates halves too (NEOX): no reorder.
    gpt2    our Linear weights are already (out, in), GGUF's row order; only the names change.
Padded vocabulary rows are dropped and a tied head is left out (llama.cpp reuses token_embd, as for GPT-2 itself).

The tokenizer travels inside the file: gpt2 as GPT-2's byte-level BPE (the vocabulary and merges of the same offline
files tiktoken reads), SentencePiece as llama.cpp's SPM vocabulary (pieces, scores, types). Neither adds a BOS token
to a prompt, as `scalegpt sample` does not. What GGUF or llama.cpp cannot compute as we do (no HF family, exact-erf
GELU, the char tokenizer, no tokenizer) is refused in one line before anything is written.

    gguf_blockers(config, tokenizer_spec)                   [] or the reasons an export would be refused
    export_gguf(model, tokenizer_spec, out, dtype="f32")    the file, written atomically
"""
from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import torch

from scalegpt._fs import atomic_file, os_error_message
from scalegpt.checkpoint import TIED_KEY, clean_state_dict
from scalegpt.errors import ScalegptError
from scalegpt.outputs import check_output
from scalegpt import hf_llama
from scalegpt.hf import export_family, gpt2_blockers
from scalegpt.model import GPT, GPTConfig, unwrap

DTYPES = ("f32", "f16", "bf16", "q8_0")
Q8_0_BLOCK = 32  # q8_0 quantises rows in blocks of 32 values; a row of another length is stored as f16

# Our per-block module -> GGUF tensor kind (gguf.MODEL_TENSOR member name), per architecture. Fused q/k/v and
# gate/up are split for llama and qwen3, which llama.cpp reads as separate tensors.
_SHARED = {"ln_1": "ATTN_NORM", "ln_2": "FFN_NORM", "attn.c_proj": "ATTN_OUT", "mlp.c_proj": "FFN_DOWN"}
LAYER_TENSORS = {
    "gpt2": {**_SHARED, "attn.c_attn": "ATTN_QKV", "mlp.c_fc": "FFN_UP"},
    "llama": {**_SHARED, "attn.c_attn": ("ATTN_Q", "ATTN_K", "ATTN_V"), "mlp.c_fc": ("FFN_GATE", "FFN_UP")},
    "qwen3": {**_SHARED, "attn.c_attn": ("ATTN_Q", "ATTN_K", "ATTN_V"), "mlp.c_fc": ("FFN_GATE", "FFN_UP"),
              "attn.q_norm": "ATTN_Q_NORM", "attn.k_norm": "ATTN_K_NORM"},
}
GLOBAL_TENSORS = {"transformer.wte": "TOKEN_EMBD", "transformer.wpe": "POS_EMBD", "transformer.ln_f": "OUTPUT_NORM",
                  "lm_head": "OUTPUT"}


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ScalegptError("GGUF export needs ggml's gguf package: pip install 'scalegpt[gguf]' "
                            "(or pip install gguf)") from None
    return gguf


def gguf_blockers(config: GPTConfig, tokenizer_spec: dict | None) -> list[str]:
    """Why `config` with this tokenizer cannot become a GGUF file that llama.cpp computes as we do (empty: it can)."""
    gpt2, modern = gpt2_blockers(config), hf_llama.blockers(config)
    why = []
    if gpt2 and modern:  # no HF family, so none of GGUF's gpt2/llama/qwen3 either: name the nearest one's obstacles
        why.append(f"nearest gpt2: {'; '.join(gpt2)}" if len(gpt2) <= len(modern) else
                   f"nearest llama/qwen3: {'; '.join(modern)}")
    elif export_family(config) == "gpt2" and config.mlp == "gelu":
        why.append("mlp = 'gelu' (llama.cpp's gpt2 computes the tanh approximation, gelu_tanh)")
    kind = tokenizer_spec.get("kind") if tokenizer_spec else None
    if kind is None:
        why.append("no tokenizer (a GGUF file embeds its vocabulary; export a checkpoint trained with one)")
    elif kind not in ("gpt2", "sentencepiece"):
        why.append(f"tokenizer '{kind}' (GGUF holds BPE or SentencePiece vocabularies: gpt2 or sentencepiece)")
    elif tokenizer_spec.get("vocab_size") != config.vocab_size:
        why.append(f"tokenizer vocab_size {tokenizer_spec.get('vocab_size')} != model vocab_size {config.vocab_size}")
    elif kind == "sentencepiece" and _sentencepiece_proto(tokenizer_spec).trainer_spec.model_type != BPE:
        why.append("SentencePiece unigram model (llama.cpp's SPM tokenizer merges pieces by score as BPE does, so it "
                   "would split text differently; train one with --model-type bpe)")
    return why


BPE = 2  # sentencepiece_model.proto: TrainerSpec.ModelType BPE


def _sentencepiece_proto(spec: dict):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(base64.b64decode(spec["model"]))
    except Exception as e:  # a hand-edited spec: bad base64, not a model
        raise ScalegptError(f"the checkpoint's SentencePiece model cannot be read ({type(e).__name__})") from None
    return proto


def export_gguf(model: GPT, tokenizer_spec: dict | None, out, dtype: str = "f32", overwrite: bool = False,
                name: str = "scalegpt", inputs=()) -> Path:
    """Write `out` (a .gguf file) for llama.cpp: architecture gpt2, llama or qwen3, weights in `dtype`, the tokenizer
    embedded. Refusals are one ScalegptError line and write nothing; an existing GGUF file is replaced only with
    overwrite=True, in one rename once the new file is complete; `inputs` (the checkpoint, the run) are never
    written over (`scalegpt.outputs.check_output`)."""
    gguf = _import_gguf()
    model = unwrap(model)
    config = model.config
    if dtype not in DTYPES:
        raise ScalegptError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    why = gguf_blockers(config, tokenizer_spec)
    if why:
        raise ScalegptError(f"this model cannot be exported to GGUF: {'; '.join(why)}; nothing written")
    out = check_output(out, kind="gguf", inputs=inputs, overwrite=overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScalegptError(f"cannot create the output's directory: {os_error_message(e)}") from None
    family = export_family(config)
    tensors = gguf_tensors(clean_state_dict(model.state_dict()), config, family, gguf)
    vocab = _gpt2_vocab(gguf) if tokenizer_spec["kind"] == "gpt2" else _sentencepiece_vocab(tokenizer_spec, gguf)

    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), family)
        _add_hyperparameters(writer, config, family, dtype, name, gguf)
        vocab(writer)
        for tensor_name, array in tensors.items():
            _add_tensor(writer, tensor_name, array, dtype, gguf)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


# ---------------------------------------------------------------------------------------------------------- tensors


def gguf_tensors(state: dict, config: GPTConfig, family: str, gguf) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array (PyTorch's (out, in) order, which GGUF stores as ne = (in, out))."""
    q_rows, kv_rows = config.n_head * config.head_size, config.kv_heads * config.head_size
    layer_map = LAYER_TENSORS[family]
    out = {}
    for key, value in state.items():
        if key == TIED_KEY and config.tie_embeddings:
            continue  # llama.cpp uses token_embd as the output head when `output` is absent
        v = value.detach().to("cpu", torch.float32)
        if key in ("transformer.wte.weight", TIED_KEY):
            v = v[: config.vocab_size]  # padding rows are our speed trick, not tokens
        m = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)", key)
        if m is None:
            module, _, kind = key.rpartition(".")
            pieces, parts, bid = GLOBAL_TENSORS.get(module), [v], None
        else:
            bid, module, kind = int(m.group(1)), m.group(2), m.group(3)
            pieces = layer_map.get(module)
            parts = [v]
            if isinstance(pieces, tuple):
                parts = list(v.split([q_rows, kv_rows, kv_rows]) if module == "attn.c_attn" else v.chunk(2))
        if pieces is None:
            raise ScalegptError(f"parameter '{key}' has no place in a GGUF {family} model")
        for piece, part in zip(pieces if isinstance(pieces, tuple) else (pieces,), parts):
            if family == "llama" and piece in ("ATTN_Q", "ATTN_K"):
                part = _halves_to_pairs(part, config.n_head if piece == "ATTN_Q" else config.kv_heads)
            tensor_kind = getattr(gguf.MODEL_TENSOR, piece)
            base = gguf.TENSOR_NAMES[tensor_kind].format(bid=bid) if bid is not None else gguf.TENSOR_NAMES[tensor_kind]
            out[f"{base}.{kind}"] = part.contiguous().numpy()
    return out


def _halves_to_pairs(rows: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from [first half; second half] (we and HF rotate feature i with i + d/2) to
    interleaved pairs (llama.cpp's llama rotates features 2i and 2i+1): row 2i <- i, row 2i+1 <- i + d/2."""
    head = rows.shape[0] // n_heads
    return rows.reshape(n_heads, 2, head // 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def _add_tensor(writer, name: str, array: np.ndarray, dtype: str, gguf) -> None:
    """Matrices in `dtype`; norms, biases (1-D) stay f32, as llama.cpp's own converter keeps them. A q8_0 matrix whose
    rows are not a multiple of 32 long is stored as f16."""
    q = gguf.GGMLQuantizationType
    if array.ndim < 2 or dtype == "f32":
        writer.add_tensor(name, array.astype(np.float32))
        return
    if dtype == "f16" or (dtype == "q8_0" and array.shape[-1] % Q8_0_BLOCK):
        writer.add_tensor(name, array.astype(np.float16))
        return
    qtype = q.BF16 if dtype == "bf16" else q.Q8_0
    writer.add_tensor(name, gguf.quants.quantize(array.astype(np.float32), qtype), raw_dtype=qtype)


# -------------------------------------------------------------------------------------------------- hyperparameters


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def _add_hyperparameters(writer, config: GPTConfig, family: str, dtype: str, name: str, gguf) -> None:
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[dtype]))
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.mlp_width)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_vocab_size(config.vocab_size)
    if family == "gpt2":
        writer.add_layer_norm_eps(config.norm_eps)
        return
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_size)  # we rotate the whole head
    writer.add_key_length(config.head_size)
    writer.add_value_length(config.head_size)


# -------------------------------------------------------------------------------------------------------- tokenizer


def _gpt2_vocab(gguf):
    """GPT-2's byte-level BPE from the offline files tiktoken reads: encoder.json (token strings by id) and vocab.bpe
    (merges by rank); <|endoftext|> is the one control token, and both BOS and EOS."""
    import json

    from scalegpt.tokenizer import EOT_TEXT, gpt2_bpe_files

    vocab_bpe, encoder_json = gpt2_bpe_files()
    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        merges = [line for line in vocab_bpe.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    except (OSError, ValueError) as e:
        raise ScalegptError(f"cannot read GPT-2's BPE files ({e})") from None
    tokens = sorted(encoder, key=encoder.get)
    if [encoder[t] for t in tokens] != list(range(len(tokens))):
        raise ScalegptError(f"{encoder_json}: token ids are not 0..{len(tokens) - 1}")
    eot = encoder[EOT_TEXT]
    types = [gguf.TokenType.CONTROL if i == eot else gguf.TokenType.NORMAL for i in range(len(tokens))]

    def add(writer):
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(eot)
        writer.add_eos_token_id(eot)
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)

    return add


def _sentencepiece_vocab(spec: dict, gguf):
    """llama.cpp's SPM vocabulary (tokenizer model "llama") from the SentencePiece model inside the spec: pieces,
    scores and types, the BOS/EOS/UNK ids, and the normaliser's dummy-prefix and whitespace switches."""
    from sentencepiece import sentencepiece_model_pb2

    from scalegpt.tokenizer import tokenizer_from_spec

    proto, sp = _sentencepiece_proto(spec), tokenizer_from_spec(spec).sp
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    types_by_kind = {piece_type.NORMAL: gguf.TokenType.NORMAL, piece_type.UNKNOWN: gguf.TokenType.UNKNOWN,
                     piece_type.CONTROL: gguf.TokenType.CONTROL, piece_type.USER_DEFINED: gguf.TokenType.USER_DEFINED,
                     piece_type.UNUSED: gguf.TokenType.UNUSED, piece_type.BYTE: gguf.TokenType.BYTE}
    tokens = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    types = [types_by_kind[p.type] for p in proto.pieces]
    normalizer = proto.normalizer_spec

    def add(writer):
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        for setter, token_id in ((writer.add_bos_token_id, sp.bos_id()), (writer.add_eos_token_id, sp.eos_id()),
                                 (writer.add_unk_token_id, sp.unk_id()), (writer.add_pad_token_id, sp.pad_id())):
            if token_id >= 0:
                setter(token_id)
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(normalizer.add_dummy_prefix)
        writer.add_remove_extra_whitespaces(normalizer.remove_extra_whitespaces)

    return add
