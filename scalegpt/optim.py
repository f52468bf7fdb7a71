"""The optimizers (AdamW alone, or Muon for the hidden matrices + AdamW for the rest) and learning-rate schedules as
pure functions of the step.

    build_optimizers(model, optim_config, device_type)   what the trainer steps: a CombinedOptimizer, and one line per
                                                         parameter group for the console
    decay_groups / build_optimizer                        AdamW over decay / no-decay groups
    lr_at(step, kind, ...)                                the schedules

A schedule is a function of the step alone, so resuming needs nothing but the step count (no scheduler object to save).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from scalegpt.errors import ScalegptError
from scalegpt.muon import (  # noqa: F401  (muon_matrices: the API)
    FullMatrixMuon, Muon, muon_matrices, ns_dtype_for, row_parts,
)


def decay_groups(model: torch.nn.Module, weight_decay: float, exclude: set[int] = frozenset()) -> list[dict]:
    """Two parameter groups: matrices and embeddings (dim >= 2) decay; biases and norm gains (dim < 2) do not.
    Parameters whose id() is in `exclude` (those another optimizer steps) are left out.

    Decaying a LayerNorm gain or a bias pulls it towards 0, which fights the normalisation rather than regularising."""
    # .parameters() yields a tied tensor once
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in exclude]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def fused_available(device_type: str) -> bool:
    """Whether torch has a fused AdamW kernel for this device (CUDA, and CPU since torch 2.4)."""
    if device_type == "cuda":
        return True
    if device_type == "cpu":
        return tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
    return device_type == "mps" and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
                    device_type: str, fused: str = "auto") -> tuple[torch.optim.AdamW, str]:
    """(AdamW over decay groups, a one-line description with the group sizes and the kernel used)."""
    groups = decay_groups(model, weight_decay)
    optimizer, kernel = _adamw(groups, lr, betas, eps, device_type, fused)
    n_decay = sum(p.numel() for p in groups[0]["params"])
    n_no_decay = sum(p.numel() for p in groups[1]["params"])
    info = (f"AdamW ({kernel}): {len(groups[0]['params'])} decayed tensors "
            f"({n_decay:,} parameters), {len(groups[1]['params'])} non-decayed tensors ({n_no_decay:,} parameters)")
    return optimizer, info


def _adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float, device_type: str,
           fused: str) -> tuple[torch.optim.AdamW, str]:
    if fused == "auto":
        use_fused = fused_available(device_type)
    else:
        use_fused = fused == "true"
        if use_fused and not fused_available(device_type):
            raise ScalegptError(f"optim.fused = true, but torch {torch.__version__} has no fused AdamW for {device_type}")
    # fused=True steps every tensor in one kernel; on CPU it stepped the 0.8M-parameter shakespeare-char model
    # 4x faster than the default (0.44 vs 1.76 ms).
    kwargs = {"fused": True} if use_fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs), "fused" if use_fused else "foreach"


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------------------------------------------ Muon


class CombinedOptimizer:
    """One or more torch optimizers stepping disjoint parameters of one model, seen by the trainer, the GradScaler,
    the guard and checkpoints as a single optimizer.

    parts      {"adamw": torch.optim.AdamW, "muon": scalegpt.muon.Muon}, stepped in that order
    peak_lr    each part's peak learning rate; set_lr puts every part on the same schedule, each at its own peak

    state_dict() has torch's own format, as if one optimizer held all the groups (parameters numbered across the
    parts in param_groups order), so an AdamW-only state is exactly what torch.optim.AdamW writes: checkpoints from
    before Muon existed load unchanged, and the FSDP loader maps its ids to names as for any optimizer. Each group
    carries a "name"; loading a state whose group names differ (optim.name changed) is refused."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer], peak_lr: dict[str, float]):
        self.parts, self.peak_lr = parts, peak_lr

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.parts.values())

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.parts.values() for g in o.param_groups]

    @property
    def state(self) -> dict:
        """Per-parameter state of every part (parameter -> its state dict), as torch.optim.Optimizer.state."""
        return {p: s for o in self.parts.values() for p, s in o.state.items()}

    def step(self) -> None:
        for optimizer in self.parts.values():
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.parts.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def set_lr(self, lr_for_peak: Callable[[float], float]) -> None:
        """Each part's groups get lr_for_peak(that part's peak lr): the schedule of the step, scaled per part."""
        for name, optimizer in self.parts.items():
            set_lr(optimizer, lr_for_peak(self.peak_lr[name]))

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for optimizer in self.parts.values():
            sd = optimizer.state_dict()
            state.update({offset + i: s for i, s in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state: dict) -> None:
        groups = state["param_groups"]
        saved = [g.get("name") for g in groups]
        mine = [g.get("name") for g in self.param_groups]
        if saved != mine:
            raise ValueError(f"the checkpoint's optimizer groups are {saved}, this run's are {mine} "
                             "(was optim.name changed?)")
        start, offset = 0, 0
        for optimizer in self.parts.values():
            n = len(optimizer.param_groups)
            own = groups[start:start + n]
            ids = [i for g in own for i in g["params"]]
            optimizer.load_state_dict({
                "state": {i - offset: state["state"][i] for i in ids if i in state["state"]},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in own]})
            start, offset = start + n, offset + len(ids)


def _group_line(kind: str, group: dict) -> str:
    n = sum(p.numel() for p in group["params"])
    return (f"optimizer group {group['name']}: {kind}, {len(group['params'])} tensors, {n:,} parameters, "
            f"lr {group['lr']:g}, weight decay {group['weight_decay']:g}")


def build_optimizers(model: nn.Module, optim, device_type: str) -> tuple[CombinedOptimizer, list[str]]:
    """(the optimizer for `optim.name`, one console line per parameter group: optimizer, tensors, parameters, lr,
    decay). `optim` is the [optim] config section; `model` the unwrapped (maybe FSDP-sharded) GPT.

    muon: scalegpt.muon.Muon (torch's Muon per logical matrix: q, k, v and SwiGLU's gate, up apart) over
    muon_matrices(model) at optim.muon_lr, AdamW over everything else at optim.lr.
    Under DDP, Muon steps the all-reduced full gradients as in one process. Under FSDP2 the matrices are DTensors
    sharded by rows: FullMatrixMuon gathers each one, so a rank's shard is never orthogonalised on its own
    (tests/test_distributed.py checks 2-rank FSDP against one process)."""
    betas = (optim.beta1, optim.beta2)
    matrices = muon_matrices(model) if optim.name == "muon" else []
    adamw, kernel = _adamw(decay_groups(model, optim.weight_decay, {id(p) for p in matrices}), optim.lr, betas,
                           optim.eps, device_type, optim.fused)
    parts, peaks = {"adamw": adamw}, {"adamw": optim.lr}
    lines = [_group_line(f"AdamW ({kernel})", g) for g in adamw.param_groups]
    if matrices:
        sharded = any(hasattr(p, "full_tensor") for p in matrices)  # FSDP2 DTensors
        muon = (FullMatrixMuon if sharded else Muon)(
            [{"params": matrices, "name": "muon"}], parts=row_parts(model), ns_dtype=ns_dtype_for(device_type),
            lr=optim.muon_lr, weight_decay=optim.muon_weight_decay, momentum=optim.muon_momentum, nesterov=True,
            adjust_lr_fn=optim.muon_adjust_lr)
        parts["muon"], peaks["muon"] = muon, optim.muon_lr
        lines.append(_group_line(f"Muon (momentum {optim.muon_momentum:g}, Nesterov, adjust_lr {optim.muon_adjust_lr}, "
                                 f"Newton-Schulz in {str(muon.ns_dtype).removeprefix('torch.')}"
                                 f"{', full matrices gathered from the FSDP shards' if sharded else ''})",
                                 muon.param_groups[0]))
    return CombinedOptimizer(parts, peaks), lines


# ------------------------------------------------------------------------------------------------------ schedules


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup: step 0 gets 1/warmup_steps of the peak, step warmup_steps-1 the full peak."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Warmup, then half a cosine from max_lr down to min_lr at decay_steps, then min_lr."""
    if step < warmup_steps:
        return max_lr * warmup_factor(step, warmup_steps)
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def constant_lr(step: int, max_lr: float, warmup_steps: int) -> float:
    """Warmup, then max_lr for ever."""
    return max_lr * warmup_factor(step, warmup_steps)


def wsd_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int,
           decay_fraction: float) -> float:
    """Warmup-stable-decay: warmup, a flat max_lr, then a linear cooldown to min_lr over the final `decay_fraction`
    of decay_steps (the stable phase can be extended and cooled down from any point)."""
    if step < warmup_steps:
        return max_lr * warmup_factor(step, warmup_steps)
    cooldown = max(1, round(decay_steps * decay_fraction))
    start = max(warmup_steps, decay_steps - cooldown)
    if step < start:
        return max_lr
    if step >= decay_steps:
        return min_lr
    return max_lr + (min_lr - max_lr) * (step - start) / max(1, decay_steps - start)


def lr_at(step: int, kind: str, max_lr: float, min_lr_ratio: float, warmup_steps: int, decay_steps: int,
          wsd_decay_fraction: float = 0.2) -> float:
    """The learning rate of the update made at 0-based `step` for a named schedule."""
    min_lr = max_lr * min_lr_ratio
    if kind == "cosine":
        return cosine_lr(step, max_lr, min_lr, warmup_steps, decay_steps)
    if kind == "constant":
        return constant_lr(step, max_lr, warmup_steps)
    if kind == "wsd":
        return wsd_lr(step, max_lr, min_lr, warmup_steps, decay_steps, wsd_decay_fraction)
    raise ScalegptError(f"schedule.kind must be cosine | constant | wsd, got {kind!r}")
