"""The report's tables: models, paired tests, seed variation, attack training, weight-space diagnostics."""

from __future__ import annotations

from orthoguard.metrics import seed_summary
from orthoguard.report.experiment import Experiment
from orthoguard.report.formatting import fmt_p, fmt_rate, fmt_summary, pct
from orthoguard.report.render import Block, note


COLLAPSE_ROWS = 12  # longer tables are folded away in the HTML report (the Markdown keeps them whole)


def main_table(exp: Experiment) -> list[Block]:
    blocks = [Block("heading", "Models", level=3)]
    if not exp.models:
        return blocks + [note("No table of models: results/summary.json is absent or lists no model.")]
    util_keys = [(k, label) for k, label in (("attack_heldout_loss", "attack held-out loss"),
                                             ("benign_perplexity", "benign perplexity"))]
    header = ["model", "what"] + [f"refusal on {s}" for s in exp.harmful_sets] + [f"over-refusal on {s}" for s in exp.benign_sets]
    header += [label for _, label in util_keys]
    fa_task = exp.fa_task  # fine-tune accuracy on the benign task: only when the results have it
    if fa_task:
        header.append(f"FA ({fa_task})")
    rows = []
    for m in exp.models:
        row = [m, exp.role(m)]
        row += [fmt_rate(exp.rate(m, s), counts=True) for s in exp.harmful_sets + exp.benign_sets]
        row += [fmt_summary(exp.utility(m, k)) for k, _ in util_keys]
        if fa_task:
            row.append(fmt_rate(exp.fine_tune_accuracy(m), counts=True))
        rows.append(row)
    blocks.append(Block("table", header=header, items=rows))
    blocks.append(Block("para", f"Refusal judge: {exp.judge}. "
                                "Rates: refusals / judged replies (k/n) with a 95% Wilson interval. Replies with no "
                                "verdict (empty, an unfinished <think> block, or a judge error) are left out of n and "
                                "counted beside it ('m of total no verdict')."))
    if fa_task:
        blocks.append(Block("para", f"FA: fine-tune accuracy, correct replies / test items of {fa_task} (greedy), with "
                                    "a 95% Wilson interval."))
    missing = [label for k, label in util_keys if not any(exp.utility(m, k) for m in exp.models)]
    if missing:
        blocks.append(note(f"{' and '.join(missing).capitalize()}: not in the results (n/a)."))
    if exp.multi:
        blocks.append(Block("para", "Rates pooled over seeds (all refusals / all judged prompts); utility: mean ± std over seeds."))
    return blocks


def harm_table(exp: Experiment) -> list[Block]:
    """The harm judge's reading of the harmful sets, apart from the refusal rates: a reply that does not refuse
    need not be harmful (vague, off-topic or watered-down answers), so one is never shown as the other."""
    if not exp.harm_judge:
        return []
    header, columns = ["model", "what"], []
    for s in exp.harmful_sets:
        if any(exp.harmful(m, s) for m in exp.models):
            header.append(f"harmful on {s}")
            columns.append(lambda m, s=s: fmt_rate(exp.harmful(m, s), counts=True))
        if any(exp.harm_score(m, s) for m in exp.models):
            header.append(f"harm score on {s}")
            columns.append(lambda m, s=s: fmt_score(exp.harm_score(m, s)))
    rows = [[m, exp.role(m)] + [cell(m) for cell in columns] for m in exp.models]
    return [Block("heading", f"Harmfulness (harm judge: {exp.harm_judge})", level=3),
            Block("table", header=header, items=rows),
            Block("para", "Harmful: replies the harm judge calls harmful / judged replies, 95% Wilson interval. Harm "
                          "score: StrongREJECT's mean score in [0, 1] (0 for a refusal), 95% bootstrap interval over "
                          "the prompts. A separate question from refusal: the refusal columns above are the refusal "
                          f"judge's ({exp.judge}).")]


def fmt_score(s: dict | None) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    if s.get("ci95"):
        return f"{s['mean']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] (n={s['n']})"
    return fmt_summary(s, 2)


def decay_table(exp: Experiment) -> list[Block]:
    """The refusal-decay curves as numbers (``orthoguard.decay``): mean refusal over the attack (area under the
    curve), the step refusal falls below 50%, and refusal at the loss every attack reaches."""
    from orthoguard.decay import decay_summary, final_loss, refusal_at_loss

    logs = {m: [log for _, log in exp.step_logs(m) if log.probes] for m in exp.variants}
    logs = {m: found for m, found in logs.items() if found}
    if not logs:
        return []
    finals = [f for found in logs.values() for log in found if (f := final_loss(log.losses)) is not None]
    target = max(finals) if finals else None
    rows = []
    for m, found in logs.items():
        summaries = [decay_summary(log.probes) for log in found]
        matched = [refusal_at_loss(log.probes, log.losses, target) if target is not None else None for log in found]
        rows.append([m, exp.role(m), _decay_cell([s.auc for s in summaries], summaries[0].auc_ci, pct_interval=True),
                     _half_cell(summaries), _matched_cell(matched), _decay_cell([s.final for s in summaries], None, True)])
    header = ["model", "what", "mean refusal over the attack (AUC)", "step refusal < 50%",
              f"refusal at training loss {target:.3f}" if target is not None else "refusal at matched loss", "last probe"]
    prompts = sorted({decay_summary(log.probes).prompts for found in logs.values() for log in found})
    return [Block("heading", "Refusal decay: summaries", level=3), Block("table", header=header, items=rows),
            Block("para", "From the refusal probes (the curves below). AUC: area under the probe refusal curve over the "
                          "attack's steps, i.e. its mean refusal (100% = refusal never moved). Step < 50%: first step at "
                          "which probe refusal falls below half, linear between probes. Refusal at training loss: where "
                          "the attack's training loss (running mean of 3 steps) first reaches the highest final loss among "
                          "these attacks, so that each is compared at the same attack loss (the attack that learned "
                          "least reaches it only at its end: a defence that keeps refusal only by not learning the "
                          "attack shows up here). " + _interval_words(prompts, multi=exp.multi))]


def _interval_words(prompts: list[int], multi: bool) -> str:
    if multi:
        return "Over seeds: mean ± std of the seeds' values."
    counted = [p for p in prompts if p]
    if not counted:
        return ("No intervals: the probe logs have no per-prompt verdicts (they were written before 2026-12-02; "
                "rerun the attacks to get them).")
    return f"Intervals: 95% percentile bootstrap over the {', '.join(map(str, counted))} probe prompts."


def _decay_cell(values: list[float | None], ci, pct_interval: bool) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) > 1:
        return fmt_summary(seed_summary([100 * v for v in values]), 1) + "%"
    text = pct(values[0])
    return f"{text} [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else text


def _half_cell(summaries) -> str:
    def step(x) -> str:
        return "never" if x is None or x == float("inf") else f"{x:.1f}"

    if len(summaries) > 1:
        return ", ".join(step(s.steps_to_half) for s in summaries) + " (per seed)"
    s = summaries[0]
    text = step(s.steps_to_half) if s.steps_to_half is not None else f"> {s.last_step}"
    if s.steps_to_half_ci:
        lo, hi = s.steps_to_half_ci
        text += f" [{step(lo)}, {step(hi) if hi != float('inf') else f'> {s.last_step}'}]"
    return text


def _matched_cell(matched) -> str:
    cells = ["not reached" if m is None else f"{pct(m[1]) if m[1] is not None else 'n/a'} (step {m[0]:.0f})" for m in matched]
    return ", ".join(cells)


def mcnemar_table(exp: Experiment) -> list[Block]:
    blocks = [Block("heading", "Paired tests (exact McNemar)", level=3)]
    rows, empty = [], 0
    for set_name in exp.sets:
        for a, b in exp.mcnemar_pairs(set_name):
            t = exp.mcnemar(set_name, a, b)
            if t is None:
                continue
            if t["n_pairs"] == 0:
                empty += 1
                continue
            row = [set_name, a, b, str(t["a_only"]), str(t["b_only"]), str(t["n_pairs"]), fmt_p(t["p_value"]),
                   _holm_cell(exp, set_name, a, b)]
            if exp.multi:
                row.append(", ".join(f"{s}: {fmt_p(p)}" for s, p in t["per_seed"].items()))
            rows.append(row)
    left_out = [note(f"{empty} pair(s) with no prompt decided for both models left out.")] if empty else []
    if not rows:
        return blocks + (left_out or [note("No paired tests: the results have no 'mcnemar' entries.")])
    header = ["set", "A", "B", "refused by A only", "refused by B only", "pairs", "p", "Holm-corrected p"]
    if exp.multi:
        header.append("p per seed")
    blocks.append(Block("table", "every pair of models", header=header, items=rows, collapsed=len(rows) > COLLAPSE_ROWS))
    blocks.append(Block("para", "Discordant pairs on the same prompts; p is two-sided and exact"
                        + (" (discordant pairs summed over seeds)" if exp.multi else "")
                        + f". Holm-corrected p: for the {len(exp.family)} test(s) the verdict uses (one family); "
                          "'–' for the others, which decide nothing."))
    return blocks + left_out


def _holm_cell(exp: Experiment, set_name: str, a: str, b: str) -> str:
    c = exp.comparisons.get((set_name, a, b)) or exp.comparisons.get((set_name, b, a))
    return fmt_p(c["p_holm"]) if c is not None and c["p_holm"] is not None else "–"


def seed_table(exp: Experiment) -> list[Block]:
    blocks = [Block("heading", "Seed variation", level=3)]
    if not exp.multi:
        seed = exp.seeds[0] if exp.seeds else None
        return blocks + [note(f"One seed ({seed}): no seed variation. Run with --seeds to measure it.")]
    rows = []
    for m in exp.models:
        for s in exp.harmful_sets + exp.benign_sets:
            r = exp.rate(m, s)
            if r is None or r.rate is None:
                continue
            spread = r.spread
            mean_std = "n/a" if spread["mean"] is None else (
                f"{100 * spread['mean']:.0f}" + (f" ± {100 * spread['std']:.0f}" if spread["std"] is not None else ""))
            rows.append([m, s, mean_std + "%", ", ".join(f"{seed}: {pct(v)}" for seed, v in r.per_seed.items())])
    return blocks + _table(["model", "set", "mean ± std", "per seed"], rows, "No seed variation: no seed has a decided rate.")


def training_table(exp: Experiment) -> list[Block]:
    blocks = [Block("heading", "Attack training", level=3)]
    rows = []
    for m in exp.variants:
        logs = exp.step_logs(m)
        if not logs:
            continue
        finals = [log.losses[-1].loss for _, log in logs if log.losses]
        steps = [log.losses[-1].step for _, log in logs if log.losses]
        secs = [log.seconds for _, log in logs if log.seconds is not None]
        samples = sorted({log.train_samples for _, log in logs} - {None})
        removed = exp.removed_share(m)
        rows.append([m, exp.role(m), ", ".join(map(str, sorted(set(steps)))) or "n/a",
                     fmt_summary(seed_summary([f for f in finals if f is not None])),
                     fmt_summary(removed) if removed else "–",
                     ", ".join(map(str, samples)) or "n/a", fmt_summary(seed_summary(secs), 3) if secs else "n/a"])
    return blocks + _table(["variant", "what", "steps", "final loss", "mean share removed", "train samples", "seconds"],
                           rows, "No attack training logs (logs/training_loss_<variant>.json) yet.")


def diagnostics_table(exp: Experiment) -> list[Block]:
    blocks = [Block("heading", "Weight-space diagnostics (attack change vs refusal change)", level=3)]
    rows = []
    for m in exp.variants:
        d = exp.diagnostics(m)
        if d:
            rows.append([m, exp.role(m)] + [fmt_summary(d.get(k)) for k in ("cosine", "energy_in_ref_subspace", "attack_norm")])
    if not rows:
        return blocks + [note("No weight-space diagnostics in the logs or results.")]
    blocks += _table(["variant", "what", "cosine", "energy in refusal subspace", "attack norm"], rows, "")
    blocks.append(Block("para", "cosine: <dW_attack, dW_refusal>_F / norms, over all modules; energy: the share of the "
                                "attack's change inside the top singular subspace of the refusal change."))
    return blocks


def _table(header: list[str], rows: list[list[str]], empty: str) -> list[Block]:
    """The table, or the note that says why there is none."""
    return [Block("table", header=header, items=rows)] if rows else [note(empty)]
