"""The whole evaluation: ask, judge, summarize, and write ``http_results.json``, the responses and the Markdown."""

from __future__ import annotations

import asyncio
import importlib.util
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from orthoguard.errors import ConfigError
from orthoguard.http_eval.client import Endpoint, HttpEvalSettings, OnRow, ask_endpoint, model_rows
from orthoguard.http_eval.stats import compare_models, summarize_seeds, summarize_set
from orthoguard.io import write_json, write_jsonl, write_text
from orthoguard.judges import Judge
from orthoguard.judges.batch import ajudge_rows
from orthoguard.judges.llm import LLMJudge
from orthoguard.metrics import format_rate
from orthoguard.prompts import PromptRecord


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
    await ajudge_rows(all_rows, judge, out_dir / "cache" / f"judge.{judge.name}.jsonl", settings.judge_concurrency)
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
        lines.append(f"| {c['set']} | {c['model_a']} | {c['model_b']} | {c['refused_a_only']} | {c['refused_b_only']} | {c['n_pairs']} "
                     f"| {c['p_value']:.3g} |")
    return lines


def _seed_table(seeds: dict) -> list[str]:
    lines = ["| model | prompt set | pooled over seeds [95% CI] (k/n) | mean ± std of the seeds | per seed |",
             "|---|---|---|---|---|"]
    for name, per_set in seeds.items():
        for set_name, s in per_set.items():
            mean = "n/a" if s["mean"] is None else f"{s['mean']:.1%}"
            std = f" ± {s['std']:.1%}" if s["std"] is not None else ""
            values = ", ".join(f"{seed}: {v:.1%}" for seed, v in zip(s["seeds"], s["values"]))
            lines.append(f"| {name} | {set_name} | {format_rate(s['pooled'])} | {mean}{std} (n={s['n']}) | {values} |")
    return lines


def _check_unique(names: list[str], what: str) -> None:
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ConfigError(f"{what} '{duplicates[0]}' is given twice")

