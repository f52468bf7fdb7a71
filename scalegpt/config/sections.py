"""The settings schema: one typed dataclass per TOML section, torch-free so it loads anywhere (the CLI's --help too).

    [model] [data] [optim] [schedule] [train] [eval] [log] [checkpoint] [dist] [guard]

Each field's trailing `# comment` is its documentation: `scalegpt train --help` reads it from this source file, so the
help can never drift from the code. `GPTConfig` is both the [model] section and what `scalegpt.model.GPT` is built
from: one definition, one set of checks.
"""
from __future__ import annotations

import functools
import math
import numbers
import typing
from dataclasses import asdict, dataclass, field, fields

from scalegpt.errors import ScalegptError

ACTIVATIONS = ("gelu_tanh", "gelu")


@dataclass
class GPTConfig:
    n_layer: int = 12  # Transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    block_size: int = 1024  # longest sequence the model can see (its position table)
    vocab_size: int = 0  # the tokenizer's vocabulary (0 in a training config = the dataset's tokenizer's)
    dropout: float = 0.0  # dropout probability; 0 for pretraining
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2 has
    activation: str = "gelu_tanh"  # MLP activation: gelu_tanh (GPT-2's approximation) or gelu (exact, as nanoGPT)
    pad_vocab_multiple: int = 64  # pad the embedding rows to a multiple of this (50257 -> 50304) for faster matmuls

    def __post_init__(self):
        check_section(self, "model")
        for name in ("block_size", "n_layer", "n_head", "n_embd", "pad_vocab_multiple"):
            if getattr(self, name) < 1:
                raise ScalegptError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ScalegptError(f"model.vocab_size must be >= 0 (0 = the tokenizer's), got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise ScalegptError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.activation not in ACTIVATIONS:
            raise ScalegptError(f"model.activation must be one of {', '.join(ACTIVATIONS)}, got '{self.activation}'")
        if not 0.0 <= self.dropout < 1.0:
            raise ScalegptError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "GPTConfig":
        """From a JSON/TOML object; `where` (a file) prefixes any error, so a bad checkpoint config names itself."""
        prefix = f"{where}: " if where else ""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ScalegptError(f"{prefix}unknown model config key(s) {unknown}; expected some of {sorted(known)}")
        try:
            return cls(**d)
        except ScalegptError as e:
            raise ScalegptError(f"{prefix}{e}") from None


# Named shapes, selectable as `model.preset = "gpt2"`. The GPT-2 family matches OpenAI's checkpoints; the small ones
# are for tests and CPU runs.
PRESETS: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),  # 1558M
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=64),  # unit tests
    "micro": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),  # nanoGPT's CPU shakespeare-char shape
    "mini": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # nanoGPT's GPU shakespeare-char shape
}


def preset_config(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise ScalegptError(f"unknown model preset '{name}'; expected one of {', '.join(PRESETS)}")
    return GPTConfig(**{"vocab_size": 50257, **PRESETS[name], **overrides})


@dataclass
class DataSection:
    dir: str = ""  # a dataset directory written by `scalegpt prepare`
    train_split: str = "train"  # split to train on
    val_split: str = "val"  # split for validation loss
    shuffle: bool = True  # shuffle the order of training sequences (seeded, resumable)

    def __post_init__(self):
        check_section(self, "data")


@dataclass
class OptimSection:
    lr: float = 6e-4  # peak learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay, applied only to tensors of 2 or more dimensions
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = no clipping (the norm is still logged)
    fused: str = "auto"  # fused AdamW kernel (auto = wherever torch has one)

    def __post_init__(self):
        check_section(self, "optim")


@dataclass
class ScheduleSection:
    kind: str = "cosine"  # wsd = warmup-stable-decay
    warmup_steps: int = 715  # linear warmup from lr/warmup_steps to lr
    decay_steps: int = 0  # step at which the decay reaches min_lr; 0 = train.max_steps
    min_lr_ratio: float = 0.1  # the floor as a fraction of optim.lr
    wsd_decay_fraction: float = 0.2  # wsd only: the final fraction of decay_steps spent decaying linearly to the floor

    def __post_init__(self):
        check_section(self, "schedule")


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

    def __post_init__(self):
        check_section(self, "train")


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

    def __post_init__(self):
        check_section(self, "eval")


@dataclass
class LogSection:
    interval: int = 10  # one console line every this many steps
    tensorboard: bool = False  # also write TensorBoard event files into RUN_DIR/tensorboard
    progress: str = "auto"  # a progress bar (auto = when stdout is a terminal)
    plot: bool = True  # redraw RUN_DIR/loss.png at every evaluation

    def __post_init__(self):
        check_section(self, "log")


@dataclass
class CheckpointSection:
    interval: int = 1000  # save a checkpoint every this many steps; 0 = only at the end and on SIGTERM/SIGINT
    keep_last: int = 3  # keep this many most recent checkpoints; 0 = keep all
    at_end: bool = True  # save when training finishes

    def __post_init__(self):
        check_section(self, "checkpoint")


@dataclass
class DistConfig:
    strategy: str = "auto"  # auto | ddp | fsdp: auto picks ddp when the model fits on one device, else fsdp
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    fsdp_reshard_after_forward: bool = True  # False keeps gathered params between forward and backward (faster, more memory)
    fsdp_cpu_offload: bool = False  # parameters, gradients and optimizer state live on the CPU between uses
    activation_checkpointing: bool = False  # recompute each block's activations in backward (also single-device)
    timeout_minutes: int = 30  # collective timeout before a hung rank fails the job

    def __post_init__(self):
        check_section(self, "dist")


@dataclass
class GuardConfig:
    skip_nonfinite: bool = True  # skip the optimizer step when the loss or the gradient norm is NaN/inf
    max_consecutive_skips: int = 5  # abort with a clear message after this many skipped steps in a row (0: never)
    spike_guard: bool = False  # also skip loss/grad-norm z-score outliers (as llm.c does); a lasting jump aborts
    spike_window: int = 100  # the z-score compares against this many recent applied steps; checks start once full
    spike_zscore: float = 6.0  # a value this many standard deviations above the window mean is a spike

    def __post_init__(self):
        check_section(self, "guard")


@dataclass
class Config:
    model: GPTConfig = field(default_factory=GPTConfig)
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
    "model.activation": ACTIVATIONS,
    "optim.fused": ("auto", "true", "false"),
    "schedule.kind": ("cosine", "constant", "wsd"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.compile": ("auto", "true", "false"),
    "log.progress": ("auto", "true", "false"),
    "dist.strategy": ("auto", "ddp", "fsdp"),
    "dist.backend": ("auto", "nccl", "gloo"),
}


# ------------------------------------------------------------------------------------------------------ validation
# One mechanism checks every field of every section, from each dataclass's __post_init__ (so a value from a TOML file,
# the command line, a checkpoint's config.json or Python is checked alike): the annotated type (an int is a fine
# float; a bool is not an int), finiteness of every float, CHOICES, and the range below. A number not listed in
# RANGES must be >= 0, so a new field is checked with no code of its own; list it here when 0 is not meaningful.
RANGES = {
    "model.n_layer": ">= 1", "model.n_head": ">= 1", "model.n_embd": ">= 1", "model.block_size": ">= 1",
    "model.pad_vocab_multiple": ">= 1", "model.dropout": "[0, 1)",
    "model.rope_theta": "> 0", "model.norm_eps": "> 0",  # issue 13's fields (ignored until they exist)
    "optim.lr": "> 0", "optim.beta1": "[0, 1)", "optim.beta2": "[0, 1)", "optim.eps": "> 0",
    "schedule.min_lr_ratio": "[0, 1]", "schedule.wsd_decay_fraction": "[0, 1]",
    "train.max_steps": ">= 1", "train.global_batch_tokens": ">= 1", "train.micro_batch_size": ">= 1",
    "train.seed": "[0, 18446744073709551616)",  # what torch.manual_seed and numpy's generators accept
    "dist.timeout_minutes": ">= 1",
    "guard.spike_window": ">= 2", "guard.spike_zscore": "> 0",
}
_DEFAULT_RANGE = ">= 0"


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict[str, type]:
    return typing.get_type_hints(cls)


def check_section(section, name: str) -> None:
    """Check (and normalise: int -> float, choice spelling -> lower case) every field of one section in place."""
    for f in fields(section):
        key = f"{name}.{f.name}"
        setattr(section, f.name, check_value(key, getattr(section, f.name), _field_types(type(section))[f.name]))


def check_value(key: str, value, kind: type):
    """`value` as a valid `key` of type `kind`, or a ScalegptError like 'optim.beta1 must be in [0, 1), got 1.5'."""
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
    elif kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)  # numpy integers too
    if kind in (bool, int, float, str) and type(value) is not kind:
        raise ScalegptError(f"{key} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    if key in CHOICES:
        if value.lower() not in CHOICES[key]:
            raise ScalegptError(f"{key} must be one of {' | '.join(CHOICES[key])}, got {value!r}")
        return value.lower()
    if kind in (int, float):
        if not math.isfinite(value):
            raise ScalegptError(f"{key} must be a finite number, got {value}")
        spec = RANGES.get(key, _DEFAULT_RANGE)
        if not _within(value, spec):
            raise ScalegptError(f"{key} must be {spec if spec[0] in '<>' else 'in ' + spec}, got {value}")
    return value


def _within(value, spec: str) -> bool:
    """`spec` is '>= 1', '> 0' or an interval '[0, 1)'."""
    if spec[0] in "<>":
        op, bound = spec.split()
        bound = float(bound)
        return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    lo, hi = (int(b) if b.strip().lstrip("-").isdigit() else float(b) for b in spec[1:-1].split(","))
    return (value >= lo if spec[0] == "[" else value > lo) and (value <= hi if spec[-1] == "]" else value < hi)
