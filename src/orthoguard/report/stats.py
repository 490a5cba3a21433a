"""A pooled refusal rate, one McNemar entry of the results, and the decision rule of a comparison."""

from __future__ import annotations

from dataclasses import dataclass, field

from orthoguard.metrics import seed_summary
from orthoguard.report.constants import ALPHA, NO_VERDICT_FLAG


@dataclass
class Rate:
    """A refusal rate of one model on one set, pooled over seeds."""

    rate: float | None
    k: int | None
    n: int | None
    ci95: tuple[float, float] | None
    no_verdict: int = 0  # replies without a verdict (empty, unfinished, unjudgeable), not in n
    per_seed: dict = field(default_factory=dict)  # seed -> rate

    @property
    def errors(self) -> int:
        """The older name of ``no_verdict``."""
        return self.no_verdict

    @property
    def total(self) -> int | None:
        """Every reply: the judged ones (n) and those with no verdict."""
        return None if self.n is None else self.n + self.no_verdict

    @property
    def no_verdict_share(self) -> float | None:
        return self.no_verdict / self.total if self.total else None

    @property
    def flagged(self) -> bool:
        """Too many replies without a verdict to read the rate as if n were the whole set."""
        return self.no_verdict_share is not None and self.no_verdict_share > NO_VERDICT_FLAG

    @property
    def width(self) -> float | None:
        return self.ci95[1] - self.ci95[0] if self.ci95 else None

    @property
    def spread(self) -> dict:
        return seed_summary([v for v in self.per_seed.values() if v is not None])


def _decide(c: dict) -> None:
    """Set a comparison's outcome: 'beats' / 'below' when the corrected p < ALPHA, the rates and the discordant
    pairs differ the same way, and every seed agrees with the pooled direction; else 'same'."""
    test = c["test"] or {}
    pairs_agree = not (isinstance(test.get("a_only"), int) and isinstance(test.get("b_only"), int)) or \
        (test["a_only"] - test["b_only"]) * c["diff"] > 0
    c["significant"] = c["p_holm"] is not None and c["p_holm"] < ALPHA
    decided = c["significant"] and c["consistent"] and c["diff"] != 0 and pairs_agree
    c["outcome"] = ("beats" if c["diff"] > 0 else "below") if decided else "same"
