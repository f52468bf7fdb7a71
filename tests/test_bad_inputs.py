"""Bad input and faults against every command: what a user gets (issue 14).

One row per case: the command line, a setup that breaks something (a file, a config, a disk that fills up), the
fragment the one-line error must hold, the exit code, and what must survive byte for byte. Every row also asserts
that stderr holds no traceback, and that the shared dataset, run and model every row may read are unchanged.

Commands run in-process through `scalegpt.cli.main`. Placeholders in argv and in `survives`:
    {data}   a tiny prepared char dataset            {run}  a tiny trained run (checkpoints step_2 and step_4)
    {gpt2}   a tiny model with the gpt2 tokenizer    {hf}   the same model exported as a HuggingFace directory
    {input}  a small text file                       {tmp}  this row's own empty directory
Disks that fill up or turn read-only are simulated by injection (`full_disk`, `read_only`, `denied`): the call that
would write (or read) raises the OSError the kernel would.
"""
from __future__ import annotations

import builtins
import errno
import fnmatch
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import HELLASWAG_SAMPLE, SHAKESPEARE
from scalegpt.cli import main

# ------------------------------------------------------------------------------------------------ shared fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The dataset, run and model every row may read; built once (a few seconds)."""
    from scalegpt.checkpoint import save_model_dir
    from scalegpt.model import GPT, preset_config

    root = tmp_path_factory.mktemp("world")
    text = root / "input.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    assert main(["prepare", "--input", str(text), "--tokenizer", "char", "--out", str(root / "data"), "--quiet",
                 "--workers", "1"]) == 0
    assert main(["train", *TINY_TRAIN, "--data.dir", str(root / "data"), "--out", str(root / "run"),
                 "--train.max_steps", "4", "--checkpoint.interval", "2"]) == 0
    spec = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}
    save_model_dir(GPT(preset_config("tiny", vocab_size=50257)), root / "gpt2", tokenizer_spec=spec)
    assert main(["export", "--checkpoint", str(root / "gpt2"), "--out", str(root / "hf")]) == 0
    return {"data": root / "data", "run": root / "run", "gpt2": root / "gpt2", "hf": root / "hf", "input": text}


TINY_TRAIN = ["--model.preset", "tiny", "--model.block_size", "32", "--train.global_batch_tokens", "128",
              "--train.micro_batch_size", "4", "--eval.interval", "0", "--eval.samples", "0", "--eval.tokens", "128",
              "--log.plot", "false", "--train.device", "cpu", "--train.compile", "false"]


class Env:
    """What a row's setup works with: the paths (placeholders) and pytest's monkeypatch."""

    def __init__(self, world: dict[str, Path], tmp: Path, monkeypatch):
        self.paths = {**world, "tmp": tmp}
        self.tmp, self.monkeypatch = tmp, monkeypatch

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: str  # a fragment of the one error line
    setup: Callable[[Env], None] | None = None
    code: int = 2
    survives: tuple[str, ...] = ()  # directories or files whose bytes must not change (besides the shared ones)


# ------------------------------------------------------------------------------------------------ setups


def write(relpath: str, content: str | bytes) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        path = env.tmp / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


BINARY = bytes(range(256)) * 8  # not UTF-8, not JSON, not TOML, not a safetensors file


def copy(name: str, then: Callable[[Path], None] | None = None) -> Callable[[Env], None]:
    """Copy a shared fixture ({run}, {data}, {gpt2}) to {tmp}/NAME and change the copy."""
    def setup(env: Env) -> None:
        shutil.copytree(env[name], env.tmp / name)
        if then is not None:
            then(env.tmp / name)
    return setup


def both(*setups) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        for s in setups:
            s(env)
    return setup


def edit_json(relpath: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        for path in root.glob(relpath):
            data = json.loads(path.read_text())
            change(data)
            path.write_text(json.dumps(data))
    return edit


def overwrite(relpath: str, content: str | bytes) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        for path in root.glob(relpath):
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return edit


def remove(relpath: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        for path in root.glob(relpath):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return edit


def truncate(relpath: str, keep: int) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        for path in root.glob(relpath):
            path.write_bytes(path.read_bytes()[:keep])
    return edit


def nan_weights(relpath: str) -> Callable[[Path], None]:
    """One NaN in every safetensors file matching `relpath` (a checkpoint written before issue 14's guard)."""
    def edit(root: Path) -> None:
        from safetensors.torch import load_file, save_file

        for path in root.glob(relpath):
            state = load_file(path)
            state[sorted(state)[-1]].view(-1)[0] = float("nan")
            save_file(state, path)
    return edit


def token_beyond_vocab(shard: str, value: int = 60_000) -> Callable[[Path], None]:
    """Flipped bytes on disk: token ids beyond the vocabulary (every 20th, so any batch meets one); header, length
    and meta.json unchanged."""
    def edit(root: Path) -> None:
        import numpy as np

        tokens = np.load(root / shard, mmap_mode="r+")
        tokens[::20] = value
        tokens.flush()
    return edit


def _patch_open(env: Env, refuse: Callable[[Path, str], OSError | None], on_write: bool = False) -> None:
    """builtins.open/io.open (and so Path.open, read_text, write_text) through `refuse(path, mode)`."""
    real = builtins.open

    def patched(file, mode="r", *args, **kwargs):
        err = refuse(Path(os.fsdecode(file)), mode) if isinstance(file, (str, bytes, os.PathLike)) else None
        if err is not None and not on_write:
            raise err
        f = real(file, mode, *args, **kwargs)
        return _RefusingWrites(f, err) if err is not None else f

    env.monkeypatch.setattr(builtins, "open", patched)
    env.monkeypatch.setattr(io, "open", patched)


class _RefusingWrites:
    """A file whose writes fail as on a full disk (the kernel reports ENOSPC at write time, not at open)."""

    def __init__(self, f, err: OSError):
        self._f, self._err = f, err

    def write(self, data):
        raise self._err

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _writing(mode: str) -> bool:
    return any(c in mode for c in "wax+")


def full_disk(pattern: str) -> Callable[[Env], None]:
    """Writes to files whose name matches `pattern` (fnmatch; temp names included) fail with ENOSPC."""
    def setup(env: Env) -> None:
        def refuse(path: Path, mode: str):
            if _writing(mode) and fnmatch.fnmatch(path.name, pattern):
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _patch_open(env, refuse, on_write=True)
    return setup


def read_only(name: str) -> Callable[[Env], None]:
    """{NAME} (a placeholder, or a path under {tmp}) is on a read-only file system: no file or directory is created
    or written inside it."""
    def setup(env: Env) -> None:
        root = (env.paths.get(name) or env.tmp / name).resolve()
        root.mkdir(parents=True, exist_ok=True)

        def inside(path) -> bool:
            return Path(os.path.abspath(path)).resolve().is_relative_to(root)

        def refuse(path: Path, mode: str):
            if _writing(mode) and inside(path):
                return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        _patch_open(env, refuse)
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if inside(self) and not self.exists():
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *args, **kwargs)
        env.monkeypatch.setattr(Path, "mkdir", mkdir)
    return setup


def denied(relpath: str) -> Callable[[Env], None]:
    """Reading {tmp}/RELPATH fails with EACCES (as for another user's file; the tests may run as root)."""
    def setup(env: Env) -> None:
        target = (env.tmp / relpath).resolve()

        def refuse(path: Path, mode: str):
            if Path(os.path.abspath(path)).resolve() == target:
                return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        _patch_open(env, refuse)
    return setup


def symlink_loop(relpath: str) -> Callable[[Env], None]:
    """{tmp}/RELPATH is a symlink to itself: every stat of it fails with ELOOP."""
    def setup(env: Env) -> None:
        path = env.tmp / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(path.name)
    return setup


def fifo(relpath: str) -> Callable[[Env], None]:
    """{tmp}/RELPATH is a named pipe with no writer: opening it for reading would block forever."""
    def setup(env: Env) -> None:
        path = env.tmp / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        os.mkfifo(path)
    return setup


def fifo_in(relpath: str) -> Callable[[Path], None]:
    """For copy(): replace a file of the copy by a named pipe."""
    def edit(root: Path) -> None:
        (root / relpath).unlink()
        os.mkfifo(root / relpath)
    return edit


def append(relpath: str, content: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        with open(root / relpath, "a", encoding="utf-8") as f:
            f.write(content)
    return edit


def symlink(relpath: str, target: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        (env.tmp / relpath).symlink_to(env.tmp / target)
    return setup


def home_is(relpath: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        (env.tmp / relpath).mkdir()
        env.monkeypatch.setenv("HOME", str(env.tmp / relpath))
    return setup


DEEP = "[" * 100_000  # json and tomllib recurse: Python raises RecursionError, not a decoding error
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20


# ------------------------------------------------------------------------------------------------ the table

TRAIN = ["train", *TINY_TRAIN, "--data.dir", "{data}", "--out", "{tmp}/run", "--train.max_steps", "2"]
RESUME = ["train", "--out", "{tmp}/run", "--resume", "--train.max_steps", "6"]
SAMPLE = ["sample", "--max-new-tokens", "4", "--seed", "1"]
EVAL_LOSS = ["eval", "loss", "--data", "{data}", "--tokens", "256"]
HELLASWAG = ["eval", "hellaswag", "--checkpoint", "{gpt2}", "--no-progress", "--limit", "2"]
PREPARE = ["prepare", "--tokenizer", "char", "--quiet", "--workers", "1"]
STR_IN_CONFIG = edit_json("checkpoints/*/config.json", lambda c: c["model"].update(n_layer="2"))

CASES = [
    # ---------------------------------------------------------------- train: config values (issue 14 item 3)
    Case("train beta1 out of range", [*TRAIN, "--optim.beta1", "1.5"], "--optim.beta1 must be in [0, 1), got 1.5"),
    Case("train beta2 = 1", [*TRAIN, "--optim.beta2", "1"], "--optim.beta2 must be in [0, 1), got 1.0"),
    Case("train negative eps", [*TRAIN, "--optim.eps", "-1"], "--optim.eps must be > 0, got -1.0"),
    Case("train grad_clip nan", [*TRAIN, "--optim.grad_clip", "nan"], "--optim.grad_clip must be a finite number"),
    Case("train weight_decay nan", [*TRAIN, "--optim.weight_decay", "nan"],
         "--optim.weight_decay must be a finite number, got nan"),
    Case("train negative weight_decay", [*TRAIN, "--optim.weight_decay", "-0.1"], "--optim.weight_decay must be >= 0"),
    Case("train lr inf", [*TRAIN, "--optim.lr", "inf"], "--optim.lr must be a finite number, got inf"),
    Case("train lr 0", [*TRAIN, "--optim.lr", "0"], "--optim.lr must be > 0, got 0.0"),
    Case("train max_steps 0", [*TRAIN, "--train.max_steps", "0"], "--train.max_steps must be >= 1, got 0"),
    Case("train max_steps text", [*TRAIN, "--train.max_steps", "ten"], "--train.max_steps: expected int, got 'ten'"),
    Case("train max_steps float", [*TRAIN, "--train.max_steps", "1.5"], "--train.max_steps: expected int"),
    Case("train micro batch 0", [*TRAIN, "--train.micro_batch_size", "0"], "--train.micro_batch_size must be >= 1"),
    Case("train negative seed", [*TRAIN, "--train.seed", "-1"], "--train.seed must be in [0, "),
    Case("train bool not bool", [*TRAIN, "--model.bias", "maybe"], "--model.bias: expected bool, got 'maybe'"),
    Case("train dropout 1", [*TRAIN, "--model.dropout", "1"], "--model.dropout must be in [0, 1), got 1.0"),
    Case("train min_lr_ratio 2", [*TRAIN, "--schedule.min_lr_ratio", "2"], "--schedule.min_lr_ratio must be in [0, 1]"),
    Case("train negative warmup", [*TRAIN, "--schedule.warmup_steps", "-5"], "--schedule.warmup_steps must be >= 0"),
    Case("train temperature nan", [*TRAIN, "--eval.temperature", "nan"], "--eval.temperature must be a finite number"),
    Case("train spike_zscore 0", [*TRAIN, "--guard.spike_zscore", "0"], "--guard.spike_zscore must be > 0"),
    Case("train negative log interval", [*TRAIN, "--log.interval", "-1"], "--log.interval must be >= 0, got -1"),
    Case("train unknown choice", [*TRAIN, "--dist.strategy", "zero3"], "dist.strategy must be one of auto | ddp"),
    Case("train unknown preset", [*TRAIN, "--model.preset", "huge"], "--model.preset must be one of gpt2"),
    Case("train precision choice", [*TRAIN, "--train.precision", "fp8"], "train.precision must be one of"),
    Case("train misspelt key", [*TRAIN, "--optim.lrr", "1e-3"], "unknown option --optim.lrr; did you mean --optim.lr?"),
    Case("train heads do not divide width", [*TRAIN, "--model.n_head", "3"], "must be divisible by model.n_head (3)"),
    Case("train seq_len > block_size", [*TRAIN, "--train.seq_len", "64"], "larger than the model's block_size"),
    Case("train batch not a multiple", [*TRAIN, "--train.global_batch_tokens", "100"], "must be a multiple of"),
    # ---------------------------------------------------------------- train: --config files
    Case("train --config is a directory", [*TRAIN, "--config", "{tmp}"], "is a directory, expected a TOML file"),
    Case("train --config missing", [*TRAIN, "--config", "{tmp}/nope.toml"], "nope.toml: config file not found"),
    Case("train --config binary", [*TRAIN, "--config", "{tmp}/c.toml"], "c.toml: not valid TOML",
         write("c.toml", BINARY)),
    Case("train --config not TOML", [*TRAIN, "--config", "{tmp}/c.toml"], "c.toml: not valid TOML",
         write("c.toml", "[train\nmax_steps = 3\n")),
    Case("train --config string for int", [*TRAIN, "--config", "{tmp}/c.toml"],
         "c.toml: train.max_steps must be int, got str '10'", write("c.toml", "[train]\nmax_steps = '10'\n")),
    Case("train --config nan", [*TRAIN, "--config", "{tmp}/c.toml"],
         "c.toml: optim.lr must be a finite number, got nan", write("c.toml", "[optim]\nlr = nan\n")),
    Case("train --config bool for int", [*TRAIN, "--config", "{tmp}/c.toml"],
         "c.toml: model.n_layer must be int, got bool True", write("c.toml", "[model]\nn_layer = true\n")),
    Case("train --config unknown section", [*TRAIN, "--config", "{tmp}/c.toml"], "'trian'",
         write("c.toml", "[trian]\nmax_steps = 3\n")),
    Case("train --config unreadable", [*TRAIN, "--config", "{tmp}/c.toml"], "c.toml: cannot read (permission denied)",
         both(write("c.toml", "[train]\n"), denied("c.toml"))),
    # ---------------------------------------------------------------- train: data and run directories
    Case("train data dir missing", [*TRAIN, "--data.dir", "{tmp}/nodata"], "nodata"),
    Case("train data dir is a file", [*TRAIN, "--data.dir", "{input}"], "input.txt: is a file, expected a dataset"),
    Case("train data dir not a dataset", [*TRAIN, "--data.dir", "{tmp}/d"], "meta.json", write("d/x.txt", "x")),
    Case("train no data dir", ["train", *TINY_TRAIN, "--out", "{tmp}/run"], "data.dir"),
    Case("train unknown train split", [*TRAIN, "--data.train_split", "nope"], "no split 'nope' (has train, val)"),
    Case("train unknown val split", [*TRAIN, "--data.val_split", "nope", "--eval.interval", "1"],
         "data.val_split: {data} has no split 'nope' (has train, val)"),
    Case("train dataset meta.json binary", [*TRAIN, "--data.dir", "{tmp}/data"], "meta.json: not valid JSON",
         copy("data", overwrite("meta.json", BINARY))),
    Case("train dataset shard missing", [*TRAIN, "--data.dir", "{tmp}/data"], "train_000000.npy",
         copy("data", remove("train_000000.npy"))),
    Case("train --out is a file", [*TRAIN, "--out", "{tmp}/f"], "f", write("f", "x")),
    Case("train existing run, no --resume", [*TRAIN, "--out", "{run}"], "--resume"),
    Case("train read-only run directory", [*TRAIN, "--out", "{tmp}/ro/run"], "read-only file system",
         read_only("ro")),
    Case("train read-only existing run dir", [*TRAIN, "--out", "{tmp}/ro", "--overwrite"], "read-only file system",
         read_only("ro")),
    Case("train resume: string in config.json", RESUME, "config.json: model.n_layer must be int, got str '2'",
         copy("run", STR_IN_CONFIG), survives=("{tmp}/run",)),
    Case("train resume: train_state.pt garbage", RESUME, "train_state.pt",
         copy("run", overwrite("checkpoints/step_000004/train_state.pt", BINARY)), survives=("{tmp}/run",)),
    Case("train resume: weights truncated", RESUME, "model.safetensors",
         copy("run", truncate("checkpoints/step_000004/model.safetensors", 100)), survives=("{tmp}/run",)),
    Case("train resume: newest checkpoint damaged", RESUME, "step_000004: damaged checkpoint (model.safetensors "
         "missing), newer than step_000002", copy("run", remove("checkpoints/step_000004/model.safetensors")),
         survives=("{tmp}/run",)),
    Case("train resume: NaN weights", RESUME, "non-finite weights", copy("run", nan_weights("checkpoints/*/*.safetensors")),
         survives=("{tmp}/run",)),
    Case("train lr 1e6 aborts", [*TRAIN, "--optim.lr", "1e6", "--schedule.warmup_steps", "0", "--train.max_steps",
                                 "30"], "aborting: 5 consecutive steps skipped"),
    Case("train token id beyond the vocabulary", [*TRAIN, "--data.dir", "{tmp}/data"],
         "train_000000.npy: token id 60000 at token offset", copy("data", token_beyond_vocab("train_000000.npy")),
         survives=("{tmp}/data",)),
    Case("train vocab edited in meta.json", [*TRAIN, "--data.dir", "{tmp}/data"],
         "key 'vocab_size' implies a vocabulary of 5 ids", copy("data", edit_json("meta.json",
                                                                                  lambda m: m.update(vocab_size=5)))),
    Case("train disk full at a checkpoint's last bytes", RESUME, "disk full",
         both(copy("run"), full_disk("*train_config.toml*")), survives=("{tmp}/run/checkpoints",)),
    Case("train disk full writing log.txt", RESUME, "log.txt: disk full", both(copy("run"), full_disk("log.txt")),
         survives=("{tmp}/run/checkpoints",)),
    Case("train disk full rewriting config.toml", RESUME, "config.toml: disk full",
         both(copy("run"), full_disk("*config.toml*")), survives=("{tmp}/run",)),
    # ---------------------------------------------------------------- prepare
    Case("prepare input missing", [*PREPARE, "--input", "{tmp}/nope.txt", "--out", "{tmp}/d"], "nope.txt"),
    Case("prepare input binary", [*PREPARE, "--input", "{tmp}/b.txt", "--out", "{tmp}/d"], "b.txt",
         write("b.txt", BINARY)),
    Case("prepare input empty", [*PREPARE, "--input", "{tmp}/e.txt", "--out", "{tmp}/d"], "no text found",
         write("e.txt", "")),
    Case("prepare input unreadable", [*PREPARE, "--input", "{tmp}/in.txt", "--out", "{tmp}/d"],
         "in.txt: permission denied", both(write("in.txt", "hello world\n" * 100), denied("in.txt"))),
    Case("prepare --out is a file", [*PREPARE, "--input", "{input}", "--out", "{tmp}/f"], "exists and is not a "
         "directory", write("f", "x")),
    Case("prepare over a dataset", [*PREPARE, "--input", "{input}", "--out", "{data}"], "already holds a prepared"),
    Case("prepare --shard-tokens 0", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--shard-tokens", "0"],
         "--shard-tokens must be >= 1"),
    Case("prepare --val-fraction 1.5", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--val-fraction", "1.5"],
         "--val-fraction must be in [0, 1)"),
    Case("prepare --val-fraction nan", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--val-fraction", "nan"],
         "--val-fraction must be in [0, 1)"),
    Case("prepare --workers 0", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--workers", "0"],
         "--workers must be >= 1"),
    Case("prepare --shard-tokens text", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--shard-tokens", "x"],
         "expected an integer"),
    Case("prepare tokenizer file missing", ["prepare", "--quiet", "--input", "{input}", "--out", "{tmp}/d",
                                            "--tokenizer", "{tmp}/nope.model"], "nope.model"),
    Case("prepare tokenizer file binary", ["prepare", "--quiet", "--input", "{input}", "--out", "{tmp}/d",
                                           "--tokenizer", "{tmp}/t.model"], "t.model", write("t.model", BINARY)),
    Case("prepare tokenizer is a directory", ["prepare", "--quiet", "--input", "{input}", "--out", "{tmp}/d",
                                              "--tokenizer", "{tmp}"], "tokenizer"),
    Case("prepare disk full writing a shard", [*PREPARE, "--input", "{input}", "--out", "{tmp}/data", "--overwrite",
                                               "--shard-tokens", "5000"], "disk full",
         both(copy("data"), full_disk("*train_000002*")), survives=("{tmp}/data",)),
    Case("prepare disk full writing meta.json", [*PREPARE, "--input", "{input}", "--out", "{tmp}/data",
                                                 "--overwrite", "--shard-tokens", "5000"], "disk full",
         both(copy("data"), full_disk("*meta.json*")), survives=("{tmp}/data",)),
    Case("prepare read-only --out", [*PREPARE, "--input", "{input}", "--out", "{tmp}/ro/d"], "read-only file system",
         read_only("ro")),
    # ---------------------------------------------------------------- check
    Case("check missing directory", ["check", "{tmp}/nope"], "nope"),
    Case("check not a dataset", ["check", "{tmp}"], "meta.json"),
    Case("check a file", ["check", "{input}"], "input.txt: is a file, expected a dataset directory"),
    Case("check flipped bytes", ["check", "{tmp}/data"], "train_000000.npy: sha256",
         copy("data", lambda d: _flip(d / "train_000000.npy"))),
    Case("check shard missing", ["check", "{tmp}/data"], "val_000000.npy: shard listed in meta.json is missing",
         copy("data", remove("val_000000.npy"))),
    Case("check token id beyond the vocabulary", ["check", "{tmp}/data"], "60000",
         copy("data", token_beyond_vocab("val_000000.npy"))),
    Case("check vocab edited in meta.json", ["check", "{tmp}/data"], "implies a vocabulary of 5 ids",
         copy("data", edit_json("meta.json", lambda m: m.update(vocab_size=5)))),
    Case("check meta.json not JSON", ["check", "{tmp}/data"], "meta.json: not valid JSON",
         copy("data", overwrite("meta.json", "{"))),
    Case("check meta.json binary", ["check", "{tmp}/data"], "meta.json: not valid JSON",
         copy("data", overwrite("meta.json", BINARY))),
    # ---------------------------------------------------------------- sample
    Case("sample checkpoint missing", [*SAMPLE, "--checkpoint", "{tmp}/nope"], "no such checkpoint"),
    Case("sample checkpoint is a file", [*SAMPLE, "--checkpoint", "{input}"], "input.txt: neither a checkpoint"),
    Case("sample run without checkpoints", [*SAMPLE, "--checkpoint", "{tmp}/run"], "run",
         copy("run", remove("checkpoints/step_*"))),
    Case("sample string in config.json", [*SAMPLE, "--checkpoint", "{tmp}/run"],
         "config.json: model.n_layer must be int, got str '2'", copy("run", STR_IN_CONFIG)),
    Case("sample config.json binary", [*SAMPLE, "--checkpoint", "{tmp}/run"], "config.json: not valid JSON",
         copy("run", overwrite("checkpoints/*/config.json", BINARY))),
    Case("sample tokenizer spec not an object", [*SAMPLE, "--checkpoint", "{tmp}/run"],
         "config.json: 'tokenizer' must be an object", copy("run", edit_json("checkpoints/*/config.json",
                                                                                lambda c: c.update(tokenizer="x")))),
    Case("sample char vocabulary not a string", [*SAMPLE, "--checkpoint", "{tmp}/run"], "'chars' must be a string",
         copy("run", edit_json("checkpoints/*/config.json", lambda c: c["tokenizer"].update(chars=5)))),
    Case("sample impossible model size", [*SAMPLE, "--checkpoint", "{tmp}/run"],
         "config.json: cannot allocate the model it describes", copy("run", edit_json(
             "checkpoints/*/config.json", lambda c: c["model"].update(n_embd=10**9, n_head=1)))),
    Case("sample nan in config.json", [*SAMPLE, "--checkpoint", "{tmp}/run"],
         "config.json: model.dropout must be a finite number, got nan",
         copy("run", edit_json("checkpoints/*/config.json", lambda c: c["model"].update(dropout=float("nan"))))),
    Case("sample unknown key in config.json", [*SAMPLE, "--checkpoint", "{tmp}/run"],
         "config.json: unknown model config key(s) ['extra']",
         copy("run", edit_json("checkpoints/*/config.json", lambda c: c["model"].update(extra=1)))),
    Case("sample NaN weights", [*SAMPLE, "--checkpoint", "{tmp}/run"], "step_000004: non-finite weights",
         copy("run", nan_weights("checkpoints/*/*.safetensors")), survives=("{tmp}/run",)),
    Case("sample hf of another model_type", [*SAMPLE, "--hf", "{tmp}/hf"], "model_type 'mistral' is not supported",
         copy("hf", edit_json("config.json", lambda c: c.update(model_type="mistral")))),
    Case("sample hf without model_type", [*SAMPLE, "--hf", "{tmp}/hf"], "config.json: no model_type",
         copy("hf", edit_json("config.json", lambda c: c.pop("model_type")))),
    Case("sample hf string for int", [*SAMPLE, "--hf", "{tmp}/hf"], "'n_layer' must be an integer, got '2'",
         copy("hf", edit_json("config.json", lambda c: c.update(n_layer="2")))),
    Case("sample hf NaN weights", [*SAMPLE, "--hf", "{tmp}/hf"], "non-finite", copy("hf", nan_weights("*.safetensors"))),
    Case("sample weights truncated", [*SAMPLE, "--checkpoint", "{tmp}/run"], "model.safetensors",
         copy("run", truncate("checkpoints/*/model.safetensors", 100))),
    Case("sample weights are a directory", [*SAMPLE, "--checkpoint", "{tmp}/run"], "model.safetensors",
         copy("run", lambda r: [(p.unlink(), p.mkdir()) for p in r.glob("checkpoints/*/model.safetensors")])),
    Case("sample negative temperature", [*SAMPLE, "--checkpoint", "{run}", "--temperature", "-1"],
         "temperature must be >= 0"),
    Case("sample temperature nan", [*SAMPLE, "--checkpoint", "{run}", "--temperature", "nan"],
         "temperature must be >= 0 (0 = greedy), got nan"),
    Case("sample top-k 0", [*SAMPLE, "--checkpoint", "{run}", "--top-k", "0"], "top-k must be between 1"),
    Case("sample top-p 2", [*SAMPLE, "--checkpoint", "{run}", "--top-p", "2"], "top-p"),
    Case("sample top-p nan", [*SAMPLE, "--checkpoint", "{run}", "--top-p", "nan"], "top-p"),
    Case("sample max-new-tokens 0", ["sample", "--checkpoint", "{run}", "--max-new-tokens", "0"],
         "--max-new-tokens must be >= 1"),
    Case("sample num-samples 0", [*SAMPLE, "--checkpoint", "{run}", "--num-samples", "0"], "--num-samples must be"),
    Case("sample bad seeds", [*SAMPLE, "--checkpoint", "{run}", "--seeds", "1,x"], "--seeds must be comma-separated"),
    Case("sample unknown device", [*SAMPLE, "--checkpoint", "{run}", "--device", "tpu"], "--device"),
    Case("sample prompt outside the vocabulary", [*SAMPLE, "--checkpoint", "{run}", "--prompt", "€"], "€"),
    Case("sample hf directory missing", [*SAMPLE, "--hf", "{tmp}/nope"], "nope"),
    Case("sample hf directory without config", [*SAMPLE, "--hf", "{tmp}"], "config.json"),
    # ---------------------------------------------------------------- eval loss
    Case("eval loss data missing", ["eval", "loss", "--checkpoint", "{run}", "--data", "{tmp}/nope"], "nope"),
    Case("eval loss data not a dataset", ["eval", "loss", "--checkpoint", "{run}", "--data", "{tmp}"], "meta.json"),
    Case("eval loss unknown split", [*EVAL_LOSS, "--checkpoint", "{run}", "--split", "test"], "test"),
    Case("eval loss tokens 0", [*EVAL_LOSS, "--checkpoint", "{run}", "--tokens", "0"], "--tokens"),
    Case("eval loss batch size 0", [*EVAL_LOSS, "--checkpoint", "{run}", "--batch-size", "0"], "--batch-size"),
    Case("eval loss seq-len > block", [*EVAL_LOSS, "--checkpoint", "{run}", "--seq-len", "1000"], "block"),
    Case("eval loss checkpoint missing", [*EVAL_LOSS, "--checkpoint", "{tmp}/nope"], "no such checkpoint"),
    Case("eval loss string in config.json", [*EVAL_LOSS, "--checkpoint", "{tmp}/run"],
         "config.json: model.n_layer must be int", copy("run", STR_IN_CONFIG)),
    Case("eval loss NaN weights", [*EVAL_LOSS, "--checkpoint", "{tmp}/run"], "non-finite weights",
         copy("run", nan_weights("checkpoints/*/*.safetensors"))),
    Case("eval loss token id beyond the vocabulary", ["eval", "loss", "--checkpoint", "{run}", "--data", "{tmp}/data"],
         "val_000000.npy: token id 60000 at token offset", copy("data", token_beyond_vocab("val_000000.npy"))),
    Case("eval loss vocab edited in meta.json", ["eval", "loss", "--checkpoint", "{run}", "--data", "{tmp}/data"],
         "implies a vocabulary of 5 ids", copy("data", edit_json("meta.json", lambda m: m.update(vocab_size=5)))),
    Case("eval loss other tokenizer", [*EVAL_LOSS, "--checkpoint", "{gpt2}"], "tokenizer"),
    Case("eval loss shard unreadable", ["eval", "loss", "--checkpoint", "{run}", "--data", "{tmp}/data"],
         "val_000000.npy: permission denied", both(copy("data"), denied("data/val_000000.npy"))),
    # ---------------------------------------------------------------- eval hellaswag
    Case("hellaswag checkpoint missing", ["eval", "hellaswag", "--checkpoint", "{tmp}/nope", "--file",
                                          str(HELLASWAG_SAMPLE)], "no such checkpoint"),
    Case("hellaswag NaN weights", ["eval", "hellaswag", "--checkpoint", "{tmp}/run", "--file", str(HELLASWAG_SAMPLE)],
         "non-finite weights", copy("run", nan_weights("checkpoints/*/*.safetensors"))),
    Case("hellaswag hf of another model_type", ["eval", "hellaswag", "--hf", "{tmp}/hf", "--file",
                                                str(HELLASWAG_SAMPLE)], "model_type 'gpt_neo' is not supported",
         copy("hf", edit_json("config.json", lambda c: c.update(model_type="gpt_neo")))),
    Case("hellaswag file missing", [*HELLASWAG, "--file", "{tmp}/nope.jsonl"], "nope.jsonl"),
    Case("hellaswag file binary", [*HELLASWAG, "--file", "{tmp}/h.jsonl"], "h.jsonl", write("h.jsonl", BINARY)),
    Case("hellaswag file not JSON lines", [*HELLASWAG, "--file", "{tmp}/h.jsonl"], "h.jsonl",
         write("h.jsonl", "{not json\n")),
    Case("hellaswag file a directory", [*HELLASWAG, "--file", "{tmp}"], str("{tmp}")),
    Case("hellaswag limit 0", [*HELLASWAG, "--file", str(HELLASWAG_SAMPLE), "--limit", "0"], "--limit"),
    Case("hellaswag batch size 0", [*HELLASWAG, "--file", str(HELLASWAG_SAMPLE), "--batch-size", "0"],
         "batch size must be >= 1"),
    # ---------------------------------------------------------------- export
    Case("export checkpoint missing", ["export", "--checkpoint", "{tmp}/nope", "--out", "{tmp}/hf"],
         "no such checkpoint"),
    Case("export NaN weights", ["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/hf"], "non-finite weights",
         copy("run", nan_weights("checkpoints/*/*.safetensors")), survives=("{tmp}/run",)),
    Case("export --out not empty", ["export", "--checkpoint", "{run}", "--out", "{tmp}/o"], "not empty",
         write("o/keep.txt", "mine"), survives=("{tmp}/o",)),
    Case("export --out is a file", ["export", "--checkpoint", "{run}", "--out", "{tmp}/f"], "f", write("f", "mine"),
         survives=("{tmp}/f",)),
    Case("export string in config.json", ["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/hf"],
         "config.json: model.n_layer must be int", copy("run", STR_IN_CONFIG)),
    Case("export read-only --out", ["export", "--checkpoint", "{run}", "--out", "{tmp}/ro/hf"],
         "cannot write export", read_only("ro")),
    Case("export disk full", ["export", "--checkpoint", "{gpt2}", "--out", "{tmp}/hf"], "hf: disk full",
         full_disk("*config.json*")),
    Case("export gguf char tokenizer", ["export", "--format", "gguf", "--checkpoint", "{run}", "--out", "{tmp}/m.gguf"],
         "tokenizer 'char'"),
    Case("export gguf --out is a user's file", ["export", "--format", "gguf", "--checkpoint", "{gpt2}", "--out",
                                                "{tmp}/m.gguf"], "not a GGUF file", write("m.gguf", "mine"),
         survives=("{tmp}/m.gguf",)),
    Case("export gguf --overwrite onto a user's file", ["export", "--format", "gguf", "--checkpoint", "{gpt2}", "--out",
                                                        "{tmp}/m.gguf", "--overwrite"], "refusing to replace it",
         write("m.gguf", "mine"), survives=("{tmp}/m.gguf",)),
    Case("export gguf read-only --out", ["export", "--format", "gguf", "--checkpoint", "{gpt2}", "--out",
                                         "{tmp}/ro/m.gguf"], "cannot write file", read_only("ro")),
    # ---------------------------------------------------------------- plot
    Case("plot run missing", ["plot", "{tmp}/nope"], "nope"),
    Case("plot run without log", ["plot", "{tmp}"], "log.txt"),
    Case("plot log binary", ["plot", "{tmp}/run"], "log.txt: not a scalegpt log",
         copy("run", overwrite("log.txt", BINARY))),
    Case("plot smoothing 1.5", ["plot", "{run}", "--smoothing", "1.5", "--out", "{tmp}/p.png"], "--smoothing"),
    Case("plot smoothing nan", ["plot", "{run}", "--smoothing", "nan", "--out", "{tmp}/p.png"], "--smoothing"),
    Case("plot --out is a directory", ["plot", "{run}", "--out", "{tmp}"], "is a directory; give an image path"),
    Case("plot --out unknown format", ["plot", "{run}", "--out", "{tmp}/loss.xyz"], "unknown image format '.xyz'"),
    Case("plot read-only --out", ["plot", "{run}", "--out", "{tmp}/ro/p.png"], "read-only file system",
         read_only("ro")),
    # ---------------------------------------------------------------- tokenizer train
    Case("tokenizer input missing", ["tokenizer", "train", "--input", "{tmp}/nope.txt", "--vocab-size", "50",
                                     "--out", "{tmp}/t"], "nope.txt"),
    Case("tokenizer vocab size 0", ["tokenizer", "train", "--input", "{input}", "--vocab-size", "0",
                                    "--out", "{tmp}/t"], "--vocab-size must be >= 1, got 0"),
    Case("tokenizer input empty", ["tokenizer", "train", "--input", "{tmp}/e.txt", "--vocab-size", "50",
                                   "--out", "{tmp}/t"], "no text found", write("e.txt", "\n\n")),
    Case("tokenizer --out under a file", ["tokenizer", "train", "--input", "{input}", "--vocab-size", "400",
                                          "--out", "{tmp}/f/t"], "f/t.model: a component of the path is not a directory",
         write("f", "x")),
    Case("tokenizer vocab smaller than the alphabet", ["tokenizer", "train", "--input", "{input}", "--vocab-size",
                                                       "50", "--out", "{tmp}/t"], "Increase vocab_size"),
    # ---------------------------------------------------------------- quickstart
    Case("quickstart max-steps 0", ["quickstart", "--input", "{input}", "--out", "{tmp}/r", "--data-dir",
                                    "{tmp}/d", "--max-steps", "0"], "--max-steps must be >= 1"),
    Case("quickstart bad --set key", ["quickstart", "--input", "{input}", "--out", "{tmp}/r", "--set",
                                      "optim.lrr=1"], "optim.lrr"),
    Case("quickstart --set out of range", ["quickstart", "--input", "{input}", "--out", "{tmp}/r", "--set",
                                           "optim.beta1=2"], "optim.beta1 must be in [0, 1), got 2.0"),
    Case("quickstart --set without =", ["quickstart", "--input", "{input}", "--out", "{tmp}/r", "--set",
                                        "optim.lr"], "optim.lr"),
    Case("quickstart input missing", ["quickstart", "--input", "{tmp}/nope", "--out", "{tmp}/r", "--data-dir",
                                      "{tmp}/d"], "nope"),
    Case("quickstart --out is a file", ["quickstart", "--input", "{input}", "--out", "{tmp}/f", "--data-dir",
                                        "{tmp}/d", "--max-steps", "1"], "f", write("f", "x")),
    # ---------------------------------------------------------------- issue 20.1: outputs never destroy inputs
    Case("export --overwrite onto its source run", ["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/run",
                                                    "--overwrite"], "is the input", copy("run"), survives=("{tmp}/run",)),
    Case("export --overwrite onto its checkpoint", ["export", "--checkpoint", "{tmp}/run/checkpoints/step_000004", "--out",
                                                    "{tmp}/run/checkpoints/step_000004", "--overwrite"], "is the input",
         copy("run"), survives=("{tmp}/run",)),
    Case("export --overwrite over the run holding it", ["export", "--checkpoint", "{tmp}/run/checkpoints/step_000002",
                                                        "--out", "{tmp}/run", "--overwrite"], "contains the input",
         copy("run"), survives=("{tmp}/run",)),
    Case("export into its source run", ["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/run/hf"],
         "lies inside the input", copy("run"), survives=("{tmp}/run",)),
    Case("export through a symlink to its source", ["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/link",
                                                    "--overwrite"], "is the input",
         both(copy("run"), symlink("link", "run")), survives=("{tmp}/run",)),
    Case("export --overwrite onto a foreign folder", ["export", "--checkpoint", "{gpt2}", "--out", "{tmp}/mine",
                                                      "--overwrite"], "refusing to replace it even with --overwrite",
         write("mine/notes.txt", "keep me"), survives=("{tmp}/mine",)),
    Case("export onto a foreign folder names its files", ["export", "--checkpoint", "{gpt2}", "--out", "{tmp}/mine"],
         "it holds notes.txt", write("mine/notes.txt", "keep me"), survives=("{tmp}/mine",)),
    Case("export --overwrite onto a dataset", ["export", "--checkpoint", "{gpt2}", "--out", "{data}", "--overwrite"],
         "not a scalegpt export"),
    Case("export --overwrite onto a checkpoint", ["export", "--checkpoint", "{gpt2}", "--out", "{run}", "--overwrite"],
         "not a scalegpt export"),
    Case("export --out empty", ["export", "--checkpoint", "{gpt2}", "--out", "", "--overwrite"], "--out: empty path"),
    Case("export --out .", ["export", "--checkpoint", "{gpt2}", "--out", ".", "--overwrite"],
         "is the current directory"),
    Case("export --out symlink loop", ["export", "--checkpoint", "{gpt2}", "--out", "{tmp}/loop"],
         "symbolic links", symlink_loop("loop")),
    Case("prepare --out holds a user's file", [*PREPARE, "--input", "{input}", "--out", "{tmp}/out"],
         "not a scalegpt dataset; refusing to write into it", write("out/notes.txt", "mine"),
         survives=("{tmp}/out",)),
    Case("prepare --overwrite onto a foreign folder", [*PREPARE, "--input", "{input}", "--out", "{tmp}/out",
                                                       "--overwrite"], "even with --overwrite",
         write("out/train_000000.npy", "mine"), survives=("{tmp}/out",)),
    Case("prepare --executor --overwrite onto a foreign folder", [*PREPARE, "--input", "{input}", "--out", "{tmp}/out",
                                                                  "--executor", "local", "--overwrite"],
         "even with --overwrite", write("out/notes.txt", "mine"), survives=("{tmp}/out",)),
    Case("prepare --executor --out inside the input folder", [*PREPARE, "--input", "{tmp}/in", "--out", "{tmp}/in/d",
                                                              "--executor", "local"], "lies inside the input",
         write("in/a.txt", TEXT), survives=("{tmp}/in",)),
    Case("prepare --from-llmc onto a foreign folder", ["prepare", "--from-llmc", "{tmp}/bins", "--out", "{tmp}/out",
                                                       "--overwrite"], "even with --overwrite",
         both(write("bins/x.txt", "no shards"), write("out/notes.txt", "mine")), survives=("{tmp}/out",)),
    Case("prepare --out is the input folder", [*PREPARE, "--input", "{tmp}/in", "--out", "{tmp}/in", "--overwrite"],
         "is the input", write("in/a.txt", TEXT), survives=("{tmp}/in",)),
    Case("prepare --out inside the input folder", [*PREPARE, "--input", "{tmp}/in", "--out", "{tmp}/in/data"],
         "lies inside the input", write("in/a.txt", TEXT), survives=("{tmp}/in",)),
    Case("prepare --out holds the input file", [*PREPARE, "--input", "{tmp}/d/a.txt", "--out", "{tmp}/d",
                                                "--overwrite"], "contains the input", write("d/a.txt", TEXT),
         survives=("{tmp}/d",)),
    Case("prepare --out is the input file", [*PREPARE, "--input", "{tmp}/a.txt", "--out", "{tmp}/a.txt"],
         "is the input", write("a.txt", TEXT), survives=("{tmp}/a.txt",)),
    Case("prepare --out empty", [*PREPARE, "--input", "{input}", "--out", ""], "--out: empty path"),
    Case("prepare --out ..", [*PREPARE, "--input", "{input}", "--out", ".."], "is a parent of the current directory"),
    Case("prepare --overwrite onto a run", [*PREPARE, "--input", "{input}", "--out", "{run}", "--overwrite"],
         "not a scalegpt dataset"),
    Case("train --out empty --overwrite", [*TRAIN, "--out", "", "--overwrite"], "--out: empty path"),
    Case("train --out . --overwrite", [*TRAIN, "--out", ".", "--overwrite"], "is the current directory"),
    Case("train --out / --overwrite", [*TRAIN, "--out", "/", "--overwrite"], "--out /: is"),
    Case("train --out home --overwrite", [*TRAIN, "--out", "{tmp}/home", "--overwrite"], "is the home",
         both(home_is("home"), write("home/notes.txt", "mine")), survives=("{tmp}/home",)),
    Case("train --overwrite onto a dataset", [*TRAIN, "--out", "{data}", "--overwrite"], "is the input"),
    Case("train --overwrite onto another dataset", [*TRAIN, "--out", "{tmp}/data", "--overwrite"],
         "not a scalegpt run directory", copy("data"), survives=("{tmp}/data",)),
    Case("train --resume in a foreign folder", [*TRAIN, "--out", "{tmp}/mine", "--resume"],
         "not a scalegpt run directory; refusing to write into it", write("mine/notes.txt", "mine"),
         survives=("{tmp}/mine",)),
    Case("train --out inside the dataset", [*TRAIN, "--out", "{data}/run"], "lies inside the input"),
    Case("train --out under a file", [*TRAIN, "--out", "{tmp}/f/run"], "a component of the path is not a directory",
         write("f", "x")),
    Case("plot --out onto its log", ["plot", "{tmp}/run", "--out", "{tmp}/run/log.txt"], "is the input",
         copy("run"), survives=("{tmp}/run",)),
    Case("plot --out onto a user's file", ["plot", "{run}", "--out", "{tmp}/notes.png"], "is not an image",
         write("notes.png", "my notes"), survives=("{tmp}/notes.png",)),
    Case("plot --out empty", ["plot", "{run}", "--out", ""], "--out: empty path"),
    Case("plot --out is a FIFO", ["plot", "{run}", "--out", "{tmp}/p.png"], "not a regular file (a FIFO)",
         fifo("p.png")),
    Case("compare --out onto its metrics", ["compare", "{run}", "--out", "{run}/metrics.jsonl"], "is the input"),
    Case("compare --out onto a user's file", ["compare", "{run}", "--out", "{tmp}/n.txt"], "is not an image",
         write("n.txt", "mine"), survives=("{tmp}/n.txt",)),
    Case("tokenizer --out onto a user's .model", ["tokenizer", "train", "--input", "{input}", "--vocab-size", "400",
                                                  "--out", "{tmp}/t"], "not a SentencePiece model",
         write("t.model", "mine"), survives=("{tmp}/t.model",)),
    Case("tokenizer --out empty", ["tokenizer", "train", "--input", "{input}", "--vocab-size", "400", "--out", ""],
         "--out: empty path"),
    Case("tokenizer --out inside the input folder", ["tokenizer", "train", "--input", "{tmp}/in", "--vocab-size",
                                                     "400", "--out", "{tmp}/in/t"], "lies inside the input",
         write("in/a.txt", TEXT), survives=("{tmp}/in",)),
    Case("quickstart --overwrite onto a foreign folder", ["quickstart", "--input", "{input}", "--out", "{tmp}/mine",
                                                          "--data-dir", "{tmp}/d", "--overwrite"],
         "not a scalegpt run directory", write("mine/notes.txt", "mine"), survives=("{tmp}/mine",)),
    Case("quickstart --out empty", ["quickstart", "--input", "{input}", "--out", "", "--data-dir", "{tmp}/d"],
         "--out: empty path"),
    Case("quickstart --data-dir holds a user's file", ["quickstart", "--input", "{input}", "--out", "{tmp}/r",
                                                       "--data-dir", "{tmp}/mine", "--max-steps", "1"],
         "not a scalegpt dataset", write("mine/notes.txt", "mine"), survives=("{tmp}/mine",)),
    # ---------------------------------------------------------------- issue 20.3: one reader per file kind
    Case("train meta.json nested deeply", [*TRAIN, "--data.dir", "{tmp}/data"], "meta.json: not valid JSON (nested "
         "too deeply)", copy("data", overwrite("meta.json", DEEP))),
    Case("train meta.json huge integer", [*TRAIN, "--data.dir", "{tmp}/data"], "meta.json: not valid JSON",
         copy("data", overwrite("meta.json", "1" * 5000))),
    Case("sample config.json nested deeply", [*SAMPLE, "--checkpoint", "{tmp}/gpt2"], "config.json: not valid JSON",
         copy("gpt2", overwrite("config.json", '{"model": ' + DEEP))),
    Case("export config.json is a list", ["export", "--checkpoint", "{tmp}/gpt2", "--out", "{tmp}/hf"],
         "config.json: expected an object, got a list", copy("gpt2", overwrite("config.json", "[1, 2]"))),
    Case("sample --hf config.json nested deeply", [*SAMPLE, "--hf", "{tmp}/hf"], "config.json: not valid JSON",
         copy("hf", overwrite("config.json", DEEP))),
    Case("resume metrics line is a list", RESUME, "not a metrics record (expected an object, got a list)",
         copy("run", append("metrics.jsonl", "[1, 2]\n")), survives=("{tmp}/run",)),
    Case("resume metrics line is a number", RESUME, "not a metrics record (expected an object, got an integer)",
         copy("run", append("metrics.jsonl", "5\n")), survives=("{tmp}/run",)),
    Case("resume metrics line lacks step", RESUME, "not a metrics record (missing key 'step')",
         copy("run", append("metrics.jsonl", '{"kind": "val", "loss": 1.0}\n')), survives=("{tmp}/run",)),
    Case("resume metrics line nested deeply", RESUME, "nested too deeply",
         copy("run", append("metrics.jsonl", DEEP + "\n")), survives=("{tmp}/run",)),
    Case("plot metrics line is a list", ["plot", "{tmp}/run", "--out", "{tmp}/p.png"], "metrics.jsonl:",
         copy("run", append("metrics.jsonl", "[1, 2]\n")), survives=("{tmp}/run",)),
    Case("plot metrics step is a string", ["plot", "{tmp}/run", "--out", "{tmp}/p.png"],
         "key 'step' should be an integer, got a string",
         copy("run", append("metrics.jsonl", '{"step": "3", "kind": "val"}\n')), survives=("{tmp}/run",)),
    Case("compare metrics line is a number", ["compare", "{tmp}/run"], "got an integer",
         copy("run", append("metrics.jsonl", "7\n")), survives=("{tmp}/run",)),
    Case("compare metrics line nested deeply", ["compare", "{tmp}/run"], "nested too deeply",
         copy("run", append("metrics.jsonl", DEEP + "\n")), survives=("{tmp}/run",)),
    Case("compare metrics step true", ["compare", "{tmp}/run"], "key 'step' should be an integer, got true/false",
         copy("run", append("metrics.jsonl", '{"step": true, "kind": "val"}\n'))),
    Case("hellaswag jsonl nested deeply", [*HELLASWAG, "--file", "{tmp}/h.jsonl"], "h.jsonl:1: not valid JSON",
         write("h.jsonl", '{"ctx": ' + DEEP + "\n")),
    Case("train --config nested deeply", [*TRAIN, "--config", "{tmp}/c.toml"], "c.toml: not valid TOML",
         write("c.toml", "a = " + DEEP)),
    Case("prepare jsonl input nested deeply", [*PREPARE, "--input", "{tmp}/in.jsonl", "--out", "{tmp}/out"],
         "in.jsonl:1: not valid JSON (nested too deeply)", write("in.jsonl", '{"text": ' + DEEP + "}\n")),
    Case("prepare char vocabulary nested deeply", [*PREPARE, "--input", "{input}", "--out", "{tmp}/out",
                                                   "--tokenizer", "{tmp}/v.json"], "v.json: not a char vocabulary",
         write("v.json", DEEP)),
    Case("quickstart reused meta.json nested deeply", ["quickstart", "--input", "{input}", "--out", "{tmp}/r",
                                                       "--data-dir", "{tmp}/data", "--max-steps", "1"],
         "meta.json: not valid JSON", copy("data", overwrite("meta.json", DEEP))),
    # ---------------------------------------------------------------- issue 20.4: true causes, from errno
    Case("train data dir symlink loop", [*TRAIN, "--data.dir", "{tmp}/loop"], "too many levels of symbolic links",
         symlink_loop("loop")),
    Case("train data dir under a file", [*TRAIN, "--data.dir", "{tmp}/f/d"],
         "a component of the path is not a directory", write("f", "x")),
    Case("train meta.json is a FIFO", [*TRAIN, "--data.dir", "{tmp}/data"], "not a regular file (a FIFO)",
         copy("data", fifo_in("meta.json"))),
    Case("train --config is a FIFO", [*TRAIN, "--config", "{tmp}/c.toml"], "not a regular file (a FIFO)",
         fifo("c.toml")),
    Case("train --config symlink loop", [*TRAIN, "--config", "{tmp}/c.toml"], "symbolic links", symlink_loop("c.toml")),
    Case("prepare input symlink loop", [*PREPARE, "--input", "{tmp}/loop", "--out", "{tmp}/out"],
         "loop: too many levels of symbolic links", symlink_loop("loop")),
    Case("prepare input is a FIFO", [*PREPARE, "--input", "{tmp}/in.txt", "--out", "{tmp}/out"],
         "in.txt: not a regular file (a FIFO)", fifo("in.txt")),
    Case("sample checkpoint symlink loop", [*SAMPLE, "--checkpoint", "{tmp}/loop"], "symbolic links",
         symlink_loop("loop")),
    Case("export checkpoint is a FIFO", ["export", "--checkpoint", "{tmp}/ck", "--out", "{tmp}/hf"],
         "not a directory (a FIFO)", fifo("ck")),
    Case("export config.json unreadable", ["export", "--checkpoint", "{tmp}/gpt2", "--out", "{tmp}/hf"],
         "config.json: cannot read (permission denied)", both(copy("gpt2"), denied("gpt2/config.json"))),
    Case("hellaswag file is a FIFO", [*HELLASWAG, "--file", "{tmp}/h.jsonl"], "not a regular file (a FIFO)",
         fifo("h.jsonl")),
    Case("hellaswag file symlink loop", [*HELLASWAG, "--file", "{tmp}/h.jsonl"], "symbolic links",
         symlink_loop("h.jsonl")),
    Case("train shard is a FIFO", [*TRAIN, "--data.dir", "{tmp}/data"], "not a regular file (a FIFO)",
         copy("data", fifo_in("train_000000.npy"))),
    Case("compare metrics.jsonl is a FIFO", ["compare", "{tmp}/run"], "not a regular file (a FIFO)",
         copy("run", fifo_in("metrics.jsonl"))),
    Case("compare run dir symlink loop", ["compare", "{tmp}/loop"], "symbolic links", symlink_loop("loop")),
    Case("plot log.txt is a FIFO", ["plot", "{tmp}/run", "--out", "{tmp}/p.png"], "not a regular file (a FIFO)",
         copy("run", fifo_in("log.txt"))),
    Case("tokenizer input is a FIFO", ["tokenizer", "train", "--input", "{tmp}/in.txt", "--vocab-size", "400",
                                       "--out", "{tmp}/t"], "not a regular file (a FIFO)", fifo("in.txt")),
    Case("prepare --tokenizer model symlink loop", [*PREPARE, "--input", "{input}", "--out", "{tmp}/out",
                                                    "--tokenizer", "{tmp}/t.model"], "symbolic links",
         symlink_loop("t.model")),
    # ---------------------------------------------------------------- bounded resources (issue 20 item 2)
    # memory estimates before anything is allocated: the model, the optimizer, a batch, a KV cache
    Case("train huge n_layer", [*TRAIN, "--model.n_layer", "100000", "--model.n_embd", "1024"],
         "training (one micro-batch on one rank): needs an estimated", survives=("{tmp}/run",)),
    Case("train huge n_embd", [*TRAIN, "--model.n_embd", "1000000"], "lower model.n_layer, model.n_embd",
         survives=("{tmp}/run",)),
    Case("train huge micro batch", [*TRAIN, "--train.micro_batch_size", "10000000", "--train.global_batch_tokens",
                                    "320000000"], "train.micro_batch_size", survives=("{tmp}/run",)),
    Case("train huge eval batch", [*TRAIN, "--eval.batch_size", "100000000", "--eval.interval", "1"],
         "evaluation (eval.batch_size sequences): needs an estimated", survives=("{tmp}/run",)),
    Case("train huge model in --config", ["train", "--config", "{tmp}/c.toml", "--data.dir", "{data}", "--out",
                                          "{tmp}/run"], "lower model.n_layer, model.n_embd", write(
        "c.toml", "[model]\nn_layer = 100000\nn_embd = 4096\nn_head = 32\nblock_size = 32\n[train]\n"
        "global_batch_tokens = 128\nmicro_batch_size = 4\ndevice = 'cpu'\ncompile = 'false'\n"), survives=("{tmp}/run",)),
    Case("train vocab padding 1e9", [*TRAIN, "--model.pad_vocab_multiple", "1000000000"],
         "--model.pad_vocab_multiple must be <= 1,048,576, got 1,000,000,000"),
    Case("train n_layer 2^70", [*TRAIN, "--model.n_layer", str(2**70)], "--model.n_layer must be <= 100,000"),
    Case("train block_size 1e12", [*TRAIN, "--model.block_size", "1000000000000"], "--model.block_size must be <="),
    Case("train seed 2^70", [*TRAIN, "--train.seed", str(2**70)], "--train.seed must be in [0, 18446744073709551616)"),
    Case("train max_steps 2^70", [*TRAIN, "--train.max_steps", str(2**70)], "--train.max_steps must be <="),
    Case("train timeout 1e13 minutes", [*TRAIN, "--dist.timeout_minutes", "10000000000000"],
         "--dist.timeout_minutes must be <= 525,600"),
    Case("train lr 1e308", [*TRAIN, "--optim.lr", "1e308"], "--optim.lr must be <= 1,000,000,000,000"),
    Case("train eps inf", [*TRAIN, "--optim.eps", "inf"], "--optim.eps must be a finite number"),
    Case("train eval.temperature 1e-45", [*TRAIN, "--eval.temperature", "1e-45"],
         "--eval.temperature must be 0 (greedy) or in [0.0001, 100], got 1e-45"),
    Case("train eval.sample_tokens 1e12", [*TRAIN, "--eval.sample_tokens", "1000000000000"],
         "--eval.sample_tokens must be <= 100,000"),
    Case("train eval.samples 1e6", [*TRAIN, "--eval.samples", "1000000"], "--eval.samples must be <= 1,024"),
    Case("train spike_window 2^62", [*TRAIN, "--guard.spike_window", str(2**62)], "--guard.spike_window must be <="),
    Case("train log interval 2^70", [*TRAIN, "--log.interval", str(2**70)], "--log.interval must be <="),
    Case("quickstart huge model", ["quickstart", "--input", "{input}", "--out", "{tmp}/r", "--data-dir", "{tmp}/d",
                                   "--set", "model.n_layer=100000", "--set", "model.n_embd=4096"],
         "lower model.n_layer, model.n_embd", survives=("{tmp}/d", "{tmp}/r")),
    Case("quickstart max-steps 2^70", ["quickstart", "--input", "{input}", "--out", "{tmp}/r", "--max-steps",
                                       str(2**70)], "--max-steps must be <= 1,000,000,000,000"),
    Case("quickstart sample-tokens 1e12", ["quickstart", "--input", "{input}", "--out", "{tmp}/r", "--sample-tokens",
                                           "1e12"], "--sample-tokens must be <= 100,000"),
    Case("sample max-new-tokens 1e12", [*SAMPLE, "--checkpoint", "{run}", "--max-new-tokens", "1e12"],
         "--max-new-tokens must be <= 100,000, got 1000000000000"),
    Case("sample max-new-tokens inf", [*SAMPLE, "--checkpoint", "{run}", "--max-new-tokens", "inf"],
         "--max-new-tokens: expected a finite integer, got 'inf'"),
    Case("sample max-new-tokens nan", [*SAMPLE, "--checkpoint", "{run}", "--max-new-tokens", "nan"],
         "--max-new-tokens: expected a finite integer"),
    Case("sample seed 2^70", [*SAMPLE, "--checkpoint", "{run}", "--seed", str(2**70)], "--seed must be <= "),
    Case("sample negative seed", [*SAMPLE, "--checkpoint", "{run}", "--seed", "-1"], "--seed must be >= 0, got -1"),
    Case("sample seeds 2^70", [*SAMPLE, "--checkpoint", "{run}", "--seeds", f"1,{2**70}"],
         "--seeds: each seed must be in [0, 2^64)"),
    Case("sample temperature 1e-45", [*SAMPLE, "--checkpoint", "{run}", "--temperature", "1e-45"],
         "--temperature must be 0 (greedy) or in [0.0001, 100], got 1e-45"),
    Case("sample temperature 1e308", [*SAMPLE, "--checkpoint", "{run}", "--temperature", "1e308"],
         "--temperature must be 0 (greedy) or in"),
    Case("sample temperature inf", [*SAMPLE, "--checkpoint", "{run}", "--temperature", "inf"], "--temperature must be"),
    Case("sample top-k 2^70", [*SAMPLE, "--checkpoint", "{run}", "--top-k", str(2**70)], "--top-k must be <="),
    Case("sample top-p inf", [*SAMPLE, "--checkpoint", "{run}", "--top-p", "inf"], "--top-p must be in (0, 1]"),
    Case("sample num-samples 1e9", [*SAMPLE, "--checkpoint", "{run}", "--num-samples", "1e9"],
         "--num-samples must be <= 1,024"),
    Case("sample huge KV cache", [*SAMPLE, "--checkpoint", "{tmp}/long", "--num-samples", "64"],
         "generation (64 row(s)): needs an estimated", lambda env: _long_context_model(env.tmp / "long")),
    Case("sample hf huge n_embd", [*SAMPLE, "--hf", "{tmp}/hf"], "config.json: cannot allocate the model it describes",
         copy("hf", edit_json("config.json", lambda c: c.update(n_embd=2**40, n_head=1)))),
    Case("export huge n_layer in config.json", ["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/hf"],
         "config.json: cannot allocate the model it describes", copy("run", edit_json(
             "checkpoints/*/config.json", lambda c: c["model"].update(n_layer=90000, n_embd=8192, n_head=64))),
         survives=("{tmp}/run", "{tmp}/hf")),
    Case("eval loss huge batch", [*EVAL_LOSS, "--checkpoint", "{run}", "--batch-size", str(2**30)],
         "eval loss: needs an estimated"),
    Case("eval loss tokens 1e308", [*EVAL_LOSS, "--checkpoint", "{run}", "--tokens", "1e308"], "--tokens must be <="),
    Case("eval loss seq-len inf", [*EVAL_LOSS, "--checkpoint", "{run}", "--seq-len", "inf"], "--seq-len: expected a"),
    Case("hellaswag huge batch", [*HELLASWAG, "--file", str(HELLASWAG_SAMPLE), "--batch-size", "1000000000"],
         "eval hellaswag: needs an estimated"),
    Case("hellaswag limit 2^70", [*HELLASWAG, "--file", str(HELLASWAG_SAMPLE), "--limit", str(2**70)],
         "--limit must be <="),
    Case("prepare --shard-tokens inf", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--shard-tokens", "inf"],
         "--shard-tokens: expected a finite integer, got 'inf'", survives=("{tmp}/d",)),
    Case("prepare --shard-tokens 1e308", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--shard-tokens",
                                          "1e308"], "--shard-tokens must be <= 2,147,483,648", survives=("{tmp}/d",)),
    Case("prepare --val-tokens negative", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--val-tokens", "-5"],
         "--val-tokens must be >= 0, got -5"),
    Case("prepare --val-fraction inf", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--val-fraction", "inf"],
         "--val-fraction must be in [0, 1), got inf"),
    Case("prepare --workers 1e9", [*PREPARE, "--input", "{input}", "--out", "{tmp}/d", "--workers", "1e9"],
         "--workers must be <= 1,024"),
    Case("tokenizer vocab size 1e10", ["tokenizer", "train", "--input", "{input}", "--vocab-size", "1e10", "--out",
                                       "{tmp}/t"], "--vocab-size must be <= 1,048,576, got 10000000000"),
    Case("tokenizer max-sentences 2^70", ["tokenizer", "train", "--input", "{input}", "--vocab-size", "100",
                                          "--max-sentences", str(2**70), "--out", "{tmp}/t"],
         "--max-sentences must be <="),
    Case("plot smoothing inf", ["plot", "{run}", "--smoothing", "inf", "--out", "{tmp}/p.png"],
         "--smoothing must be in [0, 1), got inf"),
    Case("train time_budget 1e13m", [*TRAIN, "--train.time_budget", "1e13m"], "time_budget must be at most a year"),
    Case("quickstart time-budget 1e13m", ["quickstart", "--input", "{input}", "--out", "{tmp}/r", "--data-dir",
                                          "{tmp}/d", "--time-budget", "1e13m"], "time_budget must be at most a year",
         survives=("{tmp}/d", "{tmp}/r")),
]


def _long_context_model(path: Path) -> None:
    """A tiny RoPE model (no position table) with a block of 2^28 positions: small weights, a huge KV cache."""
    from scalegpt.checkpoint import save_model_dir
    from scalegpt.model import GPT, preset_config

    spec = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}
    save_model_dir(GPT(preset_config("tiny", vocab_size=50257, pos_emb="rope", block_size=2**28)), path,
                   tokenizer_spec=spec)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------------ the test


def _hashes(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_table_has_a_row_for_every_command():
    commands = {c.argv[0] if c.argv[0] not in ("eval", "tokenizer") else " ".join(c.argv[:2]) for c in CASES}
    assert commands >= {"prepare", "check", "train", "sample", "eval loss", "eval hellaswag", "export", "plot",
                        "tokenizer train", "quickstart"}
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # anything written to a default path lands here
    env = Env(world, tmp_path / "row", monkeypatch)
    env.tmp.mkdir()
    if case.setup is not None:
        case.setup(env)
    argv = [a.format(**env.paths) for a in case.argv]
    guarded = [world["data"], world["run"], world["gpt2"], world["hf"]] + [Path(p.format(**env.paths)) for p in case.survives]
    before = {p: _hashes(p) for p in guarded}
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    monkeypatch.undo()
    _, err = capsys.readouterr()
    assert "Traceback" not in err, err
    assert code == case.code, err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1 and case.expect.format(**env.paths) in errors[0], err  # one line says it all
    for p in guarded:
        assert _hashes(p) == before[p], f"{p} changed"
    leftovers = [p for p in env.tmp.rglob(".*tmp-*")] + [p for p in env.tmp.rglob(".partial")]
    assert not leftovers, f"half-written files left behind: {leftovers}"
