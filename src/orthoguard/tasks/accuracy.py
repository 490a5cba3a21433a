"""Fine-tune accuracy (FA): greedy replies to a task's test items, scored by the task's own rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from orthoguard.metrics import wilson_interval
from orthoguard.tasks.base import BenignTask


@dataclass(frozen=True)
class ItemRecord:
    id: str
    prompt: str
    reply: str
    gold: str
    correct: bool


@dataclass(frozen=True)
class AccuracyResult:
    """``k`` correct of ``n`` test items, ``rate`` = k / n with its 95% Wilson interval, and one record per item.
    Empty replies count as wrong (as in the field), not as missing."""

    task: str
    k: int
    n: int
    rate: float | None
    ci95: tuple[float, float]
    max_new_tokens: int
    records: tuple[ItemRecord, ...]

    def summary(self) -> dict:
        """The numbers without the records (JSON-ready)."""
        return {"task": self.task, "k": self.k, "n": self.n, "rate": self.rate,
                "ci95": [round(self.ci95[0], 4), round(self.ci95[1], 4)], "max_new_tokens": self.max_new_tokens}

    def to_dict(self) -> dict:
        """:meth:`summary` plus ``records`` (a list of dicts: id, prompt, reply, gold, correct)."""
        return {**self.summary(), "records": [asdict(r) for r in self.records]}

    def record_dicts(self) -> list[dict]:
        """The records as JSONL rows."""
        return [asdict(r) for r in self.records]


def accuracy_from_records(task: BenignTask, records: Sequence[ItemRecord], max_new_tokens: int) -> AccuracyResult:
    """An AccuracyResult over ``records`` (e.g. read back from a file), re-scored with ``task.score``."""
    rescored = tuple(replace(r, correct=bool(task.score(r.reply, r.gold))) for r in records)
    k, n = sum(r.correct for r in rescored), len(rescored)
    return AccuracyResult(task.name, k, n, k / n if n else None, wilson_interval(k, n), max_new_tokens, rescored)


def fine_tune_accuracy(model, tokenizer, task: BenignTask, n: int | None = None, settings=None) -> AccuracyResult:
    """FA of ``model`` on the first ``n`` test items of ``task`` (all when None): greedy replies through
    ``orthoguard.generation.generate`` with the task's ``max_new_tokens`` (``settings`` gives the batch size and
    dtype; its sampling and length fields are overridden), each scored with ``task.score``."""
    from orthoguard.generation import GenerationSettings, generate

    settings = replace(settings or GenerationSettings(), max_new_tokens=task.max_new_tokens, do_sample=False,
                       temperature=1.0, top_p=1.0)
    items = task.test_items(n)
    prompts = [item.prompt for item in items]
    replies = generate(model, tokenizer, prompts, settings, desc=f"fine-tune accuracy {task.name}")
    records = [ItemRecord(item.id, item.prompt, reply, item.gold, False) for item, reply in zip(items, replies)]
    return accuracy_from_records(task, records, settings.max_new_tokens)
