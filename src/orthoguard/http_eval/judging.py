"""Judging the answers: local judges directly, LLM judges through their own cache of verdicts."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from orthoguard.http_eval.cache import JsonlCache
from orthoguard.judges import Judge, Verdict, strip_thinking
from orthoguard.judges.llm import LLMJudge

log = logging.getLogger(__package__)  # "orthoguard.http_eval", the logger name from before the split


# ---------------------------------------------------------------------------------------------------------
# Judging


async def judge_rows(rows: list[dict], judge: Judge, out_dir: Path, concurrency: int) -> None:
    """Add ``refused`` (and ``score``, ``judge_error``, ``judge_reply``) to each row, in place. Rows whose call
    failed get ``refused = None`` and are not judged."""
    answered = [row for row in rows if row["error"] is None]
    for row in rows:
        if row["error"] is not None:
            row["refused"] = None
    if isinstance(judge, LLMJudge):
        await _judge_with_llm(answered, judge, out_dir, concurrency)
    else:
        for row in answered:
            _apply_verdict(row, judge.judge(row["prompt"], row["response"]))


async def _judge_with_llm(rows: list[dict], judge: LLMJudge, out_dir: Path, concurrency: int) -> None:
    cache = JsonlCache(out_dir / "cache" / f"judge.{judge.name}.jsonl", ("key",))
    cached = cache.load()
    keys = [_judge_key(judge, row) for row in rows]
    todo = list({key: (row, key) for row, key in zip(rows, keys) if not _judged(cached.get((key,)))}.values())
    # identical answers (e.g. two names for one model) are judged once
    log.info("judge %s: %d requests for %d answers (the rest cached or identical)", judge.name, len(todo), len(rows))
    items = [(row["prompt"], row["response"], row["context"]) for row, _ in todo]

    def save(index: int, verdict: Verdict, reply: str | None) -> None:
        key = todo[index][1]
        entry = {"key": key, "refused": verdict.refused, "score": verdict.score, "error": verdict.error, "reply": reply}
        cache.append(entry)
        cached[(key,)] = entry

    await judge.ajudge_many_with_replies(items, concurrency, on_verdict=save)
    for row, key in zip(rows, keys):
        entry = cached[(key,)]
        _apply_verdict(row, _verdict(entry), entry.get("reply"))


def _judge_key(judge: LLMJudge, row: dict) -> str:
    """A hash of the judge's request (model, settings, the filled-in template), not of where it is served."""
    settings = {k: v for k, v in judge.describe().items() if k != "endpoint"}
    messages = judge.messages(row["prompt"], strip_thinking(row["response"]), row["context"])
    blob = json.dumps({"judge": settings, "messages": messages}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _judged(entry: dict | None) -> bool:
    """A cached verdict is reused unless the judge call itself failed (worth asking again)."""
    return entry is not None and not str(entry.get("error") or "").startswith("judge_error: http")


def _verdict(entry: dict) -> Verdict:
    return Verdict(entry["refused"], entry.get("error"), entry.get("score"))


def _apply_verdict(row: dict, verdict: Verdict, reply: str | None = None) -> None:
    row["refused"] = verdict.refused
    if verdict.score is not None:
        row["score"] = verdict.score
    if verdict.error is not None:
        row["judge_error"] = verdict.error
    if reply is not None:
        row["judge_reply"] = reply

