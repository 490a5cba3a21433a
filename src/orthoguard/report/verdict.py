"""The verdict: the answer on every harmful set, written from the corrected decisions of ``Experiment.comparisons``
(the rules are in ``orthoguard.report``'s docstring), with the cautions (wide intervals, unmatched controls,
replies with no verdict) and over-refusal."""

from __future__ import annotations

from orthoguard.report.constants import (ALPHA, CAUTION_WIDTH, FAILED_SETUP_BELOW, CONTROL_KINDS, CONTROL_LABELS, CONTROL_MISSING,
                                         MATCH_TOLERANCE)
from orthoguard.report.experiment import Experiment
from orthoguard.report.formatting import fmt_no_verdict, fmt_p, fmt_rate, fmt_spread, fmt_summary
from orthoguard.report.render import Block, note
from orthoguard.report.stats import Rate


def verdict_blocks(exp: Experiment) -> list[Block]:
    blocks = [Block("heading", "Verdict")]
    if not exp.summaries:
        return blocks + [note("No verdict: results/summary.json is absent (the evaluation has not run yet).")]
    if not exp.harmful_sets:
        return blocks + [note("No verdict: the summary names no harmful prompt set.")]
    blocks += [Block("para", _method_words(exp)), Block("para", _family_words(exp))]
    blocks += _no_verdict_flags(exp)
    wide: list[str] = []
    for set_name in exp.harmful_sets:
        if len(exp.harmful_sets) > 1:
            blocks.append(Block("heading", f"On {set_name}", level=3))
        blocks += _verdict_for_set(exp, set_name, wide)
    blocks += _removed_share_blocks(exp)
    blocks += _over_refusal_lines(exp, wide)
    blocks += _no_verdict_lines(exp)
    if wide:
        n = sorted({x for x in wide})
        blocks.append(Block("verdict", f"Intervals wider than {100 * CAUTION_WIDTH:.0f} points ({', '.join(n)}): "
                                       "the prompt sets are small, so only large differences can be told apart. "
                                       "Evaluate on more prompts (or more seeds) before drawing conclusions.",
                            level=1))
    return blocks


def _method_words(exp: Experiment) -> str:
    seeds = f" pooled over {len(exp.summaries)} seeds ({', '.join(map(str, [r.seed for r in exp.summaries]))})" if exp.multi else ""
    benign = ", ".join(exp.benign_sets) or "none"
    every_seed = ", and its rate is higher in every seed" if exp.multi else ""
    return (f"Refusal on the harmful set(s) {', '.join(exp.harmful_sets)} is what a defense must keep; refusal on the "
            f"benign set(s) ({benign}) is over-refusal. Rates are refusals / judged replies (replies with no verdict "
            f"are left out of the denominator) with 95% Wilson intervals{seeds}; judge: {exp.judge or 'unknown'}. "
            f"A variant 'beats' another when its rate is higher and the exact McNemar p, Holm-corrected over the "
            f"family below, is < {ALPHA:g}{every_seed}; whether the intervals overlap is shown but decides nothing. "
            "A defended variant protects refusal only if it beats vanilla and both of its random controls (same "
            "rank, and matched removed share).")


def _pair_words(c: dict) -> str:
    return " vs ".join(c["names"])


def _family_words(exp: Experiment) -> str:
    """The family of tests the Holm correction runs over, named; and the comparisons left without a test."""
    family = exp.family
    untested = [c for c in exp.comparisons.values() if c["p"] is None]
    if family:
        per_set = {}
        for c in family:
            per_set.setdefault(c["set"], []).append(_pair_words(c))
        listed = "; ".join(f"on {s}: {', '.join(pairs)}" for s, pairs in per_set.items())
        text = (f"Holm–Bonferroni family: the {len(family)} paired test(s) the verdict uses, over all harmful sets "
                f"({listed}).")
    else:
        text = "No comparison the verdict makes has a paired McNemar test in the results, so none is decided."
    if family and untested:
        text += (" Not decided, for want of a paired test in the results: "
                 + ", ".join(f"{_pair_words(c)} on {c['set']}" for c in untested) + ".")
    return text


def _check_width(exp: Experiment, model: str, set_name: str, wide: list[str]) -> None:
    """Remember a rate whose interval is too wide to resolve much (for the caution line)."""
    r = exp.rate(model, set_name)
    if r is not None and r.width is not None and r.width > CAUTION_WIDTH:
        wide.append(f"{model} on {set_name}: n = {r.n}" if r.n is not None else f"{model} on {set_name}")


def _verdict_rate(r: Rate | None) -> str:
    """A rate in the verdict; with its counts when many replies got no verdict, so n is never taken as whole."""
    return fmt_rate(r, counts=r is not None and r.flagged)


def _rate_words(exp: Experiment, model: str, set_name: str, wide: list[str]) -> str:
    _check_width(exp, model, set_name, wide)
    r = exp.rate(model, set_name)
    text = _verdict_rate(r)
    spread = fmt_spread(r) if r is not None and exp.multi else ""
    return f"{text} ({spread})" if spread else text


def _comparison_words(c: dict, other_label: str) -> str:
    if c["outcome"] == "beats":
        verb = f"**beats {other_label}**"
    elif c["outcome"] == "below":
        verb = f"**refuses less than {other_label}**"
    else:
        verb = f"**is not distinguishable from {other_label}**"
    return f"{verb} ({_reasons(c)})"


def _reasons(c: dict) -> str:
    if c["p"] is None:
        reasons = ["no paired McNemar test in the results"]
    else:
        reasons = [f"McNemar p = {fmt_p(c['p'])}, Holm-corrected {fmt_p(c['p_holm'])}"]
    reasons.append("intervals do not overlap" if c["apart"] else "intervals overlap")
    agree, total = c["seeds"]
    if total > 1:
        reasons.append(f"higher in {agree} of {total} seeds" if c["a"].rate >= c["b"].rate else
                       f"lower in {agree} of {total} seeds")
    return ", ".join(reasons)


def _ceiling_lines(exp: Experiment, set_name: str, wide: list[str]) -> list[str]:
    """The ceiling (or that it is a failed set-up) and the base model."""
    ceiling = exp.ceiling
    lines = []
    if exp.has_rate(ceiling, set_name):
        what = "the base model (the attack fine-tunes it)" if ceiling == "base" else "the aligned model (base + refusal LoRA)"
        if _failed_setup(exp, set_name):
            lines.append(f"**Failed set-up**: before the attack, {what} refuses only "
                         f"{_rate_words(exp, ceiling, set_name, wide)}. There is little refusal for an attack to remove "
                         f"or a defence to keep (below {100 * FAILED_SETUP_BELOW:.0f}%), so the comparisons on "
                         f"{set_name} say nothing about defences; make the model refuse first (refusal training).")
            return lines
        lines.append(f"Before the attack, {what} refuses {_rate_words(exp, ceiling, set_name, wide)}: "
                     f"the ceiling a defense can keep.")
    else:
        lines.append(f"The {ceiling} model has no rate on {set_name}: no ceiling to compare with.")
    if ceiling != "base" and exp.has_rate("base", set_name):
        lines.append(f"The base model refuses {_rate_words(exp, 'base', set_name, wide)}.")
    return lines


def _attack_lines(exp: Experiment, set_name: str, wide: list[str], vanilla: str | None) -> tuple[list[str], bool | None]:
    """Whether the undefended attack ``vanilla`` removes refusal (None: unknown)."""
    ceiling, lines = exp.ceiling, []
    if _failed_setup(exp, set_name):
        return lines, None
    if vanilla is None:
        lines.append("There is no undefended (vanilla) attack variant, so no defense can be compared with it.")
        return lines, None
    c = exp.compare(vanilla, ceiling, set_name)
    if c is None:
        lines.append(f"The undefended attack ({vanilla}) or the {ceiling} model has no rate on {set_name}: "
                     "whether the attack removes refusal is unknown.")
        return lines, None
    _check_width(exp, vanilla, set_name, wide)
    if c["p"] is None:
        lines.append(f"Whether the undefended attack removes refusal is not decided: {vanilla} refuses "
                     f"{_verdict_rate(c['a'])} against {ceiling}'s {_verdict_rate(c['b'])} ({_reasons(c)}).")
        return lines, None
    if c["outcome"] == "below":
        lines.append(f"**The undefended attack works**: {vanilla} refuses {_verdict_rate(c['a'])}, down from "
                     f"{ceiling}'s {_verdict_rate(c['b'])} ({_reasons(c)}).")
        return lines, True
    lines.append(f"**The undefended attack did not measurably remove refusal**: {vanilla} refuses "
                 f"{_verdict_rate(c['a'])} and {_comparison_words(c, ceiling)}; this run cannot show that a "
                 "defense helps.")
    return lines, False


def _control_parts(exp: Experiment, name: str, set_name: str, wide: list[str], outcomes: dict) -> list[str]:
    """A defence against each kind of random control; records each decided comparison in ``outcomes``."""
    controls = exp.controls.get(name, {})
    if not controls:
        return ["it has no random control in this run (neither same rank nor matched), so its effect cannot be "
                "told apart from any restriction of the update of the same size"]
    parts = []
    for kind in CONTROL_KINDS:
        label, control = CONTROL_LABELS[kind], controls.get(kind)
        if control is None:
            parts.append(f"it has no {label} in this run, so its effect cannot be told apart from "
                         f"{CONTROL_MISSING[kind]}")
            continue
        c = exp.compare(name, control, set_name)
        if c is None:
            parts.append(f"its {label} {control} has no rate on {set_name}")
            continue
        _check_width(exp, control, set_name, wide)
        outcomes[kind] = c["outcome"] if c["p"] is not None else "untested"
        parts.append(f"vs its {label} {control} {_verdict_rate(c['b'])}: it {_comparison_words(c, 'its ' + label)}")
    return parts


def _defence_line(exp: Experiment, name: str, set_name: str, wide: list[str], vanilla: str | None
                  ) -> tuple[str, dict | None]:
    """One defended variant on a set against ``vanilla``, and its outcomes: {'vanilla' / kind: outcome} (None: no
    rate)."""
    r = exp.rate(name, set_name)
    if r is None or r.rate is None:
        return f"{name} ({exp.role(name)}): no rate on {set_name}.", None
    outcomes = {}
    parts = [f"**{name}** ({exp.role(name)}) keeps {_rate_words(exp, name, set_name, wide)}"]
    c = exp.compare(name, vanilla, set_name) if vanilla is not None else None
    if c is not None:
        outcomes["vanilla"] = c["outcome"]
        parts.append(f"vs {vanilla} {_verdict_rate(c['b'])}: it {_comparison_words(c, vanilla)}")
    parts += _control_parts(exp, name, set_name, wide, outcomes)
    loss = exp.utility(name, "attack_heldout_loss")
    vloss = exp.utility(vanilla, "attack_heldout_loss") if vanilla else None
    if loss is not None:
        parts.append(f"attack held-out loss {fmt_summary(loss)}" + (f" (vanilla {fmt_summary(vloss)})" if vloss else ""))
    return "; ".join(parts) + ".", outcomes


def _failed_setup(exp: Experiment, set_name: str) -> bool:
    """The model the attack starts from hardly refuses: nothing for a defence to keep."""
    top = exp.rate(exp.ceiling, set_name)
    return top is not None and top.rate is not None and top.rate < FAILED_SETUP_BELOW


def _verdict_for_set(exp: Experiment, set_name: str, wide: list[str]) -> list[Block]:
    """The ceiling, then for each attack condition (its undefended attack and the defences compared with it) the
    attack's effect, each defence's comparisons and the answer."""
    blocks = [Block("list", items=_ceiling_lines(exp, set_name, wide))]
    groups = exp.attack_groups()
    for vanilla, defences in groups:
        if len(groups) > 1:
            blocks.append(Block("para", f"**Attack condition: {exp.condition_words(vanilla or defences[0])}** "
                                        f"(undefended attack: {vanilla or 'none'})."))
        blocks += _verdict_for_group(exp, set_name, wide, vanilla, defences)
    return blocks


def _verdict_for_group(exp: Experiment, set_name: str, wide: list[str], vanilla: str | None,
                       defences: list[str]) -> list[Block]:
    lines, attack_works = _attack_lines(exp, set_name, wide, vanilla)
    blocks = [Block("list", items=lines)] if lines else []
    if not defences:
        blocks.append(note("No defended attack variant (a defence mode, not random) in this run." if not exp.defended
                           else f"No defence in this run is compared with {vanilla}."))
        return blocks
    items, results = [], {}
    for name in defences:
        line, outcomes = _defence_line(exp, name, set_name, wide, vanilla)
        items.append(line)
        if outcomes is not None:
            results[name] = outcomes
    blocks.append(Block("list", items=items))
    if _failed_setup(exp, set_name):
        blocks.append(Block("verdict", f"No answer on {set_name}: a failed set-up (the model the attack starts from "
                                       "does not refuse), not evidence for or against any defence.", level=1))
    else:
        blocks.append(Block("verdict", " ".join(_answer_words(exp, set_name, results, attack_works, vanilla))))
    return blocks


def _protects(outcomes: dict) -> bool:
    return all(outcomes.get(k) == "beats" for k in ("vanilla",) + CONTROL_KINDS)


def _answer_words(exp: Experiment, set_name: str, results: dict[str, dict], attack_works: bool | None,
                  vanilla: str | None) -> list[str]:
    """The answer to the hypothesis on one set, from the corrected decisions."""
    vanilla = vanilla or "the undefended attack"
    protecting = [name for name, o in results.items() if _protects(o)]
    if protecting:
        one = len(protecting) == 1
        words = [f"**{', '.join(protecting)} protect{'s' if one else ''} refusal on {set_name}**: "
                 f"{'it beats' if one else 'each beats'} {vanilla} and both {'its' if one else 'their'} random controls "
                 "(same rank and matched removed share) after Holm correction: the refusal directions matter, not "
                 "only restricting the update or how much of it is removed."]
    else:
        words = [f"No defended variant can be said to protect refusal on {set_name}: that needs beating {vanilla} "
                 "and both random controls (same rank and matched removed share) after Holm correction."]
    words += [_control_count_words(exp, set_name, results, kind) for kind in CONTROL_KINDS]
    words += [_partial_claim(name, o, vanilla) for name, o in results.items()
              if o.get("vanilla") == "beats" and not _protects(o)]
    if any("vanilla" in o for o in results.values()) and not any(o.get("vanilla") == "beats" for o in results.values()):
        words.append(f"No defended variant beats {vanilla}.")
    if attack_works is False:
        words.append("The attack itself did not remove refusal here, so these comparisons are weak evidence either way.")
    return words


def _control_count_words(exp: Experiment, set_name: str, results: dict[str, dict], kind: str) -> str:
    label = CONTROL_LABELS[kind]
    tested = [name for name, o in results.items() if kind in o]
    beat = [name for name in tested if results[name][kind] == "beats"]
    if beat:
        n = len(results)
        return f"{len(beat)} of {n} defended variant(s) beat their {label} on {set_name}: {', '.join(beat)}."
    if tested:
        return f"No defended variant beats its {label} on {set_name} ({', '.join(tested)} tested)."
    if any(kind in exp.controls.get(name, {}) for name in exp.defended):
        return f"No defended variant and its {label} both have a rate on {set_name}."
    return f"No defended variant has a {label} in this run."


def _partial_claim(name: str, outcomes: dict, vanilla: str) -> str:
    """A defence that beats vanilla but not both controls: exactly which it beats, which not, which are undecided
    or absent, and that protection cannot be claimed."""
    def labels(*states: str | None) -> list[str]:
        return [CONTROL_LABELS[k] for k in CONTROL_KINDS if outcomes.get(k) in states]

    beaten, not_beaten, untested, missing = labels("beats"), labels("same", "below"), labels("untested"), labels(None)
    if not (beaten or not_beaten or untested):
        return (f"{name} beats {vanilla} but has no random control to compare with: that it protects refusal cannot "
                "be claimed (a random control is needed to tell the refusal directions from any restriction of the "
                "update).")
    text = f"{name} beats {vanilla}"
    if beaten:
        text += " and its " + " and its ".join(beaten)
    if not_beaten:
        text += " but not its " + " or its ".join(not_beaten)
    if missing:
        text += f"{', and' if not_beaten else ', but'} has no " + " or ".join(missing) + " to compare with"
    if untested:
        text += ", and its comparison with its " + " and its ".join(untested) + " has no paired test in the results"
    return f"{text}: that it protects refusal cannot be claimed ({_why_not_claimed(outcomes)})."


def _why_not_claimed(outcomes: dict) -> str:
    if outcomes.get("same_rank") in ("same", "below"):
        return "restricting the update helps, but not specifically along the refusal directions"
    if outcomes.get("matched") in ("same", "below"):
        return "it does no better than a random restriction that removes the same share of the update"
    absent = [k for k in CONTROL_KINDS if k not in outcomes]
    if absent:
        return f"without it, the refusal directions cannot be told apart from {CONTROL_MISSING[absent[0]]}"
    return "the comparison is not decided"


def _removed_share_blocks(exp: Experiment) -> list[Block]:
    """Each defence's mean removed share beside its controls': did the matched control really match?"""
    rows, mismatched, logged = [], [], False
    for name in [d for d in exp.defended if d in exp.controls]:
        own = exp.removed_share(name)
        row, logged = [name, fmt_summary(own)], logged or own is not None
        for kind in CONTROL_KINDS:
            control = exp.controls[name].get(kind)
            share = exp.removed_share(control) if control else None
            row += [control, _share_vs(own, share, kind == "matched")] if control else ["–", "–"]
            logged = logged or share is not None
            rel = _relative(own, share)
            if kind == "matched" and rel is not None and abs(rel) > MATCH_TOLERANCE:
                mismatched.append(f"{control} removes {fmt_summary(share)} against {name}'s {fmt_summary(own)}")
        rows.append(row)
    if not logged:
        return []
    tolerance = f"{100 * MATCH_TOLERANCE:.0f}%"
    blocks = [Block("heading", "Share of the update removed: defences and their controls", level=3),
              Block("table", header=["defence", "mean share removed", "same-rank control", "its share",
                                     "matched control", "its share"], items=rows),
              Block("para", "Mean share of the update (or gradient) norm each projection removed per step (over seeds: "
                            "mean ± std); in brackets the control's difference relative to its defence. A matched "
                            f"control should remove about as much as its defence (within {tolerance}).")]
    if mismatched:
        blocks.append(Block("verdict", f"Matched control not matched within {tolerance}: " + "; ".join(mismatched)
                            + ". The comparison with it then also tests how much of the update is removed, not only "
                              "which directions.", level=1))
    return blocks


def _relative(own: dict | None, share: dict | None) -> float | None:
    if not own or not share or not own.get("mean") or share.get("mean") is None:
        return None
    return (share["mean"] - own["mean"]) / own["mean"]


def _share_vs(own: dict | None, share: dict | None, judge_match: bool) -> str:
    rel = _relative(own, share)
    if rel is None:
        return fmt_summary(share)
    verdict = ("; matched" if abs(rel) <= MATCH_TOLERANCE else "; not matched") if judge_match else ""
    return f"{fmt_summary(share)} ({100 * rel:+.0f}%{verdict})"


def _no_verdict_flags(exp: Experiment) -> list[Block]:
    """A caution line for every model and set with more than NO_VERDICT_FLAG of its replies left without a verdict."""
    blocks = []
    for s in exp.sets:
        for m in exp.models:
            r = exp.rate(m, s)
            if r is None or not r.flagged:
                continue
            tail = (f"its rate is over {r.n} judged replies, and its McNemar pairs exclude those prompts" if r.n else
                    "it has no rate and no paired test on this set")
            share = f"{r.no_verdict} of {r.total} replies ({r.no_verdict_share:.0%})"
            blocks.append(Block("verdict", f"{m} on {s}: {share} got no verdict (empty, unfinished or unjudgeable): "
                                           f"{tail}.", level=1))
    return blocks


def _no_verdict_lines(exp: Experiment) -> list[Block]:
    """Fewer replies without a verdict than flagged: still counted, per set and model."""
    per_set = []
    for s in exp.sets:
        few = [f"{m} {fmt_no_verdict(r).removesuffix(' no verdict')}" for m in exp.models
               if (r := exp.rate(m, s)) is not None and r.no_verdict and not r.flagged]
        if few:
            per_set.append(f"on {s}: " + ", ".join(few))
    if not per_set:
        return []
    return [Block("verdict", "Replies with no verdict (empty, unfinished or unjudgeable; left out of the rates and of "
                             "the paired tests) " + "; ".join(per_set) + ".", level=1)]


def _over_refusal_lines(exp: Experiment, wide: list[str]) -> list[Block]:
    if not exp.benign_sets:
        return [note("Over-refusal: no benign prompt set in the results.")]
    lines = []
    for set_name in exp.benign_sets:
        parts = [f"{m} {_rate_words(exp, m, set_name, wide)}" for m in exp.models if exp.has_rate(m, set_name)]
        if parts:
            lines.append(f"Over-refusal on {set_name} (lower is better): " + "; ".join(parts) + ".")
    return [Block("list", items=lines)] if lines else [note("Over-refusal: no model has a rate on a benign set.")]
