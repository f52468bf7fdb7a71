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
    Case("train --config unreadable", [*TRAIN, "--config", "{tmp}/c.toml"], "c.toml: cannot read (Permission denied)",
         both(write("c.toml", "[train]\n"), denied("c.toml"))),
    # ---------------------------------------------------------------- train: data and run directories
    Case("train data dir missing", [*TRAIN, "--data.dir", "{tmp}/nodata"], "nodata"),
    Case("train data dir is a file", [*TRAIN, "--data.dir", "{input}"], "input.txt: is a file, expected a dataset"),
    Case("train data dir not a dataset", [*TRAIN, "--data.dir", "{tmp}"], "meta.json"),
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
    Case("export gguf --out exists", ["export", "--format", "gguf", "--checkpoint", "{gpt2}", "--out", "{tmp}/m.gguf"],
         "--overwrite", write("m.gguf", "mine"), survives=("{tmp}/m.gguf",)),
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
                                          "--out", "{tmp}/f/t"], "f: already exists", write("f", "x")),
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
]


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
