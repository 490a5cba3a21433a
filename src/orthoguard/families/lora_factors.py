"""``lora_factors`` (the seed's family): every LoRA tensor of the refusal adapter, divided by its norm.

- Directions: per LoRA tensor (each module's A and B), u = p_ref / ||p_ref|| (zero tensors are skipped).
- Same-rank random control: a random unit tensor of the same shape per key.
- Constraint, per LoRA tensor p with unit direction u:   <p - p0, u> = 0
- Regularized mode: Delta = blue - red per LoRA tensor, normalized, and the penalty
  (lambda / 2) * sum <theta - theta_0, Delta>^2.
"""

from __future__ import annotations

import torch

from orthoguard.families import Directions, Factors, Family, NamedParams, register_family
from orthoguard.projection import TensorConstraint, _check_match, _check_shape, project_out, trainable_tensors


def lora_factor_directions(factors: Factors, settings=None) -> Directions:
    """The seed's directions: each LoRA factor of the adapter, normalized (zero tensors are skipped)."""
    directions = {}
    for module, (A, B) in factors.items():
        for which, tensor in (("A", A), ("B", B)):
            if tensor.norm() > 0:
                directions[f"{module}.lora_{which}.weight"] = (tensor / tensor.norm()).contiguous()
    return directions


def random_unit_tensors(directions: Directions, seed: int) -> Directions:
    """A random unit tensor (Gaussian, normalized) per key, in sorted key order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(directions):
        x = torch.randn(*directions[key].shape, generator=g)
        out[key] = x / x.norm()
    return out


def blue_minus_red_factors(blue: Factors, red: Factors) -> Directions:
    """Delta = blue - red per LoRA tensor, normalized (zero differences are skipped)."""
    out = {}
    for module in blue:
        for i, which in enumerate("AB"):
            delta = blue[module][i] - red[module][i]
            if delta.norm() > 0:
                out[f"{module}.lora_{which}.weight"] = delta / delta.norm()
    return out


class FactorConstraint(TensorConstraint):
    """The seed's: one unit direction per LoRA tensor."""

    def __init__(self, param: torch.nn.Parameter, u: torch.Tensor):
        super().__init__(param)
        self.u = u

    def remove(self, x: torch.Tensor) -> torch.Tensor:
        return project_out(x, self.u)


class LoraFactors(Family):
    name = "lora_factors"
    regularizable = True

    def build(self, factors, settings):
        return lora_factor_directions(factors, settings)

    def random_same_rank(self, directions, seed):
        return random_unit_tensors(directions, seed)

    def constraints(self, named_params: NamedParams, directions: Directions) -> list[FactorConstraint]:
        """One constraint per trainable tensor; every trainable tensor needs its direction."""
        tensors = trainable_tensors(named_params)
        _check_match(set(directions), set(tensors), "parameters", next(iter(sorted(tensors)), "-"))
        out = []
        for name, param in tensors.items():
            _check_shape(name, directions[name].shape, param.shape)
            out.append(FactorConstraint(param, directions[name].to(param.device, torch.float32)))
        return out

    def blue_red(self, blue, red, blue_dir, red_dir):
        return blue_minus_red_factors(blue, red)

    def penalty_inner(self, constraint: FactorConstraint, scale: float) -> torch.Tensor:
        """<theta - theta_0, Delta> for one LoRA tensor (differentiable)."""
        return torch.sum((constraint.param.float() - constraint.initial) * constraint.u)


register_family(LoraFactors())
