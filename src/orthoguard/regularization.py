"""Regularized mode (from the seed's repository): penalise movement along the blue - red direction.

A blue LoRA (refusing) and a red LoRA (complying) are trained on the refusal-split questions; their difference
Delta, in the chosen family's space, is what separates refusing from complying. The attack loss gets

    (lambda / 2) * sum <theta - theta_0, Delta>^2          (lora_factors: per LoRA tensor)
    (lambda / 2) * sum_modules <dW_attack, Delta_W>_F^2    (delta_w: dW = (alpha/r) B A, Delta_W = dW_blue - dW_red)

with every Delta normalized to unit norm. Each family that supports it (``Family.regularizable``) builds its Delta
(``blue_red``) and the inner product the penalty squares (``penalty_inner``); this module pairs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from orthoguard.directions import module_factors
from orthoguard.errors import DirectionError
from orthoguard.families import FAMILIES, get_family, regularized_mode_error
from orthoguard.projection import build_constraints


@dataclass(frozen=True)
class RegularizerSpec:
    directions: dict[str, torch.Tensor]
    family: str = "lora_factors"
    strength: float = 1.0  # lambda
    scale: float = 1.0  # alpha / r of the attack LoRA (delta_w)


def blue_red_directions(blue_dir, red_dir, family: str) -> dict[str, torch.Tensor]:
    """Delta = blue - red, per LoRA tensor (lora_factors) or per module as a low-rank L @ R (delta_w)."""
    blue, red = module_factors(blue_dir), module_factors(red_dir)
    if set(blue) != set(red):
        raise DirectionError(f"blue and red adapters target different modules: {sorted(set(blue) ^ set(red))[:3]}")
    if family not in FAMILIES or not FAMILIES[family].regularizable:
        raise regularized_mode_error(family)
    return FAMILIES[family].blue_red(blue, red, blue_dir, red_dir)


def penalty_fn(named_params: dict[str, torch.nn.Parameter], spec: RegularizerSpec) -> Callable[[], torch.Tensor]:
    """A closure returning the penalty (lambda / 2) * sum <., Delta>^2 for the current parameters (differentiable)."""
    pairs = build_constraints(named_params, spec.directions, spec.family)  # reuses the strict name/shape matching
    family = get_family(spec.family)

    def penalty() -> torch.Tensor:
        total = 0.0
        for c in pairs:
            total = total + family.penalty_inner(c, spec.scale) ** 2
        return 0.5 * spec.strength * total

    return penalty
