"""Checkpoints on disk: safetensors weights + JSON config, written atomically, read without ever unpickling code.

    model_dir     a model directory (model.safetensors + config.json): save, load, find the latest in a run
    train_state   a training checkpoint = a model directory + train_state.pt + train_config.toml; RNG states
    sharded       FSDP's sharded state (DCP) and the one save/load path every Strategy uses
"""
from scalegpt.checkpoint.model_dir import (  # noqa: F401
    FORMAT, TIED_KEY, check_compatible, clean_state_dict, is_model_dir, load_model_dir, load_state_checked,
    load_weights, read_config, refuse_nonfinite, resolve_checkpoint, save_model_dir, step_number, write_model_files,
)
from scalegpt.checkpoint.train_state import (  # noqa: F401
    checkpoint_dir, latest_checkpoint, list_checkpoints, load_state, recorded_precision, rng_state, set_rng_state,
)
