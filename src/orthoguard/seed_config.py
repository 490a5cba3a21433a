"""The seed repository's flat per-step JSON configs (``base_model_name``, ``num_epochs``, ``mode`` ...), mapped onto
the typed configs of ``orthoguard.config``."""

from __future__ import annotations

from typing import Any

from orthoguard.config import TrainConfig, _validate
from orthoguard.errors import ConfigError


SEED_TRAIN_KEYS = {
    "num_epochs": "epochs",
    "learning_rate": "learning_rate",
    "batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "max_length": "max_length",
    "warmup_ratio": "warmup_ratio",
    "weight_decay": "weight_decay",
    "log_every": "log_every",
    "max_steps": "max_steps",
    "gradient_checkpointing": "gradient_checkpointing",
    "save_steps": "save_steps",
}
SEED_LORA_KEYS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target_modules"}
# keys the seed has that describe paths of its own layout; accepted and used by the single-step commands
SEED_PATH_KEYS = {"output_dir", "refusal_directions_path", "synthetic_data_path", "split", "dataset_name", "mode", "base_model_name"}


def is_seed_config(raw: dict[str, Any]) -> bool:
    return "base_model_name" in raw or "num_epochs" in raw or "lora_r" in raw


def seed_train_config(raw: dict[str, Any], source: str = "<seed config>") -> TrainConfig:
    """Map a seed step config's hyperparameters onto :class:`TrainConfig` (unknown keys are an error)."""
    known = set(SEED_TRAIN_KEYS) | set(SEED_LORA_KEYS) | SEED_PATH_KEYS
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown seed config key '{unknown[0]}' (known: {', '.join(sorted(known))})")
    train = {ours: raw[theirs] for theirs, ours in SEED_TRAIN_KEYS.items() if theirs in raw}
    lora = {ours: raw[theirs] for theirs, ours in SEED_LORA_KEYS.items() if theirs in raw}
    return _validate(TrainConfig, {**train, "lora": lora}, source)


# ---------------------------------------------------------------------------------------------------------
# Loading
