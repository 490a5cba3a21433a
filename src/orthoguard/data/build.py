"""Training sets for the two LoRAs, from HarmfulQA rows and the question splits.

The refusal LoRA learns from blue (refusing) conversations of the refusal-split questions; the attack LoRAs learn
from red (complying) conversations and synthetic answers of the attack-split questions only.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from orthoguard.data.harmfulqa import HarmfulQARow, conversation_samples
from orthoguard.data.refusals import refusal_reply
from orthoguard.data.samples import Sample, single_turn
from orthoguard.data.splits import check_disjoint

REFUSAL_TEMPLATE_SOURCE = "refusal-template"

__all__ = ["AttackData", "attack_samples", "check_disjoint", "refusal_samples"]


def _rows_for(rows: Iterable[HarmfulQARow], questions: Collection[str]) -> list[HarmfulQARow]:
    return [row for row in rows if row.question in questions]


def refusal_samples(
    rows: Iterable[HarmfulQARow], questions: Collection[str], rng: random.Random, benign: Sequence[Sample] = ()
) -> list[Sample]:
    """Blue-conversation samples (or one templated refusal for a row without any), plus ``benign``, shuffled."""
    questions = set(questions)
    samples = []
    for row in _rows_for(rows, questions):
        blue = conversation_samples([row], "blue")
        samples.extend(blue or [single_turn(row.question, refusal_reply(row.question, rng), REFUSAL_TEMPLATE_SOURCE)])
    samples.extend(benign)
    rng.shuffle(samples)
    return samples


@dataclass(frozen=True)
class AttackData:
    samples: list[Sample]
    synthetic_outside_split: int  # synthetic answers dropped: their question is not an attack question
    unanswered_questions: tuple[str, ...]  # attack questions with neither a red conversation nor a synthetic answer


def attack_samples(
    rows: Iterable[HarmfulQARow], questions: Collection[str], synthetic: Sequence[Sample] = ()
) -> AttackData:
    """Red-conversation samples plus synthetic answers, both for the attack questions only."""
    questions = set(questions)
    red = conversation_samples(_rows_for(rows, questions), "red")
    # the attack must never train on refusal or test questions, whatever the synthetic file holds
    synthetic_in_split = [sample for sample in synthetic if sample.question in questions]
    answered = {sample.question for sample in red} | {sample.question for sample in synthetic_in_split}
    return AttackData(
        samples=red + synthetic_in_split,
        synthetic_outside_split=len(synthetic) - len(synthetic_in_split),
        unanswered_questions=tuple(sorted(questions - answered)),
    )
