"""Training on a [[data.mix]] end to end through the CLI: per-source validation in log.txt, metrics.jsonl and
loss.png, a source wrapping around, bit-identical resume in one process and at 2 ranks (torchrun, gloo)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 180

TINY = """
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
[optim]
lr = 1e-2
[schedule]
warmup_steps = 2
[train]
max_steps = 20
global_batch_tokens = 256
micro_batch_size = 2
device = "cpu"
precision = "fp32"
compile = "false"
seed = 7
[eval]
interval = 10
tokens = 512
at_start = false
samples = 0
[log]
interval = 1
progress = "false"
[checkpoint]
interval = 10
"""


def env() -> dict:
    import os

    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def scalegpt(*args, nproc: int = 1) -> subprocess.CompletedProcess:
    cli = ["-m", "scalegpt", *map(str, args)]
    cmd = [sys.executable, *cli] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cli]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def records(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run, "train")}


@pytest.fixture(scope="module")
def mix(tmp_path_factory, shakespeare_text):
    """Two char datasets with one tokenizer (prose, and Python source small enough to wrap around), a mixture config
    and its uninterrupted 1-process run."""
    root = tmp_path_factory.mktemp("mix")
    code = "".join(p.read_text(encoding="utf-8") for p in sorted(Path(__file__).parent.glob("test_data*.py")))[:2000]
    prose = shakespeare_text[:60_000]
    (root / "prose.txt").write_text(prose, encoding="utf-8")
    (root / "code.txt").write_text(code, encoding="utf-8")
    scalegpt("prepare", "--input", root / "prose.txt", root / "code.txt", "--tokenizer", "char", "--out", root / "all",
             "--quiet")
    for name in ("prose", "code"):
        scalegpt("prepare", "--input", root / f"{name}.txt", "--tokenizer", root / "all/tokenizer.json", "--out",
                 root / name, "--quiet")
    (root / "mix.toml").write_text(TINY + f"""
[[data.mix]]
dir = "{root / 'prose'}"
weight = 0.6
[[data.mix]]
dir = "{root / 'code'}"
weight = 0.4
""")
    r = scalegpt("train", "--config", root / "mix.toml", "--out", root / "single")
    return {"root": root, "config": root / "mix.toml", "single": root / "single", "stdout": r.stdout}


def test_validation_per_source_and_overall(mix):
    run = mix["single"]
    vals = records(run, "val")
    assert [v["step"] for v in vals] == [10, 20]
    for v in vals:
        assert set(v["sources"]) == {"prose", "code"}
        src = v["sources"]
        assert all(math.isfinite(src[n][k]) for n in src for k in ("loss", "bpb"))
        assert v["loss"] == pytest.approx(0.6 * src["prose"]["loss"] + 0.4 * src["code"]["loss"], rel=1e-12)
        assert v["bpb"] == pytest.approx(0.6 * src["prose"]["bpb"] + 0.4 * src["code"]["bpb"], rel=1e-12)
        assert v["tokens"] == src["prose"]["tokens"] + src["code"]["tokens"]
    log = (run / "log.txt").read_text().split("\n")
    assert "10 val:prose" in " ".join(log) and "20 val:code" in " ".join(log)
    assert (run / "loss.png").stat().st_size > 0
    assert "prose: val loss" in mix["stdout"] and "code: val loss" in mix["stdout"]


def test_per_source_figures_are_what_eval_loss_gives(mix):
    """The per-source loss is scalegpt.evaluate's on that source's val split: `scalegpt eval loss` agrees."""
    last = records(mix["single"], "val")[-1]
    for name in ("prose", "code"):
        r = scalegpt("eval", "loss", "--checkpoint", mix["single"], "--data", mix["root"] / name, "--tokens", 512,
                     "--seq-len", 32, "--device", "cpu")
        got = json.loads(r.stdout.splitlines()[0])
        assert got["loss"] == pytest.approx(last["sources"][name]["loss"], rel=1e-6)
        assert got["bpb"] == pytest.approx(last["sources"][name]["bpb"], rel=1e-6)


def test_small_source_wraps_around_and_is_logged(mix):
    epochs = records(mix["single"], "epoch")
    assert epochs and {e["source"] for e in epochs} == {"code"}
    assert "data source code ran out and wrapped around: epoch 2" in mix["stdout"]
    assert records(mix["single"], "val")[-1]["epochs"]["code"] >= 1


def test_checkpoint_and_run_config_keep_the_mixture(mix):
    from scalegpt.config import load_config

    for path in (mix["single"] / "config.toml", mix["single"] / "checkpoints/step_000020/train_config.toml"):
        config = load_config(path)
        assert [m.weight for m in config.data.mix] == [0.6, 0.4] and config.data.dir == ""


def test_resume_is_bit_identical(mix):
    dst = mix["root"] / "resumed"
    shutil.copytree(mix["single"], dst)
    shutil.rmtree(dst / "checkpoints/step_000020")
    scalegpt("train", "--config", mix["config"], "--out", dst, "--resume")
    full, resumed = losses(mix["single"]), losses(dst)
    assert [full[s] for s in range(11, 21)] == [resumed[s] for s in range(11, 21)]
    val, val_full = records(dst, "val")[-1], records(mix["single"], "val")[-1]
    assert val == {**val_full, "elapsed_s": val["elapsed_s"]}  # the same figures to the last bit


def test_two_ranks_match_one_process_and_resume_bit_identically(mix):
    root = mix["root"]
    scalegpt("train", "--config", mix["config"], "--out", root / "ddp", "--dist.strategy", "ddp", nproc=2)
    one, two = losses(mix["single"]), losses(root / "ddp")
    for s in range(1, 21):
        assert abs(one[s] - two[s]) <= 1e-5 * abs(one[s]), s
    shutil.copytree(root / "ddp", root / "ddp_resumed")
    shutil.rmtree(root / "ddp_resumed/checkpoints/step_000020")
    scalegpt("train", "--config", mix["config"], "--out", root / "ddp_resumed", "--resume", "--dist.strategy", "ddp",
             nproc=2)
    resumed = losses(root / "ddp_resumed")
    assert [two[s] for s in range(11, 21)] == [resumed[s] for s in range(11, 21)]


def test_bos_aligned_mixture_resumes_bit_identically(mix):
    root = mix["root"]
    args = ["--config", mix["config"], "--data.align", "bos", "--train.max_steps", "8", "--checkpoint.interval", "4",
            "--eval.interval", "4"]
    r = scalegpt("train", *args, "--out", root / "bos")
    assert "data.align bos: prose:" in r.stdout
    shutil.copytree(root / "bos", root / "bos_resumed")
    shutil.rmtree(root / "bos_resumed/checkpoints/step_000008")
    scalegpt("train", *args, "--out", root / "bos_resumed", "--resume")
    full, resumed = losses(root / "bos"), losses(root / "bos_resumed")
    assert [full[s] for s in range(5, 9)] == [resumed[s] for s in range(5, 9)]


def test_mixed_tokenizers_stop_training_in_one_line(mix, tmp_path, run_cli):
    (tmp_path / "other.txt").write_text("abc " * 500, encoding="utf-8")
    scalegpt("prepare", "--input", tmp_path / "other.txt", "--tokenizer", "char", "--out", tmp_path / "other",
             "--quiet")
    rc, out, err = run_cli("train", "--config", mix["config"], "--data.mix",
                           f"{mix['root'] / 'prose'}:1,{tmp_path / 'other'}:1", "--out", tmp_path / "run")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"{mix['root'] / 'prose'} and {tmp_path / 'other'} were prepared with different tokenizers" in err
