"""Statistics over the judged rows: rates per prompt set, McNemar tests between models, means over seeds."""

from __future__ import annotations

import itertools
import re
from collections import Counter

from orthoguard.http_eval.client import Endpoint
from orthoguard.evaluation import mcnemar_row
from orthoguard.metrics import per_category, rate_summary, seed_summary
from orthoguard.rundir import RateSummary


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
            rows_a, rows_b = ([row for row in rows_by_model[e.label] if row["set"] == set_name] for e in (a, b))
            comparisons.append(mcnemar_row(set_name, a.label, b.label, rows_a, rows_b).model_dump(mode="json"))
    return comparisons


def summarize_seeds(results: dict[str, dict], endpoints: list[Endpoint], sets: list[str]) -> dict:
    """For each model name run under several seeds, per prompt set: the pooled rate (refusals and judged replies
    summed over seeds, with its Wilson interval, as the report pools them) and mean ± std of the seeds' rates."""
    by_name: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        if endpoint.seed is not None:
            by_name.setdefault(endpoint.name, []).append(endpoint)
    summary = {}
    for name, runs in by_name.items():
        summary[name] = {}
        for set_name in sets:
            per_seed = [(e.seed, results[e.label]["sets"][set_name]) for e in runs]
            rated = [(seed, s["rate"]) for seed, s in per_seed if s["rate"] is not None]
            pooled = RateSummary.pooled([RateSummary(**{k: s[k] for k in ("rate", "k", "n", "no_verdict")})
                                         for _, s in per_seed])
            summary[name][set_name] = {"pooled": pooled.model_dump(mode="json"), **seed_summary([r for _, r in rated]),
                                       "seeds": [seed for seed, _ in rated]}
    return summary

