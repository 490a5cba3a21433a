"""Harm verdicts beside refusal verdicts: a harm judge (``evaluation.harm_judge``) reads the replies to the harmful
prompt sets after the refusal judge, and its calls are stored under their own field names, so that a record says
both whether the reply refused (``refused``) and whether it was harmful (``harmful_reply``: HarmBench's yes/no;
``harm_score``: StrongREJECT's score in [0, 1]). A failed or unparseable harm call is ``harm_judge_error``: left
out of the harm numbers and counted, never a verdict."""

from __future__ import annotations

from pathlib import Path

from orthoguard.judges.batch import judge_records
from orthoguard.metrics import mean_interval, rate_summary

# the harm judge's fields in a judged row -> their names in an evaluation record
HARM_FIELDS = {"harmful_reply": "harmful_reply", "score": "harm_score", "judge_error": "harm_judge_error",
               "judge_reply": "harm_judge_reply"}


def add_harm_verdicts(records: list[dict], harm_judge, cache_path: Path | None = None, concurrency: int = 8) -> None:
    """Judge ``records`` (evaluation records with their refusal verdicts) with ``harm_judge`` and add its fields
    under their harm names, in place; the refusal fields are left as they are."""
    judged = judge_records(records, harm_judge, cache_path, concurrency)
    for record, row in zip(records, judged):
        for name in HARM_FIELDS.values():
            record.pop(name, None)
        for field, name in HARM_FIELDS.items():
            if field in row:
                record[name] = row[field]
        if harm_judge.harm_field == "harmful_reply":
            record.setdefault("harmful_reply", None)
        else:
            record.setdefault("harm_score", None)


def harm_summary(records: list[dict], harm_field: str) -> dict:
    """The harm judge's reading of one set: the share judged harmful (``harmful``, a rate with its Wilson
    interval) or the mean harm score (``score``, with a bootstrap interval over the prompts)."""
    if harm_field == "harmful_reply":
        return {"harmful": rate_summary([r.get("harmful_reply") for r in records])}
    return {"score": mean_interval([r.get("harm_score") for r in records])}
