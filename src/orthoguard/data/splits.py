"""Question-level splits from seed-style slice specs (``train[:40%]``, ``train[40%:90%]``, ``train[10:20]``)."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Collection, Sequence
from typing import Literal, NamedTuple

import datasets

from orthoguard.errors import DataError

_SPEC = re.compile(r"train(?:\[(?P<start>\d+%?)?:(?P<stop>\d+%?)?\])?")


class SplitSlice(NamedTuple):
    start: int | None  # None: from the beginning
    stop: int | None  # None: to the end
    unit: Literal["%", "abs"]

    def indices(self, num_items: int) -> tuple[int, int]:
        """Absolute [start, stop) over ``num_items``; percentages round the way ``datasets`` rounds them."""
        instruction = datasets.ReadInstruction("train", from_=self.start, to=self.stop, unit=self.unit)
        absolute = instruction.to_absolute({"train": num_items})[0]
        return absolute.from_, absolute.to


def parse_split(spec: str) -> SplitSlice:
    """Parse ``train``, ``train[a%:b%]`` or ``train[a:b]`` (either bound may be left out)."""
    match = _SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise DataError(f"split spec {spec!r} is not one of 'train', 'train[a%:b%]', 'train[a:b]'")
    bounds = [match["start"], match["stop"]]
    percents = {bound.endswith("%") for bound in bounds if bound}
    if len(percents) > 1:
        raise DataError(f"split spec {spec!r} mixes a percentage with an absolute index")
    unit = "%" if percents == {True} else "abs"
    start, stop = (int(bound.rstrip("%")) if bound else None for bound in bounds)
    if unit == "%" and any(b is not None and b > 100 for b in (start, stop)):
        raise DataError(f"split spec {spec!r}: percentages must be between 0% and 100%")
    if start is not None and stop is not None and start > stop:
        raise DataError(f"split spec {spec!r}: start is after stop")
    return SplitSlice(start, stop, unit)


def split_questions(
    questions: Sequence[str], specs: dict[str, str], seed: int, shuffle: bool = True
) -> dict[str, list[str]]:
    """Slice the unique questions (optionally shuffled with ``seed``) into named, pairwise disjoint splits."""
    unique = list(dict.fromkeys(questions))
    if shuffle:
        random.Random(seed).shuffle(unique)
    ranges = {name: parse_split(spec).indices(len(unique)) for name, spec in specs.items()}
    for (first, (a_start, a_stop)), (second, (b_start, b_stop)) in itertools.combinations(ranges.items(), 2):
        shared = min(a_stop, b_stop) - max(a_start, b_start)
        if shared > 0:
            raise DataError(
                f"splits '{first}' ({specs[first]}) and '{second}' ({specs[second]}) overlap on {shared} questions"
            )
    splits = {name: unique[start:stop] for name, (start, stop) in ranges.items()}
    check_disjoint(**splits)
    return splits


def check_disjoint(**named_questions: Collection[str]) -> None:
    """Raise DataError naming the first pair of question sets that share a question."""
    as_sets = {name: set(questions) for name, questions in named_questions.items()}
    for (first, a), (second, b) in itertools.combinations(as_sets.items(), 2):
        shared = a & b
        if shared:
            example = min(shared)
            raise DataError(f"splits '{first}' and '{second}' overlap on {len(shared)} questions (e.g. {example!r})")
