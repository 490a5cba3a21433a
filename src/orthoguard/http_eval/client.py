"""Endpoints, request settings, and asking the models: async calls with retries, answers appended to the cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orthoguard.errors import ConfigError
from orthoguard.http_eval.cache import response_cache
from orthoguard.judges.llm import ChatClient, RetryPolicy, normalize_base_url
from orthoguard.prompts import PromptRecord

log = logging.getLogger(__package__)  # "orthoguard.http_eval", the logger name from before the split

API_KEY_ENV = "ORTHOGUARD_API_KEY"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

OnRow = Callable[[str, dict], None]  # (model label, cache row), after each row is appended to the cache


@dataclass(frozen=True)
class Endpoint:
    name: str  # the model's name in the results, e.g. "vanilla"
    url: str
    model: str  # the name the server knows it by (a vLLM LoRA module name, a hub id, a folder)
    seed: int | None = None  # a training seed (or repetition): runs of one name over seeds are summarized

    @property
    def label(self) -> str:
        return self.name if self.seed is None else f"{self.name}@seed{self.seed}"


def parse_endpoint(spec: str) -> Endpoint:
    """``NAME=URL[,model=SERVED_NAME][,seed=N]``; the served model name defaults to NAME."""
    name, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise ConfigError(f"--endpoint expects NAME=URL[,model=NAME][,seed=N], got {spec!r}")
    if not _NAME.match(name):
        raise ConfigError(f"--endpoint {spec!r}: name {name!r} may only use letters, digits, '.', '_' and '-'")
    url, *options = rest.split(",")
    fields: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if key not in {"model", "seed"} or not eq or not value:
            raise ConfigError(f"--endpoint {spec!r}: unknown option {option!r} (known: model=NAME, seed=N)")
        fields[key] = value
    seed = fields.get("seed")
    if seed is not None and not seed.isdigit():
        raise ConfigError(f"--endpoint {spec!r}: seed must be a non-negative integer, got {seed!r}")
    return Endpoint(name, normalize_base_url(url, f"--endpoint {name}"), fields.get("model", name),
                    None if seed is None else int(seed))


@dataclass(frozen=True)
class HttpEvalSettings:
    max_tokens: int = 256
    temperature: float = 0.0
    concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 3
    retry_delay: float = 1.0
    chat_template_kwargs: dict | None = None  # e.g. {"enable_thinking": false} for Qwen3
    judge_concurrency: int = 8

    def request_options(self, endpoint: Endpoint) -> dict[str, Any]:
        options: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if endpoint.seed is not None and self.temperature > 0:
            options["seed"] = endpoint.seed
        if self.chat_template_kwargs:
            options["extra_body"] = {"chat_template_kwargs": self.chat_template_kwargs}
        return options


def request_key(endpoint: Endpoint, record: PromptRecord, settings: HttpEvalSettings) -> str:
    """A hash of everything that decides the answer (the server's URL, the model, the generation settings and the
    prompt), so that a cached answer from another server, model or question is never reused."""
    blob = json.dumps({"url": endpoint.url, "model": endpoint.model, "messages": messages_for(record),
                       "options": settings.request_options(endpoint)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def messages_for(record: PromptRecord) -> list[dict[str, str]]:
    return [{"role": "user", "content": record.prompt}]


# ---------------------------------------------------------------------------------------------------------
# Asking the models


async def ask_endpoint(endpoint: Endpoint, records: list[PromptRecord], out_dir: Path, settings: HttpEvalSettings,
                       semaphore: asyncio.Semaphore, on_row: OnRow | None) -> dict[str, int]:
    """Ask ``endpoint`` for every record without a usable cached answer; returns counts for the results."""
    cache = response_cache(out_dir, endpoint)
    cached = cache.load()
    keys = {(r.set, r.id): request_key(endpoint, r, settings) for r in records}
    todo = [r for r in records if not _usable(cached.get((r.set, r.id)), keys[(r.set, r.id)])]
    stale = sum(1 for r in todo if cached.get((r.set, r.id), {}).get("request") not in (None, keys[(r.set, r.id)]))
    if stale:
        log.warning("%s: %d cached answers were asked with other settings or prompts; asking again", endpoint.label, stale)
    log.info("%s: asking %d of %d prompts (%d from the cache)", endpoint.label, len(todo), len(records),
             len(records) - len(todo))
    client = ChatClient(endpoint.url, endpoint.model, os.environ.get(API_KEY_ENV), settings.timeout,
                        RetryPolicy(settings.max_retries, settings.retry_delay), **settings.request_options(endpoint))

    async def ask(record: PromptRecord) -> dict:
        async with semaphore:
            result = await client.complete(messages_for(record))
        row = {"set": record.set, "id": record.id, "request": keys[(record.set, record.id)],
               "response": result.text, "error": result.error, "attempts": result.attempts,
               "finish_reason": result.finish_reason, "seconds": round(result.seconds, 3), "time": time.time()}
        cache.append(row)
        if on_row is not None:
            on_row(endpoint.label, row)
        return row

    async with client:
        rows = await asyncio.gather(*(ask(r) for r in todo))
    return {"asked": len(todo), "from_cache": len(records) - len(todo),
            "failed": sum(row["error"] is not None for row in rows)}


def _usable(row: dict | None, key: str) -> bool:
    return row is not None and row.get("error") is None and row.get("request") == key


def model_rows(endpoint: Endpoint, records: list[PromptRecord], out_dir: Path) -> list[dict]:
    """One row per record from the cache: the record's fields, the response or the call's error."""
    cached = response_cache(out_dir, endpoint).load()
    rows = []
    for record in records:
        hit = cached.get((record.set, record.id), {})
        row = {**asdict(record), "model": endpoint.label, "response": hit.get("response"),
               "error": hit.get("error") if hit else "not asked", "attempts": hit.get("attempts"),
               "finish_reason": hit.get("finish_reason")}
        rows.append(row)
    return rows

