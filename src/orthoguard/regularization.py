"""Regularized mode (from the seed's repository): penalise movement along the blue - red direction.

A blue LoRA (refusing) and a red LoRA (complying) are trained on the refusal-split questions; their difference
Delta, in the chosen family's space, is what separates refusing from complying. The attack loss gets

    (lambda / 2) * sum <theta - theta_0, Delta>^2          (lora_factors: per LoRA tensor)
    (lambda / 2) * sum_modules <dW_attack, Delta_W>_F^2    (delta_w: dW = (alpha/r) B A, Delta_W = dW_blue - dW_red)

with every Delta normalized to unit norm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from orthoguard.diagnostics import lora_scale
from orthoguard.directions import lowrank_norm, module_factors
from orthoguard.errors import DirectionError
from orthoguard.projection import DeltaWConstraint, FactorConstraint, build_constraints

REGULARIZED_FAMILIES = ("lora_factors", "delta_w")


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
    out = {}
    if family == "lora_factors":
        for module in blue:
            for i, which in enumerate("AB"):
                delta = blue[module][i] - red[module][i]
                if delta.norm() > 0:
                    out[f"{module}.lora_{which}.weight"] = delta / delta.norm()
        return out
    if family == "delta_w":
        s_blue, s_red = lora_scale(blue_dir), lora_scale(red_dir)
        for module in blue:
            (Ab, Bb), (Ar, Br) = blue[module], red[module]
            L, R = torch.cat([s_blue * Bb, -s_red * Br], dim=1), torch.cat([Ab, Ar], dim=0)
            norm = lowrank_norm(L, R)
            if norm > 0:
                out[f"{module}.L"], out[f"{module}.R"] = L / norm, R
        return out
    raise DirectionError(f"regularized mode supports {REGULARIZED_FAMILIES}, not '{family}'")


def penalty_fn(named_params: dict[str, torch.nn.Parameter], spec: RegularizerSpec) -> Callable[[], torch.Tensor]:
    """A closure returning the penalty for the current parameters (differentiable)."""
    pairs = build_constraints(named_params, spec.directions, spec.family)  # reuses the strict name/shape matching

    def penalty() -> torch.Tensor:
        total = 0.0
        for c in pairs:
            if isinstance(c, FactorConstraint):
                inner = torch.sum((c.param.float() - c.initial) * c.u)
            elif isinstance(c, DeltaWConstraint):
                inner = spec.scale * torch.trace((c.B.float().T @ c.L) @ (c.R @ c.A.float().T))
            else:
                raise DirectionError(f"regularized mode supports {REGULARIZED_FAMILIES}")
            total = total + inner**2
        return 0.5 * spec.strength * total

    return penalty
