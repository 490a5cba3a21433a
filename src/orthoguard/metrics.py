"""Rates with their uncertainty."""

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
    return max(0.0, centre - half), min(1.0, centre + half)


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
