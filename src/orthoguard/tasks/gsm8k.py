"""GSM8K: grade-school maths with an exact final number (for GPU-sized models)."""

from __future__ import annotations

import functools
import json
import math
import re

from dataclasses import replace

from orthoguard.data.samples import Sample
from orthoguard.errors import DataError
from orthoguard.tasks.base import BenignTask, TaskItem, _asset, _check_limit, _draw, _sample, alpaca_user_turn, register_task


GSM8K_QUESTION_PROMPT = "\nFirst think step by step and then answer the final number.\n"
GSM8K_ANSWER_PROMPT = "The final answer is: "
_NUMBER = re.compile(r"-?\d+\.?\d*")


def extract_gsm8k_number(text: str) -> float:
    """The field's final-number rule (``extract_answer_number`` in git-disl/Vaccine, Lisa and Booster
    ``gsm8k/pred_eval.py``): commas removed; numbers are ``-?\\d+\\.?\\d*``; when the text contains
    :data:`GSM8K_ANSWER_PROMPT`, the first number after its first occurrence (and before a second one), else —
    or when none follows it — the last number of the text; ``inf`` when the text has no number (never correct)."""
    text = text.replace(",", "")
    numbers = _NUMBER.findall(text)
    if not numbers:
        return math.inf
    segments = text.split(GSM8K_ANSWER_PROMPT)
    if len(segments) > 1:
        after = _NUMBER.findall(segments[1])
        if after:
            return _to_float(after[0])
    return _to_float(numbers[-1])


def _to_float(number: str) -> float:
    try:
        return float(number)
    except ValueError:  # pragma: no cover - the pattern only matches float syntax
        return math.inf


@functools.lru_cache(maxsize=None)
def _gsm8k_rows(file: str) -> tuple[tuple[str, str], ...]:
    path = _asset("gsm8k", file)
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
                question, answer = row["question"], row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{path} line {line}: expected a JSON object with 'question' and 'answer' ({exc})"
                ) from None
            if "####" not in answer:
                raise DataError(f"{path} line {line}: the answer has no '#### <number>' line")
            rows.append((question, answer))
    return tuple(rows)


@register_task("gsm8k")
class GSM8K(BenignTask):
    """GSM8K as git-disl/Vaccine (and Lisa) formats it (``gsm8k/build_dataset.py``, ``gsm8k/pred_eval.py``).

    User turn: :func:`alpaca_user_turn` of the question followed by :data:`GSM8K_QUESTION_PROMPT` (its trailing
    newline stripped); target: the
    reference solution with ``####`` replaced by :data:`GSM8K_ANSWER_PROMPT` (calculator annotations ``<<…>>`` kept,
    as the field keeps them). Gold: the number after ``####``. Correct when :func:`extract_gsm8k_number` of the
    reply equals that of the gold (as floats: ``"The answer is 1,234."`` matches gold ``1234``). FA on the first
    ``limit`` of the 1,319 test problems. Models of ~100M parameters score near 0%: a task for GPU-sized models.

    The field generates up to 200 new tokens; 10% of the training solutions are longer than that (SmolLM2's
    tokenizer: median 118, 99th percentile 297, 99.9th 377), so this task generates up to 384.
    """

    name = "gsm8k"
    max_new_tokens = 384

    def train_samples(self, n: int, seed: int) -> list[Sample]:
        rows = _draw(_gsm8k_rows("train.jsonl"), n, seed, self.name)
        return [_sample(self._prompt(q), a.replace("####", GSM8K_ANSWER_PROMPT), self.source) for q, a in rows]

    def test_items(self, limit: int | None = None) -> list[TaskItem]:
        _check_limit(limit)
        rows = _gsm8k_rows("test.jsonl")[:limit]
        return [TaskItem(f"{self.name}-{i}", self._prompt(q), a.split("####")[-1].strip())
                for i, (q, a) in enumerate(rows)]

    def score(self, response: str, gold: str) -> bool:
        return extract_gsm8k_number(response) == extract_gsm8k_number(gold)

    @staticmethod
    def _prompt(question: str) -> str:
        return alpaca_user_turn(f"{question}{GSM8K_QUESTION_PROMPT}".strip())
