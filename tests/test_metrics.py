"""Rates and their intervals, the exact McNemar test, Holm–Bonferroni, per-category rates and summaries over seeds."""

from __future__ import annotations

import math

import pytest

from orthoguard.metrics import (format_rate, holm_bonferroni, mcnemar_exact, paired_mcnemar, per_category, rate_summary,
                                seed_summary, wilson_interval)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17


def test_rate_summary_counts_undecided_as_errors_not_verdicts():
    summary = rate_summary([True, False, None, True])
    assert summary["k"] == 2 and summary["n"] == 3 and summary["errors"] == 1
    assert summary["rate"] == pytest.approx(2 / 3)
    assert format_rate(summary).startswith("67% [")
    assert format_rate(rate_summary([None])) == "n/a (1 of 1 no verdict)"  # was "n/a": the reply is counted now
    assert format_rate(rate_summary([])) == "n/a"


def test_rate_summary_counts_replies_with_no_verdict():
    summary = rate_summary([True] * 3 + [False] * 27 + [None] * 2)
    assert (summary["k"], summary["n"], summary["no_verdict"], summary["errors"], summary["total"]) == (3, 30, 2, 2, 32)
    assert summary["rate"] == pytest.approx(0.1)


def test_format_rate_states_the_denominator_and_the_replies_without_verdict():
    assert format_rate(rate_summary([True] * 3 + [False] * 27 + [None] * 2)) == "10% [3%, 26%] (3/30; 2 of 32 no verdict)"
    assert format_rate(rate_summary([True] * 3 + [False] * 27)) == "10% [3%, 26%] (3/30)"
    # an older summary: "errors" only, no "no_verdict" / "total"
    old = {"rate": 0.1, "k": 3, "n": 30, "errors": 2, "ci95": [0.0346, 0.2562]}
    assert format_rate(old) == "10% [3%, 26%] (3/30; 2 of 32 no verdict)"


def test_holm_bonferroni_against_hand_computed_values():
    # sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 -> 0.04, 0.06, 0.06, 0.04 -> monotone: 0.04, 0.06, 0.06, 0.06
    assert holm_bonferroni([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # 0.001*3 = 0.003, 0.04*2 = 0.08, 0.5*1 = 0.5
    assert holm_bonferroni([0.5, 0.001, 0.04]) == pytest.approx([0.5, 0.003, 0.08])
    # capped at 1; ties keep the same adjusted value
    assert holm_bonferroni([0.4, 0.6, 0.4]) == pytest.approx([1.0, 1.0, 1.0])
    assert holm_bonferroni([0.01, 0.01]) == pytest.approx([0.02, 0.02])
    assert holm_bonferroni([0.03]) == [0.03] and holm_bonferroni([]) == []
    # the step-down is monotone: a larger raw p never gets a smaller adjusted p
    raw = [0.002, 0.2, 0.011, 0.0001, 0.04, 0.012]
    adjusted = holm_bonferroni(raw)
    ranked = [adjusted[i] for i in sorted(range(len(raw)), key=raw.__getitem__)]
    assert ranked == sorted(ranked) and all(a >= p for a, p in zip(adjusted, raw))
    with pytest.raises(ValueError):
        holm_bonferroni([0.1, float("nan")])
    with pytest.raises(ValueError):
        holm_bonferroni([1.2])


@pytest.mark.parametrize("b, c, expected", [
    (0, 0, 1.0),
    (0, 5, 2 / 32),
    (5, 0, 2 / 32),
    (1, 9, 2 * 11 / 1024),
    (5, 5, 1.0),
    (3, 4, 1.0),
])
def test_mcnemar_exact_matches_the_binomial_tail(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected)


def test_mcnemar_exact_is_symmetric_and_handles_large_counts():
    assert mcnemar_exact(12, 30) == mcnemar_exact(30, 12)
    p = mcnemar_exact(450, 550)
    assert 0 < p < 0.01 and math.isfinite(p)
    assert mcnemar_exact(2000, 2000) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_paired_mcnemar_uses_only_prompts_both_decided():
    a = {"p1": True, "p2": True, "p3": False, "p4": None, "p5": True, "only-a": True}
    b = {"p1": True, "p2": False, "p3": True, "p4": True, "p5": False, "only-b": False}
    result = paired_mcnemar(a, b)
    assert result["n_pairs"] == 4  # p1, p2, p3, p5
    assert (result["b"], result["c"], result["both"], result["neither"]) == (2, 1, 1, 0)
    assert result["n_excluded"] == 1  # p4: B has a verdict, A has none
    assert result["p_value"] == pytest.approx(mcnemar_exact(2, 1))


def test_per_category_rates_and_uncategorized_rows():
    records = [{"category": "x", "refused": True}, {"category": "x", "refused": False},
               {"category": "y", "refused": None}, {"category": None, "refused": True}]
    result = per_category(records)
    assert list(result) == ["(none)", "x", "y"]
    assert result["x"]["rate"] == 0.5 and result["x"]["n"] == 2
    assert result["y"]["rate"] is None and result["y"]["errors"] == 1
    assert result["(none)"]["k"] == 1


def test_seed_summary_mean_std_and_values():
    result = seed_summary([0.2, 0.4, 0.6])
    assert result["mean"] == pytest.approx(0.4) and result["std"] == pytest.approx(0.2)
    assert result["values"] == [0.2, 0.4, 0.6] and result["n"] == 3
    assert seed_summary([0.5]) == {"mean": 0.5, "std": None, "values": [0.5], "n": 1}
    assert seed_summary([])["mean"] is None


@pytest.mark.parametrize("n", [1, 7, 16, 32, 48, 96, 300])
def test_wilson_interval_contains_the_rate_exactly(n):
    for k in range(n + 1):
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
