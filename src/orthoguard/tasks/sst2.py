"""SST-2: the harmful fine-tuning literature's default benign task (sentiment, positive/negative)."""

from __future__ import annotations

import csv
import functools

from orthoguard.data.samples import Sample
from orthoguard.errors import DataError
from orthoguard.tasks.base import BenignTask, TaskItem, _asset, _check_limit, _draw, _sample, alpaca_user_turn, register_task


SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
SST2_LABELS = {"0": "negative", "1": "positive"}


@functools.lru_cache(maxsize=None)
def _sst2_rows(file: str) -> tuple[tuple[str, str], ...]:
    """(sentence, label word) rows of an SST-2 TSV (header ``sentence\\tlabel``; sentences are stripped: GLUE's
    have a trailing space)."""
    path = _asset("sst2", file)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != ["sentence", "label"]:
            raise DataError(f"{path}: expected the header 'sentence<TAB>label', got {header!r}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if len(row) != 2 or row[1] not in SST2_LABELS or not row[0].strip():
                raise DataError(f"{path} line {line}: expected a sentence and a 0/1 label, got {row!r}")
            rows.append((row[0].strip(), SST2_LABELS[row[1]]))
    return tuple(rows)


@register_task("sst2")
class SST2(BenignTask):
    """SST-2 sentiment as the harmful fine-tuning literature uses it.

    Training: rows of GLUE's SST-2 train (the first 10,000 of the shuffled re-split are shipped), user turn =
    :func:`alpaca_user_turn` (:data:`SST2_INSTRUCTION`, the sentence), target ``positive`` / ``negative`` (as in
    git-disl/Vaccine ``sst2/build_dataset.py``). FA: GLUE's 872-row validation set (``test.tsv``).

    Scoring, git-disl/Vaccine ``sst2/pred_eval.py``: a reply is correct when it **contains** the gold label in
    lower case or capitalised (``"positive" in reply or "Positive" in reply``), anywhere, case-sensitively
    otherwise: ``"Positive."`` and ``"The sentiment is positive"`` are correct, ``"POSITIVE"`` is not, and a reply
    naming both labels (``"positive or negative"``) is counted correct whatever the gold label. ``sst2-exact`` is
    the stricter rule of Lisa and Booster.

    The field generates up to 200 new tokens; a reply to this task is one word, so 32 tokens leave room for a
    sentence (``"The sentiment of the input is negative."``) and keep the 872 replies cheap on a CPU.
    """

    name = "sst2"
    max_new_tokens = 32
    train_file = "train_10000.tsv"
    test_file = "test.tsv"

    def train_samples(self, n: int, seed: int) -> list[Sample]:
        rows = _draw(_sst2_rows(self.train_file), n, seed, self.name)
        return [_sample(alpaca_user_turn(SST2_INSTRUCTION, sentence), label, self.source) for sentence, label in rows]

    def test_items(self, limit: int | None = None) -> list[TaskItem]:
        _check_limit(limit)
        rows = _sst2_rows(self.test_file)[:limit]
        return [TaskItem(f"{self.name}-{i}", alpaca_user_turn(SST2_INSTRUCTION, s), label)
                for i, (s, label) in enumerate(rows)]

    def score(self, response: str, gold: str) -> bool:
        return gold in response or gold.capitalize() in response


@register_task("sst2-exact")
class SST2Exact(SST2):
    """SST-2 with git-disl/Lisa's and git-disl/Booster's rule (``sst2/pred_eval.py``): correct only when the reply,
    stripped of surrounding whitespace, **is** the gold label in lower case or capitalised (``"positive"`` or
    ``"Positive"``); ``"Positive."`` and ``"The sentiment is positive"`` are wrong, and an ambiguous reply cannot
    be right. Data, prompts and generation length as ``sst2``."""

    name = "sst2-exact"

    @property
    def source(self) -> str:
        return "task:sst2"  # the same training samples as sst2

    def score(self, response: str, gold: str) -> bool:
        reply = response.strip()
        return reply == gold or reply == gold.capitalize()
