"""Checkpoints on disk: directories of safetensors weights + JSON config, written atomically, never pickles.

A model directory (what `save_model_dir` writes and `scalegpt export` starts from):
    model.safetensors   the unwrapped module's weights (the tied lm_head stored once, as transformer.wte.weight)
    config.json         {"format": "scalegpt", "model": GPTConfig fields, "tokenizer": tokenizer spec}
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from scalegpt._fs import MISSING, path_problem, read_json_object, write_dir_atomically
from scalegpt.errors import ScalegptError
from scalegpt.finite import all_finite, first_nonfinite
from scalegpt.model import GPT, GPTConfig, unwrap
from scalegpt.resources import check_model
from scalegpt.tokenizer import check_same_tokenizer

FORMAT = "scalegpt"
TIED_KEY = "lm_head.weight"  # shares storage with transformer.wte.weight; saved once


def clean_state_dict(state: dict) -> dict:
    """Strip wrapper prefixes (torch.compile's `_orig_mod.`, activation checkpointing's `_checkpoint_wrapped_module.`,
    DDP's `module.`) so names are always the model's own."""
    out = {}
    for k, v in state.items():
        for prefix in ("_orig_mod.", "_checkpoint_wrapped_module.", "module."):  # before "module.", its suffix
            k = k.replace(prefix, "")
        out[k] = v
    return out


def save_safetensors(state: dict, path: Path, metadata: dict) -> None:
    """safetensors' save_file, with the file mode every other file gets (save_file creates it 0600, whatever the
    umask: a model shared through a group-readable folder would be unreadable to the group)."""
    import os

    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_model_files(model, directory: Path, tokenizer_spec: dict | None) -> None:
    """Write model.safetensors and config.json into an existing directory (no atomicity here)."""
    state = clean_state_dict(model.state_dict())
    if model.config.tie_embeddings:
        state.pop(TIED_KEY, None)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_safetensors(state, Path(directory) / "model.safetensors", {"format": FORMAT})
    config = {"format": FORMAT, "model": model.config.to_dict(), "tokenizer": tokenizer_spec}
    (Path(directory) / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def save_model_dir(model, directory, tokenizer_spec: dict | None = None) -> None:
    """Atomically write a model directory (replacing an existing one only once the new one is complete)."""
    model = unwrap(model)
    write_dir_atomically(Path(directory), lambda tmp: write_model_files(model, tmp, tokenizer_spec))


def read_config(directory) -> dict:
    return read_json_object(Path(directory) / "config.json", f"is {directory} a checkpoint directory?")


def is_model_dir(directory) -> bool:
    d = Path(directory)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        return False
    try:
        return read_config(d).get("format") == FORMAT
    except ScalegptError:
        return False


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory as given, or a run directory's latest checkpoint (checkpoints/step_*)."""
    p = Path(path)
    if is_model_dir(p):
        return p
    ckpts = list((p / "checkpoints").glob("step_*")) if (p / "checkpoints").is_dir() else []
    # By step number, not by name: "step_9" is older than "step_10" even when the numbers are not zero-padded.
    ckpts = sorted((c for c in ckpts if is_model_dir(c)), key=lambda c: (step_number(c), c.name))
    if ckpts:
        return ckpts[-1]
    for broken in ([p] if (p / "config.json").is_file() else []) + sorted((p / "checkpoints").glob("step_*"))[::-1]:
        read_config(broken)  # a checkpoint whose config.json is unreadable: name the file and the reason
    why = path_problem(p, "dir")  # the true cause: a symlink loop or a denied folder is not "missing"
    if why is not None and "(a regular file)" not in why:  # a plain file gets the explanation below
        raise ScalegptError(f"{p}: {'no such checkpoint or run directory' if why == MISSING else why}")
    raise ScalegptError(f"{p}: neither a checkpoint directory (config.json + model.safetensors) "
                        "nor a run directory with checkpoints/step_*")


def step_number(path: Path) -> int:
    suffix = path.name[len("step_"):]
    return int(suffix) if suffix.isdigit() else -1


def load_model_dir(directory, device="cpu"):
    """(model, tokenizer_spec) from a scalegpt model directory; weights via safetensors only."""
    directory = Path(directory)
    config = read_config(directory)
    if config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise ScalegptError(f"{directory / 'config.json'}: not a scalegpt checkpoint config (expected \"format\": \"scalegpt\")")
    model_config = GPTConfig.from_dict(config["model"], where=str(directory / "config.json"))
    spec = config.get("tokenizer")
    if spec is not None and not isinstance(spec, dict):
        raise ScalegptError(f"{directory / 'config.json'}: 'tokenizer' must be an object, got {spec!r:.40}")
    if spec is not None and spec.get("vocab_size") not in (None, model_config.vocab_size):
        raise ScalegptError(
            f"{directory}: model vocab_size {model_config.vocab_size} does not match its tokenizer's "
            f"vocab_size {spec.get('vocab_size')} ({spec.get('kind')})"
        )
    check_model(model_config, device, f"{directory / 'config.json'}: cannot allocate the model it describes")
    try:
        with torch.device("meta"):
            model = GPT(model_config)
        model = model.to_empty(device=device)
    except (RuntimeError, MemoryError) as e:  # a config.json edited to an impossible size
        raise ScalegptError(f"{directory / 'config.json'}: cannot allocate the model it describes "
                            f"({str(e).splitlines()[0][:120]})") from None
    load_weights(model, directory)
    model.tie_weights()  # to_empty breaks the tie; restore it
    return model, spec


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """safetensors weights into `model` in place (the tie between wte and lm_head kept)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / "model.safetensors"
    try:
        state = clean_state_dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError) as e:
        raise ScalegptError(f"{path}: cannot read weights ({e})") from None
    refuse_nonfinite(state, Path(directory), "weights")
    if unwrap(model).config.tie_embeddings:
        state[TIED_KEY] = state.get("transformer.wte.weight")
    load_state_checked(model, state, path)


def refuse_nonfinite(state: dict, directory: Path, what: str) -> None:
    """One line naming the checkpoint when a tensor of `state` holds NaN or inf: such a model samples garbage,
    evaluates to NaN and would poison a resumed run, so no command loads it."""
    if bool(all_finite([t for t in state.values() if t.is_floating_point() and t.numel()])):
        return
    bad = first_nonfinite(state)
    if bad is not None:
        raise ScalegptError(f"{directory}: non-finite {what} (NaN or inf in {bad}); this checkpoint cannot be used, "
                            "take an earlier one")


def load_state_checked(model, state: dict, source) -> None:
    """load_state_dict with one clear line when names or shapes differ."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state or state[k] is None)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise ScalegptError(f"{source}: weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ScalegptError(f"{source}: {k} has shape {tuple(state[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(state)


def check_compatible(directory: Path, model_config: dict, tokenizer_spec: dict, data_dir: str) -> None:
    """A clear line when a checkpoint was trained with another model shape or another tokenizer than this run."""
    saved = read_config(directory)
    if saved.get("tokenizer") is not None:  # first: another tokenizer also shows up as another vocab_size below
        check_same_tokenizer(saved["tokenizer"], tokenizer_spec, f"checkpoint {directory}", f"data {data_dir}")
    saved_model = saved.get("model") or {}
    # a hand-edited value gets its own message; a checkpoint from before a [model] field existed has that field's
    # (GPT-2) default, and old key names map
    saved_model = GPTConfig.from_dict(saved_model, where=str(directory / "config.json")).to_dict()
    differ = [f"{k}: checkpoint {saved_model.get(k)!r}, config {v!r}" for k, v in model_config.items()
              if k != "dropout" and saved_model.get(k) != v]
    if differ:
        raise ScalegptError(f"{directory}: checkpoint has another model shape than the config ({'; '.join(differ)})")
