"""The training configuration: typed sections loaded from TOML and overridable from the command line.

    [model] [data] [optim] [schedule] [train] [eval] [log] [checkpoint] [dist] [guard]

Each field's trailing `# comment` is its documentation: `scalegpt train --help` reads it from this source file, so the
help can never drift from the code. Overrides are spelled `--section.key value`; an unknown key or a value of the wrong
type is a ScalegptError naming the key (and, for a typo, the closest valid key).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import io
import json
import math
import re
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path

from scalegpt.distributed import DistConfig
from scalegpt.errors import ScalegptError
from scalegpt.guard import GuardConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass
class ModelSection:
    n_layer: int = 12  # Transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    block_size: int = 1024  # longest sequence the model can see (its position table)
    dropout: float = 0.0  # dropout probability; 0 for pretraining
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2 has
    activation: str = "gelu_tanh"  # MLP activation: gelu_tanh (GPT-2's approximation) or gelu (exact, as nanoGPT)
    vocab_size: int = 0  # 0 = the dataset's tokenizer's vocabulary size
    pad_vocab_multiple: int = 64  # pad the embedding rows to a multiple of this for faster matmuls


@dataclass
class DataSection:
    dir: str = ""  # a dataset directory written by `scalegpt prepare`
    train_split: str = "train"  # split to train on
    val_split: str = "val"  # split for validation loss
    shuffle: bool = True  # shuffle the order of training sequences (seeded, resumable)


@dataclass
class OptimSection:
    lr: float = 6e-4  # peak learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay, applied only to tensors of 2 or more dimensions
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = no clipping (the norm is still logged)
    fused: str = "auto"  # fused AdamW kernel (auto = wherever torch has one)


@dataclass
class ScheduleSection:
    kind: str = "cosine"  # wsd = warmup-stable-decay
    warmup_steps: int = 715  # linear warmup from lr/warmup_steps to lr
    decay_steps: int = 0  # step at which the decay reaches min_lr; 0 = train.max_steps
    min_lr_ratio: float = 0.1  # the floor as a fraction of optim.lr
    wsd_decay_fraction: float = 0.2  # wsd only: the final fraction of decay_steps spent decaying linearly to the floor


@dataclass
class TrainSection:
    max_steps: int = 19073  # optimizer steps to train for
    global_batch_tokens: int = 524288  # tokens per optimizer step over all ranks and micro-steps
    micro_batch_size: int = 64  # sequences per device per micro-step; accumulation steps follow from the global batch
    seq_len: int = 0  # tokens per training sequence; 0 = model.block_size
    seed: int = 1337  # seeds Python, numpy and torch (and the data order)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (auto: cuda > mps > cpu)
    precision: str = "auto"  # autocast dtype (auto: bf16 where the hardware runs it fast, else fp32)
    compile: str = "auto"  # torch.compile the training model (auto = on for CUDA)
    tf32: bool = True  # allow TF32 matmuls on CUDA (faster fp32 on Ampere and newer)


@dataclass
class EvalSection:
    interval: int = 250  # evaluate every this many steps (and at the first and last step); 0 = never
    tokens: int = 10485760  # validation loss budget in tokens (a fixed, comparable slice of the val split)
    batch_size: int = 0  # sequences per evaluation batch; 0 = train.micro_batch_size
    at_start: bool = True  # also evaluate before the first step
    samples: int = 2  # samples generated at each evaluation; 0 = none
    sample_tokens: int = 64  # new tokens per sample
    prompt: str = "\n"  # the samples' prompt
    temperature: float = 1.0  # sampling temperature
    top_k: int = 50  # sample among the top k tokens; 0 = all
    hellaswag: str = ""  # HellaSwag file (jsonl or llama.cpp text); empty = no HellaSwag
    hellaswag_examples: int = 0  # HellaSwag examples per evaluation; 0 = all


@dataclass
class LogSection:
    interval: int = 10  # one console line every this many steps
    tensorboard: bool = False  # also write TensorBoard event files into RUN_DIR/tensorboard
    progress: str = "auto"  # a progress bar (auto = when stdout is a terminal)
    plot: bool = True  # redraw RUN_DIR/loss.png at every evaluation


@dataclass
class CheckpointSection:
    interval: int = 1000  # save a checkpoint every this many steps; 0 = only at the end and on SIGTERM/SIGINT
    keep_last: int = 3  # keep this many most recent checkpoints; 0 = keep all
    at_end: bool = True  # save when training finishes


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    dist: DistConfig = field(default_factory=DistConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)


CHOICES = {
    "optim.fused": ("auto", "true", "false"),
    "schedule.kind": ("cosine", "constant", "wsd"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.compile": ("auto", "true", "false"),
    "log.progress": ("auto", "true", "false"),
    "dist.strategy": ("auto", "ddp", "fsdp"),
}


# ------------------------------------------------------------------------------------------------------ field table


@dataclass(frozen=True)
class FieldInfo:
    section: str
    name: str
    type: type
    default: object
    doc: str

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


@functools.lru_cache(maxsize=None)
def _comment_docs(cls) -> dict[str, str]:
    """{field name: its trailing comment} read from the dataclass's source (empty when the source is unavailable)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs, line_field = {}, {}
    for lineno, line in enumerate(source.splitlines(), 1):
        m = re.match(r"\s+(\w+)\s*:", line)
        if m:
            line_field[lineno] = m.group(1)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            docs[line_field[tok.start[0]]] = tok.string.lstrip("#").strip()
    return docs


@functools.lru_cache(maxsize=None)
def fields_table() -> tuple[FieldInfo, ...]:
    """Every configurable field, in section order, with its type, default and doc."""
    out = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        hints = typing.get_type_hints(cls)
        docs = _comment_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append(FieldInfo(section.name, f.name, hints[f.name], default, docs.get(f.name, "")))
    return tuple(out)


def _field_index() -> dict[str, FieldInfo]:
    return {f.key: f for f in fields_table()}


# nanoGPT / build-nanogpt spellings that users bring along, so the suggestion is the right key, not the nearest string.
KNOWN_ALIASES = {
    "learning_rate": "optim.lr", "max_lr": "optim.lr", "lr_decay_iters": "schedule.decay_steps",
    "warmup_iters": "schedule.warmup_steps", "min_lr": "schedule.min_lr_ratio", "max_iters": "train.max_steps",
    "batch_size": "train.micro_batch_size", "total_batch_size": "train.global_batch_tokens",
    "eval_interval": "eval.interval", "eval_iters": "eval.tokens", "log_interval": "log.interval",
    "out_dir": "--out", "dtype": "train.precision", "init_from": "--resume",
}


def _unknown(key: str, where: str) -> ScalegptError:
    alias = KNOWN_ALIASES.get(key.split(".")[-1])
    if alias is not None:
        return ScalegptError(f"unknown config key '{key}' {where}; did you mean '{alias}'?")
    close = difflib.get_close_matches(key, list(_field_index()), n=1, cutoff=0.5)
    if not close:  # a right name in the wrong section ("--lr") is still worth pointing at
        close = [k for k in _field_index() if k.split(".")[-1] == key.split(".")[-1]][:1]
    hint = f"; did you mean '{close[0]}'?" if close else "; see `scalegpt train --help` for every key"
    return ScalegptError(f"unknown config key '{key}' {where}{hint}")


# ------------------------------------------------------------------------------------------------------ conversion


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(info: FieldInfo, text: str):
    """A command-line string to the field's type."""
    t = info.type
    try:
        if t is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if t is int:
            return int(text)
        if t is float:
            return float(text)
    except ValueError:
        raise ScalegptError(f"--{info.key}: expected {t.__name__}, got {text!r}") from None
    return text


def check_value(info: FieldInfo, value, where: str):
    """A TOML value checked against the field's type (ints are accepted for floats, nothing else is converted)."""
    t = info.type
    ok = isinstance(value, t) and not (t is int and isinstance(value, bool))
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ScalegptError(f"{where}: {info.key} must be {t.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_choice(key: str, value, where: str) -> None:
    if key in CHOICES and str(value).lower() not in CHOICES[key]:
        raise ScalegptError(f"{where}: {key} must be one of {' | '.join(CHOICES[key])}, got {value!r}")


def _set(config: Config, key: str, value) -> None:
    section, name = key.split(".", 1)
    setattr(getattr(config, section), name, value)


def get(config: Config, key: str):
    section, name = key.split(".", 1)
    return getattr(getattr(config, section), name)


# ------------------------------------------------------------------------------------------------------ loading


def config_from_dict(data: dict, where: str = "config", base: Config | None = None) -> Config:
    """Apply a nested {section: {key: value}} dict (a parsed TOML file) on top of `base` (default: the defaults)."""
    config = base if base is not None else Config()
    index = _field_index()
    sections = {f.section for f in fields_table()}
    for section, values in data.items():
        if section not in sections:
            raise _unknown(section, f"in {where} (not a section: expected one of {', '.join(sorted(sections))})")
        if not isinstance(values, dict):
            raise ScalegptError(f"{where}: [{section}] must be a table of keys, got {type(values).__name__}")
        for name, value in values.items():
            key = f"{section}.{name}"
            if key not in index:
                raise _unknown(key, f"in {where}")
            value = check_value(index[key], value, where)
            _check_choice(key, value, where)
            _set(config, key, value)
    return config


def load_toml(path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ScalegptError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ScalegptError(f"{path}: not valid TOML ({e})") from None


def apply_overrides(config: Config, overrides: list[tuple[str, str]]) -> Config:
    """Apply ("section.key", "text") pairs from the command line, converting each text to the field's type."""
    index = _field_index()
    for key, text in overrides:
        if key not in index:
            raise _unknown(key, "on the command line")
        value = parse_value(index[key], text)
        _check_choice(key, value, "command line")
        _set(config, key, value)
    return config


def parse_override_args(args: list[str]) -> list[tuple[str, str]]:
    """['--optim.lr', '3e-4', '--train.seed=1'] -> [('optim.lr', '3e-4'), ('train.seed', '1')]."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ScalegptError(f"unexpected argument {arg!r}; overrides look like --section.key VALUE")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ScalegptError(f"--{key} needs a value")
            i += 1
            value = args[i]
        if key not in _field_index():
            raise _unknown(key, "on the command line")
        out.append((key, value))
        i += 1
    return out


def load_config(path=None, overrides: list[tuple[str, str]] = ()) -> Config:
    """The defaults, then the TOML file at `path` (if any), then the overrides; validated."""
    config = Config()
    if path is not None:
        config = config_from_dict(load_toml(path), str(path), config)
    config = apply_overrides(config, list(overrides))
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks that need more than one field or a range; raised before anything is built."""
    positive = ["train.max_steps", "train.global_batch_tokens", "train.micro_batch_size", "model.n_layer",
                "model.n_head", "model.n_embd", "model.block_size", "model.pad_vocab_multiple"]
    non_negative = ["train.seq_len", "eval.interval", "eval.tokens", "eval.batch_size", "eval.samples",
                    "eval.sample_tokens", "eval.top_k", "eval.hellaswag_examples", "log.interval",
                    "checkpoint.interval", "checkpoint.keep_last", "schedule.warmup_steps", "schedule.decay_steps",
                    "model.vocab_size", "optim.weight_decay", "optim.grad_clip"]
    for key in positive:
        if get(config, key) <= 0:
            raise ScalegptError(f"{key} must be > 0, got {get(config, key)}")
    for key in non_negative:
        if get(config, key) < 0:
            raise ScalegptError(f"{key} must be >= 0, got {get(config, key)}")
    if not config.optim.lr > 0 or not math.isfinite(config.optim.lr):
        raise ScalegptError(f"optim.lr must be a positive number, got {config.optim.lr}")
    if not 0.0 <= config.schedule.min_lr_ratio <= 1.0:
        raise ScalegptError(f"schedule.min_lr_ratio must be in [0, 1], got {config.schedule.min_lr_ratio}")
    if not 0.0 <= config.schedule.wsd_decay_fraction <= 1.0:
        raise ScalegptError(f"schedule.wsd_decay_fraction must be in [0, 1], got {config.schedule.wsd_decay_fraction}")
    if config.train.seq_len > config.model.block_size:
        raise ScalegptError(f"train.seq_len ({config.train.seq_len}) is larger than the model's block_size "
                            f"({config.model.block_size}); lower train.seq_len or raise model.block_size")
    if config.model.n_embd % config.model.n_head:
        raise ScalegptError(f"model.n_embd ({config.model.n_embd}) must be divisible by model.n_head "
                            f"({config.model.n_head})")
    if not 0.0 <= config.model.dropout < 1.0:
        raise ScalegptError(f"model.dropout must be in [0, 1), got {config.model.dropout}")
    for key, choices in CHOICES.items():
        _check_choice(key, get(config, key), "config")
    # The [dist] and [guard] dataclasses check their own ranges when constructed; overrides bypassed that.
    for section in (config.dist, config.guard):
        type(section)(**dataclasses.asdict(section))


def seq_len(config: Config) -> int:
    return config.train.seq_len or config.model.block_size


# ------------------------------------------------------------------------------------------------------ writing


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def to_toml(config: Config) -> str:
    """The resolved config as TOML that `load_config` reads back to an equal Config."""
    lines = []
    for section, values in to_dict(config).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def help_text() -> str:
    """Every field as `--section.key TYPE (default X)  doc`, grouped by section, for `scalegpt train --help`."""
    lines, current = [], None
    for f in fields_table():
        if f.section != current:
            current = f.section
            lines.append(f"[{current}]")
        choices = CHOICES.get(f.key)
        kind = "|".join(choices) if choices else f.type.__name__
        lines.append(f"  --{f.key} {kind} (default {_toml_value(f.default)})  {f.doc}")
    return "\n".join(lines)
