"""Checkpoints on disk: directories of safetensors weights + JSON config, written atomically, never pickles.

A model directory (what `GPT.save_pretrained` writes and `scalegpt export` starts from):
    model.safetensors   the unwrapped module's weights (the tied lm_head stored once, as transformer.wte.weight)
    config.json         {"format": "scalegpt", "model": GPTConfig fields, "tokenizer": tokenizer spec}
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch

from scalegpt.errors import ScalegptError

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


def write_dir_atomically(final: Path, write_into) -> None:
    """Call write_into(tmp_dir), then rename tmp_dir to `final`: a crash midway never leaves `final` half-written.

    An existing `final` is replaced only after the new directory is complete on disk."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:
            raise ScalegptError(_write_error(final, e)) from None
        raise
    try:
        write_into(tmp)
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            if old is not None:  # put the previous version back rather than leave no `final` at all
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(final.parent)
    except BaseException as e:
        # Diagnose before rmtree frees the space; a ScalegptError from write_into is already the clear message.
        why = _write_error(final, e) if isinstance(e, Exception) and not isinstance(e, ScalegptError) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if why is not None:
            raise ScalegptError(why) from None
        raise


# errno values that mean "this disk cannot take the write". A bare "[Errno 28]" buried in a traceback is easy to
# misread as a bug in the trainer, and the writers report it differently: Python raises OSError, safetensors a
# SafetensorError naming "(os error 28)", torch.save a RuntimeError with a strerror or only "unexpected pos".
_WRITE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied (read-only directory?)",
    errno.EPERM: "permission denied (read-only directory?)",
}
_LOW_SPACE_BYTES = 1 << 20


def _write_error(final: Path, e: Exception) -> str | None:
    """A one-line message when `e` means the disk refused the write, else None (the original error is re-raised)."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        text = str(e)
        m = re.search(r"os error (\d+)", text)
        if m:
            code = int(m.group(1))
        else:
            code = next((c for c in _WRITE_ERRNOS if os.strerror(c) in text), None)
    what = _WRITE_ERRNOS.get(code)
    if what is None and not isinstance(e, OSError):
        try:
            st = os.statvfs(final.parent)
            if st.f_bavail * st.f_frsize < _LOW_SPACE_BYTES:
                what = "disk full"
        except OSError:
            pass
    if what is None:
        return None
    detail = " ".join(str(e).split())
    return f"cannot write checkpoint {final}: {what} ({detail}); any previous checkpoint is untouched"


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every filesystem allows fsync on a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_model_files(model, directory: Path, tokenizer_spec: dict | None) -> None:
    """Write model.safetensors and config.json into an existing directory (no atomicity here)."""
    from safetensors.torch import save_file

    state = clean_state_dict(model.state_dict())
    state.pop(TIED_KEY, None)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(state, str(Path(directory) / "model.safetensors"), metadata={"format": FORMAT})
    config = {"format": FORMAT, "model": model.config.to_dict(), "tokenizer": tokenizer_spec}
    (Path(directory) / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def save_model_dir(model, directory, tokenizer_spec: dict | None = None) -> None:
    """Atomically write a model directory (replacing an existing one only once the new one is complete)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    write_dir_atomically(Path(directory), lambda tmp: write_model_files(model, tmp, tokenizer_spec))


def read_json_object(path, missing_hint: str) -> dict:
    """A JSON file holding an object, or one clear error: not found (with `missing_hint`), not JSON, not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScalegptError(f"{path}: not found ({missing_hint})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScalegptError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ScalegptError(f"{path}: expected a JSON object")
    return data


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
    ckpts = sorted((c for c in ckpts if is_model_dir(c)), key=lambda c: (_step_number(c), c.name))
    if ckpts:
        return ckpts[-1]
    if not p.exists():
        raise ScalegptError(f"{p}: no such checkpoint or run directory")
    raise ScalegptError(f"{p}: neither a checkpoint directory (config.json + model.safetensors) "
                        "nor a run directory with checkpoints/step_*")


def _step_number(path: Path) -> int:
    suffix = path.name[len("step_"):]
    return int(suffix) if suffix.isdigit() else -1


def load_model_dir(directory, device="cpu"):
    """(model, tokenizer_spec) from a scalegpt model directory; weights via safetensors only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from scalegpt.model import GPT, GPTConfig

    directory = Path(directory)
    config = read_config(directory)
    if config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise ScalegptError(f"{directory / 'config.json'}: not a scalegpt checkpoint config (expected \"format\": \"scalegpt\")")
    model_config = GPTConfig.from_dict(config["model"])
    spec = config.get("tokenizer")
    if spec is not None and spec.get("vocab_size") not in (None, model_config.vocab_size):
        raise ScalegptError(
            f"{directory}: model vocab_size {model_config.vocab_size} does not match its tokenizer's "
            f"vocab_size {spec.get('vocab_size')} ({spec.get('kind')})"
        )
    try:
        state = load_file(str(directory / "model.safetensors"), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ScalegptError(f"{directory / 'model.safetensors'}: cannot read weights ({e})") from None
    with torch.device("meta"):
        model = GPT(model_config)
    model = model.to_empty(device=device)
    state = clean_state_dict(state)
    state[TIED_KEY] = state.get("transformer.wte.weight")
    load_state_checked(model, state, directory / "model.safetensors")
    model.transformer.wte.weight = model.lm_head.weight  # to_empty breaks the tie; restore it
    return model, spec


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
