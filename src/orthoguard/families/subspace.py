"""``subspace``: per module the top-k left singular vectors U_k of dW_ref = (alpha/r) B_ref A_ref.

- Directions: ``<module>.U`` = U_k (d_out x k, orthonormal columns), k fixed (``subspace_k``) or the smallest k
  whose singular values reach ``subspace_energy`` of the energy.
- Same-rank random control: a random k-dimensional subspace per module (Q of a Gaussian's QR).
- Constraint, per module:   U_k^T B = 0  (so U_k^T B A = 0: the attack's change has no component in span U_k).
  The ``activation`` family uses the same constraint with its one residual-stream direction.
"""

from __future__ import annotations

import torch

from orthoguard.directions import choose_k, left_singular
from orthoguard.families import Directions, Factors, Family, NamedParams, register_family
from orthoguard.projection import TensorConstraint, _check_match, _check_shape, lora_modules, project_out_columns


def subspace_directions(factors: Factors, settings) -> Directions:
    """Per module the top-k left singular vectors of dW_ref (k fixed, or the smallest k reaching the energy)."""
    out = {}
    for module, (A, B) in factors.items():
        U, S = left_singular(A, B)
        if S.numel() and S[0] > 0:
            out[f"{module}.U"] = U[:, : choose_k(S, settings.subspace_k, settings.subspace_energy)].contiguous()
    return out


def random_orthonormal(directions: Directions, seed: int) -> Directions:
    """Per key (sorted) a uniformly random subspace of the same dimension: Q of the QR of a Gaussian matrix."""
    g = torch.Generator().manual_seed(seed)
    return {key: torch.linalg.qr(torch.randn(*directions[key].shape, generator=g))[0] for key in sorted(directions)}


class OutputSubspaceConstraint(TensorConstraint):
    """U^T B = 0 for a module's LoRA B (families subspace, activation)."""

    def __init__(self, B: torch.nn.Parameter, U: torch.Tensor):
        super().__init__(B)
        self.U = U

    @property
    def B(self) -> torch.nn.Parameter:
        return self.param

    def remove(self, x: torch.Tensor) -> torch.Tensor:
        return project_out_columns(x, self.U)


def output_subspace_constraints(named_params: NamedParams, directions: Directions,
                                constrained=lambda module: True) -> list[OutputSubspaceConstraint]:
    """One U^T B = 0 per ``<module>.U``; every trainable LoRA module that is ``constrained`` needs one."""
    modules = lora_modules(named_params)
    wanted = {k[: -len(".U")] for k in directions if k.endswith(".U")}
    _check_match(wanted, {m for m in modules if constrained(m)}, "modules", next(iter(sorted(modules)), "-"))
    out = []
    for name in sorted(wanted):
        B, U = modules[name]["B"], directions[f"{name}.U"]
        _check_shape(f"{name}.U", (U.shape[0],), (B.shape[0],))
        out.append(OutputSubspaceConstraint(B, U.to(B.device, torch.float32)))
    return out


class Subspace(Family):
    name = "subspace"

    def build(self, factors, settings):
        return subspace_directions(factors, settings)

    def random_same_rank(self, directions, seed):
        return random_orthonormal(directions, seed)

    def constraints(self, named_params, directions):
        return output_subspace_constraints(named_params, directions)


register_family(Subspace())
