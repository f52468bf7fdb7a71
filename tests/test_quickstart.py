"""The README's main job, shortened: `scalegpt quickstart` prepares the stdlib sources, trains, samples, reports."""
from __future__ import annotations

import re

import pytest

# Shorter evaluations than the preset's: the path is the same, the minutes are not.
FAST = ["--set", "eval.tokens=4096", "--set", "eval.sample_tokens=16", "--sample-tokens", "40"]


def test_quickstart_default_stdlib_end_to_end(tmp_path, run_cli):
    run, data = tmp_path / "run", tmp_path / "data"
    args = ["quickstart", "--max-steps", "3", "--out", run, "--data-dir", data, *FAST]
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    assert "char vocabulary" in out and "device: cpu" in out
    for label in ("checkpoint:", "log:", "plot:"):
        assert label in out
    assert out.rstrip().endswith("=" * 72)
    sample = out.split("-" * 72 + "\n")[-1]
    assert sample.startswith("def ") and len(sample) > 30
    assert (run / "checkpoints" / "step_000003" / "model.safetensors").is_file()
    assert (run / "loss.png").is_file() and "3 train" in (run / "log.txt").read_text()
    # again: the run directory is never clobbered, and the prepared data is reused
    rc, _, err = run_cli(*args)
    assert rc == 2 and "a run is already there; pass --overwrite" in err
    rc, out, err = run_cli(*args, "--overwrite", "--max-steps", "1")
    assert rc == 0, err
    assert "data: reusing" in out


def test_quickstart_own_files_and_shakespeare_are_one_flag_away(tmp_path, run_cli, data_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 300)
    (corpus / "b.md").write_text("# notes\nsome more text for the validation split\n" * 300)
    rc, out, err = run_cli("quickstart", "--input", corpus, "--max-steps", "2", "--out", tmp_path / "own",
                           "--data-dir", tmp_path / "own-data", *FAST)
    assert rc == 0, err
    assert "prepared 1 input(s)" in out
    (corpus / "a.txt").write_text("changed\n" * 300)  # other contents: the prepared tokens are stale, never reused
    rc, _, err = run_cli("quickstart", "--input", corpus, "--max-steps", "2", "--out", tmp_path / "own2",
                         "--data-dir", tmp_path / "own-data", *FAST)
    assert rc == 2 and "holds tokens of other files" in err
    rc, out, err = run_cli("quickstart", "--recipe", "shakespeare", "--input", data_dir / "tinyshakespeare.txt",
                           "--max-steps", "2", "--out", tmp_path / "shk", "--data-dir", tmp_path / "shk-data", *FAST)
    assert rc == 0, err


def test_quickstart_modern_trains_the_modern_preset(tmp_path, run_cli, data_dir):
    rc, out, err = run_cli("quickstart", "--modern", "--input", data_dir / "tinyshakespeare.txt", "--max-steps", "3",
                           "--out", tmp_path / "run", "--data-dir", tmp_path / "data", *FAST)
    assert rc == 0, err
    assert "Muon (momentum" in out  # configs/quickstart-modern.toml's optimizer
    config = (tmp_path / "run" / "config.toml").read_text()
    assert 'pos_emb = "rope"' in config and 'mlp = "relu2"' in config


def test_quickstart_trains_for_a_time_budget(tmp_path, run_cli, data_dir):
    """The preset trains for train.time_budget (--time-budget overrides it); --max-steps switches it off."""
    from scalegpt.config import load_config
    from scalegpt.cli.quickstart_cmd import QUICKSTART_CONFIG

    assert load_config(QUICKSTART_CONFIG).train.time_budget == "2m"
    rc, out, err = run_cli("quickstart", "--recipe", "shakespeare", "--input", data_dir / "tinyshakespeare.txt",
                           "--time-budget", "2s", "--out", tmp_path / "run", "--data-dir", tmp_path / "data", *FAST,
                           "--set", "eval.interval=0", "--set", "model.n_layer=1", "--set", "model.n_embd=32")
    assert rc == 0, err
    assert "quickstart: training for 2s of steps (train.time_budget)" in out
    decided = re.search(r"time budget 2s: measured .* -> max_steps = (\d+)", out)
    assert decided, out
    assert re.search(rf"quickstart done in \d+ s: {decided.group(1)} steps \(time budget 2s\)", out)
    rc, _, err = run_cli("quickstart", "--time-budget", "2s", "--max-steps", "3", "--out", tmp_path / "other")
    assert rc == 2 and "--max-steps and --time-budget contradict each other" in err


@pytest.mark.parametrize("args, message", [(["--max-steps", "0"], "--max-steps must be >= 1"),
                                           (["--time-budget", "3"], "train.time_budget '3' is not a duration"),
                                           (["--input", "/nonexistent/corpus"], "/nonexistent/corpus"),
                                           (["--set", "optim.lrr=1"], "did you mean 'optim.lr'")])
def test_quickstart_bad_input(tmp_path, run_cli, args, message):
    rc, _, err = run_cli("quickstart", *args, "--out", tmp_path / "run", "--data-dir", tmp_path / "data")
    assert rc == 2 and message in err, err


def test_quickstart_again_names_what_quickstart_accepts(tmp_path, run_cli, data_dir):
    """A second quickstart into the same run directory suggests --overwrite (quickstart has no --resume) and the
    train command that continues the run; a dataset made with another tokenizer is refused, not reused."""
    args = ["--input", data_dir / "tinyshakespeare.txt", "--data-dir", tmp_path / "data", "--max-steps", "1",
            *FAST, "--set", "eval.interval=0", "--set", "model.n_layer=1", "--set", "model.n_embd=32"]
    rc, _, err = run_cli("quickstart", *args, "--out", tmp_path / "run")
    assert rc == 0, err
    rc, _, err = run_cli("quickstart", *args, "--out", tmp_path / "run")
    assert rc == 2 and err.count("\n") == 1
    assert (f"--out {tmp_path / 'run'}: a run is already there; pass --overwrite to start it again, or --out DIR for "
            f"a new one (to train it further: scalegpt train --out {tmp_path / 'run'} --resume --train.max_steps N)"
            in err)
    rc, _, err = run_cli("quickstart", *args, "--out", tmp_path / "other", "--tokenizer", "gpt2")
    assert rc == 2 and f"{tmp_path / 'data'} holds tokens made with another tokenizer (char, asked gpt2)" in err
    assert not (tmp_path / "other").exists()


def test_train_without_a_config_says_what_the_default_model_costs(tmp_path, run_cli):
    rc, out, err = run_cli("train", "--out", tmp_path / "run")
    assert "no --config: training the default model (~85M non-embedding parameters in 12 layers" in out
    assert "for a first run use --config quickstart" in out
    assert rc == 2 and "data.dir is not set" in err
