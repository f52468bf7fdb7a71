"""The trainer end to end on a tiny model: files written, accumulation, fp16 loss scaling, signals, bad input."""
from __future__ import annotations

import errno
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scalegpt.config import load_config
from scalegpt.errors import ScalegptError
from scalegpt.train import Trainer

TINY = {
    "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32,
    "train.global_batch_tokens": 256, "train.micro_batch_size": 4, "train.max_steps": 8, "train.device": "cpu",
    "train.precision": "fp32",  # auto would pick bf16 on a CPU with fast bf16 units; these tests compare numbers
    "schedule.warmup_steps": 2, "schedule.decay_steps": 8, "optim.lr": 3e-3, "eval.interval": 4,
    "eval.tokens": 2048, "eval.samples": 1, "eval.sample_tokens": 8, "log.interval": 2, "log.plot": False,
    "log.progress": "false", "checkpoint.interval": 4,
}


def prepare_chars(text: str, out: Path) -> Path:
    from scalegpt.prepare import prepare

    src = out.with_suffix(".txt")
    src.write_text(text, encoding="utf-8")
    prepare([str(src)], out=str(out), tokenizer="char", progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, shakespeare_text) -> Path:
    return prepare_chars(shakespeare_text[:60_000], tmp_path_factory.mktemp("data") / "shk")


def cli_args(data: Path, out: Path, **overrides) -> list[str]:
    values = {**TINY, "data.dir": str(data), **{k.replace("__", "."): v for k, v in overrides.items()}}
    args = []
    for key, value in values.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args + ["--out", str(out)]


def make_trainer(data: Path, out: Path, **overrides) -> Trainer:
    values = {**TINY, "data.dir": str(data), **{k.replace("__", "."): v for k, v in overrides.items()}}
    config = load_config(None, [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in values.items()])
    return Trainer(config, out, echo=lambda *_: None)


def test_cli_train_writes_logs_metrics_plot_and_checkpoints(tmp_path, tiny_data, run_cli):
    run = tmp_path / "run"
    rc, out, err = run_cli("train", *cli_args(tiny_data, run, log__plot=True, checkpoint__keep_last=1))
    assert rc == 0, err
    assert "device: cpu" in out and "precision: fp32" in out and "AdamW (fused)" in out
    assert re.search(r"step 8/8 \| loss \d\.\d+ \| lr .* \| norm .* tok/s \| MFU .*% \| .* ms/step \| ETA", out)
    lines = (run / "log.txt").read_text().splitlines()
    assert all(re.fullmatch(r"\d+ (train|val) \d+\.\d{6}", line) for line in lines), lines
    assert [int(x.split()[0]) for x in lines if " train " in x] == list(range(1, 9))
    val = [(int(x.split()[0]), float(x.split()[2])) for x in lines if " val " in x]
    assert [s for s, _ in val] == [0, 4, 8] and val[-1][1] < val[0][1]  # it learns
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "val", "speed", "sample"} <= {r["kind"] for r in rows}
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert all({"loss", "lr", "grad_norm", "tokens_seen"} <= set(r) for r in train_rows)
    assert train_rows[-1]["tokens_seen"] == 8 * 256
    val_rows = [r for r in rows if r["kind"] == "val"]
    assert all(r["bpb"] > 0 and r["bytes"] >= r["tokens"] for r in val_rows) and "bpb " in out
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(run / "config.toml").train.max_steps == 8
    # keep_last = 1: only the final checkpoint remains, readable as a plain model directory, state weights_only-safe
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000008"]
    from scalegpt.checkpoint import load_model_dir

    model, spec = load_model_dir(run / "checkpoints" / "step_000008")
    assert model.config.n_layer == 2 and spec["kind"] == "char"
    state = torch.load(run / "checkpoints" / "step_000008" / "train_state.pt", weights_only=True)
    assert state["step"] == 8 and "optimizer" in state and "loader" in state and "rng" in state


def test_plot_command_draws_several_runs(tmp_path, tiny_data, run_cli):
    for name in ("a", "b"):
        assert run_cli("train", *cli_args(tiny_data, tmp_path / name, train__max_steps=2, eval__interval=2,
                                          checkpoint__interval=0, checkpoint__at_end=False))[0] == 0
    rc, out, _ = run_cli("plot", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "both.png")
    assert rc == 0 and (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"
    rc, _, err = run_cli("plot", tmp_path / "nothing")
    assert rc == 2 and "log.txt: not found" in err


def test_existing_run_dir_is_never_clobbered(tmp_path, tiny_data, run_cli):
    run = tmp_path / "run"
    args = cli_args(tiny_data, run, train__max_steps=2, eval__interval=0, checkpoint__interval=0)
    assert run_cli("train", *args)[0] == 0
    before = (run / "log.txt").read_bytes()
    rc, _, err = run_cli("train", *args)
    assert rc == 2 and "run directory exists; pass --resume" in err
    assert (run / "log.txt").read_bytes() == before
    assert run_cli("train", *args, "--overwrite")[0] == 0
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    rc, _, err = run_cli("train", *cli_args(tiny_data, other), "--overwrite")
    assert rc == 2 and "not a scalegpt run directory; refusing" in err
    assert (other / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("overrides, message", [
    ({"train.global_batch_tokens": 200}, "train.global_batch_tokens (200) must be a multiple of micro_batch_size x "
                                         "seq_len x world_size = 4 x 32 x 1 = 128"),
    ({"train.seq_len": 64}, "train.seq_len (64) is larger than the model's block_size (32)"),
    ({"data.dir": ""}, "data.dir is not set"),
    ({"model.vocab_size": 10}, "model.vocab_size (10) is smaller than the dataset's tokenizer vocabulary"),
    ({"train.time_budget": "1m", "schedule.decay_steps": 0},
     "train.time_budget needs the throughput measured inside the warmup"),
])
def test_bad_input_is_one_clear_line(tmp_path, tiny_data, run_cli, overrides, message):
    args = cli_args(tiny_data, tmp_path / "run", **{k.replace(".", "__"): v for k, v in overrides.items()})
    rc, _, err = run_cli("train", *args)
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_resume_refuses_other_tokenizer_and_other_shape(tmp_path, tiny_data, run_cli, shakespeare_text):
    run = tmp_path / "run"
    assert run_cli("train", *cli_args(tiny_data, run, train__max_steps=2, eval__interval=0))[0] == 0
    text = shakespeare_text[:60_000]
    assert "z" in text and "~" not in text
    # the same vocabulary size (so the model shape matches) but another character set
    other = prepare_chars(text.replace("z", "~"), tmp_path / "other")
    rc, _, err = run_cli("train", *cli_args(other, run, train__max_steps=4, eval__interval=0), "--resume")
    assert rc == 2 and "tokenizer mismatch" in err, err
    # a smaller character set: named as the tokenizer it is, not as the vocab_size it changes
    fewer = prepare_chars(text.replace("z", ""), tmp_path / "fewer")
    rc, _, err = run_cli("train", *cli_args(fewer, run, train__max_steps=4, eval__interval=0), "--resume")
    assert rc == 2 and "tokenizer mismatch" in err and "another model shape" not in err, err
    rc, _, err = run_cli("train", *cli_args(tiny_data, run, train__max_steps=4, model__n_embd=64), "--resume")
    assert rc == 2 and "another model shape" in err and "n_embd: checkpoint 32, config 64" in err


def test_gradient_accumulation_equals_one_big_batch(tmp_path, tiny_data):
    big = make_trainer(tiny_data, tmp_path / "big", train__micro_batch_size=8, train__max_steps=1, model__dropout=0.0)
    small = make_trainer(tiny_data, tmp_path / "small", train__micro_batch_size=2, train__max_steps=1)
    assert (big.accum_steps, small.accum_steps) == (1, 4)
    small.raw_model.load_state_dict(big.raw_model.state_dict())
    loss_big, norm_big, _ = big.train_step()
    loss_small, norm_small, _ = small.train_step()
    torch.testing.assert_close(loss_small, loss_big, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm_small, norm_big, rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(big.raw_model.named_parameters(), small.raw_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_fp16_grad_scaler_skips_overflow_then_steps(tmp_path, tiny_data, optimizer):
    trainer = make_trainer(tiny_data, tmp_path / "run", train__precision="fp16", optim__name=optimizer)
    assert trainer.scaler is not None and trainer.scaler.is_enabled()
    weights = {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()}
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # any real gradient overflows fp16 at this scale
    trainer.train_step()
    assert all(torch.equal(p, weights[n]) for n, p in trainer.raw_model.named_parameters())  # update skipped
    assert trainer.scaler.get_scale() == 2.0**119  # backed off by half
    assert trainer.guard.scaler_overflows == 1 and trainer.guard.skipped_total == 0
    trainer.scaler.update(2.0**8)
    _, norm, _ = trainer.train_step()
    assert torch.isfinite(norm) and norm.item() < 100  # clipped/logged after unscale_, not at 256x
    assert not all(torch.equal(p, weights[n]) for n, p in trainer.raw_model.named_parameters())


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, tiny_data, monkeypatch, failure):
    from scalegpt.checkpoint import train_state
    from scalegpt.checkpoint import load_model_dir

    run = tmp_path / "run"
    trainer = make_trainer(tiny_data, run, eval__interval=0)
    real_save, calls = torch.save, []

    def failing_save(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint dies mid-write
            Path(path).write_bytes(b"half a file")
            raise failure
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(train_state.torch, "save", failing_save)
    with pytest.raises(ScalegptError if isinstance(failure, OSError) else KeyboardInterrupt) as e:
        trainer.fit()
    if isinstance(failure, OSError):
        assert "disk full" in str(e.value) and "previous checkpoint is untouched" in str(e.value)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000004"]  # no half-written leftovers
    assert train_state.load_state(run / "checkpoints" / "step_000004")["step"] == 4
    load_model_dir(run / "checkpoints" / "step_000004")


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path, tiny_data):
    run = tmp_path / "run"
    args = cli_args(tiny_data, run, train__max_steps=100000, schedule__decay_steps=100000, eval__interval=0,
                    checkpoint__interval=0, log__interval=1)
    proc = subprocess.Popen([sys.executable, "-m", "scalegpt", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:
        if re.match(r"step +3/", line) or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: saving a checkpoint" in err and "continue with --resume" in out
    (ckpt,) = (run / "checkpoints").iterdir()
    step = int(ckpt.name.split("_")[1])
    assert 3 <= step < 100000
    train_lines = [x for x in (run / "log.txt").read_text().splitlines() if " train " in x]
    assert int(train_lines[-1].split()[0]) == step


def test_modern_shakespeare_recipe_trains(tmp_path, tiny_data):
    """configs/shakespeare-char-modern.toml as shipped (RoPE, RMSNorm, ReLU^2, QK-norm, untied head, Muon, ...),
    shortened to 40 steps on the fixture: it learns (the benchmark measures how fast; see bench_recipes.py)."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    config = load_config(configs / "shakespeare-char-modern.toml", [
        ("data.dir", str(tiny_data)), ("train.max_steps", "40"), ("schedule.warmup_steps", "5"),
        ("eval.interval", "40"), ("eval.tokens", "8192"), ("eval.samples", "0"), ("checkpoint.interval", "0"),
        ("log.plot", "false"), ("log.progress", "false"), ("train.device", "cpu")])
    trainer = Trainer(config, tmp_path / "run", echo=lambda *_: None)
    assert "transformer.wpe.weight" not in dict(trainer.raw_model.named_parameters())  # RoPE: no position table
    assert "muon" in trainer.optimizer.parts
    result = trainer.fit()
    vals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [v["loss"] for v in vals if v["kind"] == "val"]
    assert result.step == 40 and len(vals) == 2
    assert vals[-1] < vals[0] - 1.0, vals  # from ~ln(65) = 4.2 at the start


def test_time_budget_fixes_max_steps_and_the_last_step_is_evaluated(tmp_path, tiny_data, run_cli, fake_clock):
    run = tmp_path / "run"
    rc, out, err = run_cli("train", *cli_args(tiny_data, run, train__time_budget="1s", schedule__warmup_steps=12,
                                              schedule__decay_steps=0, eval__interval=1000, checkpoint__interval=0,
                                              train__max_steps=100000, optim__name="muon"))
    assert rc == 0, err
    assert "max_steps will be fixed from the speed of updates 3-10 (train.max_steps is ignored)" in out
    found = re.search(r"time budget 1s: measured [\d.]+ ms/step over 8 steps and [\d.]+ s per evaluation every "
                      r"1000 steps -> max_steps = (\d+)\n", out)
    assert found, out
    max_steps = int(found.group(1))
    assert 10 <= max_steps < 30  # 1 s of fake 0.05 s steps
    lines = (run / "log.txt").read_text().splitlines()
    assert lines[-1].startswith(f"{max_steps} val")  # "evaluate at the last step" follows the fixed max_steps
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{max_steps:06d}"]
    assert load_config(run / "checkpoints" / f"step_{max_steps:06d}" / "train_config.toml").train.max_steps == max_steps
