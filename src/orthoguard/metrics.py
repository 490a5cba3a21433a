"""Rates with their uncertainty (Wilson intervals), exact McNemar tests between paired models, Holm–Bonferroni
adjusted p-values for a family of tests, per-category rates and summaries over seeds."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the ends: in floats, centre - half at k = 0 can come out as 3e-18, above the rate itself
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def rate_summary(verdicts: list[bool | None]) -> dict:
    """Refusal rate over decided verdicts. Replies with no verdict (``None``: an empty reply, an unterminated
    ``<think>``, a judge error) are counted, not guessed: ``no_verdict`` of ``total`` replies, left out of ``n``.
    ``errors`` is the same count under its older name."""
    decided = [v for v in verdicts if v is not None]
    k, n = sum(decided), len(decided)
    no_verdict = len(verdicts) - n
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else None, "k": k, "n": n, "errors": no_verdict, "no_verdict": no_verdict,
            "total": len(verdicts), "ci95": [round(lo, 4), round(hi, 4)]}


def no_verdict_count(summary: dict) -> int:
    """Replies without a verdict in a ``rate_summary`` (also of older summaries, which only have ``errors``)."""
    return int(summary.get("no_verdict", summary.get("errors")) or 0)


def format_rate(summary: dict) -> str:
    """``10% [3%, 26%] (3/30; 2 of 32 no verdict)``: rate, 95% Wilson interval, refusals / judged replies, and the
    replies with no verdict when there are any; ``n/a (4 of 4 no verdict)`` when none was judged."""
    no_verdict = no_verdict_count(summary)
    total = summary.get("total", (summary.get("n") or 0) + no_verdict)
    missing = f"{no_verdict} of {total} no verdict" if no_verdict else ""
    if summary["rate"] is None:
        return f"n/a ({missing})" if missing else "n/a"
    lo, hi = summary["ci95"]
    counts = f"{summary['k']}/{summary['n']}" + (f"; {missing}" if missing else "")
    return f"{summary['rate']:.0%} [{lo:.0%}, {hi:.0%}] ({counts})"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test: the probability, under Binomial(b + c, 1/2), of a split at least as uneven
    as (b, c), where b and c count the discordant pairs. 1.0 when there are none."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers; int / int stays correctly rounded for any n


def paired_mcnemar(verdicts_a: dict, verdicts_b: dict) -> dict:
    """McNemar test on the prompts that both models answered with a decided verdict (``None`` = undecided).

    ``b``: refused by A only; ``c``: refused by B only; ``both`` / ``neither``: the concordant pairs;
    ``n_excluded``: prompts of both models left out because either has no verdict."""
    common = verdicts_a.keys() & verdicts_b.keys()
    pairs = [(verdicts_a[k], verdicts_b[k]) for k in common if verdicts_a[k] is not None and verdicts_b[k] is not None]
    b = sum(a and not o for a, o in pairs)
    c = sum(o and not a for a, o in pairs)
    both = sum(a and o for a, o in pairs)
    return {"b": b, "c": c, "both": both, "neither": len(pairs) - b - c - both, "n_pairs": len(pairs),
            "n_excluded": len(common) - len(pairs), "p_value": mcnemar_exact(b, c)}


def holm_bonferroni(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest p times (m - i + 1), made
    non-decreasing in that order and capped at 1. Rejecting where the adjusted p < alpha controls the
    family-wise error rate at alpha over the m tests."""
    if any(not (0.0 <= p <= 1.0) for p in p_values):  # also rejects NaN
        raise ValueError(f"p-values must lie in [0, 1], got {p_values}")
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def mean_interval(values: list[float | None], resamples: int = 2000, seed: int = 0) -> dict:
    """The mean of ``values`` (None: no verdict, left out and counted) with a 95% percentile-bootstrap interval
    over the items: ``{"mean", "n", "no_verdict", "ci95"}``."""
    import random

    scores = [float(v) for v in values if v is not None]
    out = {"mean": None, "n": len(scores), "no_verdict": len(values) - len(scores), "ci95": None}
    if not scores:
        return out
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(scores, k=len(scores))) / len(scores) for _ in range(resamples))
    out["mean"] = sum(scores) / len(scores)
    out["ci95"] = (round(means[int(0.025 * resamples)], 4), round(means[int(0.975 * resamples) - 1], 4))
    return out


def per_category(records: list[dict], key: str = "refused") -> dict[str, dict]:
    """``rate_summary`` of ``record[key]`` for each ``record["category"]`` (``None`` grouped as "(none)"),
    categories in sorted order."""
    groups: dict[str, list] = {}
    for record in records:
        category = record.get("category")
        groups.setdefault("(none)" if category is None else str(category), []).append(record.get(key))
    return {category: rate_summary(groups[category]) for category in sorted(groups)}


def seed_summary(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1) over seeds, with the per-seed values; std is None below two."""
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else None
    return {"mean": mean, "std": std, "values": list(values), "n": n}


REMOVED_SHARE_KEYS = ("update_removed_frac", "grad_removed_frac")  # per-step projection records in a loss log


def mean_removed_share(log: dict, at: str = "update") -> float | None:
    """The mean over a training log's optimizer steps of the share of the update (or gradient) norm that the
    projection removed; the key of the variant's placement ``at`` first. None when the log has none."""
    keys = REMOVED_SHARE_KEYS[::-1] if at == "gradient" else REMOVED_SHARE_KEYS
    for key in keys:
        values = [x[key] for x in log.get("losses") or [] if isinstance(x.get(key), (int, float))]
        if values:
            return sum(values) / len(values)
    return None

