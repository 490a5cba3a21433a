"""HarmfulQA (declare-lab/HarmfulQA): questions with blue (refusing) and red (complying) multi-turn conversations.

Hub schema, one row per question::

    {"id": 1, "question": str, "topic": str, "subtopic": str,
     "blue_conversations": {"0": [{"from": "human" | "gpt", "value": str}, ...], "1": ..., ...},
     "red_conversations": {...}}

A conversations field may be null or ``{}``, and a qid may map to null (the hub's Arrow structs fill missing qids
with null).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets

from orthoguard.data.prompts import embedded_harmfulqa_path
from orthoguard.data.samples import Message, Sample
from orthoguard.errors import DataError
from orthoguard.io import read_json, read_jsonl

log = logging.getLogger(__name__)

EMBEDDED_SOURCE = "harmfulqa-questions"
ROLE_BY_SPEAKER = {"human": "user", "gpt": "assistant"}
COLORS = ("blue", "red")

Color = Literal["blue", "red"]
Conversation = tuple[Message, ...]


@dataclass(frozen=True)
class HarmfulQARow:
    question: str
    topic: str = ""
    subtopic: str = ""
    blue: tuple[Conversation, ...] = ()  # conversations in which the assistant refuses
    red: tuple[Conversation, ...] = ()  # conversations in which the assistant complies

    def conversations(self, color: Color) -> tuple[Conversation, ...]:
        if color not in COLORS:
            raise ValueError(f"color must be 'blue' or 'red', got {color!r}")
        return self.blue if color == "blue" else self.red


class MalformedRow(ValueError):
    """One row that cannot be used; the loader skips it and reports why."""


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_harmfulqa(source: str, hub_split: str = "train") -> list[HarmfulQARow]:
    """Rows from the embedded questions file, a local .json/.jsonl file, or a hub dataset id."""
    rows, _skipped = load_harmfulqa_with_report(source, hub_split)
    return rows


def load_harmfulqa_with_report(source: str, hub_split: str = "train") -> tuple[list[HarmfulQARow], list[str]]:
    """Like :func:`load_harmfulqa`, also returning one line per skipped (malformed) row."""
    origin, records = _read_records(source, hub_split)
    rows, skipped = [], []
    for index, record in enumerate(records):
        try:
            rows.append(parse_row(record))
        except MalformedRow as exc:
            skipped.append(f"{origin} row {index}: {exc}")
    if skipped:
        log.warning("%s: skipped %d malformed row(s), first: %s", origin, len(skipped), skipped[0])
    if not rows:
        detail = f" ({len(skipped)} malformed, first: {skipped[0]})" if skipped else ""
        raise DataError(f"{origin}: no usable HarmfulQA rows{detail}")
    return rows, skipped


def _read_records(source: str, hub_split: str) -> tuple[str, Iterable[Any]]:
    if source == EMBEDDED_SOURCE:
        path = embedded_harmfulqa_path()
        return str(path), _read_local(path)
    if source.endswith((".json", ".jsonl")):
        return source, _read_local(Path(source))
    return f"{source} [{hub_split}]", _read_hub(source, hub_split)


def _read_local(path: Path) -> list[Any]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    data = read_json(path)
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        return list(_nested_question_records(data, path))
    raise DataError(f"{path}: expected a list of HarmfulQA rows or {{topic: {{subtopic: [question, ...]}}}}, "
                    f"got {type(data).__name__}")


def _nested_question_records(data: dict[str, Any], path: Path) -> Iterator[dict[str, str]]:
    """The questions-only format ``{topic: {subtopic: [question, ...]}}`` as rows without conversations."""
    for topic, subtopics in data.items():
        if not isinstance(subtopics, dict):
            raise DataError(
                f"{path}: topic '{topic}' must map subtopics to question lists, got {type(subtopics).__name__}"
            )
        for subtopic, questions in subtopics.items():
            if not isinstance(questions, list):
                raise DataError(f"{path}: topic '{topic}', subtopic '{subtopic}' must be a list of questions, "
                                f"got {type(questions).__name__}")
            for question in questions:
                yield {"question": question, "topic": topic, "subtopic": subtopic}


def _read_hub(dataset_id: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # the hub raises many types (offline, not found, bad split); report one line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"could not load dataset '{dataset_id}' (split '{split}'): {message}") from exc


# ---------------------------------------------------------------------------------------------------------
# Parsing one row


def parse_row(record: Any) -> HarmfulQARow:
    """One hub-schema row; raises MalformedRow naming the offending field."""
    if not isinstance(record, dict):
        raise MalformedRow(f"expected an object, got {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise MalformedRow("field 'question' is missing or empty")
    return HarmfulQARow(
        question=question.strip(),
        topic=_optional_text(record, "topic"),
        subtopic=_optional_text(record, "subtopic"),
        blue=_parse_conversations(record.get("blue_conversations"), "blue_conversations"),
        red=_parse_conversations(record.get("red_conversations"), "red_conversations"),
    )


def _optional_text(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedRow(f"field '{field}' must be a string, got {type(value).__name__}")
    return value.strip()


def _parse_conversations(value: Any, field: str) -> tuple[Conversation, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise MalformedRow(f"field '{field}' must map qids to conversations, got {type(value).__name__}")
    conversations = []
    for qid in sorted(value, key=_qid_order):
        turns = value[qid]
        if turns is None:
            continue
        if not isinstance(turns, list):
            raise MalformedRow(f"field '{field}.{qid}' must be a list of turns, got {type(turns).__name__}")
        parsed = (_parse_turn(turn, f"{field}.{qid}[{i}]") for i, turn in enumerate(turns))
        messages = tuple(message for message in parsed if message is not None)
        if messages:
            conversations.append(messages)
    return tuple(conversations)


def _qid_order(qid: str) -> tuple[int, int | str]:
    return (0, int(qid)) if str(qid).isdigit() else (1, str(qid))


def _parse_turn(turn: Any, where: str) -> Message | None:
    """A message, or None for an empty turn (dropped)."""
    if turn is None:
        return None
    if not isinstance(turn, dict):
        raise MalformedRow(f"field '{where}' must be a turn object, got {type(turn).__name__}")
    speaker, text = turn.get("from"), turn.get("value")
    if speaker not in ROLE_BY_SPEAKER:
        raise MalformedRow(f"field '{where}.from' must be 'human' or 'gpt', got {speaker!r}")
    if text is not None and not isinstance(text, str):
        raise MalformedRow(f"field '{where}.value' must be a string, got {type(text).__name__}")
    if not text or not text.strip():
        return None
    return {"role": ROLE_BY_SPEAKER[speaker], "content": text.strip()}


# ---------------------------------------------------------------------------------------------------------
# Conversations -> samples


def conversation_samples(rows: Iterable[HarmfulQARow], color: Color) -> list[Sample]:
    """One sample per assistant turn: the conversation up to and including that turn."""
    source = f"harmfulqa-{color}"
    return [
        sample
        for row in rows
        for conversation in row.conversations(color)
        for sample in _assistant_turn_samples(row.question, conversation, source)
    ]


def _assistant_turn_samples(question: str, conversation: Conversation, source: str) -> list[Sample]:
    samples, seen_user = [], False
    for index, message in enumerate(conversation):
        seen_user = seen_user or message["role"] == "user"
        # an assistant turn with no user turn before it has no prompt to answer
        if message["role"] == "assistant" and seen_user:
            samples.append(Sample(question, conversation[: index + 1], source))
    return samples


def count_conversations(rows: Iterable[HarmfulQARow], color: Color) -> int:
    return sum(len(row.conversations(color)) for row in rows)
