"""Harmful-ratio mixtures: n attack samples, round(p*n) of them harmful, the rest from a benign task."""

from __future__ import annotations

import hashlib
import json
import math
import random

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from orthoguard.data.samples import Sample, user
from orthoguard.seeding import derive_seed
from orthoguard.tasks.base import BenignTask, TaskDataError


def harmful_count(p: float, n: int) -> int:
    """The number of harmful samples in a mixture of ``n`` at ratio ``p``: ``p * n`` rounded half up (2.5 -> 3,
    not Python's round-half-to-even), after rounding away float noise (0.07 * 100 = 7.000000000000001 -> 7).
    The field's code floors (``int(poison_ratio * sample_num)``); the two agree whenever ``p * n`` is whole."""
    return math.floor(round(p * n, 9) + 0.5)


@dataclass(frozen=True)
class MixtureInfo:
    """What :func:`build_mixture` made, to record beside the attack: counts, the harmful questions used (sorted),
    the sources, and a sha256 of the mixture (its messages, in order) that changes if any sample or the order does."""

    task: str | None
    p: float
    n: int
    seed: int
    n_harmful: int
    n_benign: int
    harmful_available: int
    harmful_questions: tuple[str, ...]
    sources: dict[str, int] = field(default_factory=dict)
    digest: str = ""

    def to_dict(self) -> dict:
        record = asdict(self)
        record["harmful_questions"] = list(self.harmful_questions)
        return record


def build_mixture(
    harmful: Sequence[Sample], task: BenignTask | None, p: float, n: int, seed: int
) -> tuple[list[Sample], MixtureInfo]:
    """A fine-tuning set of ``n`` samples: exactly ``harmful_count(p, n)`` of ``harmful`` (drawn without
    replacement with the seed) and the rest from ``task.train_samples``, shuffled with the seed.

    ``p = 1`` is the pure harmful attack (``task`` may then be None). ``harmful`` should come from the attack
    split (check it with :func:`assert_disjoint`). Deterministic: the same inputs give the same list. Raises
    TaskDataError for ``p`` outside [0, 1], ``n < 1``, fewer harmful samples than needed, or a task with too few
    training samples."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise TaskDataError(f"the harmful ratio p must be between 0 and 1, got {p!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TaskDataError(f"a mixture needs n >= 1 samples, got {n!r}")
    k = harmful_count(p, n)
    if k > len(harmful):
        raise TaskDataError(
            f"a mixture of {n} samples at harmful ratio {p:g} needs {k} harmful samples, only {len(harmful)} are "
            "available (lower attack.samples or attack.harmful_ratio, or give the attack split more questions)"
        )
    if n - k and task is None:
        raise TaskDataError(f"a mixture at harmful ratio {p:g} < 1 needs a benign task for its {n - k} benign samples")
    chosen = random.Random(derive_seed(seed, "mixture:harmful")).sample(list(harmful), k)
    benign = task.train_samples(n - k, derive_seed(seed, f"mixture:benign:{task.name}")) if n - k else []
    samples = chosen + benign
    random.Random(derive_seed(seed, "mixture:order")).shuffle(samples)
    info = MixtureInfo(
        task=task.name if task is not None else None, p=float(p), n=n, seed=seed, n_harmful=k, n_benign=len(benign),
        harmful_available=len(harmful), harmful_questions=tuple(sorted({s.question for s in chosen})),
        sources=dict(sorted(Counter(s.source for s in samples).items())), digest=_digest(samples),
    )
    return samples, info


def _digest(samples: Sequence[Sample]) -> str:
    payload = json.dumps([[s.source, list(s.messages)] for s in samples], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _normalized(text: str) -> str:
    return " ".join(text.split()).casefold()


def assert_disjoint(harmful: Iterable[Sample], eval_questions: Iterable[str] | Mapping[str, Iterable[str]]) -> None:
    """Raise TaskDataError naming a harmful sample's question that is also an evaluation question.

    ``eval_questions``: the questions (prompts) of every evaluation set, or ``{set name: questions}`` so that the
    message names the set. A harmful sample's question and each of its user turns are compared, with whitespace
    runs collapsed and case folded."""
    named = eval_questions.items() if isinstance(eval_questions, Mapping) else [(None, eval_questions)]
    owner: dict[str, tuple[str | None, str]] = {}
    for set_name, questions in named:
        if isinstance(questions, str):
            raise TypeError("eval_questions must be a collection of questions, not one string")
        for question in questions:
            owner.setdefault(_normalized(question), (set_name, question))
    for sample in harmful:
        texts = [sample.question] + [m["content"] for m in sample.messages if m.get("role") == "user"]
        for text in texts:
            hit = owner.get(_normalized(text))
            if hit is not None:
                set_name, question = hit
                where = f"the evaluation set '{set_name}'" if set_name is not None else "an evaluation set"
                raise TaskDataError(
                    f"harmful training sample ({sample.source}) overlaps {where} on the question {question!r}"
                )
