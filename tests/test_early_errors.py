"""Bad input found before the first stage runs, as one line naming the key or file (issue: no stale or mixed
results). Each case here was a traceback, a silent default or a late failure before."""

from __future__ import annotations

import re

import pytest
import yaml

from orthoguard.cli import main
from orthoguard.config import load_config
from orthoguard.errors import ConfigError, DataError


def _write(tmp_path, cfg: dict, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "t", "output_dir": str(tmp_path / "run"), **cfg}))
    return path


@pytest.mark.parametrize("override, message", [
    ({"seed.x": 3}, "'seed' is a value (0), not a section"),
    ({"name.x.y": 3}, "'name' is a value ('t'), not a section"),
    ({"attack..x": 3}, "empty key"),
])
def test_setting_into_a_scalar_is_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(_write(tmp_path, {"seed": 0}), override)


@pytest.mark.parametrize("cfg, message", [
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"refusal": {"max_steps": -5}}, "refusal.max_steps: Value error, must be a positive number of optimizer steps"),
    ({"refusal": {"max_steps": 0}}, "refusal.max_steps"),
    ({"evaluation": {"prompt_sets": [{"name": "no-such-set"}]}}, "unknown prompt set 'no-such-set'"),
])
def test_bad_values_are_rejected_when_the_config_is_loaded(tmp_path, cfg, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, cfg))


def test_reserved_and_duplicate_prompt_set_names(tmp_path):
    (tmp_path / "harmfulqa-test.jsonl").write_text('{"prompt": "a user prompt"}\n')
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "mine.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match="stored as 'harmfulqa-test', the name of a set every run builds"):
        load_config(_write(tmp_path, {"evaluation": {"prompt_sets": [{"name": str(tmp_path / "harmfulqa-test.jsonl")}]}}))
    both = [{"name": str(tmp_path / "a" / "mine.jsonl")}, {"name": str(tmp_path / "b" / "mine.jsonl")}]
    with pytest.raises(ConfigError, match="would both be stored as 'mine': rename one"):
        load_config(_write(tmp_path, {"evaluation": {"prompt_sets": both}}))
    with pytest.raises(ConfigError, match="would both be stored as 'xstest-safe'"):
        load_config(_write(tmp_path, {"evaluation": {"prompt_sets": [{"name": "xstest-safe"}, {"name": "xstest-safe"}]}}))


def test_a_bad_prompt_file_and_an_empty_split_fail_before_any_stage(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt column"}\n')
    model = {"name": str(tiny_model_dir), "dtype": "fp32"}
    path = _write(tmp_path, {"model": model, "evaluation": {"prompt_sets": [{"name": str(bad)}]}})
    assert main(["run", str(path)]) == 2
    assert "bad.jsonl: no prompt column" in capsys.readouterr().err
    assert not (tmp_path / "run" / "stages.json").exists() and not (tmp_path / "run" / "data").exists()

    path = _write(tmp_path, {"model": model, "data": {"attack_split": "train[5:5]"}})
    assert main(["run", str(path)]) == 2
    assert "data.attack_split 'train[5:5]' selects none of the" in capsys.readouterr().err
    assert not (tmp_path / "run" / "stages.json").exists()
