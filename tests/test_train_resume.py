"""Exact resume: on CPU (fp32 and bf16 autocast), every step after a resume is bit-identical to an uninterrupted
run."""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from test_train import cli_args, prepare_chars

# Accumulation (2 micro-steps) and dropout make the data position and the RNG state matter; a step-8 decay end
# keeps the schedule the same whether a run is asked for 4 or 8 steps.
RESUME = dict(train__micro_batch_size=4, model__dropout=0.1, schedule__decay_steps=8, eval__interval=2,
              checkpoint__interval=4)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, shakespeare_text):
    return prepare_chars(shakespeare_text[:60_000], tmp_path_factory.mktemp("data") / "shk")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_data):
    from scalegpt.cli import main

    run = tmp_path_factory.mktemp("full") / "run"
    assert main(["train", *cli_args(tiny_data, run, **RESUME)]) == 0
    return run


def assert_same_run(a, b):
    assert (b / "log.txt").read_text() == (a / "log.txt").read_text()
    wa = load_file(a / "checkpoints" / "step_000008" / "model.safetensors")
    wb = load_file(b / "checkpoints" / "step_000008" / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_resume_is_bit_identical(tmp_path, tiny_data, uninterrupted, run_cli):
    run = tmp_path / "run"
    assert run_cli("train", *cli_args(tiny_data, run, **{**RESUME, "train__max_steps": 4}))[0] == 0
    rc, out, err = run_cli("train", *cli_args(tiny_data, run, **RESUME), "--resume")
    assert rc == 0, err
    assert "resumed from" in out and "step_000004 at step 4" in out
    assert_same_run(uninterrupted, run)


def test_resume_after_a_crash_past_the_checkpoint(tmp_path, tiny_data, uninterrupted, run_cli):
    """A run that died at step 6 (checkpoint at 4) resumes from 4; the log lines of steps 5-6 are replaced."""
    run = tmp_path / "run"
    crashed = {**RESUME, "train__max_steps": 6, "checkpoint__at_end": False}
    assert run_cli("train", *cli_args(tiny_data, run, **crashed))[0] == 0
    assert "6 train" in (run / "log.txt").read_text()
    # no --config, no overrides but the new length: the run's own config.toml is the base
    rc, _, err = run_cli("train", "--out", run, "--resume", "--train.max_steps", "8", "--checkpoint.at_end", "true")
    assert rc == 0, err
    assert_same_run(uninterrupted, run)


def test_resume_of_a_finished_run_trains_nothing(uninterrupted, tiny_data, run_cli, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(uninterrupted, run)
    before = (run / "log.txt").read_text()
    rc, out, _ = run_cli("train", *cli_args(tiny_data, run, **RESUME), "--resume")
    assert rc == 0 and "nothing to train" in out
    assert (run / "log.txt").read_text() == before


def test_resume_is_bit_identical_under_bf16_autocast(tmp_path, tiny_data, run_cli):
    # What auto picks on a CPU with fast bf16 matmuls: mixed precision, fp32 weights and optimizer state.
    bf16 = {**RESUME, "train__precision": "bf16"}
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert run_cli("train", *cli_args(tiny_data, full, **bf16))[0] == 0
    assert run_cli("train", *cli_args(tiny_data, resumed, **{**bf16, "train__max_steps": 4}))[0] == 0
    rc, out, err = run_cli("train", *cli_args(tiny_data, resumed, **bf16), "--resume")
    assert rc == 0 and "precision: bf16" in out, err
    assert_same_run(full, resumed)


# Every [model] switch away from GPT-2 (docs/training.md#model-options), as `scalegpt train` overrides.
ALL_MODEL_OPTIONS = dict(model__pos_emb="rope", model__norm="rmsnorm", model__mlp="relu2", model__qk_norm=True,
                         model__n_kv_head=1, model__tie_embeddings=False, model__zero_init=True,
                         model__value_embeds=True, model__residual_scalars=True, model__embed_norm=True,
                         model__logit_softcap=15.0)


@pytest.mark.parametrize("options", [
    pytest.param(ALL_MODEL_OPTIONS, id="all-model-options"),
    pytest.param({**ALL_MODEL_OPTIONS, "model__mlp": "swiglu", "model__norm_learnable": False,
                  "dist__activation_checkpointing": True}, id="swiglu-parameter-free-norms-checkpointed"),
])
def test_resume_is_bit_identical_with_model_options(tmp_path, tiny_data, run_cli, options):
    run_options = {**RESUME, **options}
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    rc, out, err = run_cli("train", *cli_args(tiny_data, full, **run_options))
    assert rc == 0, err
    assert "pos_emb=rope, norm=rmsnorm" in out  # the model line names the switches in use
    val = [float(x.split()[2]) for x in (full / "log.txt").read_text().splitlines() if " val " in x]
    assert val[-1] < val[0]  # it learns
    assert run_cli("train", *cli_args(tiny_data, resumed, **{**run_options, "train__max_steps": 4}))[0] == 0
    rc, out, err = run_cli("train", *cli_args(tiny_data, resumed, **run_options), "--resume")
    assert rc == 0 and "resumed from" in out, err
    assert_same_run(full, resumed)
    weights = load_file(full / "checkpoints" / "step_000008" / "model.safetensors")
    assert "lm_head.weight" in weights and "transformer.wpe.weight" not in weights


def test_resume_keeps_the_precision_auto_picked(tmp_path, tiny_data, run_cli, monkeypatch):
    # auto measures the CPU at start-up; a resumed run must not flip precision if a new measurement would differ
    from scalegpt import runtime

    run = tmp_path / "run"
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: 2.0)
    rc, out, err = run_cli("train", *cli_args(tiny_data, run, **{**RESUME, "train__max_steps": 4,
                                                                  "train__precision": "auto"}))
    assert rc == 0 and "precision: bf16 (auto: this CPU" in out, err
    assert 'precision = "bf16"' in (run / "checkpoints" / "step_000004" / "train_config.toml").read_text()
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: 0.1)
    rc, out, err = run_cli("train", "--out", run, "--resume", "--train.max_steps", "8")
    assert rc == 0 and "precision: bf16 (auto: as the run started" in out, err
    rc, out, err = run_cli("train", "--out", run, "--resume", "--train.max_steps", "10", "--train.precision", "fp32")
    assert rc == 0 and "precision: fp32 (requested" in out, err  # asking explicitly still wins
