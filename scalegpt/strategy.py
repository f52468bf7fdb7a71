"""How training runs across processes: the trainer's only door to parallelism.

The trainer calls these methods and nothing else for anything that changes under DDP/FSDP. `Strategy` is one process
on one device; `DistributedStrategy` (torchrun, 2+ processes) implements the same contract with scalegpt.distributed.

    setup(device)                      join the process group; returns the device this rank computes on
    wrap_model(model, precision)       DDP / FSDP wrapping (identity here); `kind` then says which was chosen
    no_sync(model)                     context for micro-steps whose gradients must not be synchronised yet
    clip_grad_norm(model, max_norm)    global gradient norm (all ranks agree), clipped in place
    reduce_mean(tensor)                mean over ranks (for logged losses and the guard's input)
    any_rank(flag)                     True on every rank when true on one (stop together, skip together)
    all_finite(model, optimizer)       weights and optimizer state free of NaN/inf on every rank (shards included)
    broadcast_object(obj)              rank 0's value on every rank
    save_checkpoint(...) / load_checkpoint(...)   one code path for every world size (scalegpt.checkpoint.sharded)
    barrier(), teardown()
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from scalegpt import distributed
from scalegpt.checkpoint.sharded import load_training, save_training
from scalegpt.config import DistConfig
from scalegpt.errors import ScalegptError
from scalegpt.finite import all_finite, state_tensors


class Strategy:
    rank = 0
    local_rank = 0
    world_size = 1
    restart_count = 0  # times torchrun's elastic agent restarted this job
    kind = "single"  # what wrap_model chose: single | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        return device

    def wrap_model(self, model: nn.Module, precision: str) -> nn.Module:
        return model

    def no_sync(self, model: nn.Module):
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def any_rank(self, flag: bool) -> bool:
        return flag

    def broadcast_object(self, obj):
        return obj

    def all_finite(self, model: nn.Module, optimizer) -> bool:
        """One fused reduction over this rank's weights and optimizer state, one host sync, then any_rank."""
        return not self.any_rank(not bool(all_finite(state_tensors(model, optimizer))))

    def barrier(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def save_checkpoint(self, run_dir, step: int, model: nn.Module, optimizer, state: dict,
                        tokenizer_spec: dict | None, config_toml: str, keep_last: int = 0) -> Path:
        """Write RUN_DIR/checkpoints/step_N (collective); `model` is the unwrapped (or FSDP-sharded) module."""
        return save_training(run_dir, step, model, optimizer, state, tokenizer_spec, config_toml, keep_last)

    def load_checkpoint(self, directory, model: nn.Module, optimizer, model_config: dict, tokenizer_spec: dict,
                        data_dir: str) -> dict:
        """Weights and optimizer state in place; returns the rest of the trainer state."""
        return load_training(directory, model, optimizer, model_config, tokenizer_spec, data_dir)


class DistributedStrategy(Strategy):
    """The Strategy for torchrun jobs of 2+ processes: DDP or FSDP2 over NCCL (CUDA) or gloo (CPU)."""

    def __init__(self, config: DistConfig):
        self.config = config
        self.info = distributed.init_distributed(config)
        self.rank, self.local_rank, self.world_size = self.info.rank, self.info.local_rank, self.info.world_size
        self.restart_count = self.info.restart_count
        self.kind = None

    def setup(self, device: torch.device) -> torch.device:
        if device.type == "mps":
            raise ScalegptError("torch.distributed cannot train on Apple MPS; use --device cpu or a single process")
        # Each rank computes on its own GPU (cuda:LOCAL_RANK) whatever index was asked for; CPU tensors go over gloo.
        self.info.device = self.info.device if device.type == "cuda" else device
        return self.info.device

    def wrap_model(self, model: nn.Module, precision: str) -> nn.Module:
        self.kind, reason = distributed.choose_strategy(self.config, model, self.info)
        if self.is_main:
            print(f"parallelism: {self.kind} over {self.world_size} ranks ({reason})", flush=True)
        # FSDP's mixed-precision policy follows the trainer's precision.
        return distributed.parallelize(model, self.config, self.info, precision, self.kind)

    def no_sync(self, model: nn.Module):
        return distributed.no_sync(model, is_last_micro_step=False)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return distributed.clip_grad_norm(model, max_norm)

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_mean(value)

    def any_rank(self, flag: bool) -> bool:
        return distributed.any_rank(flag)

    def broadcast_object(self, obj):
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)  # between this job's own ranks, never from disk
        return box[0]

    def barrier(self) -> None:
        distributed.barrier()

    def teardown(self) -> None:
        distributed.destroy()


def make_strategy(dist_config: DistConfig) -> Strategy:
    """One process unless torchrun started several (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return DistributedStrategy(dist_config)
    return Strategy()
