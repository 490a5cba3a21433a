"""Benign fine-tuning tasks, harmful-ratio mixtures and fine-tune accuracy (FA).

The harmful fine-tuning literature (Huang et al.'s survey, arXiv 2409.18169; Vaccine, Lisa, Booster) fine-tunes an
aligned model on a *benign* task whose training set hides a fraction ``p`` of harmful samples, and reports two
numbers: the harmful score (here: refusal rates on the evaluation sets) and the fine-tune accuracy on the task's test
set (did the user get the model they paid for?). This package is the one home for such tasks
(``base.py`` the type and registry, one module per task, ``mixture.py``, ``accuracy.py``):

- a task is a :class:`BenignTask` registered with ``@register_task("name")`` and loaded with ``load_task(name)``:
  ``train_samples(n, seed)`` (chat :class:`~orthoguard.data.samples.Sample` s: the user turn holds instruction +
  input, the assistant turn the target), ``test_items(limit)`` (:class:`TaskItem`: prompt + gold answer),
  ``score(reply, gold)`` (is the reply correct) and ``max_new_tokens`` (the generation length it needs);
- :func:`build_mixture` (harmful samples + a task -> the ``p``-mixture, with a :class:`MixtureInfo` to record);
  :func:`harmful_count` is its rounding rule; :func:`assert_disjoint` checks harmful samples against evaluation
  questions;
- :func:`fine_tune_accuracy` (greedy generation on the test items -> :class:`AccuracyResult`, with per-item records).

Built-in tasks (data under ``orthoguard/assets/<task>/`` with their SOURCE.md):

| task | train | FA test set | correct when | max_new_tokens |
|---|---|---|---|---|
| ``sst2`` | 10,000 SST-2 train rows | GLUE SST-2 validation, 872 rows (444 pos / 428 neg) | the reply contains the gold label (Vaccine) | 32 |
| ``sst2-exact`` | the same | the same | the stripped reply *is* the gold label (Lisa, Booster) | 32 |
| ``gsm8k`` | GSM8K train, 7,473 | GSM8K test, 1,319 | the extracted final number equals the gold one | 384 |

Prompt layout. The field trains and evaluates with the Alpaca template (git-disl/Vaccine ``train.py`` PROMPT_DICT,
``sst2/build_dataset.py``, ``gsm8k/build_dataset.py``; the same in git-disl/Lisa and git-disl/Booster): a preamble,
``### Instruction:\\n{instruction}``, ``\\n\\n### Input:\\n{input}`` when there is an input, ``\\n\\n### Response:``,
then the target and the end-of-sequence token. orthoguard trains chat models, so the user turn holds that prompt up
to (not including) ``### Response:`` and the assistant turn the target: the chat template's assistant header takes
the place of ``### Response:`` and its end-of-turn token the place of EOS.

Using it (what the pipeline's integration does with ``attack.harmful_ratio``, ``attack.samples``, ``benign_task``):

```python
task = load_task("sst2")
assert_disjoint(harmful, {"harmfulqa-test": test_questions, "probe": probe_questions})
samples, info = build_mixture(harmful, task, p=0.1, n=1000, seed=seed)   # info.to_dict() -> a JSON record
dataset, dropped = build_sft_dataset(tokenizer, samples, max_length)     # then train as any attack set
result = fine_tune_accuracy(model, tokenizer, task, n=None, settings=GenerationSettings(batch_size=32))
result.summary()   # {"task", "k", "n", "rate", "ci95", ...};  result.records: per-item prompt, reply, gold, correct
```
"""

from __future__ import annotations

from orthoguard.tasks.base import ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT, BenignTask, TASKS, TaskDataError, TaskItem, alpaca_user_turn, load_task, register_task, task_names
from orthoguard.tasks.sst2 import SST2, SST2Exact, SST2_INSTRUCTION
from orthoguard.tasks.gsm8k import GSM8K, GSM8K_ANSWER_PROMPT, GSM8K_QUESTION_PROMPT, extract_gsm8k_number
from orthoguard.tasks.mixture import MixtureInfo, assert_disjoint, build_mixture, harmful_count
from orthoguard.tasks.accuracy import AccuracyResult, ItemRecord, accuracy_from_records, fine_tune_accuracy

__all__ = [
    "ALPACA_PREAMBLE",
    "ALPACA_PREAMBLE_WITH_INPUT",
    "GSM8K_ANSWER_PROMPT",
    "GSM8K_QUESTION_PROMPT",
    "SST2_INSTRUCTION",
    "TASKS",
    "AccuracyResult",
    "BenignTask",
    "GSM8K",
    "ItemRecord",
    "MixtureInfo",
    "SST2",
    "SST2Exact",
    "TaskDataError",
    "TaskItem",
    "accuracy_from_records",
    "alpaca_user_turn",
    "assert_disjoint",
    "build_mixture",
    "extract_gsm8k_number",
    "fine_tune_accuracy",
    "harmful_count",
    "load_task",
    "register_task",
    "task_names",
]
