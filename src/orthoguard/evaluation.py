"""Local evaluation: prompt sets x models x a judge -> records, rates with intervals, paired tests, utility.

For every model: refusal rate on each prompt set (harmful sets: refusing is wanted; benign sets: refusing is
over-refusal), per category where the set has categories, the attack task's held-out loss (did the attack learn?)
and the perplexity of benign reference answers (did the model keep its ordinary ability?); with a benign task
(``attack.benign_task``), the fine-tune accuracy on its first ``evaluation.fa_items`` test items
(``tasks.fine_tune_accuracy``; per-item replies in ``results/fine_tune_accuracy/<model>.jsonl``).

A reply with no verdict (empty, an unterminated ``<think>`` block, a judge error) is left out of a rate's
denominator and counted: ``summary.json`` -> ``models[model][set]`` has ``k``/``n`` (refusals / judged replies),
``no_verdict`` (``errors``, its older name) and ``total`` (``n + no_verdict``); the McNemar rows count the prompts
they leave out (``n_excluded``).
"""

from __future__ import annotations

import gc
import itertools
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq

from orthoguard import data as D
from orthoguard.config import ExperimentConfig
from orthoguard.generation import GenerationSettings, generate, generate_vllm, length_batches
from orthoguard.io import write_json, write_jsonl, write_text
from orthoguard.judges import judge_records
from orthoguard.judges.harm import add_harm_verdicts, harm_summary
from orthoguard.metrics import format_rate, paired_mcnemar, per_category, rate_summary
from orthoguard.models import load_with_adapters
from orthoguard.provenance import versions
from orthoguard.rundir import McNemarRow, Summary
from orthoguard.training import label_positions_only


@dataclass
class PromptSet:
    name: str
    prompts: list[str]
    harmful: bool  # True: refusing is the desired behaviour; False: refusing is over-refusal
    ids: list[str] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)

    def records(self) -> list[dict]:
        ids = self.ids or [str(i) for i in range(len(self.prompts))]
        cats = self.categories or [None] * len(self.prompts)
        return [{"set": self.name, "id": i, "category": c, "prompt": p} for i, c, p in zip(ids, cats, self.prompts)]


@dataclass
class UtilityData:
    """Samples whose completion loss is measured: held-out attack answers and benign reference answers; and the
    benign task (a ``tasks.BenignTask``, or None) whose fine-tune accuracy is measured on ``fa_items`` test items."""

    attack_heldout: list = field(default_factory=list)
    benign_references: list = field(default_factory=list)
    task: Any = None
    fa_items: int | None = None


@torch.inference_mode()
def completion_nll(model, tokenizer, samples, max_length: int = 256, batch_size: int = 4) -> float | None:
    """Mean per-token negative log-likelihood of the final assistant turns (the training loss, without training).

    Samples are batched by length (little padding) and the LM head runs only where the next token is a label
    (``training.label_positions_only``): the same value as the full forward pass, at about half its cost for
    short answers to long prompts."""
    if not samples:
        return None
    dataset, _ = D.build_sft_dataset(tokenizer, samples, max_length)
    tokenizer.padding_side = "right"
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    total = tokens = 0.0
    for rows in length_batches([len(row["input_ids"]) for row in dataset], batch_size):
        batch = {k: v.to(model.device) for k, v in collate([dataset[i] for i in rows]).items()}
        batch = label_positions_only(model, batch)
        labels = batch.pop("shift_labels", None)
        if labels is None:  # a model without logits_to_keep: every position's logits
            labels = batch["labels"][:, 1:]
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           logits_to_keep=batch["logits_to_keep"]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        total += float(loss)
        tokens += int((labels != -100).sum())
    return total / tokens if tokens else None


def generate_vllm_merged(model, tokenizer, prompts, settings: GenerationSettings, seed: int) -> list[str]:
    """vLLM serves a plain model folder: save the merged model once to a temporary folder and generate there."""
    with tempfile.TemporaryDirectory(prefix="orthoguard-vllm-") as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        return generate_vllm(folder, tokenizer, prompts, settings, seed)


def evaluate_model(cfg: ExperimentConfig, name: str, adapters: list[Path], prompt_sets: list[PromptSet], judge,
                   utility: UtilityData | None = None, judge_cache: Path | None = None,
                   records_dir: Path | None = None) -> tuple[dict[str, list[dict]], dict]:
    model, tokenizer, _ = load_with_adapters(cfg.model, adapters)
    e = cfg.evaluation
    settings = GenerationSettings(e.max_new_tokens, e.batch_size, e.do_sample, e.temperature, e.top_p, dtype=e.dtype)
    # every set's prompts in one generation pass: length-sorted batches across the sets, one merged copy per model
    prompts = [p for ps in prompt_sets for p in ps.prompts]
    if e.backend == "vllm":
        responses = generate_vllm_merged(model, tokenizer, prompts, settings, cfg.seed)
    else:
        responses = generate(model, tokenizer, prompts, settings, seed=cfg.seed, desc=name)
    out, start = {}, 0
    for ps in prompt_sets:
        replies = responses[start:start + len(ps.prompts)]
        start += len(ps.prompts)
        out[ps.name] = judge_records([{**r, "response": resp} for r, resp in zip(ps.records(), replies)], judge,
                                     judge_cache, e.judge.concurrency)
    util = {}
    if utility is not None:
        heldout = completion_nll(model, tokenizer, utility.attack_heldout)
        benign = completion_nll(model, tokenizer, utility.benign_references)
        util = {"attack_heldout_loss": heldout, "benign_perplexity": math.exp(benign) if benign is not None else None}
        if utility.task is not None:
            from orthoguard.tasks import fine_tune_accuracy

            fa = fine_tune_accuracy(model, tokenizer, utility.task, n=utility.fa_items, settings=settings)
            util["fine_tune_accuracy"] = fa.summary()
            if records_dir is not None:
                write_jsonl(Path(records_dir) / "fine_tune_accuracy" / f"{name}.jsonl", fa.record_dicts())
    del model
    gc.collect()
    return out, util


def judge_cache_path(cfg: ExperimentConfig, out_dir: Path) -> Path | None:
    """The LLM judge's verdict cache of a run's results (none for the keyword judge)."""
    spec = cfg.evaluation.judge
    return Path(out_dir) / "cache" / f"judge.{spec.name}.jsonl" if spec.is_llm else None


def evaluate_model_in(out_dir: Path, cfg: ExperimentConfig, name: str, adapters: list[Path],
                      prompt_sets: list[PromptSet], judge, utility: UtilityData | None = None):
    """``evaluate_model`` for a results folder: the judge's cache there and, with a benign task, the FA records."""
    out_dir = Path(out_dir)
    records_dir = out_dir if utility is not None and utility.task is not None else None
    return evaluate_model(cfg, name, adapters, prompt_sets, judge, utility, judge_cache_path(cfg, out_dir),
                          records_dir=records_dir)


def evaluate_models(cfg: ExperimentConfig, models: dict[str, list[Path]], prompt_sets: list[PromptSet], out_dir: Path,
                    utility: UtilityData | None = None, extra: dict | None = None) -> dict:
    """Every model on every prompt set, one after another in this process, then ``summarize_models``."""
    judge = cfg.evaluation.judge.build()
    evaluated = {name: evaluate_model_in(out_dir, cfg, name, adapters, prompt_sets, judge, utility)
                 for name, adapters in models.items()}
    return summarize_models(cfg, evaluated, models, prompt_sets, out_dir, extra)


def summarize_models(cfg: ExperimentConfig, evaluated: dict[str, tuple[dict[str, list[dict]], dict]],
                     models: dict[str, list[Path]], prompt_sets: list[PromptSet], out_dir: Path,
                     extra: dict | None = None) -> dict:
    """The models' judged records and utility (``evaluate_model``'s, per model) brought together: the harm judge's
    readings, rates, per-category rates, paired tests; writes the seed's schema, per-set JSONL and
    ``summary.json``/``.md``."""
    out_dir = Path(out_dir)
    spec = cfg.evaluation.judge
    judge = spec.build()
    harm_spec = cfg.evaluation.harm_judge
    harm_judge = harm_spec.build() if harm_spec is not None else None
    summary = {
        "judge": judge.describe() if spec.is_llm else spec.name,
        **({"harm_judge": harm_judge.describe() if harm_spec.is_llm else harm_spec.name} if harm_judge else {}),
        "seed": cfg.seed,
        "prompt_sets": {ps.name: len(ps.prompts) for ps in prompt_sets},
        "harmful_sets": [ps.name for ps in prompt_sets if ps.harmful],
        "benign_sets": [ps.name for ps in prompt_sets if not ps.harmful],
        "models": {}, "categories": {}, "utility": {}, "versions": versions(), **(extra or {}),
    }
    records: dict[str, dict[str, list[dict]]] = {}
    for name in models:
        per_set, util = evaluated[name]
        records[name] = per_set
        if harm_judge is not None:
            summary.setdefault("harm", {})[name] = harm_readings(per_set, [ps.name for ps in prompt_sets if ps.harmful],
                                                                 harm_spec, harm_judge, out_dir)
        summary["utility"][name] = util
        summary["models"][name] = {s: rate_summary([r["refused"] for r in rs]) for s, rs in per_set.items()}
        summary["categories"][name] = {s: per_category(rs) for s, rs in per_set.items() if any(r["category"] for r in rs)}
        for set_name, rs in per_set.items():
            write_jsonl(out_dir / f"{set_name}.{name}.jsonl", rs)
    summary["mcnemar"] = {ps.name: pairwise_mcnemar(records, ps.name) for ps in prompt_sets}
    first = prompt_sets[0].name
    write_json(out_dir / "local_refusal_test.json", seed_schema(summary, records, models, first))
    Summary.parse(summary, out_dir / "summary.json").write(out_dir / "summary.json")
    write_text(out_dir / "summary.md", summary_table(summary))
    return summary


def harm_readings(per_set: dict[str, list[dict]], harmful_sets: list[str], spec, harm_judge, out_dir: Path) -> dict:
    """The harm judge on the harmful sets' records (fields added in place) and its reading of each set."""
    cache = out_dir / "cache" / f"judge.{spec.name}.jsonl" if spec.is_llm else None
    readings = {}
    for set_name in harmful_sets:
        add_harm_verdicts(per_set[set_name], harm_judge, cache, spec.concurrency)
        readings[set_name] = harm_summary(per_set[set_name], harm_judge.harm_field)
    return readings


def _verdicts(records: list[dict]) -> dict[str, bool | None]:
    return {str(r["id"]): r["refused"] for r in records}


def pairwise_mcnemar(records: dict[str, dict[str, list[dict]]], set_name: str) -> list[dict]:
    """Exact McNemar test for every pair of models on the same prompts (``mcnemar_row``)."""
    return [mcnemar_row(set_name, a, b, records[a][set_name], records[b][set_name]).model_dump(mode="json")
            for a, b in itertools.combinations(records, 2)]


def mcnemar_row(set_name: str, model_a: str, model_b: str, rows_a: list[dict], rows_b: list[dict]) -> McNemarRow:
    """The exact McNemar test of two models' judged rows of one prompt set, paired by prompt id:
    ``refused_a_only``/``refused_b_only`` are the discordant pairs, ``p_value`` is two-sided, ``n_excluded`` counts
    the prompts left out because either model has no verdict on them. Local and HTTP evaluation both use it."""
    stats = paired_mcnemar(_verdicts(rows_a), _verdicts(rows_b))
    return McNemarRow(set=set_name, model_a=model_a, model_b=model_b, refused_a_only=stats["b"],
                      refused_b_only=stats["c"], both=stats["both"], neither=stats["neither"],
                      n_pairs=stats["n_pairs"], n_excluded=stats["n_excluded"], p_value=stats["p_value"])


def seed_schema(summary: dict, records: dict, models: dict[str, list[Path]], set_name: str) -> dict:
    """The seed's ``local_refusal_test.json``: one entry per model on the main harmful set."""
    out = {}
    for name, adapters in models.items():
        stats = summary["models"][name][set_name]
        out[name] = {
            "model_name": name, "refusal_rate": stats["rate"], "total_prompts": stats["n"] + stats["errors"],
            "refusals": stats["k"], "ci95": stats["ci95"], "judge_errors": stats["errors"], "prompt_set": set_name,
            "adapters": [str(a) for a in adapters],
            "results": [{"prompt": r["prompt"], "response": r["response"], "refused": r["refused"]} for r in records[name][set_name]],
        }
    return out


def summary_table(summary: dict) -> str:
    sets = list(summary["prompt_sets"])
    kind = {s: "refusal" if s in summary.get("harmful_sets", sets) else "over-refusal" for s in sets}
    util_cols = ["attack held-out loss", "benign perplexity"] if any(summary.get("utility", {}).values()) else []
    fa = {m: u.get("fine_tune_accuracy") for m, u in summary.get("utility", {}).items() if u and u.get("fine_tune_accuracy")}
    if fa:
        util_cols.append(f"FA ({next(iter(fa.values()))['task']})")
    head = "| model | " + " | ".join(f"{kind[s]} on {s}" for s in sets) + "".join(f" | {c}" for c in util_cols) + " |\n"
    head += "|---|" + "---|" * (len(sets) + len(util_cols)) + "\n"
    rows = ""
    for name, per_set in summary["models"].items():
        util = summary.get("utility", {}).get(name) or {}
        cells = [format_rate(per_set[s]) for s in sets]
        if util_cols:
            cells += [_num(util.get("attack_heldout_loss")), _num(util.get("benign_perplexity"))]
        if fa:
            cells.append(format_rate(fa[name]) if name in fa else "n/a")
        rows += f"| {name} | " + " | ".join(cells) + " |\n"
    return head + rows + DENOMINATOR_NOTE


DENOMINATOR_NOTE = ("\nRates: refusals / judged replies (k/n) with a 95% Wilson interval. Replies with no verdict (empty, an "
                    "unfinished <think> block, or a judge error) are left out of n and counted beside it.\n")


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
