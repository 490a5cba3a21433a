"""Rates with their uncertainty (Wilson intervals), exact McNemar tests between paired models, per-category rates
and summaries over seeds."""

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
    """Refusal rate over decided verdicts; undecided ones (judge errors) are counted, not guessed."""
    decided = [v for v in verdicts if v is not None]
    k, n = sum(decided), len(decided)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else None, "k": k, "n": n, "errors": len(verdicts) - n, "ci95": [round(lo, 4), round(hi, 4)]}


def format_rate(summary: dict) -> str:
    if summary["rate"] is None:
        return "n/a"
    lo, hi = summary["ci95"]
    return f"{summary['rate']:.0%} [{lo:.0%}, {hi:.0%}] ({summary['k']}/{summary['n']})"


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

    ``b``: refused by A only; ``c``: refused by B only; ``both`` / ``neither``: the concordant pairs."""
    pairs = [(verdicts_a[k], verdicts_b[k]) for k in verdicts_a.keys() & verdicts_b.keys()
             if verdicts_a[k] is not None and verdicts_b[k] is not None]
    b = sum(a and not o for a, o in pairs)
    c = sum(o and not a for a, o in pairs)
    both = sum(a and o for a, o in pairs)
    return {"b": b, "c": c, "both": both, "neither": len(pairs) - b - c - both, "n_pairs": len(pairs),
            "p_value": mcnemar_exact(b, c)}


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
