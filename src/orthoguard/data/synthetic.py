"""Synthetic harmful answers (the seed's ``synthetic_harmful_qa.json``): ``[{"question", "harmful_answer", "source"}]``.

The seed also wrote ``prompt`` for the question and ``answer``/``response`` for the answer; both are accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orthoguard.data.samples import Sample, single_turn
from orthoguard.errors import DataError
from orthoguard.io import read_json, write_json

log = logging.getLogger(__name__)

SYNTHETIC_SOURCE = "synthetic"
QUESTION_KEYS = ("question", "prompt")
ANSWER_KEYS = ("harmful_answer", "answer", "response")


def load_synthetic(path: str | Path) -> list[Sample]:
    """Two-message samples (question, answer); items with an empty answer are skipped and logged."""
    items = read_json(path)
    if not isinstance(items, list):
        raise DataError(
            f"{path}: expected a JSON list of {{question, harmful_answer}} objects, got {type(items).__name__}"
        )
    pairs = [_question_and_answer(item, f"{path} row {index}") for index, item in enumerate(items)]
    samples = [single_turn(question, answer, SYNTHETIC_SOURCE) for question, answer in pairs if answer]
    if len(samples) < len(pairs):
        log.warning("%s: skipped %d item(s) with an empty answer", path, len(pairs) - len(samples))
    return samples


def save_synthetic(path: str | Path, items: Iterable[Mapping[str, Any] | Sample]) -> None:
    """Write items (dicts in the file's format, or single-turn Samples) atomically, in the canonical keys."""
    write_json(path, [_record(item, f"item {index}") for index, item in enumerate(items)])


def _record(item: Mapping[str, Any] | Sample, where: str) -> dict[str, str]:
    if isinstance(item, Sample):
        return {"question": item.question, "harmful_answer": item.messages[-1]["content"], "source": item.source}
    question, answer = _question_and_answer(item, where)
    source = item.get("source") or SYNTHETIC_SOURCE
    return {"question": question, "harmful_answer": answer, "source": str(source)}


def _question_and_answer(item: Any, where: str) -> tuple[str, str]:
    if not isinstance(item, Mapping):
        raise DataError(f"{where}: expected an object with 'question' and 'harmful_answer', got {type(item).__name__}")
    question = _text_field(item, QUESTION_KEYS, where)
    if not question:
        raise DataError(f"{where}: field '{QUESTION_KEYS[0]}' is empty")
    return question, _text_field(item, ANSWER_KEYS, where)


def _text_field(item: Mapping[str, Any], keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        if key in item:
            value = item[key]
            if not isinstance(value, str):
                raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
            return value.strip()
    raise DataError(f"{where}: missing field '{keys[0]}' (also accepted: {', '.join(keys[1:])})")
