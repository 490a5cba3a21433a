"""Judging many replies at once: the one path that local evaluation, the refusal probes, ``judge`` on a JSONL file
and ``evaluate-http`` all use.

Rule-based judges answer in place; LLM judges are asked concurrently (``concurrency`` calls at once, with their
retries), and, given a cache file, every verdict is appended to it as it arrives, so an interrupted evaluation
resumes without asking again. The cache is keyed by what determines the verdict: the judge's endpoint, model,
settings and version and the filled-in request. Identical requests are asked once; a verdict whose call failed is asked again
next time; a verdict that could not be parsed is kept (asking again gives the same reply at temperature 0).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path

from orthoguard.io import JsonlCache
from orthoguard.judges import Judge, Verdict, strip_thinking
from orthoguard.judges.llm import LLMJudge

log = logging.getLogger(__name__)

JUDGED_FIELDS = ("refused", "harmful_reply", "score", "outcome", "judge_error", "judge_reply")


def judge_records(records: list[dict], judge: Judge, cache_path: Path | None = None, concurrency: int = 8) -> list[dict]:
    """Copies of ``records`` (each with ``prompt`` and ``response``; optional ``context``, and ``error`` for a reply
    that never came) with their verdicts: see ``ajudge_rows``. Not for use inside a running event loop."""
    rows = [{k: v for k, v in record.items() if k not in JUDGED_FIELDS} for record in records]
    asyncio.run(ajudge_rows(rows, judge, cache_path, concurrency))
    return rows


async def ajudge_rows(rows: list[dict], judge: Judge, cache_path: Path | None = None, concurrency: int = 8) -> None:
    """Add ``refused`` (True, False or None) to each row in place, and, when the verdict has them,
    ``harmful_reply``, ``score``, ``outcome``, ``judge_error`` and the LLM judge's ``judge_reply``. A row whose reply never came (a non-empty
    ``error``) gets ``refused = None`` and is not judged."""
    answered = [row for row in rows if not row.get("error")]
    for row in rows:
        if row.get("error"):
            _apply(row, Verdict(None))
    if isinstance(judge, LLMJudge):
        await _judge_with_llm(answered, judge, cache_path, concurrency)
    else:
        for row in answered:
            _apply(row, judge.judge(row["prompt"], row["response"]))


async def _judge_with_llm(rows: list[dict], judge: LLMJudge, cache_path: Path | None, concurrency: int) -> None:
    cache = JsonlCache(cache_path, ("key",)) if cache_path is not None else None
    cached = cache.load() if cache is not None else {}
    keys = [request_key(judge, row) for row in rows]
    todo = list({key: (row, key) for row, key in zip(rows, keys) if not _reusable(cached.get((key,)))}.values())
    log.info("judge %s: %d requests for %d replies (the rest cached or identical)", judge.name, len(todo), len(rows))
    items = [(row["prompt"], row["response"], row.get("context")) for row, _ in todo]

    def save(index: int, verdict: Verdict, reply: str | None) -> None:
        key = todo[index][1]
        entry = {"key": key, "refused": verdict.refused, "harmful_reply": verdict.harmful_reply, "score": verdict.score,
                 "error": verdict.error, "reply": reply}
        if cache is not None:
            cache.append(entry)
        cached[(key,)] = entry

    await judge.ajudge_many_with_replies(items, concurrency, on_verdict=save)
    for row, key in zip(rows, keys):
        entry = cached[(key,)]
        _apply(row, Verdict(entry["refused"], entry.get("error"), entry.get("score"),
                            harmful_reply=entry.get("harmful_reply")), entry.get("reply"))


def request_key(judge: LLMJudge, row: dict) -> str:
    """A hash of everything that decides the verdict: endpoint, model, settings and the filled-in request."""
    messages = judge.messages(row["prompt"], strip_thinking(row["response"]), row.get("context"))
    blob = json.dumps({"judge": judge.describe(), "version": judge.version, "messages": messages}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _reusable(entry: dict | None) -> bool:
    """A cached verdict is reused unless the judge call itself failed (worth asking again)."""
    return entry is not None and not str(entry.get("error") or "").startswith("judge_error: http")


def _apply(row: dict, verdict: Verdict, reply: str | None = None) -> None:
    for key in JUDGED_FIELDS:
        row.pop(key, None)
    row["refused"] = verdict.refused
    for key, value in (("harmful_reply", verdict.harmful_reply), ("score", verdict.score), ("outcome", verdict.outcome),
                       ("judge_error", verdict.error), ("judge_reply", reply)):
        if value is not None:
            row[key] = value
