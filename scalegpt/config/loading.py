"""Loading the settings (scalegpt.config.sections): defaults, then a TOML file, then overrides; validated; echoed.

Overrides are spelled `--section.key value` on the command line, or given from Python as typed values
(`load_config(path, {"train.max_steps": 500})`); both go through one parser. An unknown key or a value of the wrong
type is a ScalegptError naming the key (and, for a typo, the closest valid key: `suggest`).
`model.preset = "gpt2"` sets the model's shape from `PRESETS`; keys given beside it win.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import io
import json
import math
import os
import re
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from scalegpt._fs import read_toml
from scalegpt.config.sections import CHOICES, LEGACY_MODEL_KEYS, PRESETS, TEXT_PARSERS, Config, check_value
from scalegpt.errors import ScalegptError


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


def suggest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """'; did you mean X?' for a misspelt key or option, or '' when nothing is close.

    A nanoGPT spelling (`max_iters`) maps to our key; the right name in the wrong section (`--lr`) comes before
    plain spelling distance."""
    bare = name.lstrip("-")
    alias = KNOWN_ALIASES.get(bare.split(".")[-1])
    if alias is not None:
        return f"; did you mean '{alias if alias.startswith('-') else prefix + alias}'?"
    candidates = list(candidates)
    same_name = [c for c in candidates if c.split(".")[-1] == bare.split(".")[-1] and c != bare]
    close = same_name[:1] or difflib.get_close_matches(bare, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _unknown(key: str, where: str) -> ScalegptError:
    hint = suggest(key, list(_field_index()) + [PRESET_KEY]) or "; see `scalegpt train --help` for every key"
    return ScalegptError(f"unknown config key '{key}' {where}{hint}")


# ------------------------------------------------------------------------------------------------------ conversion


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
PRESET_KEY = "model.preset"  # not a field: it sets the model's shape fields from PRESETS


def convert(info: FieldInfo, value, where: str, from_text: bool = False):
    """A value for the field: command-line text (from_text) is parsed to the field's type; then the section's own
    checks (type, finiteness, range, choices: sections.check_value) run, the error naming where the value came from."""
    t = info.type
    if from_text and isinstance(value, str) and info.key in TEXT_PARSERS:
        value = TEXT_PARSERS[info.key](f"--{info.key}", value)
    if from_text and isinstance(value, str) and t in (bool, int, float):  # others (data.mix) parse their own text
        try:
            if t is bool:
                low = value.strip().lower()
                if low not in _TRUE + _FALSE:
                    raise ValueError
                value = low in _TRUE
            else:
                value = t(value)
        except ValueError:
            raise ScalegptError(f"--{info.key}: expected {t.__name__}, got {value!r}") from None
    try:
        return check_value(info.key, value, t)
    except ScalegptError as e:
        raise ScalegptError(f"--{e}" if from_text else f"{where}: {e}") from None


def _set(config: Config, key: str, value) -> None:
    section, name = key.split(".", 1)
    setattr(getattr(config, section), name, value)


def get(config: Config, key: str):
    section, name = key.split(".", 1)
    return getattr(getattr(config, section), name)


# ------------------------------------------------------------------------------------------------------ loading


def apply_overrides(config: Config, overrides: Mapping[str, object] | Iterable[tuple[str, object]],
                    where: str = "command line") -> Config:
    """Apply {"section.key": value} (or (key, value) pairs, in order) to `config`: the one override parser.

    Values may be command-line text ("3e-4") or typed (3e-4); `model.preset` sets the model's shape."""
    index = _field_index()
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for key, value in items:
        key = _current_key(key)
        if key == PRESET_KEY:
            if value not in PRESETS:
                at = "--" if where == "command line" else f"{where}: "
                raise ScalegptError(f"{at}{PRESET_KEY} must be one of {' | '.join(PRESETS)}, got {value!r}")
            for name, v in PRESETS[value].items():
                _set(config, f"model.{name}", v)
            continue
        if key not in index:
            raise _unknown(key, f"in {where}" if where != "command line" else "on the command line")
        _set(config, key, convert(index[key], value, where, from_text=where == "command line"))
    return config


def _current_key(key: str) -> str:
    """A renamed key's current spelling (`model.activation` is `model.mlp` now); any other key as given."""
    section, _, name = key.partition(".")
    return f"model.{LEGACY_MODEL_KEYS[name]}" if section == "model" and name in LEGACY_MODEL_KEYS else key


def config_from_dict(data: dict, where: str = "config", base: Config | None = None) -> Config:
    """Apply a nested {section: {key: value}} dict (a parsed TOML file) on top of `base` (default: the defaults)."""
    config = base if base is not None else Config()
    sections = {f.section for f in fields_table()}
    flat = []
    for section, values in data.items():
        if section not in sections:
            raise _unknown(section, f"in {where} (not a section: expected one of {', '.join(sorted(sections))})")
        if not isinstance(values, dict):
            raise ScalegptError(f"{where}: [{section}] must be a table of keys, got {type(values).__name__}")
        flat += [(f"{section}.{name}", value) for name, value in values.items()]
    flat.sort(key=lambda kv: kv[0] != PRESET_KEY)  # the preset first: keys beside it refine it
    return apply_overrides(config, flat, where)


def load_toml(path) -> dict:
    path = Path(path)
    if not os.path.lexists(path):
        raise ScalegptError(f"{path}: config file not found")
    return read_toml(path, "a TOML file")  # the one TOML reader: errno causes, FIFOs, any decoding error


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
        if _current_key(key) not in _field_index() and key != PRESET_KEY:
            raise _unknown(key, "on the command line")
        out.append((key, value))
        i += 1
    return out


# Keys that say the same thing two ways: one given on the command line beats the other from a file, which is then
# dropped with a note (`--train.max_steps 500` on a preset with `time_budget = "2m"` trains 500 steps). Both on the
# command line: the time budget runs and says that it ignores max_steps. (key, its rival, the rival's "off" value)
RIVAL_KEYS = [("train.max_steps", "train.time_budget", "")]


def load_config(path=None, overrides: Mapping[str, object] | Iterable[tuple[str, object]] = (),
                notes: list[str] | None = None) -> Config:
    """The defaults, then the TOML file at `path` (if any; a bare preset name like "shakespeare-char" names one of
    the configs shipped with scalegpt), then the overrides; validated. A note for each value an override displaced
    (RIVAL_KEYS) is appended to `notes`."""
    config = Config()
    if path is not None:
        path = resolve_config_path(path)
        config = config_from_dict(load_toml(path), str(path), config)
    overrides = list(overrides.items() if isinstance(overrides, Mapping) else overrides)
    config = apply_overrides(config, overrides)
    _settle_rivals(config, {_current_key(k): v for k, v in overrides}, path, notes)
    validate(config)
    return config


def _settle_rivals(config: Config, given: dict, path, notes: list[str] | None) -> None:
    """An override beats its rival from the file or the defaults (RIVAL_KEYS)."""
    for key, rival, off in RIVAL_KEYS:
        if key not in given:
            continue
        if rival not in given and get(config, rival) != off:
            note = (f"--{key} {given[key]} given: {rival} = {get(config, rival)!r} from {path or 'the defaults'} "
                    f"is dropped")
            _set(config, rival, off)
            if notes is not None:
                notes.append(note)


def shipped_configs() -> dict[str, Path]:
    """{name: path} of the TOML presets installed with the package (scalegpt/configs/*.toml)."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return {p.stem: p for p in sorted(root.glob("*.toml"))}


def resolve_config_path(path) -> Path:
    """A path as given when it exists; else a shipped preset by name (`shakespeare-char` or `configs/X.toml`)."""
    p = Path(path)
    if p.exists():
        return p
    shipped = shipped_configs()
    name = p.stem if p.suffix == ".toml" else p.name
    if name in shipped and (p.parent == Path(".") or p.parent.name == "configs"):
        return shipped[name]
    return p  # load_toml names the missing file


def validate(config: Config) -> None:
    """Checks across fields, raised before anything is built (each field's own type and range: sections.RANGES)."""
    if config.train.seq_len > config.model.block_size:
        raise ScalegptError(f"train.seq_len ({config.train.seq_len}) is larger than the model's block_size "
                            f"({config.model.block_size}); lower train.seq_len or raise model.block_size")
    # Each section's dataclass checks itself when constructed; field-by-field overrides set attributes after that.
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        type(value)(**dataclasses.asdict(value))


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
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, list)]
        lines.append("")
        for k, tables in ((k, v) for k, v in values.items() if isinstance(v, list)):  # [[data.mix]]; [] = absent
            for table in tables:
                lines += [f"[[{section}.{k}]]", *(f"{name} = {_toml_value(v)}" for name, v in table.items()), ""]
    return "\n".join(lines)


def help_text() -> str:
    """Every field as `--section.key TYPE (default X)  doc`, grouped by section, for `scalegpt train --help`."""
    lines, current = [], None
    for f in fields_table():
        if f.section != current:
            current = f.section
            lines.append(f"[{current}]")
        choices = CHOICES.get(f.key)
        kind = "|".join(choices) if choices else getattr(f.type, "__name__", str(f.type))
        default = _toml_value(f.default) if not isinstance(f.default, list) else "none"
        if isinstance(f.default, list):  # an array of tables; on the command line DIR:WEIGHT,... (sections.parse_mix)
            kind = "DIR:WEIGHT,DIR:WEIGHT"
        lines.append(f"  --{f.key} {kind} (default {default})  {f.doc}")
        if f.key == "model.n_layer":
            lines.append(f"  --{PRESET_KEY} {'|'.join(PRESETS)}  a named shape; keys given beside it win")
    return "\n".join(lines)
