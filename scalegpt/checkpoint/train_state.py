"""Training checkpoints: a model directory plus everything needed to continue the run exactly.

    RUN_DIR/checkpoints/step_000500/
        model.safetensors   weights (the unwrapped module's names), readable by `scalegpt sample/export --checkpoint`
        config.json         model config + tokenizer spec
        train_state.pt      optimizer, step, GradScaler, data-loader position, RNG states, guard counters, time budget
        train_config.toml   the resolved training config

`train_state.pt` holds only tensors, numbers, strings, lists and dicts, so it is read with
`torch.load(weights_only=True)`: a checkpoint from anywhere can never run code when it is loaded.
Each checkpoint directory is written under a temporary name and renamed when complete, so a crash or a full disk
mid-write leaves every earlier checkpoint as it was. `prepare_run_dir` decides what a run may do with an existing
run directory (resume, overwrite, or refuse).
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from scalegpt._fs import MISSING, path_problem, write_dir_atomically
from scalegpt.checkpoint.model_dir import is_model_dir, step_number, write_model_files
from scalegpt.config import load_toml
from scalegpt.errors import ScalegptError
from scalegpt.outputs import check_output

STATE_FILE = "train_state.pt"
CONFIG_FILE = "train_config.toml"
FORMAT_VERSION = 1


def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(run_dir) -> list[Path]:
    """Complete training checkpoints of a run, oldest first (half-written temporary directories are never listed)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if step_number(p) >= 0 and (p / STATE_FILE).is_file() and is_model_dir(p)]
    return sorted(found, key=step_number)


def latest_checkpoint(run_dir) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, inputs=()) -> Path | None:
    """Check what may happen to `run_dir`; returns the checkpoint to resume from (None: start fresh).

    An existing run directory is never touched unless --resume (continue it) or --overwrite (delete it) says so, and
    only a directory scalegpt wrote (see scalegpt.outputs) is continued or deleted."""
    if resume and overwrite:
        raise ScalegptError("--resume and --overwrite contradict each other; pass one")
    run_dir = check_output(run_dir, kind="run", inputs=inputs, overwrite=overwrite, reuse=resume)
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return None
    if not run_dir.is_dir():
        raise ScalegptError(f"--out {run_dir}: exists and is not a directory")
    if resume:
        from scalegpt.metrics import METRICS_FILE, read_metrics_file

        if os.path.lexists(run_dir / METRICS_FILE):  # a damaged log stops the resume before anything is rewritten
            read_metrics_file(run_dir / METRICS_FILE)
        latest = latest_checkpoint(run_dir)
        refuse_damaged_newer(run_dir, latest)
        return latest
    if overwrite:  # check_output has recognised it as a run directory
        shutil.rmtree(run_dir)
        return None
    raise ScalegptError(f"--out {run_dir}: run directory exists; pass --resume to continue it or --overwrite to "
                        "delete it and start again")


def refuse_damaged_newer(run_dir, latest: Path | None) -> None:
    """A step_N newer than the latest complete checkpoint that is not complete itself was damaged after it was written
    (a crash never leaves one: see save_checkpoint). Resuming would overwrite it, so stop and say so instead."""
    root = Path(run_dir) / "checkpoints"
    newest = step_number(latest) if latest is not None else -1
    for p in sorted(root.glob("step_*"), key=step_number) if root.is_dir() else []:
        if step_number(p) > newest:
            missing = [n for n in ("config.json", "model.safetensors", STATE_FILE) if not (p / n).is_file()]
            what = f"{', '.join(missing)} missing" if missing else "its config.json is not a scalegpt checkpoint's"
            raise ScalegptError(f"{p}: damaged checkpoint ({what}), newer than "
                                f"{latest.name if latest else 'any complete one'}; resuming would overwrite it. Move "
                                f"it out of {root} to resume from {latest.name if latest else 'scratch'}")


# ------------------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict:
    """Python, numpy and torch (CPU and every CUDA device) RNG states as tensors and ints only (weights_only-safe)."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ------------------------------------------------------------------------------------------------------ save / load


def save_checkpoint(run_dir, step: int, model, tokenizer_spec: dict | None, state: dict, config_toml: str,
                    keep_last: int = 0, move_in: dict[str, Path] | None = None) -> Path:
    """Atomically write RUN_DIR/checkpoints/step_XXXXXX, then delete all but the `keep_last` newest (0 = keep all).

    `model` is the unwrapped module; `state` is the trainer's state dict (optimizer, step, loader, ...); `move_in`
    names directories already written elsewhere (on the same filesystem) to move into the checkpoint."""
    final = checkpoint_dir(run_dir, step)
    state = {"format_version": FORMAT_VERSION, **state}

    def write_into(tmp: Path) -> None:
        write_model_files(model, tmp, tokenizer_spec)
        torch.save(state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(config_toml, encoding="utf-8")
        for name, staged in (move_in or {}).items():  # e.g. FSDP's sharded state: part of the same atomic rename
            os.replace(staged, tmp / name)

    _tidy(final.parent)
    write_dir_atomically(final, write_into)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            # Hide it first: a kill during rmtree then leaves a hidden leftover, never a half-deleted step_N.
            doomed = old.parent / f".{old.name}.deleting"
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def _tidy(root: Path) -> None:
    """Remove what killed writers left in checkpoints/ (one process writes per run directory, so every hidden
    `.step_*` entry is stale). The one exception: a previous version moved aside (`.old-PID`) just before a kill,
    whose step_N is now missing, is moved back rather than lost."""
    if not root.is_dir():
        return
    for leftover in root.glob(".step_*"):
        name, _, kind = leftover.name[1:].rpartition(".")
        if kind.startswith("old-") and not (root / name).exists() and is_model_dir(leftover):
            os.replace(leftover, root / name)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def recorded_precision(directory) -> str | None:
    """The precision a checkpoint was trained in (fp32 | bf16 | fp16), from its train_config.toml; None if unknown."""
    try:
        precision = load_toml(Path(directory) / CONFIG_FILE).get("train", {}).get("precision")
    except (ScalegptError, OSError):
        return None
    return precision if precision in ("fp32", "bf16", "fp16") else None


def load_state(directory) -> dict:
    """The trainer state of a checkpoint directory, read without ever unpickling code."""
    path = Path(directory) / STATE_FILE
    why = path_problem(path)
    if why is not None:
        raise ScalegptError(f"{path}: {'not found' if why == MISSING else why}; {directory} is not a training "
                            "checkpoint (a model-only directory can be sampled or exported, not resumed)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ScalegptError(f"{path}: refused to load ({str(e).splitlines()[0]}); "
                            "training state may hold only tensors and plain data") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ScalegptError(f"{path}: cannot read training state ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ScalegptError(f"{path}: unknown training-state format (expected format_version {FORMAT_VERSION})")
    return state
