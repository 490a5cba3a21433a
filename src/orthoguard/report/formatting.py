"""Numbers as the report writes them: rates with intervals and counts, p-values, means ± std."""

from __future__ import annotations

import math

from orthoguard.report.stats import Rate


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def fmt_rate(r: Rate | None, counts: bool = False) -> str:
    """``71% [62, 79]``; with ``counts``, ``(71/100)`` (refusals / judged replies) and the replies with no verdict:
    ``(71/100; 5 of 105 no verdict)``."""
    missing = fmt_no_verdict(r) if counts and r is not None else ""
    if r is None or r.rate is None:
        return f"n/a ({missing})" if missing else "n/a"
    text = pct(r.rate)
    if r.ci95:
        text += f" [{100 * r.ci95[0]:.0f}, {100 * r.ci95[1]:.0f}]"
    judged = f"{r.k}/{r.n}" if counts and r.k is not None and r.n is not None else ""
    inside = "; ".join(x for x in (judged, missing) if x)
    return f"{text} ({inside})" if inside else text


def fmt_no_verdict(r: Rate) -> str:
    if not r.no_verdict:
        return ""
    return f"{r.no_verdict} of {r.total} no verdict" if r.total is not None else f"{r.no_verdict} no verdict"


def fmt_spread(r: Rate) -> str:
    s = r.spread
    if s["n"] < 2:
        return ""
    return f"mean {100 * s['mean']:.0f} ± {100 * s['std']:.0f} over {s['n']} seeds"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def fmt_summary(s: dict | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    if s.get("std") is None:
        return fmt_num(s["mean"], digits)
    return f"{fmt_num(s['mean'], digits)} ± {fmt_num(s['std'], 2)}"
