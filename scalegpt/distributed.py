"""Multi-process training with PyTorch's own engine: torchrun + torch.distributed (DDP or FSDP2).

(Being built: see issue 5. The config below is what the trainer's `[dist]` section holds.)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DistConfig:
    strategy: str = "auto"  # auto | ddp | fsdp: auto picks ddp when the model fits on one device, else fsdp
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    fsdp_reshard_after_forward: bool = True  # False keeps gathered params between forward and backward (faster, more memory)
    fsdp_cpu_offload: bool = False  # parameters, gradients and optimizer state live on the CPU between uses
    activation_checkpointing: bool = False  # recompute each block's activations in backward (also single-device)
    timeout_minutes: int = 30  # collective timeout before a hung rank fails the job
