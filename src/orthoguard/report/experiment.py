"""The experiment over one or several seeds: variants, sets, pooled rates, the verdict's comparisons (Holm family),
random controls and removed shares."""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any

from orthoguard.metrics import holm_bonferroni, mcnemar_exact, mean_removed_share, seed_summary
from orthoguard.report.constants import (BENIGN_NAME, CONTROL_KINDS, FIXED_COLORS, NOT_VARIANTS,
                                         PALETTE)
from orthoguard.modes import MODES
from orthoguard.provenance import describe
from orthoguard.report.load import RunData
from orthoguard.report.stats import Rate, _decide
from orthoguard.rundir import DiagnosticsOverall, RateSummary, TrainLog


class Experiment:
    """What the report needs, computed from the runs: variants, sets, pooled rates, comparisons."""

    def __init__(self, root: Path, runs: list[RunData], notes: list[str] | None = None):
        self.root = root
        self.runs = runs
        self.notes = list(notes or []) + [n for r in runs for n in r.notes]
        self.multi = len(runs) > 1 or (root / "seeds.json").is_file()
        self.config = next((r.config for r in runs if r.config), {})
        self.summaries = [r for r in runs if r.summary]
        self.variants = self._variants()
        self.models = self._models()
        self.sets = self._sets()
        self.harmful_sets, self.benign_sets = self._set_roles()
        self.controls = self._controls()
        others = [m for m in dict.fromkeys(self.models + list(self.variants)) if m not in FIXED_COLORS]
        self.colors = {**FIXED_COLORS, **{m: PALETTE[i % len(PALETTE)] for i, m in enumerate(others)}}

    # -- identity ------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.root.resolve().name)

    @property
    def model_name(self) -> str | None:
        model = self.config.get("model")
        return model.get("name") if isinstance(model, dict) else None

    @property
    def judge(self) -> str | None:
        judges = sorted({r.summary.judge_label for r in self.summaries if r.summary.judge})
        return ", ".join(judges) or None

    @property
    def versions_label(self) -> str:
        """The versions that computed the results (the summaries'; else the stage records'), one line; several
        when the seeds or stages were computed by different versions."""
        found = [r.summary.versions for r in self.summaries if r.summary.versions]
        found = found or [s.versions for r in self.runs for s in r.stages.values() if s.versions]
        labels = list(dict.fromkeys(describe(v) for v in found))
        return "; ".join(labels) if labels else "unknown versions (a run from before versions were recorded)"

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    @property
    def date(self) -> str | None:
        stamps = [s.finished for r in self.runs for s in r.stages.values() if s.finished]
        return max(stamps).replace("T", " ") if stamps else None

    @property
    def target(self) -> str:
        for r in self.summaries:
            if r.summary.attacked in ("base", "aligned"):
                return r.summary.attacked
        attack = self.config.get("attack") or {}
        return attack.get("target", "aligned") if isinstance(attack, dict) else "aligned"

    # -- variants and models -------------------------------------------------------------------------------

    def _variants(self) -> dict[str, dict]:
        """Attack variants in config order: name -> {mode, directions (the family), random, at, reg_lambda}."""
        default_family = (self.config.get("directions") or {}).get("kind", "lora_factors")
        out: dict[str, dict] = {}
        for v in ((self.config.get("attack") or {}).get("variants") or []):
            if isinstance(v, dict) and v.get("name"):
                out[v["name"]] = dict(v)
        for run in self.runs:
            for name, record in run.logs.items():
                v = record.variant
                if name in NOT_VARIANTS or v is None:
                    continue
                out.setdefault(v.get("name") or name, dict(v))
        for name, v in out.items():
            v.setdefault("mode", "vanilla")
            v["random"] = random_kind(v.get("random"))
            if not _undefended(v["mode"]):
                v["directions"] = v.get("directions") or default_family
                v.setdefault("at", "update")
        return out

    def harmful_ratio(self, model: str) -> float:
        """The share of harmful samples in a variant's attack data (its own ``harmful_ratio``, else the attack's;
        1.0: the seed's pure harmful attack)."""
        v = self.variants.get(model) or {}
        own = v.get("harmful_ratio")
        return float(own if own is not None else (self.config.get("attack") or {}).get("harmful_ratio", 1.0))

    def _models(self) -> list[str]:
        names: list[str] = []
        for r in self.summaries:
            for m in r.summary.models:
                if m not in names:
                    names.append(m)
        order = ["base", "aligned"] + list(self.variants)
        return [m for m in order if m in names] + [m for m in names if m not in order]

    def role(self, model: str) -> str:
        if model == "base":
            return "base model, no LoRA"
        if model == "aligned":
            return "base + refusal LoRA"
        v = self.variants.get(model)
        if v is None:
            return "attack variant (kind unknown)"
        if v["mode"] not in MODES:  # a mode this version does not know, from another run
            return "attack, no defense" if _undefended(v["mode"]) else f"attack, {v['mode']}"
        return MODES[v["mode"]].describe(v)

    @property
    def vanilla(self) -> str | None:
        """The undefended attack the defenses are compared with: the variant named 'vanilla', else the first one."""
        vanillas = [m for m, v in self.variants.items() if _undefended(v["mode"]) and m in self.models]
        return "vanilla" if "vanilla" in vanillas else (vanillas[0] if vanillas else None)

    def condition(self, model: str) -> tuple:
        """What the attack trained on and how hard: (harmful ratio, the variant's training overrides)."""
        v = self.variants.get(model) or {}
        overrides = tuple(sorted((k, str(val)) for k, val in (v.get("training") or {}).items()))
        return self.harmful_ratio(model), overrides

    def condition_words(self, model: str) -> str:
        ratio, overrides = self.condition(model)
        return ", ".join([f"harmful ratio p = {ratio:g}"] + [f"{k} {val}" for k, val in overrides])

    def vanilla_of(self, model: str) -> str | None:
        """The undefended attack a defence is compared with: the one with the same harmful ratio and training
        overrides, else the same harmful ratio (the seed's configs train vanilla longer than the defence), else,
        where the run has a single harmful ratio, ``vanilla``."""
        undefended = [m for m, v in self.variants.items() if _undefended(v["mode"]) and m in self.models]
        for same in (lambda m: self.condition(m) == self.condition(model),
                     lambda m: self.harmful_ratio(m) == self.harmful_ratio(model)):
            found = [m for m in undefended if same(m)]
            if found:
                return "vanilla" if "vanilla" in found else found[0]
        return self.vanilla if len({self.harmful_ratio(m) for m in self.variants}) <= 1 else None

    def attack_groups(self) -> list[tuple[str | None, list[str]]]:
        """(undefended attack, the defences compared with it), in config order: one group per attack condition."""
        groups: dict[str | None, list[str]] = {}
        for m, v in self.variants.items():
            if _undefended(v["mode"]) and m in self.models:
                groups.setdefault(m, [])
        for name in self.defended:
            groups.setdefault(self.vanilla_of(name), []).append(name)
        if not groups:
            groups[None] = []
        return list(groups.items())

    @property
    def defended(self) -> list[str]:
        return [m for m, v in self.variants.items() if not _undefended(v["mode"]) and not v["random"] and m in self.models]

    def _controls(self) -> dict[str, dict[str, str]]:
        """Defended variant -> {control kind: its random control of that kind}, kinds in CONTROL_KINDS order: the
        summary's ``controls`` map first, else the config's random variants (see ``_config_controls``)."""
        given = self._summary_controls()
        out = {}
        for name, v in self.variants.items():
            if _undefended(v["mode"]) or v["random"]:
                continue
            found = {**self._config_controls(name), **given.get(name, {})}
            if found:
                out[name] = {kind: found[kind] for kind in CONTROL_KINDS if kind in found}
        return out

    def _summary_controls(self) -> dict[str, dict[str, str]]:
        """The summaries' ``controls``: ``{defence: {kind: control}}``, or the older ``{defence: control}`` (same
        rank)."""
        given: dict[str, dict[str, str]] = {}
        for r in self.summaries:
            for defence, entry in r.summary.controls.items():
                given.setdefault(defence, {}).update({k: c for k, c in entry.items() if k in CONTROL_KINDS})
        return given

    def _config_controls(self, defence: str) -> dict[str, str]:
        """The random variants controlling a defence, by kind: those whose ``controls`` names it, else (for the
        kinds still missing) those without ``controls`` of the same family (``directions``) and ``at``."""
        v, out = self.variants[defence], {}
        for other, o in self.variants.items():
            if o["random"] in CONTROL_KINDS and o.get("controls") == defence:
                out.setdefault(o["random"], other)
        for other, o in self.variants.items():
            if (o["random"] in CONTROL_KINDS and not o.get("controls") and o.get("directions") == v.get("directions")
                    and o.get("at") == v.get("at")):
                out.setdefault(o["random"], other)
        return out

    # -- prompt sets ---------------------------------------------------------------------------------------

    def _sets(self) -> list[str]:
        names: list[str] = []
        for r in self.summaries:
            for s in list(r.summary.prompt_sets) + [s for per in r.summary.models.values() for s in per]:
                if s not in names:
                    names.append(s)
        return names

    def _set_roles(self) -> tuple[list[str], list[str]]:
        harmful = [s for r in self.summaries for s in r.summary.harmful_sets]
        benign = [s for r in self.summaries for s in r.summary.benign_sets]
        if not benign:
            benign = [s for s in self.sets if BENIGN_NAME.match(s) and s not in harmful]
        if not harmful:
            harmful = [s for s in self.sets if s not in benign]
        uniq = lambda xs: [s for s in self.sets if s in set(xs)] + [s for s in dict.fromkeys(xs) if s not in self.sets]
        return uniq(harmful), uniq(benign)

    def prompts(self, set_name: str) -> int | None:
        counts = {r.summary.prompt_sets.get(set_name) for r in self.summaries} - {None}
        return max(counts) if counts else None

    # -- numbers -------------------------------------------------------------------------------------------

    def rate(self, model: str, set_name: str) -> Rate | None:
        entries = []
        for r in self.summaries:
            e = r.summary.models.get(model, {}).get(set_name)
            if e is not None and (e.rate is not None or e.no_verdict):
                entries.append((r.seed, e))
        if not entries:
            return None
        return _pooled_rate(entries)

    def has_rate(self, model: str, set_name: str) -> bool:
        r = self.rate(model, set_name)
        return r is not None and r.rate is not None

    def utility(self, model: str, key: str) -> dict | None:
        values = {}
        for r in self.summaries:
            u = r.summary.utility.get(model)
            v = getattr(u, key) if u is not None else None
            if isinstance(v, (int, float)) and math.isfinite(v):
                values[r.seed] = float(v)
        return {**seed_summary(list(values.values())), "per_seed": values} if values else None

    def fine_tune_accuracy(self, model: str) -> Rate | None:
        """A model's fine-tune accuracy on the benign task (correct / test items, 95% Wilson interval), pooled
        over seeds like a rate; None when no seed measured it."""
        entries = []
        for r in self.summaries:
            u = r.summary.utility.get(model)
            fa = u.fine_tune_accuracy if u is not None else None
            if fa is not None and fa.rate is not None:
                entries.append((r.seed, RateSummary(rate=fa.rate, k=fa.k, n=fa.n, ci95=fa.ci95)))
        return _pooled_rate(entries) if entries else None

    @property
    def harm_judge(self) -> str | None:
        """The harm judge in words (``evaluation.harm_judge``), or None when the run had none."""
        judges = sorted({r.summary.harm_judge_label for r in self.summaries if r.summary.harm_judge})
        return ", ".join(judges) or None

    def harmful(self, model: str, set_name: str) -> Rate | None:
        """The share of replies the harm judge called harmful (HarmBench), pooled over seeds like a rate."""
        entries = [(r.seed, h.harmful) for r in self.summaries
                   if (h := r.summary.harm.get(model, {}).get(set_name)) is not None and h.harmful is not None]
        return _pooled_rate(entries) if entries else None

    def harm_score(self, model: str, set_name: str) -> dict | None:
        """The mean harm score (StrongREJECT) with its bootstrap interval; over seeds, the mean ± std of the
        seeds' means."""
        found = {r.seed: h.score for r in self.summaries
                 if (h := r.summary.harm.get(model, {}).get(set_name)) is not None and h.score is not None
                 and h.score.mean is not None}
        if not found:
            return None
        if len(found) == 1:
            (score,) = found.values()
            return {"mean": score.mean, "ci95": score.ci95, "n": score.n, "no_verdict": score.no_verdict}
        return {**seed_summary([s.mean for s in found.values()]), "per_seed": {k: s.mean for k, s in found.items()}}

    @property
    def fa_task(self) -> str | None:
        """The benign task of the fine-tune accuracy (several joined with ', ' if the seeds differ)."""
        tasks = sorted({u.fine_tune_accuracy.task for r in self.summaries for u in r.summary.utility.values()
                        if u.fine_tune_accuracy is not None})
        return ", ".join(tasks) or None

    def mcnemar(self, set_name: str, a: str, b: str) -> dict | None:
        """Discordant counts and exact p of A vs B on a set; over several seeds the discordant pairs are summed
        (an exact test of the same null: within each seed, a discordant pair is equally likely either way)."""
        found = []
        for r in self.summaries:
            for row in r.summary.mcnemar.get(set_name, []):
                if (row.model_a, row.model_b) == (a, b):
                    found.append((r.seed, row.refused_a_only, row.refused_b_only, row.n_pairs, row.p_value))
                elif (row.model_a, row.model_b) == (b, a):
                    found.append((r.seed, row.refused_b_only, row.refused_a_only, row.n_pairs, row.p_value))
        if not found:
            return None
        if len(found) == 1:
            s, only_a, only_b, n_pairs, p = found[0]
            return {"a_only": only_a, "b_only": only_b, "n_pairs": n_pairs, "p_value": p, "per_seed": {s: p}}
        only_a, only_b = sum(f[1] for f in found), sum(f[2] for f in found)
        return {"a_only": only_a, "b_only": only_b, "n_pairs": sum(f[3] for f in found),
                "p_value": mcnemar_exact(only_a, only_b), "per_seed": {f[0]: f[4] for f in found}}

    def mcnemar_pairs(self, set_name: str) -> list[tuple[str, str]]:
        pairs = []
        for r in self.summaries:
            for row in r.summary.mcnemar.get(set_name, []):
                if (row.model_a, row.model_b) not in pairs and (row.model_b, row.model_a) not in pairs:
                    pairs.append((row.model_a, row.model_b))
        return pairs

    @property
    def ceiling(self) -> str:
        """The model the attack fine-tunes, before the attack: the refusal a defense can keep."""
        return "base" if self.target == "base" else "aligned"

    def verdict_pairs(self) -> list[tuple[str, str, str, str]]:
        """(set, A, B, kind) of every comparison the verdict makes, on every harmful set. kind: 'attack' (vanilla
        vs the ceiling), 'vanilla' (a defence vs vanilla), 'same_rank' / 'matched' (a defence vs that control)."""
        pairs = []
        for set_name in self.harmful_sets:
            for vanilla, defences in self.attack_groups():
                if vanilla:
                    pairs.append((set_name, vanilla, self.ceiling, "attack"))
                for name in defences:
                    if vanilla:
                        pairs.append((set_name, name, vanilla, "vanilla"))
                    pairs += [(set_name, name, control, kind) for kind, control in self.controls.get(name, {}).items()]
        return pairs

    @cached_property
    def comparisons(self) -> dict[tuple[str, str, str], dict]:
        """The verdict's comparisons with a rate on both sides, keyed (set, A, B), each decided on its McNemar p
        Holm-corrected over the family (those of them that have a paired test)."""
        found: dict[tuple[str, str, str], dict] = {}
        for set_name, a, b, kind in self.verdict_pairs():
            c = self._raw_comparison(a, b, set_name)
            if c is not None and (set_name, a, b) not in found:
                found[(set_name, a, b)] = {**c, "kind": kind}
        family = [c for c in found.values() if c["p"] is not None]
        for c, adjusted in zip(family, holm_bonferroni([c["p"] for c in family])):
            c["p_holm"] = adjusted
        for c in found.values():
            _decide(c)
        return found

    @property
    def family(self) -> list[dict]:
        """The comparisons whose p-values are corrected together (those with a paired test), in verdict order."""
        return [c for c in self.comparisons.values() if c["p"] is not None]

    def compare(self, a: str, b: str, set_name: str) -> dict | None:
        """Is A's refusal rate on the set above B's, below it, or not distinguishable from it? One of the
        verdict's comparisons is decided within its family; any other pair alone (a family of one)."""
        if (set_name, a, b) in self.comparisons:
            return self.comparisons[(set_name, a, b)]
        c = self._raw_comparison(a, b, set_name)
        if c is not None:
            c["p_holm"] = c["p"]
            _decide(c)
        return c

    def _raw_comparison(self, a: str, b: str, set_name: str) -> dict | None:
        """A's and B's rates, their paired test, and over seeds in how many A differs from B the pooled way."""
        ra, rb = self.rate(a, set_name), self.rate(b, set_name)
        if ra is None or rb is None or ra.rate is None or rb.rate is None:
            return None
        test = self.mcnemar(set_name, a, b)
        diff = ra.rate - rb.rate
        common = [s for s in ra.per_seed if s in rb.per_seed]
        agree = sum((ra.per_seed[s] - rb.per_seed[s]) * diff > 0 for s in common)
        apart = bool(ra.ci95 and rb.ci95 and (ra.ci95[0] > rb.ci95[1] or rb.ci95[0] > ra.ci95[1]))
        return {"set": set_name, "names": (a, b), "a": ra, "b": rb, "test": test,
                "p": test["p_value"] if test else None, "p_holm": None, "apart": apart, "diff": diff,
                "seeds": (agree, len(common)), "consistent": len(common) <= 1 or agree == len(common)}

    def removed_share(self, model: str) -> dict | None:
        """Mean share of the update (``at: update``) or gradient norm the projection removed: each seed's mean over
        its logged steps, summarised over seeds (``seed_summary``); None when the logs have none."""
        at = (self.variants.get(model) or {}).get("at", "update")
        means = [m for _, log in self.step_logs(model) if (m := mean_removed_share(log.model_dump(mode="json"), at)) is not None]
        return seed_summary(means) if means else None

    def step_logs(self, model: str) -> list[tuple[Any, TrainLog]]:
        return [(r.seed, r.logs[model]) for r in self.runs if model in r.logs]

    def diagnostics(self, model: str) -> dict | None:
        """The weight-space diagnostics ('overall'), averaged over seeds."""
        found = []
        for r in self.runs:
            # the summary's copy, else logs/diagnostics_<model>.json, else (older runs) the training log's
            d = r.summary.diagnostics.get(model, {}).get("overall") if r.summary is not None else None
            d = d or (r.diagnostics[model].overall if model in r.diagnostics else None)
            older = (r.logs[model].diagnostics or {}).get("overall") if model in r.logs else None
            d = d or (DiagnosticsOverall.model_validate(older) if isinstance(older, dict) else None)
            if d is not None:
                found.append(d)
        if not found:
            return None
        keys = ("cosine", "energy_in_ref_subspace", "attack_norm", "modules")
        return {k: seed_summary([float(getattr(f, k)) for f in found]) for k in keys}


def _undefended(mode: Any) -> bool:
    """Whether a variant's mode is the undefended attack (its role in ``orthoguard.modes``; a mode this version
    does not know, from another run, is undefended only when it is named 'vanilla')."""
    return MODES[mode].role == "undefended" if isinstance(mode, str) and mode in MODES else mode == "vanilla"


def random_kind(value: Any) -> str | None:
    """A variant's ``random`` as a control kind: None (not a control), 'same_rank' (also ``true``, as older runs
    wrote it) or 'matched'; any other text is kept as it is."""
    if value is None or value is False:
        return None
    text = "same_rank" if value is True else str(value).strip().lower().replace("-", "_")
    if text in ("", "false", "none", "null"):
        return None
    return "same_rank" if text == "true" else text


def _pooled_rate(entries: list[tuple[Any, RateSummary]]) -> Rate:
    """One seed's rate as it is; several seeds' counts pooled (``RateSummary.pooled``), with the per-seed rates."""
    no_verdict = sum(e.no_verdict for _, e in entries)
    entries = [(s, e) for s, e in entries if e.rate is not None]
    if not entries:
        return Rate(None, 0, 0, None, no_verdict, {})
    per_seed = {s: e.rate for s, e in entries}
    if len(entries) == 1:
        (_, e), = entries
        return Rate(e.rate, e.k, e.n, tuple(e.ci95), no_verdict, per_seed)
    pooled = RateSummary.pooled([e for _, e in entries])
    return Rate(pooled.rate, pooled.k, pooled.n, tuple(pooled.ci95), no_verdict, per_seed)
