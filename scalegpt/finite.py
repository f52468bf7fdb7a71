"""Are the weights and the optimizer state finite? One fused reduction, for the trainer and for every load path.

`all_finite(tensors)` takes each tensor's max |x| with one foreach kernel per (device, dtype) group and stacks them:
the max is inf when a tensor holds an inf and NaN when it holds a NaN (max propagates NaN), and unlike a sum of
squares it never overflows on large finite values. The result stays on the device (no host sync): the caller decides
when to read it, and under DDP/FSDP reduces it over ranks (a sharded DTensor is checked through its local shard, so
each rank reads only what it holds).
"""
from __future__ import annotations

import math

import torch


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor (FSDP2): this rank's shard


def state_tensors(model: torch.nn.Module, optimizer=None) -> list[torch.Tensor]:
    """The floating-point parameters and optimizer-state tensors this rank holds (each shared tensor once)."""
    seen, out = set(), []
    candidates = list(model.parameters())
    if optimizer is not None:
        candidates += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    for t in candidates:
        t = _local(t.detach())
        if t.is_floating_point() and t.numel() and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor: True when no element of any tensor is NaN or inf."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    maxima = torch._foreach_norm(tensors, math.inf)
    device = tensors[0].device
    return torch.stack([m.to(device=device, dtype=torch.float32) for m in maxima]).isfinite().all()


def first_nonfinite(named: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding a NaN or inf (for error messages; one pass, only on the failure path)."""
    for name, t in named.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None
