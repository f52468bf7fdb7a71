"""Multi-process training with PyTorch's own engine: torchrun + torch.distributed (DDP or FSDP2).

    init_distributed(cfg)            joins the job torchrun started (nccl for CUDA tensors, gloo for CPU ones)
    choose_strategy(cfg, model, i)   auto: ddp when weights+grads+AdamW (16 B/param) fit in half a device, else fsdp
    parallelize(model, cfg, info)    activation checkpointing per block, then DDP or FSDP2 (fully_shard blocks + root)
    no_sync / clip_grad_norm         gradient sync on the last micro-step only; one global norm every rank agrees on
    all_reduce_mean(x), any_rank(b)  reductions for logged losses and throughput, and for taking one branch

The model is never edited: everything here wraps it from outside, so `model.py` stays plain. The trainer never calls
this module: `scalegpt.strategy.DistributedStrategy` does, and sharded checkpoints live in `scalegpt.checkpoint`.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn

from scalegpt.config import CHOICES, DistConfig
from scalegpt.errors import ScalegptError

BYTES_PER_PARAM = 16  # fp32 weights 4 + grads 4 + AdamW exp_avg 4 + exp_avg_sq 4
AUTO_FIT_FRACTION = 0.5  # the other half of device memory is left for activations, buffers and fragmentation


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    restart_count: int = 0  # times torchrun's elastic agent restarted this job (TORCHELASTIC_RESTART_COUNT)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(config: DistConfig, device_arg=None) -> DistInfo:
    """Join the job torchrun started (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment).
    device_arg: 'cpu', 'cuda', a torch.device, or None/'auto' (CUDA when present). Without torchrun, or with one
    process, no process group is made and world_size is 1."""
    env = os.environ
    restarts = int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    world_size = int(env.get("WORLD_SIZE", "1"))
    name = str(device_arg or "auto")
    cuda = torch.cuda.is_available() and not name.startswith(("cpu", "mps"))
    if "RANK" not in env or world_size <= 1:
        device = torch.device("cuda" if cuda else "cpu") if name == "auto" else torch.device(name)
        return DistInfo(device=device, restart_count=restarts)
    if name.startswith(("mps", "cuda")) and not cuda:
        raise ScalegptError(f"cannot train on {name} with torch.distributed here; use --device cpu or one process")
    rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world_size)))
    device = torch.device("cpu")
    if cuda:
        gpus = torch.cuda.device_count()
        # Checked on every rank before any collective, so all of them fail together instead of waiting forever.
        if local_world > gpus:
            raise ScalegptError(f"launched {local_world} processes per node but this machine has {gpus} GPU(s); use "
                                f"torchrun --nproc_per_node {gpus} (or CUDA_VISIBLE_DEVICES= to train on the CPU)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if config.backend == "nccl" and not cuda:
        raise ScalegptError("dist.backend nccl needs CUDA devices; this run is on the CPU (use gloo or auto)")
    # With CUDA both are registered: NCCL carries the CUDA tensors, gloo the few CPU ones (object broadcasts).
    backend = "cpu:gloo,cuda:nccl" if cuda and config.backend != "gloo" else "gloo"
    timeout, kwargs = datetime.timedelta(minutes=config.timeout_minutes), {}
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # After a restart torchrun's store still holds the dead attempt's gloo/NCCL addresses under the same keys,
        # and the new ranks would dial them; a key prefix per attempt keeps the attempts apart.
        store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world_size, False, timeout=timeout)
        kwargs = {"store": dist.PrefixStore(f"scalegpt/attempt{restarts}/", store), "rank": rank,
                  "world_size": world_size}
    dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return DistInfo(rank, local_rank, world_size, device, restarts)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()  # leave together: a rank tearing down while another still talks to it can abort
        except Exception:
            pass
        dist.destroy_process_group()


def choose_strategy(config: DistConfig, model: nn.Module, info: DistInfo) -> tuple[str, str]:
    """(strategy, reason): 'single' for one process, else 'ddp' or 'fsdp' (auto: ddp when it fits comfortably)."""
    if info.world_size == 1:
        return "single", "one process"
    if config.strategy != "auto":
        return config.strategy, f"dist.strategy {config.strategy}"
    n = sum(p.numel() for p in model.parameters())
    if info.device.type == "cuda":
        have = torch.cuda.get_device_properties(info.device).total_memory
    else:  # host RAM, shared by this node's processes
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    need, gib = BYTES_PER_PARAM * n, 1 << 30
    what = f"auto: {n:,} params x {BYTES_PER_PARAM} B = {need / gib:.2f} GiB"
    if need <= AUTO_FIT_FRACTION * have:
        return "ddp", f"{what} fits in half of the {have / gib:.1f} GiB per device"
    return "fsdp", f"{what} exceeds half of the {have / gib:.1f} GiB per device: sharding over {info.world_size} ranks"


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each Transformer block in backward instead of storing its activations (memory for ~1/3 more compute).
    The wrapper's state_dict hooks drop its `_checkpoint_wrapped_module.` prefix, so saved names stay the model's."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    blocks = model.transformer.h
    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT, preserve_rng_state=True)


def _fsdp_api():
    try:
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6 kept FSDP2 under _composable
        from torch.distributed._composable.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
    return fully_shard, FSDPModule, MixedPrecisionPolicy, CPUOffloadPolicy


def is_fsdp(model: nn.Module) -> bool:
    return isinstance(getattr(model, "_orig_mod", model), _fsdp_api()[1])


def parallelize(model: nn.Module, config: DistConfig, info: DistInfo, precision: str = "fp32",
                strategy: str | None = None) -> nn.Module:
    """Activation checkpointing, then DDP or FSDP2 (which shards `model` in place), applied to a GPT already on
    info.device; returns what trains. strategy: what choose_strategy returned (chosen here when None)."""
    strategy = strategy or choose_strategy(config, model, info)[0]
    if strategy == "fsdp" and precision == "fp16":
        raise ScalegptError("dist.strategy fsdp does not support precision fp16 (GradScaler on sharded gradients); "
                            "use bf16, fp32, or dist.strategy ddp")
    if config.activation_checkpointing:
        apply_activation_checkpointing(model)
    if strategy == "single":
        return model
    if not dist.is_initialized():
        raise ScalegptError(f"dist.strategy {strategy} needs a process group: launch with torchrun")
    if strategy == "ddp":
        # gradient_as_bucket_view: grads live inside the all-reduce buckets instead of beside them (4 B/param less).
        return nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda"
                                                   else None, gradient_as_bucket_view=True)
    if strategy != "fsdp":
        raise ScalegptError(f"dist.strategy '{strategy}' is not one of: {', '.join(CHOICES['dist.strategy'])}")
    fully_shard, _, MixedPrecisionPolicy, CPUOffloadPolicy = _fsdp_api()
    kwargs = {"reshard_after_forward": config.fsdp_reshard_after_forward}
    if precision == "bf16":
        # Gathered weights and matmuls in bf16; gradients reduced in fp32 so summing over ranks loses nothing;
        # the sharded master weights and the optimizer stay fp32.
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if config.fsdp_cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=info.device.type == "cuda")
    # The root returns logits[..., :vocab_size], a view without the padded vocabulary that nothing edits in place,
    # so FSDP2's warning about in-place ops on returned views does not apply.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    with torch.no_grad():  # ranks may have initialised differently (per-rank seeds); DDP syncs this itself, FSDP not
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t, src=0)
    for block in model.transformer.h:
        fully_shard(block, **kwargs)
    # The root unit owns what no block does: wte/wpe, ln_f and lm_head. The tied wte/lm_head Parameter is therefore
    # sharded once, in the root group, and stays one Parameter.
    fully_shard(model, **kwargs)
    return model


@contextlib.contextmanager
def no_sync(model: nn.Module, is_last_micro_step: bool = False):
    """Context for one micro-step's forward+backward: gradients are reduced across ranks only on the last one."""
    inner = getattr(model, "_orig_mod", model)
    if not is_last_micro_step and is_fsdp(inner):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:  # the next (last) micro-step must reduce-scatter again
            inner.set_requires_gradient_sync(True)
    else:
        ddp = isinstance(inner, nn.parallel.DistributedDataParallel)
        with inner.no_sync() if ddp and not is_last_micro_step else contextlib.nullcontext():
            yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip by the global L2 norm of all gradients (max_norm <= 0 or inf: only measure); returns that norm as a plain
    tensor, equal on every rank. Under FSDP the grads are DTensor shards and the norm is reduced over ranks."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


_OPS = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(value, op: str = "mean"):
    """Reduce a float or a tensor over all ranks; returns the same kind. Tensors stay on their device."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    is_tensor = isinstance(value, torch.Tensor)
    t = value.detach().clone() if is_tensor else torch.tensor(float(value), dtype=torch.float64)
    dist.all_reduce(t, op=_OPS[op])
    if op == "mean":
        t = t / dist.get_world_size()
    return t if is_tensor else t.item()


all_reduce_mean = all_reduce  # op="mean" by default


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any: lets all ranks take the same branch (stop, skip, has-batch)."""
    return bool(all_reduce(1.0 if flag else 0.0, "max"))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
