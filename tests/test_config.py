"""Config: TOML loading, --section.key overrides, type checks, unknown-key suggestions, help, presets."""
from __future__ import annotations

from pathlib import Path

import pytest

from scalegpt.config import (Config, apply_overrides, config_from_dict, fields_table, help_text, load_config,
                             parse_override_args, to_toml)
from scalegpt.errors import ScalegptError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_then_file_then_overrides(tmp_path):
    path = write(tmp_path, "[optim]\nlr = 1e-3\n[train]\nmax_steps = 10\n")
    config = load_config(path, [("optim.lr", "3e-4"), ("train.seed", "7")])
    assert config.optim.lr == 3e-4  # the command line wins over the file
    assert config.train.max_steps == 10  # the file wins over the default
    assert config.train.seed == 7
    assert config.optim.beta1 == Config().optim.beta1


def test_override_types_are_converted_and_checked():
    config = apply_overrides(Config(), [("model.bias", "false"), ("eval.prompt", "Once"), ("optim.eps", "1")])
    assert config.model.bias is False and config.eval.prompt == "Once" and config.optim.eps == 1.0
    with pytest.raises(ScalegptError, match=r"--train.max_steps: expected int, got '1.5'"):
        apply_overrides(Config(), [("train.max_steps", "1.5")])
    with pytest.raises(ScalegptError, match="--model.bias: expected bool"):
        apply_overrides(Config(), [("model.bias", "maybe")])


def test_override_argument_spellings():
    assert parse_override_args(["--optim.lr", "3e-4", "--train.seed=1"]) == [("optim.lr", "3e-4"), ("train.seed", "1")]
    with pytest.raises(ScalegptError, match="--optim.lr needs a value"):
        parse_override_args(["--optim.lr"])


@pytest.mark.parametrize("key, suggestion", [("optim.lrr", "optim.lr"), ("train.max_step", "train.max_steps"),
                                             ("lr", "optim.lr"), ("data.dirr", "data.dir")])
def test_unknown_key_names_it_and_suggests_the_closest(key, suggestion):
    with pytest.raises(ScalegptError) as e:
        apply_overrides(Config(), [(key, "1")])
    assert f"'{key}'" in str(e.value) and f"did you mean '{suggestion}'" in str(e.value)


def test_toml_errors_name_file_and_key(tmp_path):
    with pytest.raises(ScalegptError, match=r"'optim.learning_rate' in .*c.toml; did you mean 'optim.lr'"):
        load_config(write(tmp_path, "[optim]\nlearning_rate = 1e-3\n"))
    with pytest.raises(ScalegptError, match=r"c.toml: train.max_steps must be int, got str '10'"):
        load_config(write(tmp_path, "[train]\nmax_steps = '10'\n"))
    with pytest.raises(ScalegptError, match="train.max_steps must be int, got bool"):
        load_config(write(tmp_path, "[train]\nmax_steps = true\n"))
    with pytest.raises(ScalegptError, match="'trian'.*did you mean 'train"):
        load_config(write(tmp_path, "[trian]\nmax_steps = 10\n"))
    with pytest.raises(ScalegptError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\n"))
    with pytest.raises(ScalegptError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    assert load_config(write(tmp_path, "[optim]\nlr = 1\n")).optim.lr == 1.0  # an int is a fine float


def test_choices_and_ranges_are_checked(tmp_path):
    with pytest.raises(ScalegptError, match="train.precision must be one of auto | fp32 | bf16 | fp16, got 'fp8'"):
        load_config(None, [("train.precision", "fp8")])
    with pytest.raises(ScalegptError, match="train.seq_len .* larger than the model's block_size"):
        load_config(None, [("model.block_size", "64"), ("train.seq_len", "128")])
    with pytest.raises(ScalegptError, match="train.micro_batch_size must be >= 1, got 0"):
        load_config(None, [("train.micro_batch_size", "0")])
    with pytest.raises(ScalegptError, match="guard.spike_window"):  # the [guard] section's own checks still apply
        load_config(None, [("guard.spike_window", "1")])
    with pytest.raises(ScalegptError, match="dist.strategy"):
        load_config(None, [("dist.strategy", "zero3")])


def test_resolved_toml_round_trips():
    import tomllib

    config = load_config(None, [("eval.prompt", 'say "hi"\n'), ("optim.eps", "1e-12"), ("model.bias", "false")])
    assert config_from_dict(tomllib.loads(to_toml(config))) == config


def test_every_field_has_a_doc_and_appears_in_help(run_cli):
    table = fields_table()
    assert {f.section for f in table} >= {"model", "data", "optim", "schedule", "train", "eval", "log", "checkpoint",
                                          "dist", "guard"}
    missing = [f.key for f in table if not f.doc]
    assert not missing, f"fields without a doc comment: {missing}"
    rc, out, _ = run_cli("train", "--help")
    assert rc == 0
    flat = "".join(out.split())  # argparse wraps lines anywhere, even after a hyphen
    for f in table:
        assert f"--{f.key}" in out
        assert "".join(f.doc.split()) in flat
    assert "--optim.lr" in help_text()


def test_cli_unknown_option_is_one_line_with_a_suggestion(run_cli):
    rc, out, err = run_cli("train", "--optim.lrr", "1e-3")
    assert rc == 2
    assert err.strip() == "scalegpt: error: unknown option --optim.lrr; did you mean --optim.lr?"
    rc, _, err = run_cli("train", "--out", "x", "--train.max_steps", "ten")
    assert rc == 2 and "--train.max_steps: expected int, got 'ten'" in err and "Traceback" not in err


SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.toml"))


def test_shipped_presets_include_the_modern_recipes():
    assert {"gpt2-124m", "shakespeare-char", "quickstart", "shakespeare-char-modern", "quickstart-modern",
            "llama-125m", "llama-350m"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_loads_and_builds(name):
    """Every preset loads, its model and optimizer build (on the meta device: shapes only), and a parameter count
    stated in its header ("# N = ... in the blocks + ...") is the model's own."""
    import dataclasses
    import re

    import torch

    from scalegpt.model import GPT
    from scalegpt.optim import build_optimizers

    path = CONFIGS / f"{name}.toml"
    config = load_config(path)
    assert config.train.global_batch_tokens % (config.train.seq_len or config.model.block_size) == 0
    model_config = dataclasses.replace(config.model, vocab_size=config.model.vocab_size or 50257)
    with torch.device("meta"):
        model = GPT(model_config)
        optimizer, lines = build_optimizers(model, config.optim, "cpu")
    assert len(lines) == (3 if config.optim.name == "muon" else 2)  # AdamW decay + no-decay groups (+ Muon)
    stated = re.search(r"^# ([\d,]+) = ", path.read_text(encoding="utf-8"), re.MULTILINE)
    if stated:
        assert model.num_params() == int(stated.group(1).replace(",", ""))


@pytest.mark.parametrize("name", ["llama-125m", "llama-350m"])
def test_gpu_presets_are_llama_shaped(name):
    """What `scalegpt export` needs for LlamaForCausalLM: RoPE, learned RMSNorm, SwiGLU, no bias, no extras."""
    m = load_config(CONFIGS / f"{name}.toml").model
    assert (m.pos_emb, m.norm, m.mlp, m.bias, m.norm_learnable) == ("rope", "rmsnorm", "swiglu", False, True)
    assert not (m.qk_norm or m.embed_norm or m.value_embeds or m.residual_scalars or m.logit_softcap)
    assert not m.tie_embeddings and load_config(CONFIGS / f"{name}.toml").optim.name == "muon"


def test_modern_shakespeare_keeps_the_data_shape_and_batch_of_the_gpt2_recipe():
    """The benchmark compares the two recipes on the same data, context and tokens per step."""
    gpt2, modern = load_config(CONFIGS / "shakespeare-char.toml"), load_config(CONFIGS / "shakespeare-char-modern.toml")
    for key in ("n_layer", "n_embd", "block_size"):
        assert getattr(gpt2.model, key) == getattr(modern.model, key)
    assert (gpt2.train.global_batch_tokens, gpt2.train.micro_batch_size) == (modern.train.global_batch_tokens,
                                                                             modern.train.micro_batch_size)
    assert modern.model.pos_emb == "rope" and modern.optim.name == "muon"


def test_gpt2_preset_is_build_nanogpt_recipe():
    c = load_config(CONFIGS / "gpt2-124m.toml")
    assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.block_size) == (12, 12, 768, 1024)
    assert c.train.global_batch_tokens == 524288 and c.train.max_steps == 19073
    assert c.optim.lr == 6e-4 and c.schedule.warmup_steps == 715 and c.schedule.min_lr_ratio == 0.1
    assert c.optim.weight_decay == 0.1


def test_shakespeare_preset_is_nanogpt_cpu_recipe():
    c = load_config(CONFIGS / "shakespeare-char.toml")
    assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.block_size) == (4, 4, 128, 64)
    assert c.train.global_batch_tokens == 12 * 64 and c.train.micro_batch_size == 12
    assert c.train.max_steps == 2000 and c.schedule.decay_steps == 2000 and c.model.dropout == 0.0
    # nanoGPT's lr is 1e-3; 3e-3 reaches a lower val loss on this model (the preset's header has the sweep).
    assert c.optim.lr == 3e-3 and c.schedule.min_lr_ratio == 0.1 and c.schedule.warmup_steps == 100


def test_durations_parse_and_bad_ones_are_named():
    from scalegpt.config import parse_duration

    assert parse_duration("90s") == 90 and parse_duration("3m") == 180 and parse_duration(" 1.5H ") == 5400
    assert parse_duration("") == 0
    for bad in ("3", "3 min", "m", "-1s", "0m"):
        with pytest.raises(ScalegptError, match="train.time_budget"):
            parse_duration(bad, "train.time_budget")
    with pytest.raises(ScalegptError, match="train.time_budget '5x' is not a duration"):
        load_config(None, [("train.time_budget", "5x")])
    with pytest.raises(ScalegptError, match="optim.name must be one of adamw | muon"):
        load_config(None, [("optim.name", "sgd")])
    with pytest.raises(ScalegptError, match="optim.muon_adjust_lr"):
        load_config(None, [("optim.muon_adjust_lr", "moonlight")])


# ------------------------------------------------------------------------ one validation for every field (issue 14)

NUMBERS = [f for f in fields_table() if f.type in (int, float)]


@pytest.mark.parametrize("field", [f for f in NUMBERS if f.type is float], ids=lambda f: f.key)
@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_every_float_refuses_non_finite_values(field, text):
    with pytest.raises(ScalegptError, match=rf"^--{field.key} must be a finite number, got {text}$"):
        load_config(None, [(field.key, text)])


@pytest.mark.parametrize("field", NUMBERS, ids=lambda f: f.key)
def test_every_number_has_a_range(field):
    # Negative numbers mean nothing anywhere in the schema: each field refuses -1 with its key named.
    with pytest.raises(ScalegptError, match=rf"^--{field.key} must be .*, got -1"):
        load_config(None, [(field.key, "-1")])


@pytest.mark.parametrize("field", fields_table(), ids=lambda f: f.key)
def test_every_field_refuses_a_value_of_the_wrong_type_in_a_file(tmp_path, field):
    wrong = "[1]" if field.type is str else '"12"'
    path = write(tmp_path, f"[{field.section}]\n{field.name} = {wrong}\n")
    with pytest.raises(ScalegptError, match=rf"c.toml: {field.key} must be {field.type.__name__}, got (str|list)"):
        load_config(path)


@pytest.mark.parametrize("key, value, message", [
    ("optim.beta1", "1.5", "--optim.beta1 must be in [0, 1), got 1.5"),
    ("optim.beta2", "1", "--optim.beta2 must be in [0, 1), got 1.0"),
    ("optim.eps", "0", "--optim.eps must be > 0, got 0.0"),
    ("optim.lr", "0", "--optim.lr must be > 0, got 0.0"),
    ("model.dropout", "1", "--model.dropout must be in [0, 1), got 1.0"),
    ("schedule.min_lr_ratio", "1.5", "--schedule.min_lr_ratio must be in [0, 1], got 1.5"),
    ("guard.spike_window", "1", "--guard.spike_window must be >= 2, got 1"),
    ("train.seed", str(2**64), f"--train.seed must be in [0, 18446744073709551616), got {2**64}"),
])
def test_ranges_name_the_key_and_the_range(key, value, message):
    with pytest.raises(ScalegptError) as e:
        load_config(None, [(key, value)])
    assert str(e.value) == message


def test_sections_check_themselves_wherever_they_come_from():
    from scalegpt.config import GPTConfig, OptimSection, TrainSection

    with pytest.raises(ScalegptError, match=r"^optim.grad_clip must be a finite number, got nan$"):
        OptimSection(grad_clip=float("nan"))
    with pytest.raises(ScalegptError, match=r"^train.max_steps must be int, got bool True$"):
        TrainSection(max_steps=True)
    with pytest.raises(ScalegptError, match=r"^run/config.json: model.n_layer must be int, got str '2'$"):
        GPTConfig.from_dict({"n_layer": "2"}, where="run/config.json")
    assert OptimSection(lr=1).lr == 1.0 and isinstance(OptimSection(lr=1).lr, float)  # an int is a fine float
    assert load_config(None, [("dist.strategy", "FSDP")]).dist.strategy == "fsdp"  # choices: any letter case


def test_a_command_line_step_count_beats_a_preset_time_budget():
    """README: `--train.max_steps 500` on the quickstart preset (time_budget = "2m") trains 500 steps, and says it
    dropped the budget; a budget typed on the command line beside it runs (as it says when it starts)."""
    from scalegpt.cli.quickstart_cmd import QUICKSTART_CONFIG

    notes: list[str] = []
    config = load_config(QUICKSTART_CONFIG, [("train.max_steps", "500")], notes)
    assert config.train.max_steps == 500 and config.train.time_budget == ""
    assert notes == [f"--train.max_steps 500 given: train.time_budget = '2m' from {QUICKSTART_CONFIG} is dropped"]
    notes = []
    config = load_config(QUICKSTART_CONFIG, [("train.max_steps", "500"), ("train.time_budget", "1m")], notes)
    assert config.train.time_budget == "1m" and notes == []
    assert load_config(QUICKSTART_CONFIG, [("train.time_budget", "1m")]).train.time_budget == "1m"
