"""The `scalegpt` command: help, version, `export`, and one-line errors with exit code 2."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import scalegpt
from scalegpt.model import GPT, preset_config
from scalegpt.checkpoint import save_model_dir
from scalegpt.hf import load_pretrained

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalegpt: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_help_lists_the_commands(run_cli):
    rc, out, _ = run_cli("--help")
    assert rc == 0
    assert "usage: scalegpt" in out and "export" in out and "tokenizer" in out
    rc, out, _ = run_cli("export", "--help")
    assert rc == 0 and "--checkpoint" in out and "--overwrite" in out


def test_python_dash_m_version():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "scalegpt", "--version"], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"scalegpt {scalegpt.__version__}"


def test_usage_errors_exit_2(run_cli):
    rc, _, err = run_cli("export", "--out", "x")
    assert rc == 2 and "--checkpoint" in err
    rc, _, err = run_cli("frobnicate")
    assert rc == 2 and "invalid choice" in err


def test_export_a_run_directory(tmp_path, run_cli):
    model = GPT(preset_config("tiny", vocab_size=50257))
    spec = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}
    run = tmp_path / "run"
    save_model_dir(model, run / "checkpoints" / "step_5", tokenizer_spec=spec)
    save_model_dir(model, run / "checkpoints" / "step_20", tokenizer_spec=spec)
    rc, out, err = run_cli("export", "--checkpoint", run, "--out", tmp_path / "hf")
    assert rc == 0, err
    assert "step_20" in out and "tokenizer gpt2" in out
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"} <= names
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_positions"] == 64

    again = load_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 50257, (1, 10))
    with torch.no_grad():
        assert torch.equal(again(idx), model.eval()(idx))

    rc, _, err = run_cli("export", "--checkpoint", run, "--out", tmp_path / "hf")  # not empty now
    assert rc == 2
    _one_error_line(err, "already holds a scalegpt export", "--overwrite")
    rc, _, err = run_cli("export", "--checkpoint", run, "--out", tmp_path / "hf", "--overwrite")
    assert rc == 0, err


def test_export_bad_inputs_are_one_line(tmp_path, run_cli):
    rc, out, err = run_cli("export", "--checkpoint", tmp_path / "nope", "--out", tmp_path / "o")
    assert rc == 2 and out == ""
    _one_error_line(err, "nope", "no such checkpoint or run directory")

    # a checkpoint whose model vocabulary does not match its tokenizer's
    save_model_dir(GPT(preset_config("tiny", vocab_size=100)),
                   tmp_path / "ckpt", tokenizer_spec={"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256})
    rc, _, err = run_cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "o")
    assert rc == 2
    _one_error_line(err, "model vocab_size 100 does not match its tokenizer's vocab_size 50257")

    save_model_dir(GPT(preset_config("tiny", vocab_size=100, bias=False)), tmp_path / "nobias")
    rc, _, err = run_cli("export", "--checkpoint", tmp_path / "nobias", "--out", tmp_path / "o")
    assert rc == 2
    _one_error_line(err, "cannot be exported to HuggingFace", "bias = false (GPT-2 has true)")
    assert not (tmp_path / "o").exists()


def test_console_script_reports_errors_without_traceback(tmp_path):
    exe = shutil.which("scalegpt")
    assert exe, "the `scalegpt` console script is not installed (pip install -e .)"
    result = subprocess.run([exe, "export", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    _one_error_line(result.stderr, "no such checkpoint or run directory")
