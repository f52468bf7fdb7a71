"""HuggingFace interop: load HF GPT-2, Llama and Qwen3 weights into `GPT`, and export `GPT` as a HF directory of
the family its config belongs to (GPT-2 here; Llama and Qwen3 key maps in `scalegpt.hf_llama`).

Our parameter names are HF's GPT-2 names (`transformer.h.0.attn.c_attn.weight`, ...), so a GPT-2 conversion is a key
map plus a transpose: HF's GPT-2 uses `Conv1D` layers whose weight is stored (in, out), where `nn.Linear` stores
(out, in).

    load_pretrained(name_or_dir)                 -> GPT           (a checkpoint dir, an HF dir or a hub name)
    load_pretrained_with_tokenizer(name_or_dir)  -> (GPT, tokenizer spec or None)
    export_hf(model, tokenizer_spec, out_dir)    a directory transformers.AutoModelForCausalLM.from_pretrained reads
    export_family(config)                        "gpt2", "llama" or "qwen3"; an error naming what no family expresses

An exported directory also holds `scalegpt_tokenizer.json` (our tokenizer spec; HF tools ignore it), so importing it
gives back the same tokenizer; for the gpt2 tokenizer the HF tokenizer files are written too.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from scalegpt._fs import MISSING, path_problem, read_json_object, write_dir_atomically
from scalegpt.outputs import EXPORT_MARKER, check_output
from scalegpt.checkpoint import (TIED_KEY, clean_state_dict, is_model_dir, load_model_dir, load_state_checked,
                                 refuse_nonfinite)
from scalegpt.errors import ScalegptError
from scalegpt import hf_llama
from scalegpt.model import GPT, GPTConfig, unwrap
from scalegpt.resources import check_model

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TOKENIZER_SPEC_FILE = "scalegpt_tokenizer.json"
GPT2_VOCAB_SIZE = 50257
# HF activation_function -> our model.mlp (gelu_new and gelu_pytorch_tanh are the same tanh approximation).
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
MODEL_TYPES = ("gpt2", *hf_llama.ARCHITECTURES)  # the HF families we read and write
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", **hf_llama.ARCHITECTURES}


def load_pretrained(name_or_dir: str, device: str | torch.device = "cpu") -> GPT:
    """A GPT from a scalegpt model directory (or a run directory: its latest checkpoint), a HF GPT-2 directory, or a
    GPT-2 hub name (online only)."""
    return load_pretrained_with_tokenizer(name_or_dir, device=device)[0]


def load_pretrained_with_tokenizer(name_or_dir: str, device: str | torch.device = "cpu") -> tuple[GPT, dict | None]:
    """(model, tokenizer spec) from the same sources as `load_pretrained`.

    The spec is the checkpoint's own for scalegpt directories and exported ones; a HF GPT-2 directory with GPT-2's
    50257-token vocabulary gets the gpt2 spec; any other HF vocabulary gets None (its tokenizer is unknown to us)."""
    path = Path(name_or_dir)
    if is_model_dir(path):
        return load_model_dir(path, device=device)
    if (path / "checkpoints").is_dir():  # a run directory, as every CLI --checkpoint accepts: its latest checkpoint
        from scalegpt.checkpoint.model_dir import resolve_checkpoint

        return load_model_dir(resolve_checkpoint(path), device=device)
    if path.is_dir():
        return _load_hf_dir(path, device)
    why = path_problem(path, "dir")
    if why is not None and why != MISSING:  # a file, a FIFO, a symlink loop, a denied folder: say so
        raise ScalegptError(f"{path}: {why}, expected a model directory")
    if str(name_or_dir).removeprefix("openai-community/") in HUB_NAMES:
        return _load_hf_dir(_download(str(name_or_dir)), device)
    raise ScalegptError(
        f"{name_or_dir}: no such model directory; expected a scalegpt checkpoint directory, a HuggingFace GPT-2, "
        f"Llama or Qwen3 directory (config.json + model.safetensors or pytorch_model.bin), or one of "
        f"{', '.join(HUB_NAMES)}"
    )


def _download(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ScalegptError(f"'{name}' is not a local directory and huggingface_hub is not installed "
                            "(pip install scalegpt[hf]); or pass a local HF GPT-2 directory") from None
    try:
        # Only what we read: the hub repos also hold TF/Flax/ONNX copies of the same weights.
        return Path(snapshot_download(repo_id=name, allow_patterns=["config.json", "*.safetensors", "*.json"]))
    except Exception as e:  # offline, no such repo, HTTP errors: all mean "cannot get it from the hub"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ScalegptError(f"cannot download '{name}' from the HuggingFace hub ({first}); when offline, "
                            "pass a local directory holding config.json and model.safetensors") from None


# ---------------------------------------------------------------------------------------------------- HF -> scalegpt


def check_model_type(hf: dict, source) -> str:
    """The config's model_type when it is one we convert (MODEL_TYPES); otherwise one line naming the file.

    `architectures` is not consulted: tensors that happen to fit GPT-2's names and shapes (a fine-tune saved under
    another model_type, or a config without one) must not load as GPT-2."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        found = "no model_type" if model_type is None else f"model_type {model_type!r} is not supported"
        raise ScalegptError(f"{source}: {found}; expected one of {', '.join(MODEL_TYPES)}")
    return model_type


def hf_config_to_gpt(hf: dict, source) -> GPTConfig:
    """GPTConfig from a HF GPT-2 config.json dict (model_type already checked by check_model_type); anything GPT-2
    allows that our model does not compute is an error."""
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        if not isinstance(hf.get(key), int):
            raise ScalegptError(f"{source}: '{key}' must be an integer, got {hf.get(key)!r}")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or not math.isclose(eps, 1e-5, rel_tol=1e-6):
        raise ScalegptError(f"{source}: layer_norm_epsilon must be 1e-05 (our LayerNorm's), got {eps!r}")
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise ScalegptError(f"{source}: activation_function must be one of {', '.join(GPT2_ACTIVATIONS)}, got {act!r}")
    n_inner = hf.get("n_inner")
    if n_inner not in (None, 4 * hf["n_embd"]):
        raise ScalegptError(f"{source}: n_inner must be null or 4 * n_embd ({4 * hf['n_embd']}), got {n_inner!r}")
    for key, expected in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if hf.get(key, expected) != expected:
            raise ScalegptError(f"{source}: '{key}' must be {str(expected).lower()}, got {hf[key]!r}")
    return GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True,
                     mlp=GPT2_ACTIVATIONS[act])


def hf_state_to_gpt(hf_state: dict, config: GPTConfig) -> dict:
    """Our state dict from HF GPT-2 tensors (GPT2LMHeadModel's names, or GPT2Model's without `transformer.`)."""
    state = {}
    for k, v in hf_state.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old transformers versions, not weights
        if k == TIED_KEY:
            continue  # tied to wte (checked in hf_config_to_gpt); the embedding is the one copy we keep
        if not k.startswith("transformer."):
            k = "transformer." + k
        if k.endswith(CONV1D_SUFFIXES):
            v = v.t()
        state[k] = v.float().contiguous()
    wte = state.get("transformer.wte.weight")
    if wte is not None and config.padded_vocab_size > wte.shape[0]:
        # Rows for padded ids: never scored nor sampled, so zeros are as good as anything.
        pad = torch.zeros(config.padded_vocab_size - wte.shape[0], wte.shape[1], dtype=wte.dtype)
        state["transformer.wte.weight"] = torch.cat([wte, pad])
    state[TIED_KEY] = state.get("transformer.wte.weight")
    return state


def _read_json(path: Path) -> dict:
    return read_json_object(path, "a HuggingFace model directory has a config.json")


def _load_tensor_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise ScalegptError(f"{path}: cannot read safetensors weights ({e})") from None
    try:
        # weights_only: a .bin is a pickle, and a pickle from elsewhere must never run code when loaded.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ScalegptError(f"{path}: cannot read as a plain tensor file with "
                            f"torch.load(weights_only=True) ({first})") from None
    if not isinstance(state, dict):
        raise ScalegptError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def read_hf_weights(directory: Path) -> dict:
    """All tensors of a HF directory: single-file or sharded, safetensors preferred over pytorch_model.bin."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / single).is_file():
            return _load_tensor_file(directory / single)
        if (directory / index).is_file():
            weight_map = _read_json(directory / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ScalegptError(f"{directory / index}: expected a 'weight_map' object")
            state = {}
            for shard in sorted(set(weight_map.values())):
                state.update(_load_tensor_file(directory / shard))
            return state
    raise ScalegptError(f"{directory}: no weights found (expected model.safetensors or pytorch_model.bin)")


def _load_hf_dir(directory: Path, device) -> tuple[GPT, dict | None]:
    source = directory / "config.json"
    hf_config = _read_json(source)
    if hf_config.get("format") == "scalegpt":
        return load_model_dir(directory, device=device)  # ours but incomplete: let it say what is missing
    model_type = check_model_type(hf_config, source)
    if model_type == "gpt2":
        config = hf_config_to_gpt(hf_config, source)
    else:
        config = hf_llama.config_from_hf(hf_config, source)
    check_model(config, device, f"{source}: cannot allocate the model it describes")  # before reading any weights
    if model_type == "gpt2":
        state = hf_state_to_gpt(read_hf_weights(directory), config)
    else:
        state = hf_llama.state_from_hf(read_hf_weights(directory), config, directory)
    refuse_nonfinite(state, directory, "weights")
    spec = _hf_tokenizer_spec(directory, config, model_type == "gpt2")
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device=device)
    load_state_checked(model, state, directory)
    model.tie_weights()  # to_empty breaks the tie; restore it
    return model, spec


def _hf_tokenizer_spec(directory: Path, config: GPTConfig, is_gpt2: bool) -> dict | None:
    path = directory / TOKENIZER_SPEC_FILE
    if path.is_file():
        spec = _read_json(path)
        if spec.get("vocab_size") != config.vocab_size:
            raise ScalegptError(f"{path}: tokenizer vocab_size {spec.get('vocab_size')} does not match the model's "
                                f"vocab_size {config.vocab_size} in config.json")
        return spec
    # GPT-2's vocabulary size says "GPT-2's tokenizer" for the GPT-2 family; another family must say so itself.
    tokenizer_class = _tokenizer_class(directory)
    if config.vocab_size == GPT2_VOCAB_SIZE and (is_gpt2 or tokenizer_class in ("GPT2Tokenizer", "GPT2TokenizerFast")):
        return {"kind": "gpt2", "vocab_size": GPT2_VOCAB_SIZE, "eot_id": GPT2_VOCAB_SIZE - 1}
    return None


def _tokenizer_class(directory: Path) -> str | None:
    path = directory / "tokenizer_config.json"
    return _read_json(path).get("tokenizer_class") if path.is_file() else None


# ---------------------------------------------------------------------------------------------------- scalegpt -> HF


def gpt2_blockers(config: GPTConfig) -> list[str]:
    """The options of `config` that HF's GPT-2 has not (empty: it exports as GPT-2)."""
    why = []
    for name, gpt2 in (("pos_emb", "learned"), ("norm", "layernorm"), ("norm_learnable", True), ("bias", True),
                       ("qk_norm", False), ("tie_embeddings", True), ("embed_norm", False), ("value_embeds", False),
                       ("residual_scalars", False), ("logit_softcap", 0.0)):
        if getattr(config, name) != gpt2:
            why.append(f"{name} = {_toml(getattr(config, name))} (GPT-2 has {_toml(gpt2)})")
    if config.mlp not in GPT2_ACTIVATIONS.values():
        why.append(f"mlp = '{config.mlp}' (GPT-2 has gelu_tanh or gelu)")
    for name, gpt2 in (("mlp_hidden", 4 * config.n_embd), ("head_dim", config.n_embd // config.n_head),
                       ("n_kv_head", config.n_head)):
        if getattr(config, name) not in (0, gpt2):
            why.append(f"{name} = {getattr(config, name)} (GPT-2 has {gpt2})")
    if not math.isclose(config.norm_eps, 1e-5, rel_tol=1e-6):
        why.append(f"norm_eps = {config.norm_eps} (GPT-2 has 1e-05)")
    return why


def export_family(config: GPTConfig) -> str:
    """The HF family that expresses `config` exactly: "gpt2", "llama" or "qwen3" (with qk_norm). A config none of
    them expresses is an error naming its options that stand in the way of the nearest family."""
    gpt2, modern = gpt2_blockers(config), hf_llama.blockers(config)
    if not gpt2:
        return "gpt2"
    if not modern:
        return hf_llama.family(config)
    nearest, why = ("GPT-2", gpt2) if len(gpt2) <= len(modern) else ("Llama/Qwen3", modern)
    raise ScalegptError(f"this model cannot be exported to HuggingFace: no HF family has its options "
                        f"(nearest {nearest}: {'; '.join(why)}); it stays usable as a scalegpt checkpoint")


def _toml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def gpt_state_to_hf(model: GPT) -> dict:
    """HF GPT2LMHeadModel tensors: Conv1D weights transposed, padded vocabulary rows dropped, lm_head left out
    (it is tied to wte, and transformers itself saves GPT-2 that way)."""
    state = {}
    for k, v in clean_state_dict(model.state_dict()).items():
        if k == TIED_KEY:
            continue
        if k == "transformer.wte.weight":
            v = v[: model.config.vocab_size]
        if k.endswith(CONV1D_SUFFIXES):
            v = v.t()
        state[k] = v.detach().to("cpu").contiguous()
    return state


def gpt_config_to_hf(config: GPTConfig, tokenizer_spec: dict | None) -> dict:
    eot = tokenizer_spec.get("eot_id") if tokenizer_spec else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,  # the real vocabulary: padding is our speed trick, not part of the model
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if config.mlp == "gelu_tanh" else "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }


def export_hf(model: GPT, tokenizer_spec: dict | None, out_dir, overwrite: bool = False, inputs=()) -> Path:
    """Write `out_dir` as a HF GPT-2, Llama or Qwen3 directory, by `export_family(model.config)` (config.json,
    model.safetensors, generation_config.json, tokenizer files for gpt2, and EXPORT_MARKER). An existing non-empty
    `out_dir` is replaced only when it is an export of ours, with overwrite=True, and only once the new directory is
    complete; it may not be, contain or lie inside one of `inputs` (the checkpoint read)."""
    from scalegpt.checkpoint.model_dir import save_safetensors

    model = unwrap(model)
    config = model.config
    family = export_family(config)
    if tokenizer_spec is not None and tokenizer_spec.get("vocab_size") != config.vocab_size:
        raise ScalegptError(f"model vocab_size {config.vocab_size} does not match its tokenizer's vocab_size "
                            f"{tokenizer_spec.get('vocab_size')} ({tokenizer_spec.get('kind')})")
    out = check_output(out_dir, kind="export", inputs=inputs, overwrite=overwrite)

    if family == "gpt2":
        state = gpt_state_to_hf(model)
        hf_config = gpt_config_to_hf(config, tokenizer_spec)
    else:
        ours = clean_state_dict(model.state_dict())
        state = hf_llama.state_to_hf(ours, config)
        hf_config = hf_llama.config_to_hf(config, tokenizer_spec.get("eot_id") if tokenizer_spec else None)

    def write(tmp: Path) -> None:
        save_safetensors(state, tmp / "model.safetensors", {"format": "pt"})
        _write_json(tmp / "config.json", hf_config)
        eot = hf_config["eos_token_id"]
        _write_json(tmp / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot})
        _write_json(tmp / EXPORT_MARKER, {"format": "scalegpt-hf-export", "version": 1, "family": family})
        if tokenizer_spec is not None:
            _write_json(tmp / TOKENIZER_SPEC_FILE, tokenizer_spec)
            if tokenizer_spec.get("kind") == "gpt2":
                _write_gpt2_tokenizer_files(tmp, config.block_size)
            elif tokenizer_spec.get("kind") == "char":
                _write_char_tokenizer_files(tmp, tokenizer_spec, config.block_size)
            else:  # without this, AutoTokenizer would build an empty GPT-2 tokenizer (every text -> no ids)
                _write_json(tmp / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast"})

    write_dir_atomically(out, write, label="export")
    return out


def _write_gpt2_tokenizer_files(directory: Path, max_length: int) -> None:
    from scalegpt.tokenizer import EOT_TEXT, gpt2_bpe_files

    vocab_bpe, encoder_json = gpt2_bpe_files()
    # HF's vocab.json and merges.txt for gpt2 are byte for byte OpenAI's encoder.json and vocab.bpe.
    shutil.copyfile(encoder_json, directory / "vocab.json")
    shutil.copyfile(vocab_bpe, directory / "merges.txt")
    _write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length, "add_prefix_space": False,
        "bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT,
    })
    _write_json(directory / "special_tokens_map.json",
                {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT})


def hf_tokenizer_note(spec: dict | None) -> str:
    """What an export writes for transformers' AutoTokenizer, in words (export prints it)."""
    kind = spec.get("kind") if spec else None
    if kind in ("gpt2", "char"):
        return f"a {kind} tokenizer that transformers.AutoTokenizer loads"
    if kind is None:
        return "no tokenizer (the checkpoint records none)"
    return (f"no transformers tokenizer for {kind} (AutoTokenizer refuses the directory); tokenize with "
            f"sentencepiece, whose model is in {TOKENIZER_SPEC_FILE}")


def _write_char_tokenizer_files(directory: Path, spec: dict, max_length: int) -> None:
    """A `tokenizers` tokenizer.json for a char vocabulary: a BPE model with no merges maps each character to its id
    and the Fuse decoder joins them back; the end-of-text id is a special token."""
    from tokenizers import Tokenizer, decoders, models

    from scalegpt.tokenizer import EOT_TEXT

    vocab = {c: i for i, c in enumerate(spec["chars"])}
    vocab[EOT_TEXT] = spec["eot_id"]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOT_TEXT])
    tok.save(str(directory / "tokenizer.json"))
    _write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
        "bos_token": EOT_TEXT, "eos_token": EOT_TEXT,
    })


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
