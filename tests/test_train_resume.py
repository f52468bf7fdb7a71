"""Exact resume: on CPU (fp32 and bf16 autocast, AdamW and Muon, a fixed step count or a time budget), every step
after a resume is bit-identical to an uninterrupted run."""
from __future__ import annotations

import pytest
import torch
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


def assert_same_run(a, b, last: str = "step_000008"):
    assert (b / "log.txt").read_text() == (a / "log.txt").read_text()
    wa = load_file(a / "checkpoints" / last / "model.safetensors")
    wb = load_file(b / "checkpoints" / last / "model.safetensors")
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


@pytest.mark.parametrize("options", [{}, ALL_MODEL_OPTIONS], ids=["gpt2", "all-model-options"])
def test_resume_with_muon_is_bit_identical(tmp_path, tiny_data, run_cli, options):
    muon = {**RESUME, **options, "optim__name": "muon", "optim__muon_weight_decay": 0.01}
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    rc, out, err = run_cli("train", *cli_args(tiny_data, full, **muon))
    assert rc == 0 and "optimizer group muon: Muon" in out, err
    assert run_cli("train", *cli_args(tiny_data, resumed, **{**muon, "train__max_steps": 4}))[0] == 0
    state = torch.load(resumed / "checkpoints" / "step_000004" / "train_state.pt", weights_only=True)
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["decay", "no_decay", "muon"]
    assert any("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    rc, out, err = run_cli("train", *cli_args(tiny_data, resumed, **muon), "--resume")
    assert rc == 0 and "at step 4" in out, err
    assert_same_run(full, resumed)
    # the optimizer cannot change under a resumed run
    rc, _, err = run_cli("train", *cli_args(tiny_data, resumed, **{**muon, "optim__name": "adamw", "train__max_steps": 12}),
                         "--resume")
    assert rc == 2 and "optim.name changed" in err, err


def test_time_budget_run_resumes_bit_identically(tmp_path, tiny_data, run_cli, fake_clock):
    """The budget fixes max_steps after update 10 (inside the warmup, so the cosine that follows max_steps never saw
    an unknown number); a run resumed from step 10 reads it from the checkpoint and ends as the uninterrupted one.
    The clock is fake (0.05 s a reading, about one reading a step): the same max_steps however loaded the machine."""
    import re
    import shutil

    budget = {**RESUME, "train__time_budget": "2s", "schedule__warmup_steps": 10, "schedule__decay_steps": 0,
              "checkpoint__interval": 10, "checkpoint__keep_last": 0, "eval__interval": 0}
    full = tmp_path / "full"
    rc, out, err = run_cli("train", *cli_args(tiny_data, full, **budget))
    assert rc == 0, err
    found = re.search(r"time budget 2s: measured [\d.]+ ms/step over 8 steps -> max_steps = (\d+)", out)
    assert found, out
    max_steps = int(found.group(1))
    assert 20 < max_steps < 60  # 8 timed steps of 0.05 s each in a 2 s budget, the first steps and evaluation spent
    # the warmup of 10 is more than a fifth of the steps: it is fitted to them, the same way in the resumed run
    assert f"schedule fitted to the {max_steps} steps: warmup 10 -> {max_steps // 5} steps" in out
    steps = sorted(p.name for p in (full / "checkpoints").iterdir())
    assert steps[0] == "step_000010" and steps[-1] == f"step_{max_steps:06d}"
    state = torch.load(full / "checkpoints" / "step_000010" / "train_state.pt", weights_only=True)
    assert state["budget_max_steps"] == max_steps
    lines = (full / "log.txt").read_text().splitlines()
    assert lines[-1].startswith(f"{max_steps} train")
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for p in (resumed / "checkpoints").iterdir():
        if p.name != "step_000010":
            shutil.rmtree(p)
    rc, out, err = run_cli("train", *cli_args(tiny_data, resumed, **budget), "--resume")
    assert rc == 0, err
    assert f"time budget 2s: max_steps = {max_steps} (fixed when the run measured its speed" in out
    assert "ms/step over" not in out  # no second measurement
    assert_same_run(full, resumed, last=f"step_{max_steps:06d}")


def test_resume_goes_further_than_a_time_budget_fixed(tmp_path, tiny_data, run_cli, fake_clock):
    """README: a run trained for a time budget, resumed with a larger --train.max_steps, trains up to it (the run's
    own config.toml holds the budget: the step count typed on the command line wins over it)."""
    import re

    run = tmp_path / "run"
    budget = {**RESUME, "train__time_budget": "2s", "schedule__warmup_steps": 10, "schedule__decay_steps": 0,
              "checkpoint__interval": 0, "eval__interval": 0}
    rc, out, err = run_cli("train", *cli_args(tiny_data, run, **budget))
    assert rc == 0, err
    fixed = int(re.search(r"-> max_steps = (\d+)", out).group(1))
    rc, out, err = run_cli("train", "--out", run, "--resume")
    assert rc == 0, err
    assert f"already at step {fixed} of {fixed}: nothing to train; to train further, resume with " \
           f"--train.max_steps N (N > {fixed})" in out
    rc, out, err = run_cli("train", "--out", run, "--resume", "--train.max_steps", str(fixed + 5))
    assert rc == 0, err
    assert f"--train.max_steps {fixed + 5} given: train.time_budget = '2s' from {run / 'config.toml'} is dropped" in out
    assert f"resumed run planned for {fixed} steps now goes to {fixed + 5}" in out
    assert (run / "log.txt").read_text().splitlines()[-1].startswith(f"{fixed + 5} train")
