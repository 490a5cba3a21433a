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

import logging

# The package's parts, by concern; every name the single module http_eval.py had is importable from here.
from orthoguard.http_eval.cache import JsonlCache, response_cache  # noqa: F401
from orthoguard.http_eval.cli import (DEFAULT_PROMPT_SETS, IncompleteRunError, _judge, _quiet_http_logs,  # noqa: F401
                                      _raise_if_incomplete, _settings, cmd_evaluate_http, main_for_tests, register_cli)
from orthoguard.http_eval.client import (_NAME, API_KEY_ENV, Endpoint, HttpEvalSettings, OnRow, _usable,  # noqa: F401
                                         ask_endpoint, messages_for, model_rows, parse_endpoint, request_key)
from orthoguard.http_eval.runner import (_check_unique, _comparison_table, _rate_table, _results, _run,  # noqa: F401
                                         _seed_table, _write_outputs, run_http_eval, summary_markdown)
from orthoguard.http_eval.stats import _reason, compare_models, summarize_seeds, summarize_set  # noqa: F401

log = logging.getLogger(__name__)
