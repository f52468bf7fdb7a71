"""Multi-process training with PyTorch's own engine: torchrun + torch.distributed (DDP or FSDP2).

    init_distributed(cfg)            joins the job torchrun started (nccl for CUDA tensors, gloo for CPU ones)
    choose_strategy(cfg, model, i)   auto: ddp when weights+grads+AdamW (16 B/param) fit in half a device, else fsdp
    parallelize(model, cfg, info)    activation checkpointing per block, then DDP or FSDP2 (fully_shard blocks + root)
    no_sync / clip_grad_norm         gradient sync on the last micro-step only; one global norm every rank agrees on
    all_reduce_mean(x), any_rank(b)  reductions for logged losses and throughput, and for taking one branch
    save_dcp / load_dcp              sharded checkpoints (torch.distributed.checkpoint), loadable at any world size
    DistributedStrategy              the trainer's hooks (scalegpt.strategy.Strategy) implemented with the above

The model is never edited: everything here wraps it from outside, so `model.py` stays plain.
Checkpoint layout: DDP writes exactly what a single process writes. FSDP writes the same files (the full weights are
gathered to rank 0 for model.safetensors, so export/eval/sample need nothing new) plus `dcp/`, the model and
optimizer state sharded by rank, which replaces the optimizer entry of train_state.pt.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn as nn

from scalegpt.checkpoint import clean_state_dict
from scalegpt.errors import ScalegptError
from scalegpt.strategy import Strategy

STRATEGIES = ("auto", "ddp", "fsdp")
BACKENDS = ("auto", "nccl", "gloo")
DCP_DIR = "dcp"  # the sharded state inside an FSDP run's step directory
BYTES_PER_PARAM = 16  # fp32 weights 4 + grads 4 + AdamW exp_avg 4 + exp_avg_sq 4
AUTO_FIT_FRACTION = 0.5  # the other half of device memory is left for activations, buffers and fragmentation


@dataclass
class DistConfig:
    strategy: str = "auto"  # auto | ddp | fsdp: auto picks ddp when the model fits on one device, else fsdp
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    fsdp_reshard_after_forward: bool = True  # False keeps gathered params between forward and backward (faster, more memory)
    fsdp_cpu_offload: bool = False  # parameters, gradients and optimizer state live on the CPU between uses
    activation_checkpointing: bool = False  # recompute each block's activations in backward (also single-device)
    timeout_minutes: int = 30  # collective timeout before a hung rank fails the job

    def __post_init__(self):
        validate_config(self)


def validate_config(config: DistConfig) -> None:
    if config.strategy not in STRATEGIES:
        raise ScalegptError(f"dist.strategy '{config.strategy}' is not one of: {', '.join(STRATEGIES)}")
    if config.backend not in BACKENDS:
        raise ScalegptError(f"dist.backend '{config.backend}' is not one of: {', '.join(BACKENDS)}")
    if config.timeout_minutes < 1:
        raise ScalegptError(f"dist.timeout_minutes must be >= 1, got {config.timeout_minutes}")


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
    validate_config(config)
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


def unwrap(model: nn.Module) -> nn.Module:
    """The GPT under torch.compile and DDP (an FSDP2 model is the GPT itself, its parameters sharded)."""
    return getattr(getattr(model, "_orig_mod", model), "module", getattr(model, "_orig_mod", model))


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
        raise ScalegptError(f"dist.strategy '{strategy}' is not one of: {', '.join(STRATEGIES)}")
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


def load_model_state(model: nn.Module, state: dict) -> None:
    """Load a full (unsharded, plain-name) state dict into a single, DDP or FSDP model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    state = dict(state)
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied: stored once on disk
    inner = getattr(model, "_orig_mod", model)
    if is_fsdp(inner):
        set_model_state_dict(inner, state, options=StateDictOptions(full_state_dict=True))
    else:
        unwrap(inner).load_state_dict(state)


def full_model_state(model: nn.Module) -> dict:
    """The full weights on CPU with plain names. Collective under FSDP: every rank must call it, and only rank 0
    receives the tensors (others get {}), so no rank ever holds more than one full copy."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    inner = getattr(model, "_orig_mod", model)
    if is_fsdp(inner):
        state = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {k: v.detach().cpu() for k, v in unwrap(inner).state_dict().items()}
    return clean_state_dict(state)


def load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    """Load a full optimizer state as `optimizer.state_dict()` wrote it in a single-process or DDP run.
    Into FSDP, its integer parameter ids are mapped to names through this optimizer's own parameter order (the
    param groups are built the same way at every world size), and each rank keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    inner = getattr(model, "_orig_mod", model)
    if not is_fsdp(inner):
        optimizer.load_state_dict(state)
        return
    names = {id(p): n for n, p in clean_state_dict(dict(unwrap(inner).named_parameters())).items()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved = [i for g in state["param_groups"] for i in g["params"]]
    if len(saved) != len(order):
        raise ScalegptError(f"optimizer state has {len(saved)} parameters, this model has {len(order)}")
    name = dict(zip(saved, order))
    by_name = {"state": {name[i]: s for i, s in state["state"].items()},
               "param_groups": [{**g, "params": [name[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(inner, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


class _MetadataUnpickler(pickle.Unpickler):
    """DCP stores its index (.metadata) as a pickle. Only its own dataclasses and enums, paths, torch.Size and
    dtypes may be built from it, so a tampered checkpoint cannot run code when it is opened."""

    _ALLOWED = {("collections", "OrderedDict"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
                ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}

    def find_class(self, module, name):
        ok = (module, name) in self._ALLOWED or module == "pathlib" and name.endswith("Path")
        if module == "torch.distributed.checkpoint.metadata":
            ok = isinstance(getattr(__import__(module, fromlist=[name]), name, None), type)
        elif module == "torch":
            ok = ok or isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format))
        if ok:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint's metadata")


def _safe_reader(directory: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):  # tensors themselves are read with torch.load(weights_only=True)
        def read_metadata(self, *args, **kwargs):
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(directory))


def read_dcp_metadata(directory) -> dict:
    """{key: shape} of the tensors a DCP checkpoint holds, read without trusting its pickle."""
    directory = Path(directory)
    try:
        meta = _safe_reader(directory).read_metadata()
    except FileNotFoundError:
        raise ScalegptError(f"{directory}: not a sharded (DCP) checkpoint: no .metadata file") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as e:
        raise ScalegptError(f"{directory / '.metadata'}: unreadable ({e})") from None
    return {k: tuple(v.size) for k, v in meta.state_dict_metadata.items() if hasattr(v, "size")}


def save_dcp(model: nn.Module, optimizer, directory) -> None:
    """Collective: every rank writes its shards of the model and optimizer into `directory`, atomically.
    All ranks write into a temporary sibling; after a barrier rank 0 renames it, so a crash leaves no half
    checkpoint. Across nodes, `directory` must be on a filesystem that every node sees."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.dcp-tmp"  # one name for all ranks (not pid-based)
    main = not dist.is_initialized() or dist.get_rank() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_state, optim_state = get_state_dict(getattr(model, "_orig_mod", model), optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
    barrier()
    if main:
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    barrier()


def load_dcp(model: nn.Module, optimizer, directory) -> None:
    """Collective: load a DCP checkpoint into FSDP at any world size, DDP, or a single process.
    The model's names and shapes are checked against the checkpoint first, for a one-line error."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    directory = Path(directory)
    saved = read_dcp_metadata(directory)
    inner = getattr(model, "_orig_mod", model)
    model_state, optim_state = get_state_dict(inner, optimizer)
    for k, v in model_state.items():
        if f"model.{k}" not in saved:
            raise ScalegptError(f"{directory}: checkpoint has no weight {k} (saved from another model?)")
        if saved[f"model.{k}"] != tuple(v.shape):
            raise ScalegptError(f"{directory}: {k} has shape {saved[f'model.{k}']}, the model expects {tuple(v.shape)}")
    extra = sorted(k[6:] for k in saved if k.startswith("model.") and k[6:] not in model_state)
    if extra:
        raise ScalegptError(f"{directory}: checkpoint has weights this model lacks: {extra[:3]}")
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, storage_reader=_safe_reader(directory), no_dist=not dist.is_initialized())
    set_state_dict(inner, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def save_training_checkpoint(strategy: Strategy, trainer, step: int) -> Path:
    """Collective. Rank 0 writes the plain checkpoint; under FSDP every rank first writes its shards to a staging
    directory, the weights are gathered for model.safetensors, and rank 0 moves the shards in as `dcp/`."""
    from scalegpt import train_state

    final = train_state.checkpoint_dir(trainer.run_dir, step)
    model, fsdp = trainer.raw_model, is_fsdp(trainer.raw_model)
    # Staged outside checkpoints/ (whose hidden leftovers are tidied before each save), then moved into the
    # checkpoint inside its one atomic rename: a crash never leaves a checkpoint without its shards.
    staged = Path(trainer.run_dir) / ".dcp-staging" / final.name
    if fsdp:
        save_dcp(model, trainer.optimizer, staged)
        full = full_model_state(model)  # what train_state.save_checkpoint needs of a model: state_dict() and config
        model = SimpleNamespace(state_dict=lambda: full, config=trainer.raw_model.config)
    state = trainer.state_dict()
    if strategy.world_size > 1:  # each rank's own RNG streams (dropout), given back per rank at the same world size
        state["rng_ranks"] = [None] * strategy.world_size
        dist.all_gather_object(state["rng_ranks"], state["rng"])  # this job's ranks' in-memory state, not a file
    if strategy.is_main:
        train_state.save_checkpoint(trainer.run_dir, step, model, trainer.tokenizer_spec, state,
                                    trainer.checkpoint_config_toml(), trainer.config.checkpoint.keep_last,
                                    move_in={DCP_DIR: staged} if fsdp else None)
    barrier()
    return final


def load_training_checkpoint(strategy: Strategy, trainer, directory: Path) -> dict:
    """Weights and optimizer into the trainer's model, whatever strategy and world size saved them; returns the rest
    of the trainer state (the optimizer entry removed once it is loaded here)."""
    from scalegpt import train_state
    from scalegpt.strategy import check_compatible, load_weights

    directory = Path(directory)
    check_compatible(directory, trainer.model_config.to_dict(), trainer.tokenizer_spec, trainer.config.data.dir)
    state = train_state.load_state(directory)
    ranks = state.pop("rng_ranks", None)
    if ranks and len(ranks) == strategy.world_size:
        state["rng"] = ranks[strategy.rank]
    model = trainer.raw_model
    if (directory / DCP_DIR).is_dir():
        load_dcp(model, trainer.optimizer, directory / DCP_DIR)
        state.pop("optimizer", None)
        return state
    if state.get("optimizer") is None:
        raise ScalegptError(f"{directory}: incomplete sharded checkpoint ({DCP_DIR}/ is missing); "
                            "delete it to resume from the one before")
    if not is_fsdp(model):
        load_weights(model, directory)  # the single-process path: DDP wraps this same module
        return state
    from safetensors.torch import load_file

    load_model_state(model, load_file(str(directory / "model.safetensors")))
    load_optimizer_state(model, trainer.optimizer, state.pop("optimizer"))
    return state


class DistributedStrategy(Strategy):
    """The trainer's Strategy for torchrun jobs of 2+ processes (see scalegpt.strategy for the contract)."""

    def __init__(self, config: DistConfig):
        self.config = config
        self.info = init_distributed(config)
        self.rank, self.local_rank, self.world_size = self.info.rank, self.info.local_rank, self.info.world_size
        self.restart_count = self.info.restart_count
        self.precision = "fp32"  # the trainer sets its own before wrap_model (FSDP's mixed-precision policy)
        self.kind = None

    def setup(self, device: torch.device) -> torch.device:
        if device.type == "mps":
            raise ScalegptError("torch.distributed cannot train on Apple MPS; use --device cpu or a single process")
        # Each rank computes on its own GPU (cuda:LOCAL_RANK) whatever index was asked for; CPU tensors go over gloo.
        self.info.device = self.info.device if device.type == "cuda" else device
        return self.info.device

    def wrap_model(self, model: nn.Module) -> nn.Module:
        self.kind, reason = choose_strategy(self.config, model, self.info)
        if self.is_main:
            print(f"parallelism: {self.kind} over {self.world_size} ranks ({reason})", flush=True)
        return parallelize(model, self.config, self.info, self.precision, self.kind)

    def no_sync(self, model: nn.Module):
        return no_sync(model, is_last_micro_step=False)

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)  # between this job's own ranks, never from disk
        return box[0]

    def optimizer_state_dict(self, model, optimizer):
        return None if is_fsdp(model) else optimizer.state_dict()  # FSDP: saved sharded, in dcp/

    # The module's functions are the remaining hooks as they are.
    clip_grad_norm = staticmethod(clip_grad_norm)
    reduce_mean = staticmethod(all_reduce_mean)
    barrier = staticmethod(barrier)
    teardown = staticmethod(destroy)
    save_checkpoint = save_training_checkpoint
    load_checkpoint = load_training_checkpoint
