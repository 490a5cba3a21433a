"""The prompt-set registry: built-in benchmark sets shipped as package data, and user files."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from orthoguard.errors import DataError
from orthoguard.prompts import (HARMBENCH_CONTEXT_SEPARATOR, PROMPT_SETS, PromptRecord, asset_path, behavior_of,
                                load_prompt_set, prompt_set_name, register_prompt_set)

EXPECTED = {  # set: (prompts, harmful, categories)
    "advbench": (520, True, 0),
    "harmbench": (240, True, 6),
    "jailbreakbench": (100, True, 10),
    "strongreject": (313, True, 6),
    "strongreject-small": (60, True, 6),
    "xstest-safe": (250, False, 10),
    "xstest-unsafe": (200, True, 8),
    "mtbench": (80, False, 8),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_sets_load_whole_with_unique_ids(name):
    records = load_prompt_set(name)
    count, harmful, categories = EXPECTED[name]
    assert len(records) == count
    assert len({r.id for r in records}) == count
    assert all(r.set == name and r.harmful is harmful and r.prompt.strip() for r in records)
    assert len({r.category for r in records if r.category is not None}) == categories


def test_registry_lists_exactly_the_builtin_sets():
    assert set(EXPECTED) <= set(PROMPT_SETS)
    assert "harmfulqa" not in PROMPT_SETS  # the pipeline owns HarmfulQA's held-out split


def test_harmbench_keeps_standard_and_contextual_with_their_context():
    records = load_prompt_set("harmbench")
    contextual = [r for r in records if r.context is not None]
    assert len(contextual) == 81 and len(records) - len(contextual) == 159
    example = next(r for r in contextual if r.id == "ddos_code_obfuscation_tools_1")
    assert example.prompt == f"{example.context}{HARMBENCH_CONTEXT_SEPARATOR}{behavior_of(example.prompt, example.context)}"
    assert behavior_of(example.prompt, example.context).startswith("Intelligently obfuscate this DDoS code")
    assert all(r.category != "copyright" for r in records)


def test_xstest_splits_safe_from_unsafe_and_strongreject_small_pairs_with_the_full_set():
    safe, unsafe = load_prompt_set("xstest-safe"), load_prompt_set("xstest-unsafe")
    assert not {r.id for r in safe} & {r.id for r in unsafe}
    assert all(r.category.startswith("contrast_") for r in unsafe)
    full = {r.id: r.prompt for r in load_prompt_set("strongreject")}
    assert all(full[r.id] == r.prompt for r in load_prompt_set("strongreject-small"))


def test_limit_and_seeded_shuffle_are_deterministic():
    first = load_prompt_set("jailbreakbench", limit=5)
    assert [r.id for r in first] == [f"jbb-{i}" for i in range(5)]
    shuffled = load_prompt_set("jailbreakbench", limit=5, seed=7)
    assert shuffled == load_prompt_set("jailbreakbench", limit=5, seed=7)
    assert shuffled != first and len(shuffled) == 5
    with pytest.raises(DataError, match="limit"):
        load_prompt_set("advbench", limit=0)


@pytest.mark.parametrize("folder, has_license", [("advbench", True), ("harmbench", True), ("jailbreakbench", True),
                                                  ("strongreject", False), ("xstest", True), ("mtbench", True)])
def test_assets_are_unchanged_copies_with_licence_and_source(folder, has_license):
    source = asset_path(folder, "SOURCE.md").read_text(encoding="utf-8")
    assert "copied unchanged into orthoguard" in source
    assert asset_path(folder, "LICENSE").is_file() == has_license
    recorded = set(re.findall(r"\b[0-9a-f]{64}\b", source))
    data_files = [p for p in asset_path(folder).iterdir() if p.suffix in {".csv", ".jsonl"}]
    assert data_files
    for path in data_files:  # byte-identical to the upstream files the source note fingerprints
        assert hashlib.sha256(path.read_bytes()).hexdigest() in recorded, path.name


def test_user_files_in_every_format_with_column_aliases(tmp_path):
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("id,goal,category,harmful\na1,Do harm,weapons,true\na2,Bake bread,cooking,false\n")
    records = load_prompt_set(csv_path)
    assert records == [PromptRecord("mine", "a1", "Do harm", "weapons", True),
                       PromptRecord("mine", "a2", "Bake bread", "cooking", False)]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(json.dumps({"question": "What is 2+2?", "harmful": False}) + "\n" + json.dumps({"question": "x"}) + "\n")
    assert [(r.id, r.prompt, r.harmful) for r in load_prompt_set(jsonl)] == [("0", "What is 2+2?", False), ("1", "x", True)]
    js = tmp_path / "b.json"
    js.write_text(json.dumps([{"Behavior": "Explain it", "context": "Some text", "id": 3}]))
    (record,) = load_prompt_set(str(js))
    assert record.id == "3" and record.context == "Some text"
    assert record.prompt == f"Some text{HARMBENCH_CONTEXT_SEPARATOR}Explain it"
    assert prompt_set_name(js) == "b" and prompt_set_name("advbench") == "advbench"


@pytest.mark.parametrize("content, suffix, message", [
    ("text,category\nhello,x\n", ".csv", r"no prompt column \(expected one of: prompt, goal"),
    ("prompt\nhello\n\n", ".csv", None),
    ("prompt,harmful\nhello,perhaps\n", ".csv", r"row 0: column 'harmful' must be true/false"),
    ("id,prompt\n1,a\n1,b\n", ".csv", r"duplicate id '1'"),
    ('{"prompt": ""}\n', ".jsonl", r"row 0: column 'prompt' is missing or empty"),
    ('{"prompts": []}', ".json", r"expected a JSON list of objects"),
    ("prompt\nhello\n", ".txt", r"unsupported prompt file type '.txt'"),
])
def test_bad_user_files_are_one_line_errors_naming_file_and_column(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    if message is None:
        assert len(load_prompt_set(path)) == 1
        return
    with pytest.raises(DataError, match=message) as err:
        load_prompt_set(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_set_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match=r"unknown prompt set 'harmfulqa' \(known: advbench, "):
        load_prompt_set("harmfulqa")
    with pytest.raises(DataError, match="prompt file not found: .*missing.csv"):
        load_prompt_set(tmp_path / "missing.csv")


def test_register_prompt_set_adds_a_set_and_refuses_a_second_owner():
    @register_prompt_set("tiny-test-set")
    def tiny():
        return [PromptRecord("tiny-test-set", "t0", "hello", harmful=False)]

    try:
        assert load_prompt_set("tiny-test-set")[0].prompt == "hello"
        with pytest.raises(ValueError, match="already registered"):
            register_prompt_set("tiny-test-set")(lambda: [])
    finally:
        PROMPT_SETS.pop("tiny-test-set")
