"""The benign-task type, its registry, and the field's Alpaca prompt layout."""

from __future__ import annotations

import random

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from orthoguard.data.samples import Sample, assistant, user
from orthoguard.errors import ConfigError, DataError
from orthoguard.registry import Registry


class TaskDataError(DataError, ValueError):
    """A mixture that cannot be built (too few harmful or benign samples, bad p or n) or harmful samples that
    overlap an evaluation set. A DataError (the CLI prints one line) and a ValueError."""


# ---------------------------------------------------------------------------------------------------------
# The task type and its registry


@dataclass(frozen=True)
class TaskItem:
    """One test item: ``prompt`` is the user turn sent to the model, ``gold`` the answer ``score`` compares with."""

    id: str
    prompt: str
    gold: str


class BenignTask:
    """A benign fine-tuning task. Subclasses set ``name`` and ``max_new_tokens`` and implement the three methods."""

    name: str = ""
    max_new_tokens: int = 96  # the generation length fine_tune_accuracy uses for this task

    @property
    def source(self) -> str:
        """The ``Sample.source`` of this task's training samples."""
        return f"task:{self.name}"

    def train_samples(self, n: int, seed: int) -> list[Sample]:
        """``n`` distinct training samples drawn with ``seed`` (the same n and seed give the same samples, in the
        same order); a TaskDataError when the task has fewer than ``n``."""
        raise NotImplementedError

    def test_items(self, limit: int | None = None) -> list[TaskItem]:
        """The first ``limit`` test items in file order (all of them when ``limit`` is None)."""
        raise NotImplementedError

    def score(self, response: str, gold: str) -> bool:
        """Whether ``response`` answers the item whose gold answer is ``gold``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


TaskFactory = Callable[[], BenignTask]
TASKS: Registry[TaskFactory] = Registry("benign task")


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator on a BenignTask subclass (or a function returning a task): ``load_task(name)`` builds it."""
    return TASKS.register(name)


def task_names() -> list[str]:
    return TASKS.names()


def load_task(name: str) -> BenignTask:
    """The registered task ``name``; a ConfigError naming the known tasks otherwise."""
    task = TASKS.lookup(name)()
    if task.name != name:
        raise ConfigError(f"benign task registered as {name!r} calls itself {task.name!r}")
    return task


def _asset(*parts: str) -> Path:
    return Path(str(resources.files("orthoguard").joinpath("assets", *parts)))


def _draw(rows: Sequence, n: int, seed: int, what: str) -> list:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TaskDataError(f"{what}: the number of training samples must be a whole number >= 0, got {n!r}")
    if n > len(rows):
        raise TaskDataError(f"{what}: {n} training samples asked for, the task has {len(rows)}")
    return random.Random(seed).sample(list(rows), n)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskDataError(f"limit must be a positive number of test items or None, got {limit!r}")


# The field's Alpaca template (git-disl/Vaccine train.py PROMPT_DICT; the same in Lisa and Booster).
ALPACA_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


def alpaca_user_turn(instruction: str, input_text: str = "") -> str:
    """The field's Alpaca prompt without its ``\\n\\n### Response:`` tail: the chat template's assistant header
    stands in for it."""
    if input_text:
        return f"{ALPACA_PREAMBLE_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input_text}"
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"


def _sample(prompt: str, target: str, source: str) -> Sample:
    # the question of a benign sample is its whole user turn (splits and disjointness checks compare questions)
    return Sample(prompt, (user(prompt), assistant(target)), source)
