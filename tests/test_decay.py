"""Refusal-decay summaries (orthoguard.decay) on hand-made curves whose answers are known."""

from __future__ import annotations

import math

import pytest

from orthoguard.decay import area_under, decay_summary, final_loss, first_step_below, refusal_at_loss
from orthoguard.rundir import LossRecord, ProbeRecord


def _probe(step: int, verdicts: list[bool | None]) -> ProbeRecord:
    decided = [v for v in verdicts if v is not None]
    return ProbeRecord(step=step, refusal_rate=sum(decided) / len(decided) if decided else None, k=sum(decided),
                       n=len(decided), no_verdict=len(verdicts) - len(decided), verdicts=verdicts)


def _losses(values: list[float]) -> list[LossRecord]:
    return [LossRecord(step=i + 1, epoch=0.0, loss=v, learning_rate=1e-4) for i, v in enumerate(values)]


def test_area_is_the_mean_rate_over_the_attack():
    assert area_under([(0, 1.0), (10, 1.0)]) == 1.0
    assert area_under([(0, 1.0), (10, 0.0)]) == pytest.approx(0.5)
    assert area_under([(0, 1.0), (2, 0.0), (10, 0.0)]) == pytest.approx(0.1)  # 1 x 2 / 2 over 10 steps
    assert area_under([(0, 0.4)]) == 0.4 and area_under([]) is None


def test_first_step_below_half_interpolates_between_probes():
    assert first_step_below([(0, 1.0), (4, 0.0)]) == pytest.approx(2.0)
    assert first_step_below([(0, 1.0), (2, 0.75), (4, 0.25)]) == pytest.approx(3.0)
    assert first_step_below([(0, 1.0), (4, 0.5), (8, 0.5)]) is None  # 50% is not below half
    assert first_step_below([(0, 0.25), (4, 0.0)]) == 0.0


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_prompts():
    def curve(n: int) -> list[ProbeRecord]:  # refusal 1.0, 0.5, 0.0 at steps 0, 4, 8
        return [_probe(0, [True] * n), _probe(4, [True, False] * (n // 2)), _probe(8, [False] * n)]

    small, large = decay_summary(curve(8)), decay_summary(curve(128))
    for s in (small, large):
        assert s.auc == pytest.approx(0.5) and s.auc_ci[0] <= s.auc <= s.auc_ci[1]
        assert s.steps_to_half == pytest.approx(4.0) and s.steps_to_half_ci[0] <= 4.0 <= s.steps_to_half_ci[1]
        assert s.prompts in (8, 128) and s.last_step == 8 and s.final == 0.0
    assert large.auc_ci[1] - large.auc_ci[0] < small.auc_ci[1] - small.auc_ci[0]


def test_a_curve_that_never_falls_below_half_has_no_crossing_and_an_open_interval():
    s = decay_summary([_probe(0, [True] * 10), _probe(5, [True] * 9 + [False]), _probe(10, [True] * 8 + [False] * 2)])
    assert s.steps_to_half is None and s.steps_to_half_ci == (math.inf, math.inf)
    assert s.auc == pytest.approx((0.95 * 5 + 0.85 * 5) / 10)


def test_an_older_log_without_per_prompt_verdicts_has_no_intervals():
    old = [ProbeRecord(step=0, refusal_rate=1.0, k=4, n=4), ProbeRecord(step=4, refusal_rate=0.0, k=0, n=4)]
    s = decay_summary(old)
    assert s.auc == pytest.approx(0.5) and s.auc_ci is None and s.steps_to_half_ci is None and s.prompts == 0


def test_refusal_at_a_matched_training_loss():
    probes = [_probe(0, [True] * 4), _probe(4, [True, True, False, False]), _probe(8, [False] * 4)]
    learns = _losses([3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 1.0, 1.0])  # running mean of 3 reaches 2.0 at step 6
    assert refusal_at_loss(probes, learns, 2.0) == (6.0, pytest.approx(0.25))
    stuck = _losses([3.0] * 8)
    assert refusal_at_loss(probes, stuck, 2.0) is None
    assert final_loss(learns) == pytest.approx(4 / 3)
