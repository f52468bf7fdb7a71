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


# ------------------------------------------------------------------ non-finite weights: refused by every command


@pytest.fixture
def nan_checkpoint_and_data(tmp_path, shakespeare_text):
    """A char dataset, and a checkpoint of a model for it with one NaN weight (as a run that blew up could leave)."""
    from scalegpt.prepare import prepare

    (tmp_path / "corpus.txt").write_text(shakespeare_text[:20_000], encoding="utf-8")
    meta = prepare([str(tmp_path / "corpus.txt")], out=tmp_path / "data", tokenizer="char", progress=False)
    model = GPT(preset_config("tiny", vocab_size=meta["vocab_size"]))
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight[3, 4] = float("nan")
    save_model_dir(model, tmp_path / "run" / "checkpoints" / "step_000010", tokenizer_spec=meta["tokenizer"])
    return tmp_path / "run" / "checkpoints" / "step_000010", tmp_path / "data"


@pytest.mark.parametrize("command", ["sample", "eval loss", "eval hellaswag", "export"])
def test_every_command_refuses_a_nonfinite_checkpoint_in_one_line(nan_checkpoint_and_data, tmp_path, run_cli,
                                                                 data_dir, command):
    ckpt, data = nan_checkpoint_and_data
    extra = {"sample": ["--max-new-tokens", "3"], "eval loss": ["--data", data],
             "eval hellaswag": ["--file", data_dir / "hellaswag_val_sample.jsonl"],
             "export": ["--out", tmp_path / "hf"]}[command]
    # The run directory resolves to its latest checkpoint, which is the broken one.
    rc, out, err = run_cli(*command.split(), "--checkpoint", ckpt.parent.parent, *extra)
    assert rc == 2 and out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines == [f"scalegpt: error: {ckpt}: non-finite weights (NaN or inf in transformer.h.1.attn.c_proj.weight); "
                     "this checkpoint cannot be used, take an earlier one"]
    assert not (tmp_path / "hf").exists()


def test_resume_refuses_nonfinite_optimizer_state(tmp_path, shakespeare_text):
    from scalegpt.checkpoint import load_state
    from scalegpt.config import config_from_dict
    from scalegpt.prepare import prepare
    from scalegpt.train import Trainer

    (tmp_path / "corpus.txt").write_text(shakespeare_text[:20_000], encoding="utf-8")
    prepare([str(tmp_path / "corpus.txt")], out=tmp_path / "data", tokenizer="char", progress=False)
    config = config_from_dict({
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}, "data": {"dir": str(tmp_path / "data")},
        "train": {"max_steps": 2, "global_batch_tokens": 32, "micro_batch_size": 2, "device": "cpu",
                  "precision": "fp32", "compile": "false"},
        "eval": {"interval": 0, "at_start": False, "samples": 0}, "log": {"plot": False, "progress": "false"}})
    Trainer(config, tmp_path / "run", echo=lambda s: None).fit()
    ckpt = tmp_path / "run" / "checkpoints" / "step_000002"
    state = load_state(ckpt)
    state["optimizer"]["state"][0]["exp_avg_sq"][0] = float("inf")
    torch.save(state, ckpt / "train_state.pt")
    with pytest.raises(ScalegptError, match=f"{ckpt}: non-finite weights or optimizer state \\(NaN or inf\\); this "
                                            "checkpoint cannot be resumed, take an earlier one"):
        Trainer(config, tmp_path / "run", resume=True, echo=lambda s: None)
