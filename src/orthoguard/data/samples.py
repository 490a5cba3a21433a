"""The unit every training set is built from: one chat whose last message is the training target."""

from __future__ import annotations

from dataclasses import dataclass

# {"role": "system" | "user" | "assistant", "content": str}; treated as immutable once inside a Sample.
Message = dict[str, str]


@dataclass(frozen=True)
class Sample:
    question: str  # the HarmfulQA question this sample belongs to; splits are made over questions
    messages: tuple[Message, ...]  # the conversation so far; the last message is the assistant target
    source: str  # e.g. "harmfulqa-blue", "harmfulqa-red", "refusal-template", "synthetic"


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def single_turn(question: str, answer: str, source: str) -> Sample:
    return Sample(question, (user(question), assistant(answer)), source)
