"""The settings: typed dataclasses (`sections`) and their loading from TOML and overrides (`loading`). Torch-free."""
from scalegpt.config.loading import (  # noqa: F401
    KNOWN_ALIASES, PRESET_KEY, FieldInfo, apply_overrides, config_from_dict, fields_table, get, help_text,
    load_config, load_toml, parse_override_args, resolve_config_path, seq_len, shipped_configs, suggest, to_dict,
    to_toml, validate,
)
from scalegpt.config.sections import (  # noqa: F401
    CHOICES, LEGACY_MODEL_KEYS, MLPS, NORMS, POS_EMBS, PRESETS, CheckpointSection, Config, DataSection, DistConfig,
    EvalSection, GPTConfig, GuardConfig, LogSection, OptimSection, ScheduleSection, TrainSection, parse_duration,
    preset_config,
)
