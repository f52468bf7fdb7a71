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

MLPS = ("gelu_tanh", "gelu", "relu2", "swiglu")
POS_EMBS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
LEGACY_MODEL_KEYS = {"activation": "mlp"}  # old [model] key -> its field now (old configs and checkpoints load)


@dataclass
class GPTConfig:
    n_layer: int = 12  # Transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    block_size: int = 1024  # longest sequence the model can see (its position table)
    vocab_size: int = 0  # the tokenizer's vocabulary (0 in a training config = the dataset's tokenizer's)
    dropout: float = 0.0  # dropout probability; 0 for pretraining
    bias: bool = True  # biases in Linear and norm layers, as GPT-2 has (Llama, nanochat: none)
    pad_vocab_multiple: int = 64  # pad the embedding rows to a multiple of this (50257 -> 50304) for faster matmuls
    pos_emb: str = "learned"  # positions: learned (GPT-2's table, wpe) or rope (rotary, applied to q and k; no table)
    rope_theta: float = 10000.0  # RoPE base: the longest wavelength grows with it (Llama 3 and Qwen3 use 500000+)
    norm: str = "layernorm"  # layernorm (GPT-2) or rmsnorm (Llama, nanochat: no mean subtraction, no bias)
    norm_learnable: bool = True  # norms carry a learned gain (and bias with bias=true); false = parameter-free (nanochat)
    norm_eps: float = 1e-5  # epsilon of every norm (Llama and Qwen3 use 1e-6)
    mlp: str = "gelu_tanh"  # MLP: gelu_tanh (GPT-2), gelu (exact, nanoGPT), relu2 (ReLU squared, nanochat) or swiglu (Llama)
    mlp_hidden: int = 0  # MLP hidden width; 0 = 4 * n_embd, for swiglu 8/3 * n_embd rounded up to a multiple of 64
    head_dim: int = 0  # width of each attention head; 0 = n_embd // n_head
    n_kv_head: int = 0  # key/value heads, shared by groups of query heads (GQA); 0 = n_head, 1 = multi-query
    qk_norm: bool = False  # RMS-normalise each head's q and k before RoPE (Qwen3, nanochat): steadier attention logits
    tie_embeddings: bool = True  # the output head shares the token embedding matrix (GPT-2); false = its own (nanochat)
    logit_softcap: float = 0.0  # > 0: logits = c * tanh(logits / c), bounding them to (-c, c) (Gemma 2, nanochat: 15)
    embed_norm: bool = False  # a norm right after the token embedding (modded-nanogpt, nanochat)
    zero_init: bool = False  # zero-initialise the residual projections (attn and mlp c_proj) and an untied lm_head
    value_embeds: bool = False  # value embeddings: extra token embeddings mixed into v in alternating layers (nanochat)
    residual_scalars: bool = False  # learned per-layer scalars: x = resid_lambda * x + x0_lambda * x0 before each block

    def __post_init__(self):
        check_section(self, "model")  # types, finiteness, choices and ranges of each field (see RANGES below)
        if not self.head_dim and self.n_embd % self.n_head:
            raise ScalegptError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}), "
                                "or set model.head_dim")
        if self.n_head % self.kv_heads:
            raise ScalegptError(f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.n_kv_head})")
        if self.pos_emb == "rope" and self.head_size % 2:
            raise ScalegptError(f"model.pos_emb rope needs an even head width, got {self.head_size}")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # Llama: 2/3 of 4 * n_embd keeps the parameter count of a 4x MLP with 3 matrices
            return math.ceil(8 * self.n_embd / 3 / 64) * 64
        return 4 * self.n_embd

    def options_changed(self) -> list[str]:
        """`key=value` for each architecture switch (pos_emb .. residual_scalars) set away from its GPT-2 default."""
        names = [f.name for f in fields(self)]
        switches = fields(self)[names.index("pos_emb"):]  # declared last, from pos_emb on
        return [f"{f.name}={getattr(self, f.name)}" for f in switches if getattr(self, f.name) != f.default]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "GPTConfig":
        """From a JSON/TOML object (old key names mapped); `where` (a file) prefixes any error, so a bad checkpoint
        config names itself."""
        prefix = f"{where}: " if where else ""
        d = {LEGACY_MODEL_KEYS.get(k, k): v for k, v in d.items()}
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
class MixSource:
    """One `[[data.mix]]` table: a prepared dataset and its share of the training sequences."""
    dir: str
    weight: float


@dataclass
class DataSection:
    dir: str = ""  # a dataset directory written by `scalegpt prepare`
    train_split: str = "train"  # split to train on
    val_split: str = "val"  # split for validation loss
    shuffle: bool = True  # shuffle the order of training sequences (seeded, resumable)
    mix: list[MixSource] = field(default_factory=list)  # several datasets drawn by weight: [[data.mix]] tables {dir, weight}; on the command line DIR:WEIGHT,DIR:WEIGHT
    align: str = "none"  # none | bos: every training sequence starts at a document start (best-fit packing)

    def __post_init__(self):
        check_section(self, "data")
        if self.dir and self.mix:
            raise ScalegptError("data.dir and data.mix are both set: give one dataset as data.dir, or several as "
                                "[[data.mix]] tables, not both")


MIN_MIX_SHARE = 1e-6  # a smaller share would need blocks of more than a million sequences (scalegpt.mixture)


def parse_mix(key: str, value) -> list[MixSource]:
    """data.mix as a list of MixSource, from TOML tables or MixSource objects (command-line text: mix_from_text)."""
    if not isinstance(value, (list, tuple)):
        raise ScalegptError(f"{key} must be list, got {type(value).__name__} {value!r:.60} (expected [[data.mix]] "
                            "tables with dir and weight)")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if isinstance(item, MixSource):
            item = asdict(item)
        if not isinstance(item, dict):
            raise ScalegptError(f"{where} must be a table with keys dir and weight, got {type(item).__name__}")
        unknown = sorted(set(item) - {"dir", "weight"})
        missing = sorted({"dir", "weight"} - set(item))
        if unknown or missing:
            raise ScalegptError(f"{where} must have exactly the keys dir and weight"
                                + (f"; unknown {unknown}" if unknown else "") + (f"; missing {missing}" if missing else ""))
        d, w = item["dir"], item["weight"]
        if not isinstance(d, str) or not d:
            raise ScalegptError(f"{where}.dir must be a dataset directory (a non-empty string), got {d!r}")
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (math.isfinite(w) and w > 0):
            raise ScalegptError(f"{where}.weight must be a positive finite number, got {w!r}")
        out.append(MixSource(d, float(w)))
    dirs = [m.dir for m in out]
    for d in dirs:
        if dirs.count(d) > 1:
            raise ScalegptError(f"{key} lists {d} twice; give each dataset once, with its whole weight")
    total = sum(m.weight for m in out)
    for i, m in enumerate(out):
        if m.weight / total < MIN_MIX_SHARE:
            raise ScalegptError(f"{key}[{i}].weight {m.weight} is a share of {m.weight / total:.2g} of the mixture, "
                                f"below the smallest supported {MIN_MIX_SHARE}")
    return out


def mix_from_text(key: str, text: str) -> list:
    """--data.mix text: TOML's inline form '[{dir = "data/web", weight = 0.7}, ...]' or 'data/web:0.7,data/code:0.3'
    ("" = no mix)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as e:
            raise ScalegptError(f"{key}: not a TOML array of inline tables ({e}); expected e.g. "
                                '[{dir = "data/web", weight = 0.7}, {dir = "data/code", weight = 0.3}]') from None
    out = []
    for part in text.split(","):
        d, sep, w = part.strip().rpartition(":")
        try:
            out.append({"dir": d, "weight": float(w)})
        except ValueError:
            sep = ""
        if not sep:
            raise ScalegptError(f"{key}: expected DIR:WEIGHT,DIR:WEIGHT (e.g. data/web:0.7,data/code:0.3), got "
                                f"{part.strip()!r}")
    return out


@dataclass
class OptimSection:
    name: str = "adamw"  # adamw: AdamW for every tensor; muon: Muon for the blocks' Linear weights, AdamW for the rest
    lr: float = 6e-4  # peak learning rate (of AdamW's tensors; with muon: embeddings, head, norms, biases, scalars)
    weight_decay: float = 0.1  # AdamW decoupled weight decay, applied only to tensors of 2 or more dimensions
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = no clipping (the norm is still logged)
    fused: str = "auto"  # fused AdamW kernel (auto = wherever torch has one)
    # Muon defaults: lr 0.02 and Nesterov momentum 0.95 are nanochat's and Keller Jordan's Muon (which modded-nanogpt
    # started from), without weight decay as there. muon_adjust_lr scales each matrix's orthogonalised update:
    # original = lr x sqrt(max(1, rows/cols)) (Keller Jordan, modded-nanogpt, nanochat); match_rms_adamw =
    # lr x 0.2 x sqrt(max(rows, cols)), Moonlight's rule ("Muon is Scalable for LLM Training"), under which the
    # update has AdamW's RMS, so AdamW's lr (~6e-4..3e-3, not 0.02) and weight decay (0.1) carry over.
    muon_lr: float = 0.02  # optim.name muon: Muon's peak learning rate, on the same schedule as optim.lr
    muon_momentum: float = 0.95  # optim.name muon: Muon's Nesterov momentum
    muon_weight_decay: float = 0.0  # optim.name muon: Muon's decoupled decay (weights shrink by lr x this per step)
    muon_adjust_lr: str = "original"  # Muon's update scale per matrix shape (original: Keller Jordan; match_rms_adamw: Moonlight)

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
    max_steps: int = 19073  # optimizer steps to train for (with time_budget: measured, this value is ignored)
    time_budget: str = ""  # train this long ("90s", "3m", "1h"): max_steps is fixed from the measured speed; "" = off
    global_batch_tokens: int = 524288  # tokens per optimizer step over all ranks and micro-steps
    micro_batch_size: int = 64  # sequences per device per micro-step; accumulation steps follow from the global batch
    seq_len: int = 0  # tokens per training sequence; 0 = model.block_size
    seed: int = 1337  # seeds Python, numpy and torch (and the data order)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (auto: cuda > mps > cpu)
    precision: str = "auto"  # autocast dtype (auto: bf16 where the hardware runs it fast, else fp32)
    compile: str = "auto"  # torch.compile the training model (auto = on for CUDA)
    tf32: bool = True  # allow TF32 matmuls on CUDA (faster fp32 on Ampere and newer)
    threads: int = 0  # CPU threads for torch; 0 = auto (measured; OMP_NUM_THREADS wins when set)

    def __post_init__(self):
        check_section(self, "train")
        parse_duration(self.time_budget, "train.time_budget")  # a bad budget fails at load time, not mid-run


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION_S = 366 * 24 * 3600.0


def parse_duration(text: str, key: str = "duration") -> float:
    """Seconds in "90s", "3m", "1.5h" ("" = 0: off). A bare number is refused: is 3 minutes or seconds?"""
    text = text.strip().lower()
    if not text:
        return 0.0
    try:
        seconds = float(text[:-1]) * _UNITS[text[-1]]
    except (KeyError, ValueError):
        raise ScalegptError(f"{key} '{text}' is not a duration; expected a number with a unit s, m or h, "
                            'e.g. "90s", "3m", "1h" ("" = off)') from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ScalegptError(f"{key} must be a positive duration, got '{text}'")
    if seconds > MAX_DURATION_S:
        raise ScalegptError(f"{key} must be at most a year (8784h), got '{text}'")
    return seconds


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
    "model.mlp": MLPS,
    "model.pos_emb": POS_EMBS,
    "model.norm": NORMS,
    "optim.name": ("adamw", "muon"),
    "optim.fused": ("auto", "true", "false"),
    "optim.muon_adjust_lr": ("original", "match_rms_adamw"),
    "schedule.kind": ("cosine", "constant", "wsd"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.compile": ("auto", "true", "false"),
    "log.progress": ("auto", "true", "false"),
    "dist.strategy": ("auto", "ddp", "fsdp"),
    "dist.backend": ("auto", "nccl", "gloo"),
    "data.align": ("none", "bos"),
}


# ------------------------------------------------------------------------------------------------------ validation
# One mechanism checks every field of every section, from each dataclass's __post_init__ (so a value from a TOML file,
# the command line, a checkpoint's config.json or Python is checked alike): the annotated type (an int is a fine
# float; a bool is not an int), finiteness of every float, CHOICES, and the range below. A number not listed in
# RANGES must be >= 0, so a new field is checked with no code of its own; list it here when 0 is not meaningful.
RANGES = {
    "model.n_layer": ">= 1", "model.n_head": ">= 1", "model.n_embd": ">= 1", "model.block_size": ">= 1",
    "model.pad_vocab_multiple": ">= 1", "model.dropout": "[0, 1)",
    "model.rope_theta": "> 0", "model.norm_eps": "> 0",
    "optim.lr": "> 0", "optim.muon_lr": "> 0", "optim.muon_momentum": "[0, 1)", "optim.beta1": "[0, 1)", "optim.beta2": "[0, 1)", "optim.eps": "> 0",
    "schedule.min_lr_ratio": "[0, 1]", "schedule.wsd_decay_fraction": "[0, 1]",
    "train.max_steps": ">= 1", "train.global_batch_tokens": ">= 1", "train.micro_batch_size": ">= 1",
    "train.seed": "[0, 18446744073709551616)",  # what torch.manual_seed and numpy's generators accept
    "dist.timeout_minutes": ">= 1",
    "guard.spike_window": ">= 2", "guard.spike_zscore": "> 0",
}
_DEFAULT_RANGE = ">= 0"
TABLE_LISTS = {"data.mix": parse_mix}  # fields holding TOML arrays of tables: their own parser and checks
TEXT_PARSERS = {"data.mix": mix_from_text}  # ... and how the command line spells them

# Upper bounds (issue 20): what no run could use, refused at load time instead of hanging or dying in the allocator.
# Sizes that cost memory (n_layer, n_embd, batch, vocabulary...) are also checked against the memory they need
# (scalegpt.resources) before anything is built; these bounds keep every number within what the code can represent.
MAX_NEW_TOKENS = 100_000  # longest generation per request (sample --max-new-tokens, eval.sample_tokens)
# Below 1e-4 sampling is greedy in all but name, and far below (1e-45) logits / T overflow float32 into NaN: use 0.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 100.0  # above 100 the distribution is uniform in all but name
INT64_MAX = 2**63 - 1
MAXIMA = {
    "model.n_layer": 100_000, "model.n_head": 100_000, "model.n_kv_head": 100_000, "model.block_size": 2**30,
    "model.vocab_size": 2**32, "model.pad_vocab_multiple": 2**20, "model.rope_theta": 1e12, "model.norm_eps": 1.0,
    "model.logit_softcap": 1e6,
    "optim.lr": 1e12, "optim.muon_lr": 1e12, "optim.eps": 1.0, "optim.weight_decay": 1e6, "optim.muon_weight_decay": 1e6,
    "optim.grad_clip": 1e12,
    "schedule.warmup_steps": 10**12, "schedule.decay_steps": 10**12,
    "train.max_steps": 10**12, "train.global_batch_tokens": 2**32, "train.micro_batch_size": 2**30,
    "train.seq_len": 2**30,
    "eval.tokens": 2**50, "eval.batch_size": 2**30, "eval.samples": 1024, "eval.sample_tokens": MAX_NEW_TOKENS,
    "eval.temperature": MAX_TEMPERATURE, "eval.top_k": 2**32, "eval.hellaswag_examples": 10**9,
    "dist.timeout_minutes": 525_600,  # a year; timedelta and the process group's timeout overflow far above
    "guard.spike_window": 10**6, "guard.spike_zscore": 1e6, "guard.max_consecutive_skips": 10**6,
}
DEFAULT_MAXIMUM = INT64_MAX  # every other number fits a C int64 (torch, numpy); floats: finite is enough


def check_temperature(value, key: str = "temperature") -> None:
    """0 (greedy) or within [MIN_TEMPERATURE, MAX_TEMPERATURE]: a tiny positive T overflows logits / T."""
    if value is None or not (value == 0 or MIN_TEMPERATURE <= value <= MAX_TEMPERATURE):
        raise ScalegptError(f"{key} must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {value}")


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
    if key in TABLE_LISTS:
        return TABLE_LISTS[key](key, value)
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
        maximum = MAXIMA.get(key, DEFAULT_MAXIMUM if kind is int else math.inf)
        if value > maximum:
            raise ScalegptError(f"{key} must be <= {maximum:,}, got {value:,}")
        if key.endswith(".temperature"):
            check_temperature(value, key)
    return value


def _within(value, spec: str) -> bool:
    """`spec` is '>= 1', '> 0' or an interval '[0, 1)'."""
    if spec[0] in "<>":
        op, bound = spec.split()
        bound = float(bound)
        return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    lo, hi = (int(b) if b.strip().lstrip("-").isdigit() else float(b) for b in spec[1:-1].split(","))
    return (value >= lo if spec[0] == "[" else value > lo) and (value <= hi if spec[-1] == "]" else value < hi)
