"""Prompt sets for evaluation: a registry of the benchmarks shipped with orthoguard, and user files.

``load_prompt_set("strongreject-small")`` loads a built-in set; ``load_prompt_set("my_prompts.csv")`` loads a
CSV / JSON / JSONL file with a ``prompt`` column (or ``goal``, ``instruction``, ``question``, ``Behavior``,
``forbidden_prompt``) and optional ``id``, ``category``, ``harmful`` (default true) and ``context`` columns (a
context is sent before the prompt as HarmBench does: context, a blank line, ``---``, a blank line, prompt). Add a set with
``@register_prompt_set("name")`` on a function that returns ``list[PromptRecord]``.

Built-in sets (files under ``orthoguard/assets/<set>/`` with their LICENSE and SOURCE.md):

| set | prompts | harmful | category |
|---|---|---|---|
| advbench | 520 AdvBench behaviors | yes | — |
| harmbench | 240 HarmBench test behaviors: 159 standard + 81 contextual (copyright ones excluded) | yes | SemanticCategory |
| jailbreakbench | 100 JBB-Behaviors | yes | Category |
| strongreject / strongreject-small | 313 / 60 StrongREJECT forbidden prompts | yes | category |
| xstest-safe | 250 XSTest safe prompts (refusing them is over-refusal) | no | type |
| xstest-unsafe | 200 XSTest unsafe contrast prompts | yes | type |
| mtbench | 80 MT-Bench first turns | no | category |
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from orthoguard.errors import DataError
from orthoguard.io import read_json, read_jsonl
from orthoguard.registry import Registry


@dataclass(frozen=True)
class PromptRecord:
    set: str
    id: str
    prompt: str  # the text sent to the model (for contextual HarmBench behaviors: context, separator, behavior)
    category: str | None = None
    harmful: bool = True  # whether refusing is the desired behaviour
    context: str | None = None  # HarmBench's ContextString, kept apart for the judges


PromptSetLoader = Callable[[], list[PromptRecord]]
PROMPT_SETS: Registry[PromptSetLoader] = Registry("prompt set")
# the two sets every run evaluates on, built from the run's own splits: no registered set or file may take their names
HARMFUL_SET = "harmfulqa-test"  # the held-out HarmfulQA test questions
BENIGN_SET = "harmless-val"  # the held-out harmless instructions (over-refusal)
RESERVED_SET_NAMES = (HARMFUL_SET, BENIGN_SET)

PROMPT_COLUMNS = ("prompt", "goal", "instruction", "question", "Behavior", "forbidden_prompt")
# HarmBench's DirectRequest baseline joins a contextual behavior to its context this way.
HARMBENCH_CONTEXT_SEPARATOR = "\n\n---\n\n"
_TRUE, _FALSE = {"true", "1", "yes", "unsafe", "harmful"}, {"false", "0", "no", "safe", "benign"}


def register_prompt_set(name: str) -> Callable[[PromptSetLoader], PromptSetLoader]:
    """Function decorator: make ``load_prompt_set(name)`` return what the function returns."""
    return PROMPT_SETS.register(name)


def load_prompt_set(name_or_path: str | Path, limit: int | None = None, seed: int | None = None) -> list[PromptRecord]:
    """The records of a built-in set or of a user file; with ``seed``, a seeded shuffle before ``limit``."""
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of prompts, got {limit}")
    records = _load_all(str(name_or_path))
    if seed is not None:
        records = random.Random(seed).sample(records, len(records))
    return records[:limit] if limit is not None else records


def prompt_set_name(name_or_path: str | Path) -> str:
    """The set name that ``load_prompt_set`` gives its records: the name itself, or a file's stem."""
    text = str(name_or_path)
    return text if text in PROMPT_SETS else Path(text).stem


def _load_all(name_or_path: str) -> list[PromptRecord]:
    if name_or_path in PROMPT_SETS:
        return PROMPT_SETS[name_or_path]()
    path = Path(name_or_path)
    if path.is_file():
        return load_prompt_file(path)
    if path.suffix.lower() in {".csv", ".json", ".jsonl"} or len(path.parts) > 1:
        raise DataError(f"prompt file not found: {path}")
    raise DataError(f"unknown prompt set '{name_or_path}' (known: {', '.join(sorted(PROMPT_SETS))}; or a CSV/JSON/JSONL file)")


# ---------------------------------------------------------------------------------------------------------
# User files


def load_prompt_file(path: str | Path, set_name: str | None = None) -> list[PromptRecord]:
    """Records from a CSV, JSON (a list of objects) or JSONL file; ids default to the row number (from 0)."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: no prompts")
    column = next((c for c in PROMPT_COLUMNS if c in rows[0]), None)
    if column is None:
        raise DataError(f"{path}: no prompt column (expected one of: {', '.join(PROMPT_COLUMNS)})")
    name = set_name or path.stem
    records = [_user_record(row, index, column, name, f"{path} row {index}") for index, row in enumerate(rows)]
    _check_unique_ids(records, str(path))
    return records


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        rows = read_json(path)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: expected a JSON list of objects with a 'prompt' field")
        return rows
    raise DataError(f"{path}: unsupported prompt file type '{path.suffix}' (use .csv, .json or .jsonl)")


def _user_record(row: dict, index: int, column: str, set_name: str, where: str) -> PromptRecord:
    prompt = row.get(column)
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: column '{column}' is missing or empty")
    record_id, category, context = row.get("id"), row.get("category"), row.get("context")
    context = None if context in (None, "") else str(context)
    return PromptRecord(
        set=set_name,
        id=str(index) if record_id in (None, "") else str(record_id),
        prompt=with_context(prompt.strip(), context),
        category=None if category in (None, "") else str(category),
        harmful=_parse_harmful(row.get("harmful"), where),
        context=context,
    )


def with_context(behavior: str, context: str | None) -> str:
    """The model input for a behavior with an optional context, joined as HarmBench's DirectRequest does."""
    return f"{context}{HARMBENCH_CONTEXT_SEPARATOR}{behavior}" if context else behavior


def behavior_of(prompt: str, context: str | None) -> str:
    """The request without its context (what HarmBench's classifier calls the behavior): the inverse of
    ``with_context``."""
    prefix = f"{context}{HARMBENCH_CONTEXT_SEPARATOR}" if context else ""
    return prompt[len(prefix):] if prefix and prompt.startswith(prefix) else prompt


def _parse_harmful(value: object, where: str) -> bool:
    if value is None or value == "":
        return True
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise DataError(f"{where}: column 'harmful' must be true/false (or 1/0, yes/no, unsafe/safe), got {value!r}")


def _check_unique_ids(records: list[PromptRecord], where: str) -> None:
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise DataError(f"{where}: duplicate id '{record.id}' (ids must be unique within a prompt set)")
        seen.add(record.id)


# ---------------------------------------------------------------------------------------------------------
# Built-in sets


def asset_path(*parts: str) -> Path:
    # orthoguard is installed unzipped (editable or wheel), so the package files are real paths on disk.
    return Path(str(resources.files("orthoguard").joinpath("assets", *parts)))


def _csv_rows(*parts: str) -> list[dict[str, str]]:
    with asset_path(*parts).open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@register_prompt_set("advbench")
def advbench() -> list[PromptRecord]:
    rows = _csv_rows("advbench", "harmful_behaviors.csv")
    return [PromptRecord("advbench", f"advbench-{i}", row["goal"]) for i, row in enumerate(rows)]


@register_prompt_set("harmbench")
def harmbench() -> list[PromptRecord]:
    """Standard and contextual text behaviors of the test split; copyright behaviors are judged by hashing
    against the copyrighted texts in HarmBench, not by a refusal judge, so they are left out."""
    rows = _csv_rows("harmbench", "harmbench_behaviors_text_test.csv")
    return [_harmbench_record(row) for row in rows if row["FunctionalCategory"] in {"standard", "contextual"}]


def _harmbench_record(row: dict[str, str]) -> PromptRecord:
    context = row["ContextString"] or None
    prompt = with_context(row["Behavior"], context)
    return PromptRecord("harmbench", row["BehaviorID"], prompt, row["SemanticCategory"], True, context)


@register_prompt_set("jailbreakbench")
def jailbreakbench() -> list[PromptRecord]:
    rows = _csv_rows("jailbreakbench", "behaviors.csv")
    return [PromptRecord("jailbreakbench", f"jbb-{row['']}", row["Goal"], row["Category"]) for row in rows]


@register_prompt_set("strongreject")
def strongreject() -> list[PromptRecord]:
    rows = _csv_rows("strongreject", "strongreject_dataset.csv")
    return [PromptRecord("strongreject", f"strongreject-{i}", row["forbidden_prompt"], row["category"])
            for i, row in enumerate(rows)]


@register_prompt_set("strongreject-small")
def strongreject_small() -> list[PromptRecord]:
    """The 60-prompt subset; each keeps the id (and the category) of the same prompt in the full set, so the two
    sets pair up."""
    full = {record.prompt: record for record in strongreject()}
    rows = _csv_rows("strongreject", "strongreject_small_dataset.csv")
    missing = [row["forbidden_prompt"][:60] for row in rows if row["forbidden_prompt"] not in full]
    if missing:
        raise DataError(f"strongreject-small: prompt not in the full set: {missing[0]!r}")
    return [PromptRecord("strongreject-small", full[p].id, p, full[p].category)
            for p in (row["forbidden_prompt"] for row in rows)]


def _xstest(label: str) -> list[PromptRecord]:
    name = f"xstest-{label}"
    rows = [row for row in _csv_rows("xstest", "xstest_prompts.csv") if row["label"] == label]
    return [PromptRecord(name, f"xstest-{row['id']}", row["prompt"], row["type"], label == "unsafe") for row in rows]


@register_prompt_set("xstest-safe")
def xstest_safe() -> list[PromptRecord]:
    return _xstest("safe")


@register_prompt_set("xstest-unsafe")
def xstest_unsafe() -> list[PromptRecord]:
    return _xstest("unsafe")


@register_prompt_set("mtbench")
def mtbench() -> list[PromptRecord]:
    rows = [json.loads(line) for line in asset_path("mtbench", "question.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return [PromptRecord("mtbench", f"mtbench-{row['question_id']}", row["turns"][0], row["category"], False)
            for row in rows]
