"""Judges: one verdict per (prompt, response), a registry by name, and helpers to judge JSONL files.

Two questions are kept apart. A *refusal* judge says whether the reply refused (``Verdict.refused``): ``keyword``,
``sorry-bench``, ``strongreject`` (its "refused" item). A *harm* judge says whether the reply is harmful
(``Verdict.harmful_reply``, HarmBench's yes/no) or how harmful (``Verdict.score``, StrongREJECT's score). A judge
names what it measures in ``measures``; ``evaluation.judge`` takes a refusal judge and ``evaluation.harm_judge`` a
harm judge, and the report never prints one as the other (a reply that is neither a refusal nor harmful, such as a
vague or off-topic answer, is common after an attack).

Add a judge with ``@register_judge("name")`` on a class with a ``judge(prompt, response) -> Verdict`` method;
``get_judge("name", **kwargs)`` builds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orthoguard.errors import DataError
from orthoguard.registry import Registry
from orthoguard.io import iter_jsonl, write_jsonl


@dataclass(frozen=True)
class Verdict:
    refused: bool | None  # None when the judge could not decide (then error is set)
    error: str | None = None  # e.g. "empty response", "judge_error: unparseable verdict"
    score: float | None = None  # a graded harm score in [0, 1] where the protocol gives one (StrongREJECT)
    outcome: str | None = None  # the keyword judge's three-way call: "refusal", "partial" or "compliance"
    harmful_reply: bool | None = None  # a harm judge's call: the reply carries out the harmful request (HarmBench)


REFUSAL, HARM = "refusal", "harm"


def measures(judge_class: type) -> frozenset[str]:
    """What a judge class measures: ``{"refusal"}``, ``{"harm"}`` or both (default: refusal)."""
    return frozenset(getattr(judge_class, "measures", (REFUSAL,)))


class Judge(Protocol):
    name: str

    def judge(self, prompt: str, response: str) -> Verdict: ...


JUDGES: Registry[type] = Registry("judge")


def register_judge(name: str) -> Callable[[type], type]:
    """Class decorator: make the judge available as ``get_judge(name)`` and set its ``name``."""
    return JUDGES.register(name, on_register=lambda cls: setattr(cls, "name", name))


def get_judge(name: str, **kwargs: Any) -> Judge:
    return JUDGES.lookup(name)(**kwargs)


def strip_thinking(text: str) -> str:
    """The reply without Qwen3-style reasoning: ``<think>...</think>`` blocks, a reply that starts after a bare
    ``</think>`` (the opening tag was in the prompt), and an unterminated ``<think>`` (cut off while thinking)."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S | re.I)
    text = re.sub(r"^.*</think>", "", text, flags=re.S | re.I)
    text = re.sub(r"<think>.*", "", text, flags=re.S | re.I)
    return text.strip()


def judge_jsonl(in_path: str | Path, out_path: str | Path, judge: Judge) -> dict[str, int]:
    """Judge every record of a JSONL file (string ``prompt`` and ``response`` fields) and write them, all fields
    kept, to ``out_path`` (atomically). Returns ``{"total": n, "refused": k, "harmful": h, "errors": e}``
    (``harmful``: replies a harm judge called harmful; 0 for a refusal-only judge)."""
    numbered = list(iter_jsonl(in_path))
    records = [record for _, record in numbered]
    for lineno, record in numbered:
        for field in ("prompt", "response"):
            if field not in record:
                raise DataError(f"{in_path}:{lineno}: missing field {field!r}")
            if not isinstance(record[field], str):
                kind = type(record[field]).__name__
                raise DataError(f"{in_path}:{lineno}: field {field!r} must be a string, got {kind}")
    judged = judge_records(records, judge)
    write_jsonl(out_path, judged)
    return {
        "total": len(judged),
        "refused": sum(r["refused"] is True for r in judged),
        "harmful": sum(r.get("harmful_reply") is True for r in judged),
        "errors": sum("judge_error" in r for r in judged),
    }


from orthoguard.judges import keyword, llm  # noqa: E402,F401  (registers the judges)
from orthoguard.judges.batch import judge_records  # noqa: E402,F401
