"""Sharded state (torch.distributed.checkpoint, "DCP") and the one save/load path for training checkpoints.

    save_training(...) / load_training(...)   what the trainer's Strategy calls, at any world size, one process too
    save_dcp / load_dcp                       the model and optimizer sharded by rank, loadable at any world size
    full_model_state / load_model_state       full weights out of / into a single, DDP or FSDP model

Layout: a single process and DDP write the plain checkpoint (scalegpt.checkpoint.train_state). FSDP writes the same
files (the full weights are gathered to rank 0 for model.safetensors, so export/eval/sample need nothing new) plus
`dcp/`, the model and optimizer state sharded by rank, in place of the optimizer entry of train_state.pt.
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn as nn

from scalegpt.checkpoint import train_state
from scalegpt.checkpoint.model_dir import check_compatible, clean_state_dict, load_weights
from scalegpt.distributed import barrier, is_fsdp
from scalegpt.errors import ScalegptError
from scalegpt.model import unwrap

DCP_DIR = "dcp"  # the sharded state inside an FSDP run's step directory


def torch_optimizers(optimizer) -> list:
    """The torch optimizers inside `optimizer` (a scalegpt.optim.CombinedOptimizer holds one per part, e.g. AdamW and
    Muon), for torch.distributed.checkpoint's state-dict functions, which take a list and key the state by name."""
    return list(getattr(optimizer, "optimizers", [optimizer]))


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_training(run_dir, step: int, model: nn.Module, optimizer, state: dict, tokenizer_spec: dict | None,
                  config_toml: str, keep_last: int = 0) -> Path:
    """Collective. Writes RUN_DIR/checkpoints/step_N from `model` (the unwrapped or FSDP-sharded module), its
    `optimizer` and the trainer's other `state` (step, loader, RNG, ...: plain data). Rank 0 writes the plain files;
    under FSDP every rank first writes its shards to a staging directory, the weights are gathered for
    model.safetensors, and rank 0 moves the shards in as `dcp/` inside the checkpoint's one atomic rename."""
    rank, world = _rank_and_world()
    final = train_state.checkpoint_dir(run_dir, step)
    fsdp = is_fsdp(model)
    # Staged outside checkpoints/ (whose hidden leftovers are tidied before each save), so a crash never leaves a
    # checkpoint without its shards.
    staged = Path(run_dir) / ".dcp-staging" / final.name
    state = {**state, "optimizer": None if fsdp else optimizer.state_dict()}
    writable = model
    if fsdp:
        save_dcp(model, optimizer, staged)
        full = full_model_state(model)  # what train_state.save_checkpoint needs of a model: state_dict() and config
        writable = SimpleNamespace(state_dict=lambda: full, config=model.config)
    if world > 1:  # each rank's own RNG streams (dropout), given back per rank at the same world size
        state["rng_ranks"] = [None] * world
        dist.all_gather_object(state["rng_ranks"], state["rng"])  # this job's ranks' in-memory state, not a file
    if rank == 0:
        train_state.save_checkpoint(run_dir, step, writable, tokenizer_spec, state, config_toml, keep_last,
                                    move_in={DCP_DIR: staged} if fsdp else None)
    barrier()
    return final


def load_training(directory, model: nn.Module, optimizer, model_config: dict, tokenizer_spec: dict,
                  data_dir: str) -> dict:
    """Collective. Weights and optimizer state into `model` and `optimizer`, whatever strategy and world size saved
    them; returns the rest of the trainer state. Refuses a checkpoint of another model shape or tokenizer."""
    rank, world = _rank_and_world()
    directory = Path(directory)
    check_compatible(directory, model_config, tokenizer_spec, data_dir)
    state = train_state.load_state(directory)
    ranks = state.pop("rng_ranks", None)
    if ranks and len(ranks) == world:
        state["rng"] = ranks[rank]
    optimizer_state = state.pop("optimizer", None)
    if (directory / DCP_DIR).is_dir():
        load_dcp(model, optimizer, directory / DCP_DIR)
    elif optimizer_state is None:
        raise ScalegptError(f"{directory}: incomplete sharded checkpoint ({DCP_DIR}/ is missing); "
                            "delete it to resume from the one before")
    elif is_fsdp(model):
        from safetensors.torch import load_file

        load_model_state(model, load_file(str(directory / "model.safetensors")))
        load_optimizer_state(model, optimizer, optimizer_state)
    else:
        load_weights(model, directory)  # the single-process path: DDP wraps this same module
        try:
            optimizer.load_state_dict(optimizer_state)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise ScalegptError(f"{directory}: training state does not fit this run "
                                f"({str(e).splitlines()[0]})") from None
    return state


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
    set_optimizer_state_dict(inner, torch_optimizers(optimizer), by_name, options=StateDictOptions(full_state_dict=True))


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
    model_state, optim_state = get_state_dict(getattr(model, "_orig_mod", model), torch_optimizers(optimizer))
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
    model_state, optim_state = get_state_dict(inner, torch_optimizers(optimizer))
    for k, v in model_state.items():
        if f"model.{k}" not in saved:
            raise ScalegptError(f"{directory}: checkpoint has no weight {k} (saved from another model?)")
        if saved[f"model.{k}"] != tuple(v.shape):
            raise ScalegptError(f"{directory}: {k} has shape {saved[f'model.{k}']}, the model expects {tuple(v.shape)}")
    extra = sorted(k[6:] for k in saved if k.startswith("model.") and k[6:] not in model_state)
    if extra:
        raise ScalegptError(f"{directory}: checkpoint has weights this model lacks: {extra[:3]}")
    state = {"model": model_state, "optim": optim_state}
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.load(state, storage_reader=_safe_reader(directory), no_dist=not dist.is_initialized())
    except (RuntimeError, KeyError, CheckpointException) as e:  # the weights were checked above: the optimizer's state
        cause = next(iter(e.failures.values()), e) if isinstance(e, CheckpointException) else e
        cause = cause[0] if isinstance(cause, tuple) else cause  # DCP keeps (exception, traceback) per rank
        raise ScalegptError(f"{directory}: the optimizer state does not fit this run ("
                            f"{str(cause).strip().splitlines()[0]}); was optim.name changed?") from None
    set_state_dict(inner, torch_optimizers(optimizer), model_state_dict=state["model"], optim_state_dict=state["optim"])
