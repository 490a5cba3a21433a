"""Typed configs: unknown keys and wrong types are one-line errors; the seed's JSON keys map onto ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orthoguard.config import ExperimentConfig, load_config, seed_train_config
from orthoguard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["cpu-demo.yaml", "qwen3-seed.yaml", "qwen3-matched.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, ExperimentConfig) and cfg.attack.variants


def test_demo_compares_matched_hyperparameters():
    cfg = load_config(ROOT / "configs" / "cpu-demo.yaml")
    trainings = {v.name: cfg.attack.training_for(v) for v in cfg.attack.variants}
    assert trainings["vanilla"] == trainings["orthogonal"]


def test_seed_experiment_keeps_the_seeds_unequal_epochs():
    cfg = load_config(ROOT / "configs" / "qwen3-seed.yaml")
    epochs = {v.name: cfg.attack.training_for(v).epochs for v in cfg.attack.variants}
    assert epochs == {"vanilla": 10, "orthogonal": 3}
    assert cfg.attack.training.learning_rate == 5e-4 and cfg.attack.training.max_length == 448


def test_unknown_key_names_the_dotted_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("attack:\n  training:\n    epochz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'attack\.training\.epochz'"):
        load_config(path)


def test_wrong_type_names_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("refusal:\n  learning_rate: fast\n")
    with pytest.raises(ConfigError, match=r"refusal\.learning_rate"):
        load_config(path)


def test_unknown_variant_training_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("attack:\n  variants:\n    - {name: v, training: {epoch: 1}}\n")
    with pytest.raises(ConfigError, match="epoch"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(bad)


def test_overrides_apply_dotted_keys():
    cfg = load_config(ROOT / "configs" / "cpu-demo.yaml", {"attack.training.epochs": 1, "seed": 3})
    assert cfg.attack.training.epochs == 1 and cfg.seed == 3


@pytest.mark.parametrize("name", ["refusal_lora.json", "train_vanilla.json", "train_orthogonal.json"])
def test_seed_step_configs_map_onto_train_config(name):
    raw = json.loads((ROOT / "configs" / "seed" / name).read_text())
    train = seed_train_config(raw, name)
    assert train.epochs == raw["num_epochs"] and train.batch_size == raw["batch_size"]
    assert train.lora.r == raw["lora_r"] and train.lora.dropout == raw["lora_dropout"]
    assert train.max_length == raw["max_length"]


def test_seed_config_with_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match="unknown seed config key 'lora_rank'"):
        seed_train_config({"base_model_name": "m", "lora_rank": 8}, "x.json")


def test_experiment_loader_points_seed_configs_elsewhere():
    with pytest.raises(ConfigError, match="seed single-step config"):
        load_config(ROOT / "configs" / "seed" / "train_vanilla.json")


def test_variant_grid_expands_into_named_variants(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("attack:\n  variants: [{name: vanilla}]\n  grid: {directions: [delta_w, subspace], at: [gradient, update]}\n")
    cfg = load_config(path)
    names = [v.name for v in cfg.attack.variants]
    # every defence with both of its controls: same rank and matched
    assert names[0] == "vanilla" and len(names) == 1 + 2 * 2 * 3
    assert "subspace-update-random" in names and "delta_w-gradient" in names and "subspace-update-matched" in names
    v = next(v for v in cfg.attack.variants if v.name == "subspace-update-random")
    assert (v.mode, v.directions, v.at, v.random) == ("orthogonal", "subspace", "update", "same_rank")
    assert cfg.attack.controls_of(cfg.directions.kind)["subspace-update"] == {
        "same_rank": "subspace-update-random", "matched": "subspace-update-matched"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack:\n  grid: {directions: [nope]}\n")
    with pytest.raises(ConfigError, match="directions"):
        load_config(bad)


def test_matched_qwen3_config_gives_every_variant_the_same_budget():
    cfg = load_config(ROOT / "configs" / "qwen3-matched.yaml")
    trainings = [cfg.attack.training_for(v) for v in cfg.attack.variants]
    assert len(trainings) == 13 and all(t == trainings[0] for t in trainings) and trainings[0].epochs == 3
