"""The ``evaluate-http`` subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from orthoguard.errors import ConfigError, OrthoguardError
from orthoguard.http_eval.client import HttpEvalSettings, parse_endpoint
from orthoguard.http_eval.runner import _check_unique, run_http_eval, summary_markdown
from orthoguard.judges import JUDGES, REFUSAL, Judge, get_judge, measures
from orthoguard.judges.llm import LLMJudge
from orthoguard.prompts import load_prompt_set

DEFAULT_PROMPT_SETS = ("strongreject-small", "xstest-safe")


class IncompleteRunError(OrthoguardError):
    """Some model or judge calls failed; the results are written without them and a rerun retries them."""


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
    p.add_argument("--judge", default="keyword", choices=sorted(JUDGES), help="refusal judge (default: %(default)s)")
    p.add_argument("--judge-endpoint", help="base URL of the judge's OpenAI-compatible server (LLM judges)")
    p.add_argument("--judge-model", help="the judge's model name on that server")
    p.add_argument("--judge-max-tokens", type=int, help="reply length for the judge (default: the protocol's)")
    p.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight at once (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once, over all endpoints")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=3, help="retries per request after an error or timeout (default: %(default)s)")
    p.add_argument("--retry-delay", type=float, default=1.0, help="first back-off in seconds (doubles each retry)")
    p.add_argument("--max-tokens", type=int, default=256, help="reply length of the evaluated models (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: %(default)s: greedy)")
    p.add_argument("--chat-template-kwargs", help='JSON for the server\'s chat template, e.g. \'{"enable_thinking": false}\'')
    p.add_argument("--output-dir", default="runs/http-eval", help="results folder (default: %(default)s)")
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
    if REFUSAL not in measures(cls):
        raise ConfigError(f"--judge {args.judge} judges harm, not refusal; evaluate-http reports refusal rates "
                          "(refusal judges: keyword, sorry-bench, strongreject; harm judges run in `orthoguard run` "
                          "as evaluation.harm_judge, or on a file with `orthoguard judge`)")
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
