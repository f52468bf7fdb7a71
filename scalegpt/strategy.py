"""How training runs across processes: the default here is one process on one device.

The trainer calls only these methods for anything that changes under DDP/FSDP, so a multi-process strategy (see
scalegpt.distributed) is a subclass that overrides them; single-process behaviour never depends on torch.distributed.

    setup(device)                      join the process group; returns the device this rank computes on
    wrap_model(model)                  DDP / FSDP wrapping (identity here)
    no_sync(model)                     context for micro-steps whose gradients must not be synchronised yet
    clip_grad_norm(model, max_norm)    global gradient norm (all ranks agree), clipped in place
    reduce_mean(tensor)                mean over ranks (for logged losses and the guard's input)
    broadcast_object(obj)              rank 0's value on every rank
    optimizer_state_dict(model, opt)   the optimizer state to checkpoint
    save_checkpoint(trainer, step)     write a training checkpoint (rank 0 only here); returns its directory
    load_checkpoint(trainer, dir)      load weights into trainer.raw_model, return the saved trainer state
    barrier(), teardown()
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from scalegpt.errors import ScalegptError


class Strategy:
    rank = 0
    local_rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        return device

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def no_sync(self, model: torch.nn.Module):
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def broadcast_object(self, obj):
        return obj

    def optimizer_state_dict(self, model, optimizer) -> dict:
        return optimizer.state_dict()

    def barrier(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def save_checkpoint(self, trainer, step: int) -> Path:
        from scalegpt import train_state

        state = trainer.state_dict()
        if self.is_main:
            train_state.save_checkpoint(trainer.run_dir, step, trainer.raw_model, trainer.tokenizer_spec, state,
                                        trainer.checkpoint_config_toml(), trainer.config.checkpoint.keep_last)
        self.barrier()
        return train_state.checkpoint_dir(trainer.run_dir, step)

    def load_checkpoint(self, trainer, directory: Path) -> dict:
        from scalegpt import train_state

        check_compatible(directory, trainer.model_config.to_dict(), trainer.tokenizer_spec, trainer.config.data.dir)
        load_weights(trainer.raw_model, directory)
        return train_state.load_state(directory)


def check_compatible(directory: Path, model_config: dict, tokenizer_spec: dict, data_dir: str) -> None:
    """A clear line when a checkpoint was trained with another model shape or another tokenizer than this run."""
    from scalegpt.checkpoint import read_config
    from scalegpt.tokenizer import check_same_tokenizer

    saved = read_config(directory)
    if saved.get("tokenizer") is not None:  # first: another tokenizer also shows up as another vocab_size below
        check_same_tokenizer(saved["tokenizer"], tokenizer_spec, f"checkpoint {directory}", f"data {data_dir}")
    saved_model = saved.get("model") or {}
    differ = [f"{k}: checkpoint {saved_model.get(k)!r}, config {v!r}" for k, v in model_config.items()
              if k != "dropout" and saved_model.get(k) != v]
    if differ:
        raise ScalegptError(f"{directory}: checkpoint has another model shape than the config ({'; '.join(differ)})")


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """safetensors weights into `model` in place (the tie between wte and lm_head kept)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from scalegpt.checkpoint import TIED_KEY, clean_state_dict, load_state_checked

    path = Path(directory) / "model.safetensors"
    try:
        state = clean_state_dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError) as e:
        raise ScalegptError(f"{path}: cannot read weights ({e})") from None
    state[TIED_KEY] = state.get("transformer.wte.weight")
    load_state_checked(model, state, path)


def make_strategy(dist_config) -> Strategy:
    """One process unless torchrun started several (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        try:
            from scalegpt.distributed import DistributedStrategy
        except ImportError:
            raise ScalegptError("WORLD_SIZE > 1 (torchrun), but this scalegpt has no multi-process strategy yet; "
                                "run a single process") from None
        return DistributedStrategy(dist_config)
    return Strategy()
