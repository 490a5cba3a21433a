"""The report's tables: models, paired tests, seed variation, attack training, weight-space diagnostics."""

from __future__ import annotations

from orthoguard.metrics import seed_summary
from orthoguard.report.experiment import Experiment
from orthoguard.report.formatting import fmt_p, fmt_rate, fmt_summary, pct
from orthoguard.report.render import Block, note


def main_table(exp: Experiment) -> list[Block]:
    blocks = [Block("heading", "Models", level=3)]
    if not exp.models:
        return blocks + [note("No table of models: results/summary.json is absent or lists no model.")]
    util_keys = [(k, label) for k, label in (("attack_heldout_loss", "attack held-out loss"),
                                             ("benign_perplexity", "benign perplexity"))]
    header = ["model", "what"] + [f"refusal on {s}" for s in exp.harmful_sets] + [f"over-refusal on {s}" for s in exp.benign_sets]
    header += [label for _, label in util_keys]
    rows = []
    for m in exp.models:
        row = [m, exp.role(m)]
        row += [fmt_rate(exp.rate(m, s), counts=True) for s in exp.harmful_sets + exp.benign_sets]
        row += [fmt_summary(exp.utility(m, k)) for k, _ in util_keys]
        rows.append(row)
    blocks.append(Block("table", header=header, items=rows))
    blocks.append(Block("para", "Rates: refusals / judged replies (k/n) with a 95% Wilson interval. Replies with no "
                                "verdict (empty, an unfinished <think> block, or a judge error) are left out of n and "
                                "counted beside it ('m of total no verdict')."))
    missing = [label for k, label in util_keys if not any(exp.utility(m, k) for m in exp.models)]
    if missing:
        blocks.append(note(f"{' and '.join(missing).capitalize()}: not in the results (n/a)."))
    if exp.multi:
        blocks.append(Block("para", "Rates pooled over seeds (all refusals / all judged prompts); utility: mean ± std over seeds."))
    return blocks


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
    blocks.append(Block("table", header=header, items=rows))
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
