"""Evaluate models served over OpenAI-compatible HTTP (vLLM, ``transformers serve``, any chat-completions server).

    orthoguard evaluate-http --endpoint base=http://127.0.0.1:8000/v1,model=Qwen/Qwen3-0.6B \\
        --endpoint vanilla=http://127.0.0.1:8000/v1 --prompt-set strongreject-small --prompt-set xstest-safe

Every prompt of every set goes to every endpoint (async, at most ``--concurrency`` requests at once, a timeout per
request, retries with exponential back-off and jitter on 429/5xx/timeouts/connection errors). Each answer or
failure is appended to ``<out>/cache/<model>.jsonl`` as soon as it arrives, so an interrupted run resumes: a rerun
asks only for the rows that are missing, failed, or were asked with other settings. A failed call is recorded with
its reason and left out of every rate; it is never judged, so never counted as a refusal or a fulfillment.

Outputs: ``<out>/http_results.json`` (per model and prompt set: refusal rate with a Wilson 95% interval, errors,
per-category rates, the StrongREJECT score when that judge is used; exact McNemar tests between every pair of
models on the prompts both answered; mean ± std over seeds), ``<out>/responses/<model>.jsonl`` (every row with its
verdict) and ``<out>/http_summary.md``. The API key for the models comes from ``$ORTHOGUARD_API_KEY`` (default
"EMPTY"); it is never printed, logged or saved.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orthoguard.errors import ConfigError, DataError, OrthoguardError
from orthoguard.io import write_json, write_jsonl, write_text
from orthoguard.judges import JUDGES, Judge, Verdict, get_judge, strip_thinking
from orthoguard.judges.llm import ChatClient, LLMJudge, RetryPolicy, normalize_base_url
from orthoguard.metrics import format_rate, paired_mcnemar, per_category, rate_summary, seed_summary
from orthoguard.prompts import PromptRecord, load_prompt_set

log = logging.getLogger(__name__)

API_KEY_ENV = "ORTHOGUARD_API_KEY"
DEFAULT_PROMPT_SETS = ("strongreject-small", "xstest-safe")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

OnRow = Callable[[str, dict], None]  # (model label, cache row), after each row is appended to the cache


class IncompleteRunError(OrthoguardError):
    """Some model or judge calls failed; the results are written without them and a rerun retries them."""


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


# ---------------------------------------------------------------------------------------------------------
# The response cache


def request_key(endpoint: Endpoint, record: PromptRecord, settings: HttpEvalSettings) -> str:
    """A hash of everything that decides the answer, so that a cached answer to another question is not reused."""
    blob = json.dumps({"model": endpoint.model, "messages": messages_for(record),
                       "options": settings.request_options(endpoint)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def messages_for(record: PromptRecord) -> list[dict[str, str]]:
    return [{"role": "user", "content": record.prompt}]


class JsonlCache:
    """An append-only JSONL file of rows; each row is flushed as it is written. The last row for a key wins."""

    def __init__(self, path: Path, key_fields: tuple[str, ...]):
        self.path, self.key_fields = path, key_fields
        self._tail_checked = False

    def key(self, row: dict) -> tuple:
        return tuple(row.get(f) for f in self.key_fields)

    def load(self) -> dict[tuple, dict]:
        if not self.path.is_file():
            return {}
        rows: dict[tuple, dict] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if lineno == len(lines):  # the run was killed while writing this line
                    log.warning("%s:%d: ignoring a truncated last line", self.path, lineno)
                    continue
                raise DataError(f"{self.path}:{lineno}: not valid JSON (delete the line or the file)") from None
            rows[self.key(row)] = row
        return rows

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._tail_checked:
            self._drop_partial_last_line()
            self._tail_checked = True
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _drop_partial_last_line(self) -> None:
        """Cut a line that an earlier run was killed while writing, so that new rows start on a line of their own."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            with self.path.open("r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)


def response_cache(out_dir: Path, endpoint: Endpoint) -> JsonlCache:
    return JsonlCache(out_dir / "cache" / f"{endpoint.label}.jsonl", ("set", "id"))


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


# ---------------------------------------------------------------------------------------------------------
# Statistics


def summarize_set(rows: list[dict]) -> dict:
    """Refusal rate (over decided verdicts) with its interval, error counts and reasons, per-category rates."""
    summary = rate_summary([row["refused"] for row in rows])
    summary["total"] = len(rows)
    summary["model_errors"] = sum(row["error"] is not None for row in rows)
    summary["judge_errors"] = sum("judge_error" in row for row in rows)
    reasons = Counter(_reason(row) for row in rows if row["refused"] is None)
    summary["error_reasons"] = dict(reasons.most_common())
    scores = [row["score"] for row in rows if row.get("score") is not None]
    if scores:
        summary["score"] = {"mean": sum(scores) / len(scores), "n": len(scores)}
    if any(row["category"] is not None for row in rows):
        summary["categories"] = per_category(rows)
    if len({row["harmful"] for row in rows}) == 2:  # a user file mixing harmful and benign prompts
        summary["harmful_prompts"] = rate_summary([row["refused"] for row in rows if row["harmful"]])
        summary["benign_prompts"] = rate_summary([row["refused"] for row in rows if not row["harmful"]])
    return summary


def _reason(row: dict) -> str:
    """An error grouped for counting: without the attempt count or the judge's unparseable reply."""
    reason = re.sub(r" \(\d+ attempts?\)$", "", row["error"] or row.get("judge_error") or "undecided")
    return "judge_error: unparseable verdict" if reason.startswith("judge_error: unparseable verdict") else reason


def compare_models(rows_by_model: dict[str, list[dict]], endpoints: list[Endpoint], sets: list[str]) -> list[dict]:
    """Exact McNemar tests per prompt set, on the prompts both models answered, between every pair of models
    except runs under different seeds (a model without a seed, such as the base model, pairs with every run)."""
    comparisons = []
    for a, b in itertools.combinations(endpoints, 2):
        if None not in (a.seed, b.seed) and a.seed != b.seed:
            continue
        for set_name in sets:
            verdicts = [{row["id"]: row["refused"] for row in rows_by_model[e.label] if row["set"] == set_name}
                        for e in (a, b)]
            comparisons.append({"set": set_name, "model_a": a.label, "model_b": b.label, **paired_mcnemar(*verdicts)})
    return comparisons


def summarize_seeds(results: dict[str, dict], endpoints: list[Endpoint], sets: list[str]) -> dict:
    """For each model name run under several seeds: mean ± std of the refusal rate over seeds, per prompt set."""
    by_name: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        if endpoint.seed is not None:
            by_name.setdefault(endpoint.name, []).append(endpoint)
    summary = {}
    for name, runs in by_name.items():
        summary[name] = {}
        for set_name in sets:
            rated = [(e.seed, results[e.label]["sets"][set_name]["rate"]) for e in runs]
            rated = [(seed, rate) for seed, rate in rated if rate is not None]
            summary[name][set_name] = {**seed_summary([rate for _, rate in rated]), "seeds": [s for s, _ in rated]}
    return summary


# ---------------------------------------------------------------------------------------------------------
# The whole evaluation


def run_http_eval(endpoints: list[Endpoint], prompt_sets: dict[str, list[PromptRecord]], judge: Judge,
                  out_dir: str | Path, settings: HttpEvalSettings = HttpEvalSettings(),
                  on_row: OnRow | None = None) -> dict:
    """Ask, judge, summarize and write the outputs; returns what ``http_results.json`` holds."""
    if importlib.util.find_spec("openai") is None:
        raise ConfigError("evaluate-http needs the 'openai' package: pip install 'openai>=1.40'")
    _check_unique([e.label for e in endpoints], "endpoint")
    out_dir = Path(out_dir)
    return asyncio.run(_run(endpoints, prompt_sets, judge, out_dir, settings, on_row))


async def _run(endpoints, prompt_sets, judge, out_dir, settings, on_row) -> dict:
    records = [record for records in prompt_sets.values() for record in records]
    semaphore = asyncio.Semaphore(max(1, settings.concurrency))
    asks = (ask_endpoint(e, records, out_dir, settings, semaphore, on_row) for e in endpoints)
    requests = dict(zip([e.label for e in endpoints], await asyncio.gather(*asks)))
    rows_by_model = {e.label: model_rows(e, records, out_dir) for e in endpoints}
    all_rows = [row for rows in rows_by_model.values() for row in rows]
    await judge_rows(all_rows, judge, out_dir, settings.judge_concurrency)
    results = _results(endpoints, prompt_sets, judge, settings, rows_by_model, requests)
    _write_outputs(out_dir, results, rows_by_model)
    return results


def _results(endpoints, prompt_sets, judge, settings, rows_by_model, requests) -> dict:
    sets = list(prompt_sets)
    models = {}
    for e in endpoints:
        rows = rows_by_model[e.label]
        models[e.label] = {"name": e.name, "seed": e.seed, "endpoint": e.url, "model": e.model,
                           "requests": requests[e.label],
                           "sets": {s: summarize_set([r for r in rows if r["set"] == s]) for s in sets}}
    return {
        "judge": judge.describe() if isinstance(judge, LLMJudge) else {"name": judge.name},
        "settings": asdict(settings),
        "prompt_sets": {s: {"n": len(recs), "harmful_prompts": sum(r.harmful for r in recs)}
                        for s, recs in prompt_sets.items()},
        "models": models,
        "comparisons": compare_models(rows_by_model, endpoints, sets),
        "seeds": summarize_seeds(models, endpoints, sets),
    }


def _write_outputs(out_dir: Path, results: dict, rows_by_model: dict[str, list[dict]]) -> None:
    for label, rows in rows_by_model.items():
        write_jsonl(out_dir / "responses" / f"{label}.jsonl", rows)
    write_json(out_dir / "http_results.json", results)
    write_text(out_dir / "http_summary.md", summary_markdown(results))


def summary_markdown(results: dict) -> str:
    """The results as Markdown tables: rates, McNemar comparisons, and seed summaries when there are seeds."""
    lines = _rate_table(results)
    if results["comparisons"]:
        lines += [""] + _comparison_table(results["comparisons"])
    if results["seeds"]:
        lines += [""] + _seed_table(results["seeds"])
    return "\n".join(lines) + "\n"


def _rate_table(results: dict) -> list[str]:
    lines = ["| model | prompt set | refusal rate [95% CI] (k/n) | errors |", "|---|---|---|---|"]
    for label, model in results["models"].items():
        for set_name, s in model["sets"].items():
            info = results["prompt_sets"][set_name]
            kind = {0: "over-refusal: ", info["n"]: ""}.get(info["harmful_prompts"], "mixed harmful/benign: ")
            errors = ", ".join(f"{n} {reason}" for reason, n in s["error_reasons"].items()) or "0"
            lines.append(f"| {label} | {set_name} | {kind}{format_rate(s)} | {errors} |")
    return lines


def _comparison_table(comparisons: list[dict]) -> list[str]:
    lines = ["| prompt set | A | B | refused by A only | by B only | pairs | McNemar p |", "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['set']} | {c['model_a']} | {c['model_b']} | {c['b']} | {c['c']} | {c['n_pairs']} "
                     f"| {c['p_value']:.3g} |")
    return lines


def _seed_table(seeds: dict) -> list[str]:
    lines = ["| model | prompt set | refusal rate over seeds (mean ± std) | per seed |", "|---|---|---|---|"]
    for name, per_set in seeds.items():
        for set_name, s in per_set.items():
            mean = "n/a" if s["mean"] is None else f"{s['mean']:.1%}"
            std = f" ± {s['std']:.1%}" if s["std"] is not None else ""
            values = ", ".join(f"{seed}: {v:.1%}" for seed, v in zip(s["seeds"], s["values"]))
            lines.append(f"| {name} | {set_name} | {mean}{std} (n={s['n']}) | {values} |")
    return lines


def _check_unique(names: list[str], what: str) -> None:
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ConfigError(f"{what} '{duplicates[0]}' is given twice")


# ---------------------------------------------------------------------------------------------------------
# Command line


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate-http`` subcommand."""
    import orthoguard.judges.llm  # noqa: F401  (registers the LLM judges)

    p = subparsers.add_parser("evaluate-http", help="refusal rates of models served over OpenAI-compatible HTTP")
    p.add_argument("--endpoint", action="append", required=True, metavar="NAME=URL[,model=NAME][,seed=N]",
                   help="a model to evaluate (repeatable); the served model name defaults to NAME")
    p.add_argument("--prompt-set", action="append", metavar="NAME_OR_PATH",
                   help=f"a built-in set or a CSV/JSON/JSONL file (repeatable; default: {' '.join(DEFAULT_PROMPT_SETS)})")
    p.add_argument("--limit", type=int, help="at most N prompts per set")
    p.add_argument("--prompt-seed", type=int, help="shuffle each set with this seed before --limit")
    p.add_argument("--judge", default="keyword", choices=sorted(JUDGES))
    p.add_argument("--judge-endpoint", help="base URL of the judge's OpenAI-compatible server (LLM judges)")
    p.add_argument("--judge-model", help="the judge's model name on that server")
    p.add_argument("--judge-max-tokens", type=int, help="reply length for the judge (default: the protocol's)")
    p.add_argument("--judge-concurrency", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once, over all endpoints")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--retry-delay", type=float, default=1.0, help="first back-off in seconds (doubles each retry)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--chat-template-kwargs", help='JSON for the server\'s chat template, e.g. \'{"enable_thinking": false}\'')
    p.add_argument("--output-dir", default="runs/http-eval")
    p.set_defaults(func=cmd_evaluate_http)
    return p


def cmd_evaluate_http(args: argparse.Namespace) -> dict:
    _quiet_http_logs()
    endpoints = [parse_endpoint(spec) for spec in args.endpoint]
    settings = _settings(args)
    names = args.prompt_set or list(DEFAULT_PROMPT_SETS)
    prompt_sets = {}
    for name in names:
        records = load_prompt_set(name, limit=args.limit, seed=args.prompt_seed)
        _check_unique(list(prompt_sets) + [records[0].set], "prompt set")
        prompt_sets[records[0].set] = records
    results = run_http_eval(endpoints, prompt_sets, _judge(args), args.output_dir, settings)
    out = Path(args.output_dir)
    print(summary_markdown(results), end="")
    print(f"results: {out / 'http_results.json'}")
    _raise_if_incomplete(results, out)
    return results


def _quiet_http_logs() -> None:
    # the HTTP client logs every request at INFO; keep them for --verbose (DEBUG) only
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> HttpEvalSettings:
    for field in ("concurrency", "max_tokens", "judge_concurrency"):
        if getattr(args, field) < 1:
            raise ConfigError(f"--{field.replace('_', '-')} must be at least 1, got {getattr(args, field)}")
    if args.max_retries < 0 or args.timeout <= 0 or args.retry_delay < 0:
        raise ConfigError("--max-retries and --retry-delay must be >= 0 and --timeout > 0")
    kwargs = None
    if args.chat_template_kwargs:
        try:
            kwargs = json.loads(args.chat_template_kwargs)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--chat-template-kwargs: not valid JSON ({exc.msg})") from None
        if not isinstance(kwargs, dict):
            raise ConfigError("--chat-template-kwargs: expected a JSON object")
    return HttpEvalSettings(args.max_tokens, args.temperature, args.concurrency, args.timeout, args.max_retries,
                            args.retry_delay, kwargs, args.judge_concurrency)


def _judge(args: argparse.Namespace) -> Judge:
    cls = JUDGES[args.judge]
    if not issubclass(cls, LLMJudge):
        if args.judge_endpoint or args.judge_model:
            raise ConfigError(f"--judge-endpoint/--judge-model are for LLM judges; '{args.judge}' runs locally")
        return get_judge(args.judge)
    return get_judge(args.judge, endpoint=args.judge_endpoint, model=args.judge_model, timeout=args.timeout,
                     max_retries=args.max_retries, retry_delay=args.retry_delay, max_tokens=args.judge_max_tokens)


def _raise_if_incomplete(results: dict, out: Path) -> None:
    failed_calls = sum(m["requests"]["failed"] for m in results["models"].values())
    failed_judging = sum(n for m in results["models"].values() for s in m["sets"].values()
                         for reason, n in s["error_reasons"].items() if reason.startswith("judge_error: http"))
    if failed_calls or failed_judging:
        raise IncompleteRunError(
            f"{failed_calls} model calls and {failed_judging} judge calls failed (left out of the rates in {out}); "
            "rerun the same command to ask only for those")


def main_for_tests(argv: list[str]) -> int:
    """``orthoguard evaluate-http ARGS`` without the rest of the CLI: exit code 0, or 2 with one line on stderr."""
    parser = argparse.ArgumentParser(prog="orthoguard")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate-http", *argv])
    try:
        args.func(args)
    except OrthoguardError as exc:
        print(f"orthoguard: error: {exc}", file=sys.stderr)
        return 2
    return 0
