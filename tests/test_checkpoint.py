"""Model directories on disk: safetensors + config.json, exact round trips, run-directory resolution, bad input."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from scalegpt._fs import write_dir_atomically
from scalegpt.checkpoint import clean_state_dict, is_model_dir, load_model_dir, resolve_checkpoint, save_model_dir
from scalegpt.errors import ScalegptError
from scalegpt.model import GPT, preset_config
from scalegpt.hf import load_pretrained

CHAR_SPEC = {"kind": "char", "vocab_size": 100, "eot_id": 99, "chars": "".join(chr(0x21 + i) for i in range(99))}


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_and_load_round_trip_exactly(tiny_model, tmp_path):
    save_model_dir(tiny_model, tmp_path / "ckpt", tokenizer_spec=CHAR_SPEC)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    assert is_model_dir(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["format"] == "scalegpt" and config["tokenizer"] == CHAR_SPEC
    assert config["model"] == tiny_model.config.to_dict()

    loaded = load_pretrained(str(tmp_path / "ckpt"))
    _same_weights(tiny_model, loaded)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # the tie survives loading
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert torch.equal(tiny_model(idx), loaded.eval()(idx))
    model, spec = load_model_dir(tmp_path / "ckpt")
    assert spec == CHAR_SPEC


def test_the_tied_matrix_is_stored_once(tiny_model, tmp_path):
    from safetensors.torch import load_file

    save_model_dir(tiny_model, tmp_path / "ckpt")
    keys = load_file(str(tmp_path / "ckpt" / "model.safetensors")).keys()
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys


def test_untied_model_with_every_option_round_trips(tmp_path):
    from safetensors.torch import load_file

    options = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_head=1, tie_embeddings=False,
                   value_embeds=True, residual_scalars=True, embed_norm=True, logit_softcap=15.0, bias=False)
    model = GPT(preset_config("tiny", vocab_size=100, **options)).eval()
    with torch.no_grad():
        model.transformer.x0_lambdas.fill_(0.5)  # off its init, so a lost scalar would show
    save_model_dir(model, tmp_path / "ckpt", tokenizer_spec=CHAR_SPEC)
    keys = load_file(str(tmp_path / "ckpt" / "model.safetensors")).keys()
    assert "lm_head.weight" in keys and "transformer.wte.weight" in keys  # untied: both stored
    loaded, _ = load_model_dir(tmp_path / "ckpt")
    _same_weights(model, loaded)
    assert loaded.config == model.config and loaded.lm_head.weight is not loaded.transformer.wte.weight
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(idx), loaded.eval()(idx))


def test_checkpoint_from_before_the_model_options_loads_and_resumes(tiny_model, tmp_path):
    from scalegpt.checkpoint import check_compatible

    save_model_dir(tiny_model, tmp_path / "old", tokenizer_spec=CHAR_SPEC)
    path = tmp_path / "old" / "config.json"
    config = json.loads(path.read_text())
    model = config["model"]
    config["model"] = {k: model[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout",
                                             "bias", "pad_vocab_multiple")} | {"activation": "gelu_tanh"}
    path.write_text(json.dumps(config))  # what scalegpt wrote before `mlp` replaced `activation`
    loaded, _ = load_model_dir(tmp_path / "old")
    assert loaded.config == tiny_model.config
    check_compatible(tmp_path / "old", tiny_model.config.to_dict(), CHAR_SPEC, "data")  # resumable: no error
    with pytest.raises(ScalegptError, match="pos_emb: checkpoint 'learned', config 'rope'"):
        check_compatible(tmp_path / "old", {**tiny_model.config.to_dict(), "pos_emb": "rope"}, CHAR_SPEC, "data")


def test_wrapped_modules_save_plain_names(tiny_model, tmp_path):
    class DDPLike(nn.Module):  # DDP keeps the model as `.module`; torch.compile as `._orig_mod`
        def __init__(self, module):
            super().__init__()
            self.module = module

    save_model_dir(DDPLike(tiny_model), tmp_path / "ckpt")
    _same_weights(tiny_model, load_model_dir(tmp_path / "ckpt")[0])
    state = {"_orig_mod.transformer.wpe.weight": 1, "module.lm_head.weight": 2, "transformer.ln_f.bias": 3}
    assert clean_state_dict(state) == {"transformer.wpe.weight": 1, "lm_head.weight": 2, "transformer.ln_f.bias": 3}


def test_resolve_checkpoint_picks_the_latest_step(tiny_model, tmp_path):
    run = tmp_path / "run"
    for step in (9, 10, 2):  # numeric order, not name order: step_10 is the latest
        save_model_dir(tiny_model, run / "checkpoints" / f"step_{step}")
    (run / "checkpoints" / "step_99").mkdir()  # an incomplete directory is not a checkpoint
    assert resolve_checkpoint(run) == run / "checkpoints" / "step_10"
    assert resolve_checkpoint(run / "checkpoints" / "step_2") == run / "checkpoints" / "step_2"
    with pytest.raises(ScalegptError, match="no such checkpoint or run directory"):
        resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(ScalegptError, match="neither a checkpoint directory"):
        resolve_checkpoint(tmp_path)


def test_atomic_write_keeps_the_old_directory_on_failure(tmp_path):
    target = tmp_path / "out"
    write_dir_atomically(target, lambda d: (d / "a.txt").write_text("old"))

    def crash(d):
        (d / "a.txt").write_text("half")
        raise RuntimeError("crash midway")

    with pytest.raises(RuntimeError):
        write_dir_atomically(target, crash)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left behind
    write_dir_atomically(target, lambda d: (d / "b.txt").write_text("new"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_vocab_that_does_not_match_the_tokenizer(tiny_model, tmp_path):
    save_model_dir(tiny_model, tmp_path / "ckpt", tokenizer_spec={"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256})
    with pytest.raises(ScalegptError, match="model vocab_size 100 does not match its tokenizer's vocab_size 50257"):
        load_model_dir(tmp_path / "ckpt")


def test_broken_checkpoints_give_one_clear_line(tiny_model, tmp_path):
    ckpt = tmp_path / "ckpt"
    save_model_dir(tiny_model, ckpt)
    config_path = ckpt / "config.json"
    good = config_path.read_text()

    config_path.write_text("{oops")
    with pytest.raises(ScalegptError, match="config.json: not valid JSON"):
        load_model_dir(ckpt)

    config = json.loads(good)
    config["model"]["n_embd"] = 64  # weights no longer fit
    config_path.write_text(json.dumps(config))
    with pytest.raises(ScalegptError, match=r"wte.weight has shape \(128, 32\), the model expects \(128, 64\)"):
        load_model_dir(ckpt)

    config_path.write_text(good)
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ScalegptError, match="model.safetensors: cannot read weights"):
        load_model_dir(ckpt)

    with pytest.raises(ScalegptError, match="not found"):
        load_model_dir(tmp_path / "missing")


def test_loaded_model_has_real_tensors(tmp_path):
    model = GPT(preset_config("tiny", vocab_size=65))
    save_model_dir(model, tmp_path / "c")
    loaded, _ = load_model_dir(tmp_path / "c")
    assert not any(p.is_meta for p in loaded.parameters())
    assert loaded.num_params() == model.num_params()
